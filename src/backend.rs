//! Connecting to the backend, and the native cold-start wait: one shared probe per target
//! that retries on a fine schedule until the backend listens or the timeout runs out.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::limits::{probe_delay, PROBE_RESOLVE_EVERY, RESOLVED_KEPT_FOR};
use crate::target::Target;

/// A connected, non-blocking backend socket registered with the event loop.
pub type Conn = AsyncFd<OwnedFd>;

/// Why no backend connection could be had for a client.
#[derive(Debug)]
pub enum ConnectError {
    /// The backend did not accept within `--connect-timeout`.
    TimedOut { last: io::Error, waited: Duration },
    /// `--follow-backend`: the backend refused after it had been up in this activation.
    Gone(io::Error),
    /// No file descriptor for a new socket (EMFILE/ENFILE).
    NoFds(io::Error),
}

/// What STATUS= says about the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Nobody has connected yet.
    Untried,
    Up,
    /// The probe is running; since when.
    Waiting(Instant),
    /// The last attempt failed with this error.
    Down(String),
}

/// The backend of every relayed connection.
#[derive(Debug)]
pub struct Backend {
    target: Target,
    follow: bool,
    /// Held by the one task that runs the cold-start probe; others wait on it.
    probe: tokio::sync::Mutex<()>,
    seen_up: AtomicBool,
    health: Mutex<Health>,
    /// How many cold-start probe sequences ran (one per cold period, not one per client).
    sequences: AtomicU64,
    /// A name target's addresses and when they were resolved: reused for
    /// [`RESOLVED_KEPT_FOR`] while connecting to them works, so getaddrinfo (on a blocking
    /// thread) is not on every connection's path.
    resolved: Mutex<Option<(Instant, Addrs)>>,
    /// An address or socket-path target's one address, made once: nothing to look up per
    /// connection.
    fixed: std::sync::OnceLock<Addrs>,
}

/// Addresses to try in order, shared rather than copied per connection.
type Addrs = std::sync::Arc<[SockAddr]>;

impl Backend {
    pub fn new(target: Target, follow: bool) -> Self {
        Self {
            target,
            follow,
            probe: tokio::sync::Mutex::new(()),
            seen_up: AtomicBool::new(false),
            health: Mutex::new(Health::Untried),
            sequences: AtomicU64::new(0),
            resolved: Mutex::new(None),
            fixed: std::sync::OnceLock::new(),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn health(&self) -> Health {
        self.health.lock().expect("health lock poisoned").clone()
    }

    fn set_health(&self, h: Health) {
        *self.health.lock().expect("health lock poisoned") = h;
    }

    /// Returns a connection to the backend, waiting for it to start listening for at most
    /// `timeout` (`None`: forever; zero: a single attempt).
    pub async fn connect(&self, timeout: Option<Duration>) -> Result<Conn, ConnectError> {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let (mut addrs, kept) = self.addresses().await;
        let mut first = match &addrs {
            Ok(a) => self.attempt(a, deadline).await,
            Err(e) => Err(copy_err(e)),
        };
        if kept && first.is_err() {
            // The addresses kept may be what failed: try once with a fresh answer.
            self.forget_addresses();
            (addrs, _) = self.addresses().await;
            first = match &addrs {
                Ok(a) => self.attempt(a, deadline).await,
                Err(e) => Err(copy_err(e)),
            };
        }
        let last = match first {
            Ok(conn) => return Ok(self.up(conn)),
            Err(e) => e,
        };
        if is_fd_exhaustion(&last) {
            return Err(ConnectError::NoFds(last));
        }
        if self.follow && self.seen_up.load(Ordering::Relaxed) && is_not_listening(&last) {
            self.set_health(Health::Down(last.to_string()));
            return Err(ConnectError::Gone(last));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            self.set_health(Health::Down(last.to_string()));
            return Err(ConnectError::TimedOut {
                last,
                waited: start.elapsed(),
            });
        }
        // Cold: one task probes, the others wait for it and then try once themselves.
        let guard = match deadline {
            None => self.probe.lock().await,
            Some(d) => match tokio::time::timeout_at(d.into(), self.probe.lock()).await {
                Ok(g) => g,
                Err(_) => {
                    return Err(ConnectError::TimedOut {
                        last,
                        waited: start.elapsed(),
                    })
                }
            },
        };
        if let Ok(a) = &addrs {
            if let Ok(conn) = self.attempt(a, deadline).await {
                return Ok(self.up(conn));
            }
        }
        let sequence = self.sequences.fetch_add(1, Ordering::Relaxed) + 1;
        let cold_since = Instant::now();
        self.set_health(Health::Waiting(cold_since));
        tracing::debug!(
            backend = %self.target,
            sequence,
            "backend not listening yet ({last}): probe sequence started"
        );
        let mut last = last;
        let mut attempts: u64 = 0;
        let mut resolved_at = Instant::now();
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                drop(guard);
                self.set_health(Health::Down(last.to_string()));
                return Err(ConnectError::TimedOut {
                    last,
                    waited: start.elapsed(),
                });
            }
            let mut pause = probe_delay(now - cold_since);
            if let Some(d) = deadline {
                pause = pause.min(d - now);
            }
            tokio::time::sleep(pause).await;
            if self.target.needs_resolving() && resolved_at.elapsed() >= PROBE_RESOLVE_EVERY {
                self.forget_addresses();
                (addrs, _) = self.addresses().await;
                resolved_at = Instant::now();
            }
            attempts += 1;
            let result = match &addrs {
                Ok(a) => self.attempt(a, deadline).await,
                Err(e) => Err(copy_err(e)),
            };
            match result {
                Ok(conn) => {
                    tracing::debug!(
                        backend = %self.target,
                        sequence,
                        attempts,
                        waited_ms = cold_since.elapsed().as_millis() as u64,
                        "backend is listening: probe sequence ended"
                    );
                    return Ok(self.up(conn));
                }
                Err(e) if is_fd_exhaustion(&e) => return Err(ConnectError::NoFds(e)),
                // An attempt cut short by our own deadline says nothing new about the backend.
                Err(e) if is_deadline(&e) => {}
                Err(e) => last = e,
            }
        }
    }

    /// The target's addresses, and whether they were kept from a name's earlier answer: an
    /// address target's as made once; a name's as resolved at most [`RESOLVED_KEPT_FOR`] ago,
    /// or resolved now.
    async fn addresses(&self) -> (io::Result<Addrs>, bool) {
        if !self.target.needs_resolving() {
            if let Some(addrs) = self.fixed.get() {
                return (Ok(addrs.clone()), false);
            }
            let result = self.target.resolve().await.map(Addrs::from);
            if let Ok(addrs) = &result {
                let _ = self.fixed.set(addrs.clone());
            }
            return (result, false);
        }
        if let Some((at, addrs)) = &*self.resolved.lock().expect("resolved lock poisoned") {
            if at.elapsed() < RESOLVED_KEPT_FOR {
                return (Ok(addrs.clone()), true);
            }
        }
        let result = self.target.resolve().await.map(Addrs::from);
        if let Ok(addrs) = &result {
            *self.resolved.lock().expect("resolved lock poisoned") =
                Some((Instant::now(), addrs.clone()));
        }
        (result, false)
    }

    fn forget_addresses(&self) {
        *self.resolved.lock().expect("resolved lock poisoned") = None;
    }

    fn up(&self, conn: Conn) -> Conn {
        self.seen_up.store(true, Ordering::Relaxed);
        let mut h = self.health.lock().expect("health lock poisoned");
        if *h != Health::Up {
            *h = Health::Up;
        }
        conn
    }

    /// Tries every address once, in order; returns the first connection or the last error.
    async fn attempt(&self, addrs: &[SockAddr], deadline: Option<Instant>) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
        for addr in addrs {
            match connect_one(addr, deadline).await {
                Ok(c) => return Ok(c),
                Err(e) if is_fd_exhaustion(&e) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Opens a non-blocking socket and connects it to `addr`, waiting at most until `deadline`.
async fn connect_one(addr: &SockAddr, deadline: Option<Instant>) -> io::Result<Conn> {
    let domain = addr.domain();
    let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
    if domain == Domain::IPV4 || domain == Domain::IPV6 {
        socket.set_nodelay(true)?;
        // Only a saving: a kernel that refuses it (an emulated one, say) connects as usual.
        let _ = hold_handshake_ack(&socket);
        // A backend on another machine can vanish silently; a local one cannot.
        if crate::keepalive::backend_needs_it(addr) {
            crate::keepalive::set_on_backend(&socket)?;
        }
    }
    match socket.connect(addr) {
        Ok(()) => return crate::relay::register(OwnedFd::from(socket)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // On loopback the handshake has usually completed within connect(2). Asking again says
    // how it went in one call: success once it is done, the failure (the refusal a cold
    // backend gives) if it failed, EALREADY while it is still under way. Only then is the
    // socket registered, so a refused probe costs no event-loop registration.
    match socket.connect(addr) {
        Ok(()) => return crate::relay::register(OwnedFd::from(socket)),
        Err(e) if e.raw_os_error() == Some(libc::EISCONN) => {
            return crate::relay::register(OwnedFd::from(socket))
        }
        Err(e) if e.raw_os_error() == Some(libc::EALREADY) => {}
        Err(e) => return Err(e),
    }
    let conn = crate::relay::register(OwnedFd::from(socket))?;
    let wait = conn.writable();
    let mut guard = match deadline {
        None => wait.await?,
        Some(d) => tokio::time::timeout_at(d.into(), wait)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, DEADLINE))??,
    };
    guard.retain_ready();
    drop(guard);
    match socket2::SockRef::from(conn.get_ref()).take_error()? {
        Some(e) => Err(e),
        None => Ok(conn),
    }
}

/// Keeps back the handshake's last ACK, so that it rides on the first bytes sent to the
/// backend instead of taking a segment of its own (what HAProxy calls a smart connect). It
/// also lets a backend that reads at once find the request with the connection. Linux
/// holds the ACK when TCP_DEFER_ACCEPT is set on a connecting socket; a backend that speaks
/// first gets it from [`crate::relay`] as soon as the client turns out to have sent nothing
/// yet (or from the delayed-ACK timer at worst).
fn hold_handshake_ack(socket: &Socket) -> io::Result<()> {
    crate::relay::set_int_option(
        socket.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        1,
    )
}

/// The text of an attempt that `--connect-timeout` cut short.
const DEADLINE: &str = "connect timeout reached while the connection was being set up";

fn is_deadline(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut && e.raw_os_error().is_none()
}

/// Errors that mean "nothing listens there yet": keep probing.
pub fn is_not_listening(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT)
    )
}

/// Errors that mean the process or system is out of file descriptors.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

fn copy_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl Backend {
    /// How many cold-start probe sequences have run (for tests and STATUS=).
    pub fn probe_sequences(&self) -> u64 {
        self.sequences.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port that refuses connections until `listen` is called on the returned socket.
    fn bound_not_listening() -> (Socket, u16) {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.set_nonblocking(true).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        (s, port)
    }

    /// A backend that starts listening late is reached by every waiting caller, and the
    /// callers share a single probe sequence.
    #[tokio::test]
    async fn shared_probe_for_many_callers() {
        let (sock, port) = bound_not_listening();
        let backend = std::sync::Arc::new(Backend::new(
            format!("127.0.0.1:{port}").parse().unwrap(),
            false,
        ));
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let b = backend.clone();
            waiters.push(tokio::spawn(async move {
                b.connect(Some(Duration::from_secs(10))).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        sock.listen(64).unwrap();
        let listener = tokio::net::TcpListener::from_std(sock.into()).unwrap();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..20 {
                held.push(listener.accept().await.unwrap());
            }
            held
        });
        for w in waiters {
            assert!(w.await.unwrap().is_ok());
        }
        assert_eq!(accept.await.unwrap().len(), 20);
        assert_eq!(backend.probe_sequences(), 1);
        assert_eq!(backend.health(), Health::Up);
    }

    /// With no listener the wait ends at the timeout with the refusal as the last error.
    #[tokio::test]
    async fn timeout_reports_last_error() {
        let (_sock, port) = bound_not_listening();
        let backend = Backend::new(format!("127.0.0.1:{port}").parse().unwrap(), false);
        let t = Instant::now();
        match backend.connect(Some(Duration::from_millis(200))).await {
            Err(ConnectError::TimedOut { last, waited }) => {
                assert_eq!(last.raw_os_error(), Some(libc::ECONNREFUSED));
                assert!(waited >= Duration::from_millis(200), "{waited:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// A name target is resolved once and its addresses reused; addresses kept that no longer
    /// work are dropped for a fresh answer at once, without a cold-start probe.
    #[tokio::test]
    async fn name_target_addresses_kept_and_renewed_on_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = Backend::new(format!("localhost:{port}").parse().unwrap(), false);
        assert!(backend.connect(Some(Duration::from_secs(5))).await.is_ok());
        let kept = backend.resolved.lock().unwrap().clone();
        let (at, addrs) = kept.expect("a name's addresses are kept");
        assert!(addrs
            .iter()
            .any(|a| a.as_socket().is_some_and(|s| s.port() == port)));
        assert!(backend.connect(Some(Duration::from_secs(5))).await.is_ok());
        assert_eq!(backend.resolved.lock().unwrap().as_ref().unwrap().0, at);
        // Kept addresses that refuse (a port nothing listens on): a fresh answer is used.
        let (_cold, dead) = bound_not_listening();
        let stale: SockAddr = std::net::SocketAddr::from(([127, 0, 0, 1], dead)).into();
        *backend.resolved.lock().unwrap() = Some((Instant::now(), vec![stale].into()));
        assert!(backend.connect(Some(Duration::ZERO)).await.is_ok());
        assert_eq!(backend.probe_sequences(), 0);
        let renewed = backend.resolved.lock().unwrap().clone().unwrap().1;
        assert!(renewed
            .iter()
            .any(|a| a.as_socket().is_some_and(|s| s.port() == port)));
    }

    /// A missing unix socket file counts as "not listening yet"; zero timeout tries once.
    #[tokio::test]
    async fn unix_missing_is_cold() {
        let backend = Backend::new("/nonexistent/rsproxyd-test.sock".parse().unwrap(), false);
        match backend.connect(Some(Duration::ZERO)).await {
            Err(ConnectError::TimedOut { last, .. }) => assert!(is_not_listening(&last)),
            other => panic!("{other:?}"),
        }
        assert_eq!(backend.probe_sequences(), 0);
    }
}
