//! What the daemon reports about its work, as records with journal fields: a connection's
//! end, a backend that did not come up in time, and the totals at exit.
//!
//! The relay side builds a record from what it knows; [`logging`](crate::logging) decides
//! how it is written (the journal's own fields, or a line of text). Each record's fields are
//! listed once, by its `fields()`, and written under exactly those names: upper case, as the
//! journal wants them, so `journalctl BACKEND=127.0.0.1:9001` finds them.

use std::time::Duration;

/// Why a relayed connection (or a datagram session) ended: the `CLOSE=` field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both directions finished with an orderly end of stream (both FINs passed on).
    #[default]
    Eof,
    /// A peer reset the connection (ECONNRESET, EPIPE).
    Reset,
    /// A peer stopped answering: TCP keepalive probes (or retransmissions) went unanswered
    /// and the kernel gave up on the connection (ETIMEDOUT).
    Keepalive,
    /// `--connection-idle-timeout` (or, for a datagram session, `--session-timeout`): no
    /// byte moved either way for that long.
    IdleTimeout,
    /// `--half-close-timeout`: one side had sent its FIN, and no byte moved for that long.
    HalfCloseTimeout,
    /// The drain after SIGTERM ran out, or a second signal came: rsproxyd reset it.
    DrainCut,
    /// Any other failure, logged as a warning of its own.
    Error,
}

impl CloseReason {
    /// The value of `CLOSE=` (and of `reason=` in the debug log).
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::Reset => "reset",
            CloseReason::Keepalive => "keepalive",
            CloseReason::IdleTimeout => "idle-timeout",
            CloseReason::HalfCloseTimeout => "half-close-timeout",
            CloseReason::DrainCut => "drain-cut",
            CloseReason::Error => "error",
        }
    }

    /// The reason a relay that failed with `e` ended for.
    pub fn of_error(e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ECONNRESET) | Some(libc::EPIPE) => CloseReason::Reset,
            Some(libc::ETIMEDOUT) => CloseReason::Keepalive,
            _ => CloseReason::Error,
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One relayed connection (or datagram session) has ended: reported at debug level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionEnded {
    /// The client's address, as `getpeername(2)` gives it (`unix client` for unix sockets).
    pub client: String,
    /// The backend as given on the command line.
    pub backend: String,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// From the start of the relay (the client taken, with its backend connection already
    /// open) to its end; the wait for a cold backend comes before and is not counted.
    pub duration: Duration,
    pub close: CloseReason,
}

impl ConnectionEnded {
    /// The journal fields, in the order they are written.
    pub fn fields(&self) -> [(&'static str, String); 6] {
        [
            ("CLIENT", self.client.clone()),
            ("BACKEND", self.backend.clone()),
            ("BYTES_TO_BACKEND", self.bytes_to_backend.to_string()),
            ("BYTES_TO_CLIENT", self.bytes_to_client.to_string()),
            ("DURATION_USEC", usec(self.duration).to_string()),
            ("CLOSE", self.close.as_str().to_string()),
        ]
    }

    /// Writes the record (debug level).
    pub fn log(&self) {
        tracing::debug!(
            CLIENT = %self.client,
            BACKEND = %self.backend,
            BYTES_TO_BACKEND = self.bytes_to_backend,
            BYTES_TO_CLIENT = self.bytes_to_client,
            DURATION_USEC = usec(self.duration),
            CLOSE = self.close.as_str(),
            "{} <-> {} closed ({}) after {:.1?}: {} bytes to the backend, {} to the client",
            self.client,
            self.backend,
            self.close.as_str(),
            self.duration,
            self.bytes_to_backend,
            self.bytes_to_client,
        );
    }
}

/// The backend did not accept a connection within `--connect-timeout`, and the clients that
/// waited were closed: reported as a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTimedOut {
    pub backend: String,
    /// The last error the probe saw.
    pub last_error: String,
    pub waited: Duration,
    pub clients_closed: usize,
    /// `--follow-backend`: rsproxyd exits after this.
    pub exiting: bool,
}

impl BackendTimedOut {
    /// The journal fields, in the order they are written.
    pub fn fields(&self) -> [(&'static str, String); 3] {
        [
            ("BACKEND", self.backend.clone()),
            ("WAITED_USEC", usec(self.waited).to_string()),
            ("CLIENTS_CLOSED", self.clients_closed.to_string()),
        ]
    }

    /// Writes the record (warning level), with the same text as before fields existed.
    pub fn log(&self) {
        let then = if self.exiting {
            "; exiting (--follow-backend) so the next client starts the backend again"
        } else {
            ""
        };
        tracing::warn!(
            BACKEND = %self.backend,
            WAITED_USEC = usec(self.waited),
            CLIENTS_CLOSED = self.clients_closed,
            "Failed to connect to remote host {}: {} (waited {:.1}s); closed {} waiting client(s){then}",
            self.backend,
            self.last_error,
            self.waited.as_secs_f64(),
            self.clients_closed,
        );
    }
}

/// What the daemon did, reported once as it exits (info level).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub backend: String,
    /// Connections relayed (accepted, or passed in with `Accept=yes`).
    pub connections: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// The most connections relayed at once.
    pub peak_connections: usize,
    /// Why it exited, in words (`idle`, `asked to stop`, ...).
    pub exit_reason: String,
}

impl Summary {
    /// The journal fields, in the order they are written.
    pub fn fields(&self) -> [(&'static str, String); 6] {
        [
            ("BACKEND", self.backend.clone()),
            ("CONNECTIONS", self.connections.to_string()),
            ("BYTES_TO_BACKEND", self.bytes_to_backend.to_string()),
            ("BYTES_TO_CLIENT", self.bytes_to_client.to_string()),
            ("PEAK_CONNECTIONS", self.peak_connections.to_string()),
            ("EXIT_REASON", self.exit_reason.clone()),
        ]
    }

    /// Writes the record (info level).
    pub fn log(&self) {
        tracing::info!(
            BACKEND = %self.backend,
            CONNECTIONS = self.connections,
            BYTES_TO_BACKEND = self.bytes_to_backend,
            BYTES_TO_CLIENT = self.bytes_to_client,
            PEAK_CONNECTIONS = self.peak_connections,
            EXIT_REASON = %self.exit_reason,
            "exiting ({}): {} connection(s) served, {} bytes to the backend, {} to clients, at most {} at once",
            self.exit_reason,
            self.connections,
            self.bytes_to_backend,
            self.bytes_to_client,
            self.peak_connections,
        );
    }
}

/// Whole microseconds, saturating, as the journal's `*_USEC` fields count.
fn usec(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    /// One event's fields, as (name, value) in the order they were written.
    type FieldList = Vec<(String, String)>;

    /// The fields of every event.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<FieldList>>>);

    struct Fields<'a>(&'a mut Vec<(String, String)>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().into(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().into(), value.into()));
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut fields = Vec::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }

    /// Runs `f` under a subscriber that records every event, at every level.
    fn captured(f: impl FnOnce()) -> Vec<(String, String)> {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, f);
        let mut events = capture.0.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "one event per record");
        events.remove(0)
    }

    /// The fields written, without the text message.
    fn written(f: impl FnOnce()) -> Vec<(String, String)> {
        captured(f)
            .into_iter()
            .filter(|(name, _)| name != "message")
            .collect()
    }

    fn owned<const N: usize>(fields: [(&'static str, String); N]) -> Vec<(String, String)> {
        fields.into_iter().map(|(k, v)| (k.into(), v)).collect()
    }

    fn ended() -> ConnectionEnded {
        ConnectionEnded {
            client: "127.0.0.1:40000".into(),
            backend: "127.0.0.1:9001".into(),
            bytes_to_backend: 12,
            bytes_to_client: 3456,
            duration: Duration::from_micros(1_500_250),
            close: CloseReason::Eof,
        }
    }

    /// A connection's end maps to CLIENT=, BACKEND=, the bytes each way, DURATION_USEC= in
    /// whole microseconds and CLOSE=, and is written with exactly those fields.
    #[test]
    fn connection_ended_fields() {
        let r = ended();
        let want: Vec<(String, String)> = [
            ("CLIENT", "127.0.0.1:40000"),
            ("BACKEND", "127.0.0.1:9001"),
            ("BYTES_TO_BACKEND", "12"),
            ("BYTES_TO_CLIENT", "3456"),
            ("DURATION_USEC", "1500250"),
            ("CLOSE", "eof"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        assert_eq!(owned(r.fields()), want);
        assert_eq!(written(|| r.log()), want);
    }

    /// Each way a connection can end has its CLOSE= value, and errors map to them.
    #[test]
    fn close_reasons() {
        use std::io::{Error, ErrorKind};
        let table = [
            (CloseReason::Eof, "eof"),
            (CloseReason::Reset, "reset"),
            (CloseReason::Keepalive, "keepalive"),
            (CloseReason::IdleTimeout, "idle-timeout"),
            (CloseReason::HalfCloseTimeout, "half-close-timeout"),
            (CloseReason::DrainCut, "drain-cut"),
            (CloseReason::Error, "error"),
        ];
        for (reason, text) in table {
            assert_eq!(reason.as_str(), text);
            let r = ConnectionEnded {
                close: reason,
                ..ended()
            };
            assert!(written(|| r.log()).contains(&("CLOSE".into(), text.into())));
        }
        let errors = [
            (
                Error::from_raw_os_error(libc::ECONNRESET),
                CloseReason::Reset,
            ),
            (Error::from_raw_os_error(libc::EPIPE), CloseReason::Reset),
            (
                Error::from_raw_os_error(libc::ETIMEDOUT),
                CloseReason::Keepalive,
            ),
            (Error::new(ErrorKind::TimedOut, "other"), CloseReason::Error),
            (
                Error::from_raw_os_error(libc::EHOSTUNREACH),
                CloseReason::Error,
            ),
        ];
        for (e, want) in errors {
            assert_eq!(CloseReason::of_error(&e), want, "{e}");
        }
    }

    /// The backend timeout maps to BACKEND=, WAITED_USEC= and CLIENTS_CLOSED=, and keeps
    /// its text ("Failed to connect to remote host ...; closed N waiting client(s)").
    #[test]
    fn backend_timeout_fields() {
        let r = BackendTimedOut {
            backend: "127.0.0.1:9001".into(),
            last_error: "Connection refused (os error 111)".into(),
            waited: Duration::from_millis(5_000),
            clients_closed: 3,
            exiting: false,
        };
        let want = owned([
            ("BACKEND", "127.0.0.1:9001".to_string()),
            ("WAITED_USEC", "5000000".to_string()),
            ("CLIENTS_CLOSED", "3".to_string()),
        ]);
        assert_eq!(owned(r.fields()), want);
        let all = captured(|| r.log());
        let message = &all.iter().find(|(k, _)| k == "message").unwrap().1;
        assert_eq!(
            message,
            "Failed to connect to remote host 127.0.0.1:9001: Connection refused (os error 111) \
             (waited 5.0s); closed 3 waiting client(s)"
        );
        assert_eq!(written(|| r.log()), want);
    }

    /// The exit summary maps to the counts, the peak and the reason, under its own names.
    #[test]
    fn summary_fields() {
        let r = Summary {
            backend: "/run/app.sock".into(),
            connections: 7,
            bytes_to_backend: 100,
            bytes_to_client: 2000,
            peak_connections: 3,
            exit_reason: "idle".into(),
        };
        let want = owned([
            ("BACKEND", "/run/app.sock".to_string()),
            ("CONNECTIONS", "7".to_string()),
            ("BYTES_TO_BACKEND", "100".to_string()),
            ("BYTES_TO_CLIENT", "2000".to_string()),
            ("PEAK_CONNECTIONS", "3".to_string()),
            ("EXIT_REASON", "idle".to_string()),
        ]);
        assert_eq!(owned(r.fields()), want);
        assert_eq!(written(|| r.log()), want);
    }

    /// A duration too long for 64 bits of microseconds saturates instead of wrapping.
    #[test]
    fn usec_saturates() {
        assert_eq!(usec(Duration::from_micros(7)), 7);
        assert_eq!(usec(Duration::MAX), u64::MAX);
    }
}
