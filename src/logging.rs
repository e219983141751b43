//! Logging with tracing: `<N>` priority prefixes when stderr is the journal, levels from
//! RUST_LOG or SYSTEMD_LOG_LEVEL.

use std::fmt;

use tracing::{Level, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .fmt_fields(DefaultFields::new());
    if journal {
        let inner = tracing_subscriber::fmt::format()
            .with_target(false)
            .with_level(false)
            .with_ansi(false)
            .without_time();
        builder.event_format(Journal(inner)).init();
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
