//! Logging with tracing: the journal's native protocol, with each record's fields, when
//! stderr is the journal; otherwise text on stderr (with `<N>` priority prefixes when stderr
//! is the journal but its socket cannot be reached). Levels from RUST_LOG or
//! SYSTEMD_LOG_LEVEL.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Maps SYSTEMD_LOG_LEVEL (a name or 0-7, as systemd's own tools take it) to a filter.
pub fn systemd_level(value: &str) -> Option<&'static str> {
    Some(match value.trim().to_ascii_lowercase().as_str() {
        "emerg" | "alert" | "crit" | "err" | "0" | "1" | "2" | "3" => "error",
        "warning" | "4" => "warn",
        "notice" | "info" | "5" | "6" => "info",
        "debug" | "7" => "debug",
        _ => return None,
    })
}

/// True when JOURNAL_STREAM names the device and inode of our stderr.
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(2) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The syslog priority journald files a line under.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The journal's PRIORITY for each level: the same as the `<N>` prefixes ([`priority`]),
/// where tracing-journald's own default would file info as notice and debug as info.
fn journal_priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// True for the fields that are only for the journal: the records' upper-case names
/// (`BACKEND=`, `BYTES_TO_CLIENT=`, ...), which their text messages already say in words.
fn journal_only(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Formats an event's or span's fields for text: the message, then `name=value` for the
/// other fields, leaving out the journal-only ones so the text reads as it did.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visit = TextVisit {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visit);
        visit.result
    }
}

struct TextVisit<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisit<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || journal_only(field.name()) {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{value:?}")
        } else {
            write!(self.writer, "{sep}{}={value:?}", field.name())
        };
    }
}

/// Prefixes each line with `<N>` so journald stores it at the right priority.
struct Journal(Format<tracing_subscriber::fmt::format::Full, ()>);

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber. Reads the environment, so call it before threads start.
/// When stderr is the journal, events go to the journal's socket with their fields
/// (tracing-journald, names as written: no prefix); if that socket cannot be reached, they
/// go to stderr as `<N>`-prefixed text, as before.
pub fn init() {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => {
            let level = std::env::var("SYSTEMD_LOG_LEVEL")
                .ok()
                .and_then(|v| systemd_level(&v))
                .unwrap_or("info");
            EnvFilter::new(level)
        }
    };
    let journal = stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref());
    let unreachable = if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_priority_mappings(journal_priorities());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => Some(e),
        }
    } else {
        None
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .fmt_fields(TextFields);
    if journal {
        let inner = tracing_subscriber::fmt::format()
            .with_target(false)
            .with_level(false)
            .with_ansi(false)
            .without_time();
        builder.event_format(Journal(inner)).init();
        if let Some(e) = unreachable {
            tracing::debug!("the journal's socket cannot be reached ({e}): logging text");
        }
    } else {
        builder
            .with_ansi(false)
            .without_time()
            .with_level(true)
            .init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SYSTEMD_LOG_LEVEL names and numbers map to the matching tracing level.
    #[test]
    fn systemd_levels() {
        let table = [
            ("err", Some("error")),
            ("3", Some("error")),
            ("warning", Some("warn")),
            ("4", Some("warn")),
            ("notice", Some("info")),
            ("info", Some("info")),
            ("DEBUG", Some("debug")),
            ("7", Some("debug")),
            ("verbose", None),
            ("8", None),
        ];
        for (v, want) in table {
            assert_eq!(systemd_level(v), want, "{v}");
        }
    }

    /// Levels map to the syslog priorities journald expects.
    #[test]
    fn priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    /// The journal gets the same priority for each level as the `<N>` prefixes.
    #[test]
    fn journal_priorities_match_prefixes() {
        let m = journal_priorities();
        for (level, p) in [
            (Level::ERROR, m.error),
            (Level::WARN, m.warn),
            (Level::INFO, m.info),
            (Level::DEBUG, m.debug),
            (Level::TRACE, m.trace),
        ] {
            assert_eq!(p as u8 - b'0', priority(&level), "{level}");
        }
    }

    /// The records' upper-case field names are journal-only; ordinary fields are not.
    #[test]
    fn journal_only_fields() {
        for name in [
            "BACKEND",
            "BYTES_TO_CLIENT",
            "DURATION_USEC",
            "CLIENTS_CLOSED",
        ] {
            assert!(journal_only(name), "{name}");
        }
        for name in ["message", "client", "backend", "to_backend"] {
            assert!(!journal_only(name), "{name}");
        }
    }

    /// Text output keeps the message and ordinary fields and leaves out journal-only ones.
    #[test]
    fn text_leaves_out_journal_fields() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(TextFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(BACKEND = "b:1", WAITED_USEC = 5u64, n = 2, "the message");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.trim(), "WARN the message n=2");
    }

    /// A JOURNAL_STREAM that is missing, malformed or names another file is not the journal.
    #[test]
    fn journal_stream_detection() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:x")));
        let st = nix::sys::stat::fstat(2).unwrap();
        let ours = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(stderr_is_journal(Some(&ours)));
        let other = format!("{}:{}", st.st_dev, st.st_ino.wrapping_add(1));
        assert!(!stderr_is_journal(Some(&other)));
    }
}
