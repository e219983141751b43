//! The datagram relay (`ListenDatagram=`): one session per client of each datagram socket,
//! each with its own connected backend socket; replies go back through the listening socket
//! from the address the client wrote to; a cold start keeps refused datagrams and sends them
//! again until the backend takes them.
//!
//! A session is in one of three modes. `Fresh`: its datagrams are sent at once and a copy is
//! kept until [`DATAGRAM_REFUSAL_GRACE`] passes without an ICMP error (or a reply comes), so a
//! refused one can be sent again. `Up`: the backend has taken one; datagrams are sent with no
//! copy. `Cold`: the backend refused; datagrams are kept, and one session at a time sends its
//! oldest again on the shared probe schedule (so the kernel's ICMP rate limit is never
//! reached) until the backend takes it, when every cold session sends what it kept.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;
use tokio::sync::{watch, Notify};
use tokio_util::task::TaskTracker;

use crate::cli::Config;
use crate::lifecycle::{Activity, Busy, Outcome, Stop};
use crate::limits::{
    probe_delay, DATAGRAM_BUFFER, DATAGRAM_HELD_BYTES, DATAGRAM_HELD_PER_SESSION,
    DATAGRAM_PROBE_MIN_DELAY, DATAGRAM_RECV_BATCH, DATAGRAM_REFUSAL_GRACE, DATAGRAM_REPLY_GRACE,
    DATAGRAM_WARN_BURST, PROBE_RESOLVE_EVERY,
};
use crate::records::{CloseReason, ConnectionEnded};
use crate::target::Target;

thread_local! {
    /// Buffer for replies from backend sockets: one per worker thread.
    static REPLY_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; DATAGRAM_BUFFER]);
}

/// The running datagram relay, for the server: its sockets, its counts and its drain.
pub struct Datagrams {
    relay: Arc<Relay>,
    sockets: Vec<Arc<AsyncFd<OwnedFd>>>,
}

/// A datagram socket passed in: the fd and the number it arrived as.
pub struct Passed {
    pub fd: OwnedFd,
    pub number: RawFd,
}

/// Starts one receive loop per datagram socket. Receive loops stop reading as soon as the
/// stop is requested: a datagram not read stays in the socket systemd holds.
pub async fn start(
    config: &Config,
    sockets: Vec<Passed>,
    stop: Stop,
    activity: Activity,
) -> anyhow::Result<Datagrams> {
    let (period, _) = watch::channel(0);
    let relay = Arc::new(Relay {
        target: config.target.clone(),
        unix: !matches!(config.target, Target::Inet { .. }),
        connect_timeout: config.connect_timeout,
        session_timeout: config.session_timeout,
        follow: config.follow_backend,
        max_sessions: config.connections_max,
        stop,
        activity,
        tracker: TaskTracker::new(),
        sessions: AtomicUsize::new(0),
        served: AtomicU64::new(0),
        ended_to_backend: AtomicU64::new(0),
        ended_to_client: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        held_bytes: AtomicUsize::new(0),
        held_count: AtomicUsize::new(0),
        resolved: Mutex::new(Resolved::default()),
        good_addr: AtomicUsize::new(0),
        cold: Mutex::new(Cold::default()),
        period,
        probe: tokio::sync::Mutex::new(()),
        seen_up: AtomicBool::new(false),
        held_drops: Mutex::new(Burst::default()),
        over_limit: Mutex::new(Burst::default()),
        truncated: Mutex::new(Burst::default()),
        lost: Mutex::new(Burst::default()),
    });
    if sockets.is_empty() {
        return Ok(Datagrams {
            relay,
            sockets: Vec::new(),
        });
    }
    relay.resolve().await;
    let mut fds = Vec::new();
    for Passed { fd, number } in sockets {
        let unix = SockRef::from(&fd)
            .domain()
            .map_err(|e| anyhow::anyhow!("cannot set up datagram fd {number}: {e}"))?
            == Domain::UNIX;
        let local = enable_pktinfo(&fd)
            .map_err(|e| anyhow::anyhow!("cannot set up datagram fd {number}: {e}"))?;
        let fd = Arc::new(
            register(fd, Interest::READABLE)
                .map_err(|e| anyhow::anyhow!("cannot watch datagram fd {number}: {e}"))?,
        );
        fds.push(fd.clone());
        let listener = Arc::new(Listener {
            fd,
            number,
            pktinfo: local,
            sessions: Mutex::new(HashMap::new()),
            unix,
        });
        relay.tracker.spawn(receive_loop(relay.clone(), listener));
    }
    Ok(Datagrams {
        relay,
        sockets: fds,
    })
}

impl Datagrams {
    /// The datagram sockets, for the idle timer (a datagram waiting keeps rsproxyd up).
    pub fn sockets(&self) -> &[Arc<AsyncFd<OwnedFd>>] {
        &self.sockets
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.relay.sessions.load(Ordering::Relaxed)
    }

    /// For STATUS=: sessions open and served, when there are datagram sockets.
    pub fn status(&self) -> Option<String> {
        (!self.sockets.is_empty()).then(|| {
            format!(
                "{} UDP session(s), {} served",
                self.sessions(),
                self.relay.served.load(Ordering::Relaxed)
            )
        })
    }

    /// For the exit summary: sessions served, and the bytes the ended ones relayed each way.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.relay.served.load(Ordering::Relaxed),
            self.relay.ended_to_backend.load(Ordering::Relaxed),
            self.relay.ended_to_client.load(Ordering::Relaxed),
        )
    }

    /// Waits until every receive loop and session has ended (after the stop: once no
    /// datagram has gone either way for [`DATAGRAM_REPLY_GRACE`], or at the cut).
    pub async fn wait(&self) {
        self.relay.tracker.close();
        self.relay.tracker.wait().await
    }

    /// True when no receive loop or session runs.
    pub fn is_idle(&self) -> bool {
        self.relay.tracker.is_empty()
    }
}

/// The local address a client wrote to, to send its replies from (IP_PKTINFO /
/// IPV6_PKTINFO); only read when the socket is bound to a wildcard address.
#[derive(Clone, Copy)]
enum Local {
    None,
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

/// Which control message a datagram socket delivers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pktinfo {
    None,
    V4,
    V6,
}

/// Asks for the destination address of each datagram when the socket is bound to a wildcard
/// address, so that replies leave from the address the client wrote to.
fn enable_pktinfo(fd: &OwnedFd) -> io::Result<Pktinfo> {
    let local = SockRef::from(fd).local_addr()?;
    let Some(addr) = local.as_socket() else {
        return Ok(Pktinfo::None);
    };
    if !addr.ip().is_unspecified() {
        return Ok(Pktinfo::None);
    }
    match addr {
        SocketAddr::V4(_) => {
            setsockopt(fd, sockopt::Ipv4PacketInfo, &true)?;
            Ok(Pktinfo::V4)
        }
        // Also reports IPv4 datagrams on a dual-stack socket, as v4-mapped addresses.
        SocketAddr::V6(_) => {
            setsockopt(fd, sockopt::Ipv6RecvPacketInfo, &true)?;
            Ok(Pktinfo::V6)
        }
    }
}

/// Counts events of one kind; the first of a burst is to be warned about.
#[derive(Default)]
struct Burst {
    last: Option<Instant>,
    /// Events since the last warning.
    count: u64,
}

impl Burst {
    /// Counts one event. Returns `Some(n)` when it starts a burst (warn now), `n` being how
    /// many the previous burst had.
    fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        let new = self
            .last
            .map_or(true, |t| now.duration_since(t) >= DATAGRAM_WARN_BURST);
        self.last = Some(now);
        if new {
            Some(std::mem::replace(&mut self.count, 1))
        } else {
            self.count += 1;
            None
        }
    }
}

/// " (N in the previous burst)" when there was one.
fn previous(n: u64) -> String {
    if n > 1 {
        format!("; {n} in the previous burst")
    } else {
        String::new()
    }
}

/// Addresses of TARGET, resolved at start and again while probing.
#[derive(Default)]
struct Resolved {
    addrs: Vec<SockAddr>,
    at: Option<Instant>,
    error: Option<String>,
}

/// The backend's cold period, shared by all sessions.
#[derive(Default)]
struct Cold {
    /// When the first refusal of this period came; `None`: not cold.
    since: Option<Instant>,
    last_error: String,
    /// How the last period ended: the backend took a datagram (true) or time ran out.
    ended_up: bool,
    /// Datagrams dropped over the bounds in this period.
    dropped: u64,
    /// When the last period ended with the backend up.
    up_since: Option<Instant>,
}

/// What every receive loop and session shares.
struct Relay {
    target: Target,
    /// A unix TARGET: errors come back from send() itself, with no grace needed.
    unix: bool,
    connect_timeout: Option<Duration>,
    session_timeout: Option<Duration>,
    follow: bool,
    max_sessions: usize,
    stop: Stop,
    activity: Activity,
    tracker: TaskTracker,
    sessions: AtomicUsize,
    served: AtomicU64,
    /// Bytes relayed each way by the sessions that ended, for the exit summary.
    ended_to_backend: AtomicU64,
    ended_to_client: AtomicU64,
    dropped: AtomicU64,
    held_bytes: AtomicUsize,
    held_count: AtomicUsize,
    resolved: Mutex<Resolved>,
    /// The index of the address that last took a datagram.
    good_addr: AtomicUsize,
    cold: Mutex<Cold>,
    /// Counts cold periods that ended; cold sessions wait for it to change.
    period: watch::Sender<u64>,
    /// Held by the one session that probes the cold backend.
    probe: tokio::sync::Mutex<()>,
    seen_up: AtomicBool,
    held_drops: Mutex<Burst>,
    over_limit: Mutex<Burst>,
    truncated: Mutex<Burst>,
    lost: Mutex<Burst>,
}

/// One datagram socket systemd passed.
struct Listener {
    fd: Arc<AsyncFd<OwnedFd>>,
    number: RawFd,
    pktinfo: Pktinfo,
    sessions: Mutex<HashMap<Client, Arc<Session>>>,
    /// A unix datagram socket.
    unix: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Fresh,
    Up,
    Cold,
}

/// A datagram kept for the backend; `sent` when it went out and may still be refused.
struct Held {
    data: Vec<u8>,
    sent: Option<Instant>,
}

/// Bytes and datagrams each way, for the session's end record.
#[derive(Clone, Copy, Default)]
struct Stats {
    to_backend_bytes: u64,
    to_backend: u64,
    to_client_bytes: u64,
    to_client: u64,
}

struct State {
    mode: Mode,
    held: VecDeque<Held>,
    local: Local,
    /// Index into the resolved addresses the backend socket is connected to.
    addr: usize,
    /// The last datagram either way.
    last: Instant,
    stats: Stats,
    /// An error a send saw, for the session's task to act on.
    refused: Option<io::Error>,
    /// Removed from the listener's table: no datagram is forwarded through it any more.
    closed: bool,
    /// Keeps the daemon from idling while datagrams are held.
    busy: Option<Busy>,
}

/// One client of one datagram socket.
struct Session {
    client: Client,
    /// The client's address, for messages.
    name: String,
    listener: Arc<Listener>,
    backend: AsyncFd<OwnedFd>,
    /// The family of the backend socket (IPv4 addresses are v4-mapped on an IPv6 one).
    domain: Domain,
    state: Mutex<State>,
    wake: Notify,
    started: Instant,
}

/// Where a datagram came from: the key of its session, and where replies go.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Client {
    Inet(SocketAddr),
    /// A unix datagram client (read with socket2: nix mishandles the length of a unix
    /// address received by recvmsg into a SockaddrStorage).
    Unix(SockAddr),
}

/// A client's address as text, for messages.
fn describe(c: &Client) -> String {
    match c {
        Client::Inet(a) => a.to_string(),
        Client::Unix(a) => {
            if let Some(p) = a.as_pathname() {
                p.display().to_string()
            } else if let Some(n) = a.as_abstract_namespace() {
                format!("@{}", String::from_utf8_lossy(n))
            } else {
                "unnamed unix client".into()
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors that mean nothing takes datagrams at the backend's address (yet).
fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ENOENT
                | libc::ENOTCONN
                | libc::EDESTADDRREQ
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
        )
    )
}

/// What came of reading a backend socket.
enum Replies {
    Nothing,
    Replied,
    Refused(io::Error),
}

/// What a session's cold handling led to.
enum Next {
    Continue,
    End(&'static str),
}

impl Relay {
    /// Resolves TARGET (names with the system resolver) and keeps the addresses.
    async fn resolve(&self) {
        let r = self.target.resolve().await;
        let mut res = lock(&self.resolved);
        res.at = Some(Instant::now());
        match r {
            Ok(a) => {
                res.addrs = a;
                res.error = None;
            }
            Err(e) => res.error = Some(e.to_string()),
        }
    }

    fn addrs(&self) -> io::Result<Vec<SockAddr>> {
        let res = lock(&self.resolved);
        if res.addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                res.error
                    .clone()
                    .unwrap_or_else(|| "no address to send to".into()),
            ));
        }
        Ok(res.addrs.clone())
    }

    /// Connects `s`'s backend socket to address `index` of TARGET.
    fn connect(&self, s: &Session, index: usize) -> io::Result<()> {
        let addrs = self.addrs()?;
        let addr = &addrs[index % addrs.len()];
        let addr = match (s.domain, addr.as_socket()) {
            (Domain::IPV6, Some(SocketAddr::V4(v4))) => SockAddr::from(SocketAddr::new(
                IpAddr::V6(v4.ip().to_ipv6_mapped()),
                v4.port(),
            )),
            (Domain::IPV4, Some(SocketAddr::V6(_))) => {
                return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
            }
            _ => addr.clone(),
        };
        SockRef::from(s.backend.get_ref()).connect(&addr)
    }

    fn address_count(&self) -> usize {
        lock(&self.resolved).addrs.len().max(1)
    }

    /// The receive loop's part: a datagram from `from` on `l`.
    fn incoming(self: &Arc<Self>, l: &Arc<Listener>, from: Client, local: Local, data: &[u8]) {
        self.activity.datagram();
        let mut map = lock(&l.sessions);
        let s = match map.get(&from) {
            Some(s) => s.clone(),
            None => {
                if self.sessions.load(Ordering::Relaxed) >= self.max_sessions {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(n) = lock(&self.over_limit).hit() {
                        tracing::warn!(
                            "dropped a datagram from new client {} on fd {}: {} sessions open, the most --connections-max allows{}",
                            describe(&from),
                            l.number,
                            self.max_sessions,
                            previous(n)
                        );
                    }
                    return;
                }
                match self.new_session(l, from.clone()) {
                    Ok(s) => {
                        map.insert(from, s.clone());
                        s
                    }
                    Err(e) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        if let Some(n) = lock(&self.lost).hit() {
                            tracing::warn!(
                                "dropped a datagram from {}: cannot open a socket to {}: {e}{}",
                                describe(&from),
                                self.target,
                                previous(n)
                            );
                        }
                        return;
                    }
                }
            }
        };
        let mut st = lock(&s.state);
        if !matches!(local, Local::None) {
            st.local = local;
        }
        self.forward(&s, &mut st, data);
    }

    fn new_session(
        self: &Arc<Self>,
        l: &Arc<Listener>,
        client: Client,
    ) -> io::Result<Arc<Session>> {
        let domain = if self.unix {
            Domain::UNIX
        } else if lock(&self.resolved).addrs.iter().any(|a| a.is_ipv6()) {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let sock = Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), None)?;
        if domain == Domain::IPV6 {
            sock.set_only_v6(false)?;
        }
        if domain == Domain::UNIX {
            // Autobind to an abstract address, so that the backend can reply.
            nix::sys::socket::bind(sock.as_raw_fd(), &nix::sys::socket::UnixAddr::new_unnamed())?;
        }
        let backend = register(OwnedFd::from(sock), Interest::READABLE | Interest::ERROR)?;
        let cold = lock(&self.cold).since.is_some();
        let addr = self.good_addr.load(Ordering::Relaxed);
        let s = Arc::new(Session {
            name: describe(&client),
            client,
            listener: l.clone(),
            backend,
            domain,
            state: Mutex::new(State {
                mode: if self.unix { Mode::Up } else { Mode::Fresh },
                held: VecDeque::new(),
                local: Local::None,
                addr,
                last: Instant::now(),
                stats: Stats::default(),
                refused: None,
                closed: false,
                busy: None,
            }),
            wake: Notify::new(),
            started: Instant::now(),
        });
        if cold {
            // Join the cold period: send nothing until the probe says the backend is up
            // (connected already where that can succeed, as UDP's connect does).
            lock(&s.state).mode = Mode::Cold;
            let _ = self.connect(&s, addr);
        } else if let Err(e) = self.connect(&s, addr) {
            let mut st = lock(&s.state);
            st.mode = Mode::Cold;
            st.refused = Some(e);
        }
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client = %s.name, backend = %self.target, fd = l.number, "session start");
        self.tracker.spawn(run_session(self.clone(), s.clone()));
        Ok(s)
    }

    /// Sends a client's datagram on to the backend, or keeps it while the backend is cold.
    fn forward(&self, s: &Session, st: &mut State, data: &[u8]) {
        st.last = Instant::now();
        st.stats.to_backend += 1;
        st.stats.to_backend_bytes += data.len() as u64;
        if st.mode == Mode::Cold {
            self.hold(st, data, None);
            return;
        }
        match send(&s.backend, data) {
            Ok(()) if st.mode == Mode::Fresh => {
                let arm = st.held.is_empty();
                self.hold(st, data, Some(Instant::now()));
                if arm {
                    s.wake.notify_one();
                }
            }
            Ok(()) => {}
            Err(e) if is_refusal(&e) => {
                // A refusal of an earlier datagram (the ICMP error of the last send): this
                // one was not sent either.
                self.hold(st, data, None);
                st.refused = Some(e);
                s.wake.notify_one();
            }
            Err(e) => self.lose(&e, &s.name),
        }
    }

    /// A datagram that could not be sent (the socket's buffer is full): counted, warned
    /// about once per burst.
    fn lose(&self, e: &io::Error, client: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = lock(&self.lost).hit() {
            tracing::warn!(
                "dropped a datagram from {client} to {}: {e}{}",
                self.target,
                previous(n)
            );
        }
    }

    /// Keeps a datagram, within the bounds: beyond them the oldest is dropped.
    fn hold(&self, st: &mut State, data: &[u8], sent: Option<Instant>) {
        let mut over = 0u64;
        if st.held.len() >= DATAGRAM_HELD_PER_SESSION {
            self.release(st, 1);
            over += 1;
        }
        while self.held_bytes.load(Ordering::Relaxed) + data.len() > DATAGRAM_HELD_BYTES {
            if st.held.is_empty() {
                self.held_dropped(1);
                return;
            }
            self.release(st, 1);
            over += 1;
        }
        if over > 0 {
            self.held_dropped(over);
        }
        self.held_bytes.fetch_add(data.len(), Ordering::Relaxed);
        self.held_count.fetch_add(1, Ordering::Relaxed);
        st.held.push_back(Held {
            data: data.to_vec(),
            sent,
        });
        if st.busy.is_none() {
            st.busy = Some(Busy::new(&self.activity));
        }
    }

    fn held_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        lock(&self.cold).dropped += n;
        if let Some(prev) = lock(&self.held_drops).hit() {
            tracing::warn!(
                "backend {} is cold and more datagrams wait for it than kept ({DATAGRAM_HELD_PER_SESSION} per client, {} MiB in all): dropping the oldest{}",
                self.target,
                DATAGRAM_HELD_BYTES / (1024 * 1024),
                previous(prev)
            );
        }
    }

    /// Forgets the held datagrams that were sent (the backend took them).
    fn release_sent(&self, st: &mut State) {
        let before = st.held.len();
        let mut bytes = 0;
        st.held.retain(|h| {
            if h.sent.is_some() {
                bytes += h.data.len();
            }
            h.sent.is_none()
        });
        self.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.held_count
            .fetch_sub(before - st.held.len(), Ordering::Relaxed);
        if st.held.is_empty() {
            st.busy = None;
        }
    }

    /// Forgets the `n` oldest held datagrams (delivered or dropped).
    fn release(&self, st: &mut State, n: usize) {
        for _ in 0..n {
            let Some(h) = st.held.pop_front() else { break };
            self.held_bytes.fetch_sub(h.data.len(), Ordering::Relaxed);
            self.held_count.fetch_sub(1, Ordering::Relaxed);
        }
        if st.held.is_empty() {
            st.busy = None;
        }
    }

    /// Reads the replies waiting on `s`'s backend socket and sends them to the client.
    fn replies(&self, s: &Session, guard: &mut AsyncFdReadyGuard<'_, OwnedFd>) -> Replies {
        let mut got = Replies::Nothing;
        REPLY_BUFFER.with_borrow_mut(|buf| loop {
            let r = nix::sys::socket::recv(
                s.backend.get_ref().as_raw_fd(),
                buf,
                MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from);
            match r {
                Ok(n) if n > buf.len() => self.truncated(n, &s.name, "the backend"),
                Ok(n) => {
                    let data = &buf[..n];
                    self.activity.datagram();
                    let mut st = lock(&s.state);
                    st.last = Instant::now();
                    st.stats.to_client += 1;
                    st.stats.to_client_bytes += n as u64;
                    if st.mode == Mode::Fresh {
                        // The backend answered: everything sent so far was taken.
                        self.release_sent(&mut st);
                        st.mode = Mode::Up;
                        self.seen_up.store(true, Ordering::Relaxed);
                    }
                    let local = st.local;
                    drop(st);
                    if let Err(e) = send_to_client(&s.listener, &s.client, local, data) {
                        tracing::debug!(client = %s.name, "reply not delivered: {e}");
                    }
                    got = Replies::Replied;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return;
                }
                Err(e) if is_refusal(&e) => {
                    guard.clear_ready();
                    got = Replies::Refused(e);
                    return;
                }
                Err(e) => {
                    tracing::debug!(client = %s.name, backend = %self.target, "receive from the backend failed: {e}");
                    guard.clear_ready();
                    return;
                }
            }
        });
        got
    }

    fn truncated(&self, len: usize, from: &str, side: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = lock(&self.truncated).hit() {
            tracing::warn!(
                "dropped a {len}-byte datagram from {side} ({from}): longer than the {DATAGRAM_BUFFER} bytes relayed, and never passed on cut short{}",
                previous(n)
            );
        }
    }

    /// A send or receive on `s`'s backend socket was refused.
    fn refusal(&self, s: &Session, e: io::Error) -> Next {
        let earliest = {
            let mut st = lock(&s.state);
            st.mode = Mode::Cold;
            let earliest = st.held.iter().filter_map(|h| h.sent).min();
            for h in st.held.iter_mut() {
                h.sent = None;
            }
            earliest
        };
        let up_since = lock(&self.cold).up_since;
        if let (Some(sent), Some(up)) = (earliest, up_since) {
            if sent < up {
                // Refused before the backend came up, and noticed only now: send again.
                self.flush(s);
                return Next::Continue;
            }
        }
        if self.follow && self.seen_up.load(Ordering::Relaxed) {
            tracing::info!(
                "backend {} went away ({e}): exiting so that systemd starts it again",
                self.target
            );
            self.stop.request(Outcome::BackendGone);
            return Next::End("backend went away");
        }
        let mut c = lock(&self.cold);
        if c.since.is_none() {
            c.since = Some(Instant::now());
            c.dropped = 0;
            tracing::debug!(backend = %self.target, "backend not taking datagrams yet ({e}): probe sequence started");
        }
        c.last_error = e.to_string();
        Next::Continue
    }

    fn cold_deadline(&self) -> Option<Instant> {
        let since = lock(&self.cold).since?;
        self.connect_timeout.map(|t| since + t)
    }

    /// A cold session: waits for the probe (or runs it), then sends what it kept, or drops
    /// it when `--connect-timeout` runs out.
    async fn cold(&self, s: &Session) -> Next {
        if self.stop.is_requested()
            && matches!(
                self.stop.outcome(),
                Outcome::BackendGone | Outcome::BackendTimedOut
            )
        {
            return Next::End("stopped while the backend was cold");
        }
        let mut period = self.period.subscribe();
        let joined = *period.borrow_and_update();
        if lock(&self.cold).since.is_none() {
            // The period ended between the refusal and now.
            self.after_period(s);
            return Next::Continue;
        }
        let deadline = self.cold_deadline();
        let guard = tokio::select! {
            biased;
            _ = self.stop.cut() => return Next::End("cut by the stop"),
            _ = period.changed() => {
                self.after_period(s);
                return Next::Continue;
            }
            _ = sleep_until(deadline) => {
                self.time_out(s, joined);
                return Next::Continue;
            }
            g = self.probe.lock() => g,
        };
        if *self.period.borrow() != joined {
            drop(guard);
            self.after_period(s);
            return Next::Continue;
        }
        let probed = self.probe_loop(s, deadline).await;
        drop(guard);
        match probed {
            Probed::Up => {
                {
                    let mut c = lock(&self.cold);
                    if let Some(since) = c.since.take() {
                        tracing::debug!(
                            backend = %self.target,
                            waited_ms = since.elapsed().as_millis() as u64,
                            "backend takes datagrams: probe sequence ended"
                        );
                    }
                    c.ended_up = true;
                    c.up_since = Some(Instant::now());
                }
                self.seen_up.store(true, Ordering::Relaxed);
                self.period.send_modify(|p| *p += 1);
                self.flush(s);
                Next::Continue
            }
            Probed::Empty => {
                lock(&s.state).mode = Mode::Fresh;
                Next::Continue
            }
            Probed::TimedOut => {
                self.time_out(s, joined);
                Next::Continue
            }
            Probed::Cut => Next::End("cut by the stop"),
        }
    }

    /// After a cold period ended (by another session's probe or the timeout).
    fn after_period(&self, s: &Session) {
        let up = lock(&self.cold).ended_up;
        if up {
            self.flush(s);
        } else {
            let mut st = lock(&s.state);
            let n = st.held.len();
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
            self.release(&mut st, n);
            st.mode = if self.unix { Mode::Up } else { Mode::Fresh };
        }
    }

    /// `--connect-timeout` ran out: the first session to notice warns for all, and every
    /// cold session drops what it kept.
    fn time_out(&self, s: &Session, joined: u64) {
        {
            let mut c = lock(&self.cold);
            if *self.period.borrow() == joined {
                if let Some(since) = c.since.take() {
                    let dropped = self.held_count.load(Ordering::Relaxed) as u64 + c.dropped;
                    let then = if self.follow {
                        "; exiting (--follow-backend) so the next datagram starts the backend again"
                    } else {
                        ""
                    };
                    tracing::warn!(
                        "Failed to relay datagrams to remote host {}: {} (waited {:.1}s); dropped {dropped} datagram(s){then}",
                        self.target,
                        c.last_error,
                        since.elapsed().as_secs_f64()
                    );
                    c.ended_up = false;
                    self.period.send_modify(|p| *p += 1);
                    if self.follow {
                        self.stop.request(Outcome::BackendTimedOut);
                    }
                }
            }
        }
        let mut st = lock(&s.state);
        let n = st.held.len();
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        self.release(&mut st, n);
        st.mode = if self.unix { Mode::Up } else { Mode::Fresh };
    }

    /// Sends the oldest held datagram again on the probe schedule until the backend takes it.
    async fn probe_loop(&self, s: &Session, deadline: Option<Instant>) -> Probed {
        let cold_since = lock(&self.cold).since.unwrap_or_else(Instant::now);
        let mut tried_this_round = 0usize;
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Probed::TimedOut;
            }
            let needs = {
                let r = lock(&self.resolved);
                r.addrs.is_empty()
                    || (self.target.needs_resolving()
                        && r.at.map_or(true, |t| t.elapsed() >= PROBE_RESOLVE_EVERY))
            };
            if needs {
                self.resolve().await;
            }
            let (data, index) = {
                let st = lock(&s.state);
                match st.held.front() {
                    Some(h) => (h.data.clone(), st.addr),
                    None => return Probed::Empty,
                }
            };
            let _ = SockRef::from(s.backend.get_ref()).take_error();
            let sent = self
                .connect(s, index)
                .and_then(|()| send(&s.backend, &data));
            let refused = match sent {
                Ok(()) if self.unix => Some(Ok(())),
                Ok(()) => self.verdict(s).await,
                Err(e) => Some(Err(e)),
            };
            match refused {
                None => return Probed::Cut,
                Some(Ok(())) => {
                    let mut st = lock(&s.state);
                    self.release(&mut st, 1);
                    self.good_addr.store(st.addr, Ordering::Relaxed);
                    return Probed::Up;
                }
                Some(Err(e)) => {
                    lock(&self.cold).last_error = e.to_string();
                    // The next address at once; after a whole round, the probe's pause.
                    tried_this_round += 1;
                    lock(&s.state).addr = index + 1;
                    if tried_this_round < self.address_count() {
                        continue;
                    }
                    tried_this_round = 0;
                    let mut pause = probe_delay(cold_since.elapsed()).max(DATAGRAM_PROBE_MIN_DELAY);
                    if let Some(d) = deadline {
                        pause = pause.min(d.saturating_duration_since(Instant::now()));
                    }
                    tokio::select! {
                        _ = self.stop.cut() => return Probed::Cut,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// After a probe datagram went out: `Ok` when a reply comes or no error within the
    /// grace, the error when refused; `None` when cut.
    async fn verdict(&self, s: &Session) -> Option<io::Result<()>> {
        let until = tokio::time::Instant::now() + DATAGRAM_REFUSAL_GRACE;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cut() => return None,
                g = s.backend.ready(Interest::READABLE | Interest::ERROR) => {
                    let mut g = match g {
                        Ok(g) => g,
                        Err(e) => return Some(Err(e)),
                    };
                    match self.replies(s, &mut g) {
                        Replies::Nothing => {}
                        Replies::Replied => return Some(Ok(())),
                        Replies::Refused(e) => return Some(Err(e)),
                    }
                }
                _ = tokio::time::sleep_until(until) => return Some(Ok(())),
            }
        }
    }

    /// The backend is up again: sends what `s` kept, connected to the address that worked.
    fn flush(&self, s: &Session) {
        let good = self.good_addr.load(Ordering::Relaxed);
        // An error still pending is the refusal of a datagram sent while the backend was
        // cold, which is being sent again now.
        let _ = SockRef::from(s.backend.get_ref()).take_error();
        let mut st = lock(&s.state);
        st.mode = if self.unix { Mode::Up } else { Mode::Fresh };
        if st.addr % self.address_count() != good % self.address_count() || self.unix {
            st.addr = good;
            if let Err(e) = self.connect(s, good) {
                st.refused = Some(e);
                return;
            }
        }
        let now = Instant::now();
        let mut delivered = 0;
        for i in 0..st.held.len() {
            if st.held[i].sent.is_some() {
                continue;
            }
            match send(&s.backend, &st.held[i].data) {
                Ok(()) => {
                    st.held[i].sent = Some(now);
                    delivered += 1;
                }
                Err(e) if is_refusal(&e) => {
                    st.refused = Some(e);
                    break;
                }
                Err(e) => {
                    st.held[i].sent = Some(now);
                    self.lose(&e, &s.name);
                }
            }
        }
        if self.unix && st.refused.is_none() {
            // A unix send that succeeded was delivered.
            self.release(&mut st, delivered);
        }
    }

    /// Counts datagrams kept past the grace with no error as delivered.
    fn expire_held(&self, s: &Session) {
        let mut st = lock(&s.state);
        if st.mode != Mode::Fresh {
            return;
        }
        let now = Instant::now();
        let passed = st
            .held
            .front()
            .and_then(|h| h.sent)
            .is_some_and(|t| now >= t + DATAGRAM_REFUSAL_GRACE);
        if passed {
            // The backend takes this client's datagrams: stop keeping copies, even of the
            // ones still within the grace (a steady stream would otherwise never get there).
            self.release_sent(&mut st);
            self.seen_up.store(true, Ordering::Relaxed);
        }
        if st.held.is_empty() {
            st.mode = Mode::Up;
        }
    }

    /// Ends `s` if it has been quiet for `--session-timeout`, removing it from its
    /// listener's table first so that no datagram is forwarded through it after.
    fn timed_out(&self, s: &Session) -> bool {
        let Some(limit) = self.session_timeout else {
            return false;
        };
        let mut map = lock(&s.listener.sessions);
        let mut st = lock(&s.state);
        if st.last.elapsed() < limit || !st.held.is_empty() {
            return false;
        }
        st.closed = true;
        if map.get(&s.client).is_some_and(|c| std::ptr::eq(&**c, s)) {
            map.remove(&s.client);
        }
        true
    }
}

enum Probed {
    Up,
    Empty,
    TimedOut,
    Cut,
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Registers a socket with the event loop for `interest`.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for as long as it lives and always returns the same fd
    // number; the AsyncFd owns it until it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// Sends one datagram on a connected socket, without waiting.
fn send(fd: &AsyncFd<OwnedFd>, data: &[u8]) -> io::Result<()> {
    nix::sys::socket::send(fd.get_ref().as_raw_fd(), data, MsgFlags::MSG_DONTWAIT)
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Sends a reply to the client through the listening socket, from the address it wrote to.
fn send_to_client(l: &Listener, to: &Client, local: Local, data: &[u8]) -> io::Result<()> {
    let to = match to {
        Client::Inet(a) => SockaddrStorage::from(*a),
        Client::Unix(a) => {
            return SockRef::from(l.fd.get_ref())
                .send_to_with_flags(data, a, libc::MSG_DONTWAIT)
                .map(|_| ())
        }
    };
    let to = &to;
    let fd = l.fd.get_ref().as_raw_fd();
    let iov = [IoSlice::new(data)];
    let flags = MsgFlags::MSG_DONTWAIT;
    let r = match local {
        Local::None => sendmsg(fd, &iov, &[], flags, Some(to)),
        Local::V4(info) => {
            let p = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: info.ipi_spec_dst,
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            sendmsg(
                fd,
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&p)],
                flags,
                Some(to),
            )
        }
        Local::V6(info) => {
            let addr = std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr);
            let link_local = (addr.segments()[0] & 0xffc0) == 0xfe80;
            let p = libc::in6_pktinfo {
                ipi6_addr: info.ipi6_addr,
                ipi6_ifindex: if link_local { info.ipi6_ifindex } else { 0 },
            };
            sendmsg(
                fd,
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&p)],
                flags,
                Some(to),
            )
        }
    };
    r.map(|_| ()).map_err(io::Error::from)
}

/// One datagram read from a listening socket.
struct Received {
    len: usize,
    from: Option<Client>,
    local: Local,
}

fn receive(
    l: &Listener,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
    pktinfo: Pktinfo,
) -> io::Result<Received> {
    if l.unix {
        // SAFETY: recv_from_with_flags only writes initialised bytes into the buffer, which
        // is initialised already; viewing it as MaybeUninit<u8> loses nothing.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        let (len, from) = SockRef::from(l.fd.get_ref())
            .recv_from_with_flags(uninit, libc::MSG_TRUNC | libc::MSG_DONTWAIT)?;
        return Ok(Received {
            len,
            from: Some(Client::Unix(from)),
            local: Local::None,
        });
    }
    let fd = l.fd.get_ref().as_raw_fd();
    let mut iov = [IoSliceMut::new(buf)];
    let space = (pktinfo != Pktinfo::None).then_some(cmsg);
    let msg = recvmsg::<SockaddrStorage>(
        fd,
        &mut iov,
        space,
        MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut local = Local::None;
    if pktinfo != Pktinfo::None {
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(i) => local = Local::V4(i),
                    ControlMessageOwned::Ipv6PacketInfo(i) => local = Local::V6(i),
                    _ => {}
                }
            }
        }
    }
    let from = msg.address.and_then(|a| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(Client::Inet(SocketAddr::V4((*v4).into())))
        } else {
            a.as_sockaddr_in6()
                .map(|v6| Client::Inet(SocketAddr::V6((*v6).into())))
        }
    });
    Ok(Received {
        len: msg.bytes,
        from,
        local,
    })
}

/// Reads the datagrams of one listening socket and hands each to its client's session.
async fn receive_loop(relay: Arc<Relay>, l: Arc<Listener>) {
    let mut buf = vec![0u8; DATAGRAM_BUFFER];
    let mut cmsg = match l.pktinfo {
        Pktinfo::None => Vec::new(),
        Pktinfo::V4 | Pktinfo::V6 => nix::cmsg_space!(libc::in6_pktinfo, libc::in_pktinfo),
    };
    let stop = relay.stop.clone();
    loop {
        let ready = tokio::select! {
            biased;
            _ = stop.requested() => return,
            g = l.fd.readable() => g,
        };
        let mut guard = match ready {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("cannot wait for datagrams on fd {}: {e}", l.number);
                stop.request(Outcome::Stopped);
                return;
            }
        };
        for _ in 0..DATAGRAM_RECV_BATCH {
            // Never read a datagram that will not be forwarded.
            if stop.is_requested() {
                return;
            }
            match guard.try_io(|_| receive(&l, &mut buf, &mut cmsg, l.pktinfo)) {
                Ok(Ok(r)) => {
                    let Some(from) = r.from else { continue };
                    if r.len > buf.len() {
                        relay.truncated(r.len, &describe(&from), "a client");
                        continue;
                    }
                    relay.incoming(&l, from, r.local, &buf[..r.len]);
                }
                Ok(Err(e)) => {
                    tracing::debug!("receive on datagram fd {} failed: {e}", l.number);
                }
                Err(_would_block) => break,
            }
        }
        tokio::task::yield_now().await;
    }
}

/// One session's task: relays the backend's replies, keeps the cold start going, and ends
/// the session after `--session-timeout` of quiet or, after the stop, once drained.
async fn run_session(relay: Arc<Relay>, s: Arc<Session>) {
    let why = session_loop(&relay, &s).await;
    {
        let mut map = lock(&s.listener.sessions);
        if map.get(&s.client).is_some_and(|c| Arc::ptr_eq(c, &s)) {
            map.remove(&s.client);
        }
    }
    let (stats, dropped) = {
        let mut st = lock(&s.state);
        st.closed = true;
        let n = st.held.len();
        relay.release(&mut st, n);
        (st.stats, n)
    };
    if dropped > 0 {
        relay.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
    }
    relay.sessions.fetch_sub(1, Ordering::Relaxed);
    relay
        .ended_to_backend
        .fetch_add(stats.to_backend_bytes, Ordering::Relaxed);
    relay
        .ended_to_client
        .fetch_add(stats.to_client_bytes, Ordering::Relaxed);
    if tracing::enabled!(tracing::Level::DEBUG) {
        // The same record, with the same journal fields, as a TCP connection's end.
        ConnectionEnded {
            client: s.name.clone(),
            backend: relay.target.to_string(),
            bytes_to_backend: stats.to_backend_bytes,
            bytes_to_client: stats.to_client_bytes,
            duration: s.started.elapsed(),
            close: session_close_reason(why),
        }
        .log();
        tracing::debug!(
            client = %s.name,
            backend = %relay.target,
            to_backend_bytes = stats.to_backend_bytes,
            to_backend_datagrams = stats.to_backend,
            to_client_bytes = stats.to_client_bytes,
            to_client_datagrams = stats.to_client,
            duration_ms = s.started.elapsed().as_millis() as u64,
            dropped,
            "session end: {why}"
        );
    }
}

/// The `CLOSE=` value of a session that ended for `why` (a reason from [`session_loop`] or
/// [`Relay::refusal`]).
fn session_close_reason(why: &str) -> CloseReason {
    match why {
        "session timeout" => CloseReason::IdleTimeout,
        "drained" => CloseReason::Eof,
        "cut by the stop" => CloseReason::DrainCut,
        _ => CloseReason::Error,
    }
}

async fn session_loop(relay: &Relay, s: &Session) -> &'static str {
    let mut stopping = false;
    loop {
        let refused = lock(&s.state).refused.take();
        if let Some(e) = refused {
            if let Next::End(why) = relay.refusal(s, e) {
                return why;
            }
        }
        if lock(&s.state).mode == Mode::Cold {
            match relay.cold(s).await {
                Next::End(why) => return why,
                Next::Continue => continue,
            }
        }
        let (grace_at, last) = {
            let st = lock(&s.state);
            let grace = st
                .held
                .front()
                .and_then(|h| h.sent)
                .map(|t| t + DATAGRAM_REFUSAL_GRACE);
            (grace, st.last)
        };
        let mut wake_at = grace_at;
        if let Some(t) = relay.session_timeout {
            wake_at = Some(wake_at.map_or(last + t, |w| w.min(last + t)));
        }
        if stopping {
            let end = last + DATAGRAM_REPLY_GRACE;
            wake_at = Some(wake_at.map_or(end, |w| w.min(end)));
        }
        tokio::select! {
            biased;
            _ = relay.stop.cut() => return "cut by the stop",
            _ = relay.stop.requested(), if !stopping => stopping = true,
            g = s.backend.ready(Interest::READABLE | Interest::ERROR) => {
                match g {
                    Ok(mut g) => {
                        if let Replies::Refused(e) = relay.replies(s, &mut g) {
                            lock(&s.state).refused = Some(e);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(client = %s.name, "backend socket failed: {e}");
                        return "backend socket failed";
                    }
                }
            }
            _ = s.wake.notified() => {}
            _ = sleep_until(wake_at) => {
                relay.expire_held(s);
                if relay.timed_out(s) {
                    return "session timeout";
                }
                let st = lock(&s.state);
                if stopping && st.held.is_empty() && st.last.elapsed() >= DATAGRAM_REPLY_GRACE {
                    return "drained";
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first drop of a burst is warned about with the previous burst's count; the rest
    /// of the burst only counted.
    #[test]
    fn burst_warns_once() {
        let mut b = Burst::default();
        assert_eq!(b.hit(), Some(0));
        assert_eq!(b.hit(), None);
        assert_eq!(b.hit(), None);
        b.last = Some(Instant::now() - DATAGRAM_WARN_BURST);
        assert_eq!(b.hit(), Some(3));
    }

    /// Refusal-like errors keep a datagram for the cold start; a full buffer does not.
    #[test]
    fn refusal_errors() {
        for code in [libc::ECONNREFUSED, libc::ENOENT, libc::EHOSTUNREACH] {
            assert!(is_refusal(&io::Error::from_raw_os_error(code)), "{code}");
        }
        for code in [libc::EAGAIN, libc::EMSGSIZE, libc::ENOBUFS] {
            assert!(!is_refusal(&io::Error::from_raw_os_error(code)), "{code}");
        }
    }
}
