//! sd_notify(3): READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 to NOTIFY_SOCKET, when set.
//!
//! This stays rsproxyd's own code rather than libsystemd's `daemon::notify` and
//! `daemon::watchdog_enabled` (0.7), which differ where it matters here (the tests at the
//! end show each difference):
//! - `notify` ends every assignment with a newline (`WATCHDOG=1\n`, not `WATCHDOG=1`);
//! - it reads NOTIFY_SOCKET from the environment at every call, from whichever thread sends,
//!   so the variable would have to stay set, and it opens a new blocking socket per message,
//!   where one non-blocking socket here never stalls the event loop when systemd is slow;
//! - `watchdog_enabled` returns a zero interval for `WATCHDOG_USEC=0` (tokio's timer panics
//!   on a zero period) and rounds the interval down to whole milliseconds.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The notification socket systemd gave us, if any. Silent when there is none.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and removes them from the
    /// environment. Must run before any thread is started.
    pub fn from_env() -> io::Result<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let wpid = std::env::var("WATCHDOG_PID").ok();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        let watchdog = watchdog_interval(usec.as_deref(), wpid.as_deref(), std::process::id());
        let Some(path) = path else {
            return Ok(Self {
                socket: None,
                watchdog: None,
            });
        };
        let addr = notify_addr(path.as_encoded_bytes())?;
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            socket: Some((sock, addr)),
            watchdog,
        })
    }

    /// A notifier for a socket path of the caller's choosing (tests).
    pub fn to_path(path: &std::path::Path, watchdog: Option<Duration>) -> io::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        Ok(Self {
            socket: Some((sock, SocketAddr::from_pathname(path)?)),
            watchdog,
        })
    }

    /// How often WATCHDOG=1 must be sent: half of WATCHDOG_USEC, if systemd asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (newline-separated assignments). Failures are logged, not fatal:
    /// a missing notification must not stop the proxy.
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::debug!("sd_notify {state:?} failed: {e}");
            }
        }
    }
}

/// Turns NOTIFY_SOCKET into an address: a path, or `@name` for the abstract namespace.
fn notify_addr(raw: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match raw {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(raw))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor @abstract",
        )),
    }
}

/// Half of WATCHDOG_USEC when it is set, valid and (if WATCHDOG_PID is set) meant for us.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog runs at half WATCHDOG_USEC, and only for the pid it was meant for.
    #[test]
    fn watchdog_table() {
        let table = [
            (Some("2000000"), None, Some(Duration::from_secs(1))),
            (Some("2000000"), Some("7"), Some(Duration::from_secs(1))),
            (Some("2000000"), Some("8"), None),
            (Some("0"), None, None),
            (Some("x"), None, None),
            (None, Some("7"), None),
        ];
        for (usec, pid, want) in table {
            assert_eq!(watchdog_interval(usec, pid, 7), want, "{usec:?} {pid:?}");
        }
    }

    /// libsystemd's sender ends each assignment with a newline and reads NOTIFY_SOCKET at
    /// every call; ours sends exactly the text given. (Sets NOTIFY_SOCKET in this process;
    /// no other test reads it.)
    #[test]
    fn libsystemd_notify_differs() {
        let dir = std::env::temp_dir().join(format!("rsproxyd-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        std::env::set_var("NOTIFY_SOCKET", &path);
        let sent = libsystemd::daemon::notify(false, &[libsystemd::daemon::NotifyState::Watchdog]);
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(sent.unwrap());
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
        Notifier::to_path(&path, None).unwrap().send("WATCHDOG=1");
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// libsystemd's watchdog reading gives a zero interval for WATCHDOG_USEC=0 and whole
    /// milliseconds; ours gives none for 0, and half the interval to the microsecond.
    /// (Sets WATCHDOG_USEC in this process; no other test reads it.)
    #[test]
    fn libsystemd_watchdog_differs() {
        let ours = std::process::id();
        for (usec, theirs, want) in [
            ("0", Some(Duration::ZERO), None),
            (
                "1500",
                Some(Duration::from_millis(1)),
                Some(Duration::from_micros(750)),
            ),
        ] {
            std::env::set_var("WATCHDOG_USEC", usec);
            std::env::remove_var("WATCHDOG_PID");
            assert_eq!(libsystemd::daemon::watchdog_enabled(true), theirs, "{usec}");
            assert_eq!(watchdog_interval(Some(usec), None, ours), want, "{usec}");
        }
    }

    /// NOTIFY_SOCKET may be a path or an abstract name; anything else is refused.
    #[test]
    fn notify_addresses() {
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(
            notify_addr(b"@abc").unwrap().as_abstract_name(),
            Some(&b"abc"[..])
        );
        assert!(notify_addr(b"/run/systemd/notify")
            .unwrap()
            .as_pathname()
            .is_some());
        assert!(notify_addr(b"relative").is_err());
    }
}
