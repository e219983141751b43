//! The accept loops, the connection limit, the idle timer, STATUS= and the drain on stop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{accept4, SockFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::activation::Activated;
use crate::backend::{is_fd_exhaustion, Backend, ConnectError, Health};
use crate::cli::Config;
use crate::lifecycle::{Activity, Busy, Tracked};
use crate::limits::{
    fd_backoff, QUEUE_CHECKS_PER_TIMEOUT, QUEUE_CHECK_MIN, RESET_GRACE, STATUS_INTERVAL,
};
use crate::notify::Notifier;
use crate::records::{BackendTimedOut, CloseReason, ConnectionEnded, Summary};

pub use crate::lifecycle::{Outcome, Stop};

/// State shared by the accept loops and the relays.
struct Shared {
    config: Config,
    backend: Backend,
    limit: Arc<Semaphore>,
    /// Connections being relayed, plus clients the accept loops are getting a backend for.
    activity: Activity,
    served: AtomicU64,
    /// Bytes relayed by the connections that ended, each way, and the most relayed at once:
    /// the exit summary.
    to_backend: AtomicU64,
    to_client: AtomicU64,
    peak: AtomicUsize,
    stop: Stop,
    relays: TaskTracker,
    /// `--kernel-relay`, when the kernel let it be set up.
    #[cfg(feature = "kernel-relay")]
    kernel: Option<Arc<crate::kernel_relay::KernelRelay>>,
    /// The datagram sockets' relay (idle when none were passed).
    datagrams: crate::datagram::Datagrams,
    /// Relays ended by keepalive, the idle timeout and the half-close timeout, for STATUS=.
    timed_out: [AtomicU64; 3],
}

impl Tracked for Arc<Shared> {
    fn activity(&self) -> &Activity {
        &self.activity
    }
}

/// Serves the passed sockets until stopped, idle, or (Accept=yes) done, then drains the
/// relays in flight for at most `--drain-timeout`.
pub async fn run(
    config: Config,
    sockets: Vec<Activated>,
    notifier: Notifier,
    stop: Stop,
) -> anyhow::Result<Outcome> {
    let backend = Backend::new(config.target.clone(), config.follow_backend);
    #[cfg(feature = "kernel-relay")]
    let kernel = crate::kernel_relay::setup(&config);
    let (datagram, sockets): (Vec<_>, Vec<_>) = sockets.into_iter().partition(|s| s.datagram);
    let activity = Activity::new();
    if config.proxy_protocol.is_some() && !datagram.is_empty() {
        tracing::warn!(
            "--proxy-protocol applies to stream connections only: datagrams are relayed without a header"
        );
    }
    let datagram = datagram
        .into_iter()
        .map(|s| crate::datagram::Passed {
            fd: s.fd,
            number: s.number,
        })
        .collect();
    let datagrams =
        crate::datagram::start(&config, datagram, stop.clone(), activity.clone()).await?;
    let shared = Arc::new(Shared {
        limit: Arc::new(Semaphore::new(config.connections_max)),
        backend,
        config,
        activity,
        served: AtomicU64::new(0),
        to_backend: AtomicU64::new(0),
        to_client: AtomicU64::new(0),
        peak: AtomicUsize::new(0),
        #[cfg(feature = "kernel-relay")]
        kernel,
        stop: stop.clone(),
        relays: TaskTracker::new(),
        datagrams,
        timed_out: Default::default(),
    });
    let (listening, connected): (Vec<_>, Vec<_>) = sockets.into_iter().partition(|s| s.listening);
    let mut listeners = Vec::new();
    let mut loops = tokio::task::JoinSet::new();
    for sock in listening {
        use std::os::fd::AsFd;
        match crate::keepalive::prepare_listener(sock.fd.as_fd(), shared.config.keepalive) {
            Ok(d) => tracing::debug!("fd {}: TCP keepalive: {d:?}", sock.number),
            Err(e) => tracing::warn!("fd {}: cannot set TCP keepalive: {e}", sock.number),
        }
        let fd = Arc::new(crate::relay::register(sock.fd).map_err(|e| {
            anyhow::anyhow!(
                "cannot watch passed fd {} for connections: {e}",
                sock.number
            )
        })?);
        listeners.push(fd.clone());
        loops.spawn(accept_loop(shared.clone(), fd, sock.number));
    }
    if !connected.is_empty() {
        let s = shared.clone();
        let clients: Vec<OwnedFd> = connected.into_iter().map(|c| c.fd).collect();
        for c in &clients {
            use std::os::fd::AsFd;
            if let Err(e) = crate::keepalive::prepare_listener(c.as_fd(), s.config.keepalive) {
                tracing::warn!("cannot set TCP keepalive on the passed connection: {e}");
            }
        }
        let only = listeners.is_empty() && shared.datagrams.sockets().is_empty();
        tokio::spawn(async move { serve_passed_connections(s, clients, only).await });
    }
    notifier.send(&format!("READY=1\nSTATUS={}", status_text(&shared)));
    if let Some(idle) = shared.config.exit_idle_time {
        let mut watched = listeners.clone();
        watched.extend(shared.datagrams.sockets().iter().cloned());
        tokio::spawn(idle_timer(shared.clone(), idle, watched));
    }
    let notifier = Arc::new(notifier);
    tokio::spawn(status_updates(shared.clone(), notifier.clone()));
    if let Some(every) = notifier.watchdog_interval() {
        let n = notifier.clone();
        let s = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = s.requested() => return,
                    _ = tick.tick() => n.send("WATCHDOG=1"),
                }
            }
        });
    }

    stop.requested().await;
    let outcome = stop.outcome();
    notifier.send(&format!(
        "STOPPING=1\nSTATUS=Stopping ({}), draining {} connection(s)",
        describe(&outcome),
        shared.relays.len()
    ));
    while loops.join_next().await.is_some() {}
    shared.relays.close();
    let grace = shared.config.drain_timeout;
    let drained = tokio::select! {
        r = tokio::time::timeout(grace, async {
            shared.relays.wait().await;
            shared.datagrams.wait().await;
        }) => r.is_ok(),
        _ = stop.cut.cancelled() => shared.relays.is_empty() && shared.datagrams.is_idle(),
    };
    if !drained {
        if !stop.cut.is_cancelled() {
            tracing::warn!(
                "drain timeout ({grace:?}) passed with {} connection(s) still open: resetting them",
                shared.relays.len()
            );
        }
        stop.cut.cancel();
        let _ = tokio::time::timeout(RESET_GRACE, async {
            shared.relays.wait().await;
            shared.datagrams.wait().await;
        })
        .await;
    }
    // Datagram sessions count as connections here, with their bytes.
    let (sessions, udp_to_backend, udp_to_client) = shared.datagrams.totals();
    Summary {
        backend: shared.backend.target().to_string(),
        connections: shared.served.load(Ordering::Relaxed) + sessions,
        bytes_to_backend: shared.to_backend.load(Ordering::Relaxed) + udp_to_backend,
        bytes_to_client: shared.to_client.load(Ordering::Relaxed) + udp_to_client,
        peak_connections: shared.peak.load(Ordering::Relaxed),
        exit_reason: describe(&outcome).to_string(),
    }
    .log();
    Ok(outcome)
}

fn describe(o: &Outcome) -> &'static str {
    match o {
        Outcome::Idle => "idle",
        Outcome::Stopped => "asked to stop",
        Outcome::BackendGone => "backend went away",
        Outcome::BackendTimedOut => "backend did not come up",
        Outcome::Finished => "passed connection done",
        Outcome::ConnectFailed => "backend unreachable",
    }
}

/// Waits for a client, gets a backend connection for it, and only then accepts it, so a
/// client that cannot be served stays in the queue systemd owns.
///
/// The queue is counted once per wake-up, right after the listener's readiness is cleared:
/// every client that connects after that sets it again, so the clients counted can be
/// served without looking again (a backend connection is fetched only for a client that is
/// really there). A unix listener cannot tell its queue length, only that it is not empty:
/// it is looked at again after each client.
async fn accept_loop(shared: Arc<Shared>, listener: Arc<AsyncFd<OwnedFd>>, number: RawFd) {
    let stop = shared.stop.clone();
    let mut fd_trouble: u32 = 0;
    let mut burst = Burst::default();
    // Clients counted in the queue and not served yet.
    let mut counted: usize = 0;
    // Count again without waiting for readiness first.
    let mut recount = false;
    loop {
        if counted == 0 {
            if !recount {
                let guard = tokio::select! {
                    biased;
                    _ = stop.requested() => return,
                    g = listener.readable() => g,
                };
                match guard {
                    Ok(mut g) => g.clear_ready(),
                    Err(e) => {
                        tracing::error!("cannot wait for connections on fd {number}: {e}");
                        stop.request(Outcome::Stopped);
                        return;
                    }
                }
            }
            let fd = listener.get_ref().as_raw_fd();
            (counted, recount) = match accept_queue_len(fd) {
                Some(n) => (n, false),
                None if any_queued(std::slice::from_ref(&listener)) => (1, true),
                None => (0, false),
            };
            if counted == 0 {
                continue;
            }
        }
        counted -= 1;
        let permit: OwnedSemaphorePermit = match acquire_slot(&shared, &listener, &mut burst).await
        {
            Slot::Got(p) => p,
            // Nothing is left queued.
            Slot::Refused => {
                (counted, recount) = (0, false);
                continue;
            }
            Slot::Stop => return,
        };
        let busy = Busy::new(&shared);
        let backend = {
            {
                let r = tokio::select! {
                    biased;
                    _ = stop.requested() => return,
                    r = shared.backend.connect(shared.config.connect_timeout) => r,
                };
                match r {
                    Ok(b) => b,
                    Err(ConnectError::TimedOut { last, waited }) => {
                        // Every client counted is closed below; later ones set readiness.
                        (counted, recount) = (0, false);
                        BackendTimedOut {
                            backend: shared.backend.target().to_string(),
                            last_error: last.to_string(),
                            waited,
                            clients_closed: close_queued(&listener),
                            exiting: shared.config.follow_backend,
                        }
                        .log();
                        if shared.config.follow_backend {
                            stop.request(Outcome::BackendTimedOut);
                            return;
                        }
                        continue;
                    }
                    Err(ConnectError::Gone(e)) => {
                        tracing::info!(
                            "backend {} went away ({e}): exiting so that systemd starts it again for the waiting client",
                            shared.backend.target()
                        );
                        stop.request(Outcome::BackendGone);
                        return;
                    }
                    Err(ConnectError::NoFds(e)) => {
                        drop((busy, permit));
                        (counted, recount) = (0, true);
                        if pause_for_fds(&stop, &mut fd_trouble, "connecting to the backend", &e)
                            .await
                        {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let accepted = accept4(
            listener.get_ref().as_raw_fd(),
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .map_err(std::io::Error::from);
        match accepted {
            Ok(raw) => {
                fd_trouble = 0;
                // SAFETY: accept4 just returned this fd; nothing else owns it.
                let client = unsafe { OwnedFd::from_raw_fd(raw) };
                spawn_relay(&shared, client, backend, permit, busy);
            }
            // The client left before we accepted it: close the backend connection rather than
            // hold it open, which could keep an idle backend from exiting. With --proxy-protocol
            // it closes without a header, as a client that leaves does: nginx notes that at
            // info level only, while a LOCAL header followed by a close reads to HAProxy's
            // HTTP mode as a bad request (400 in its log). The queue is empty now.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                drop(backend);
                (counted, recount) = (0, false);
            }
            Err(e) => {
                drop((backend, busy, permit));
                (counted, recount) = (0, true);
                if is_fd_exhaustion(&e) {
                    if pause_for_fds(&stop, &mut fd_trouble, "accepting", &e).await {
                        return;
                    }
                } else if !transient_accept_error(&e) {
                    tracing::warn!("accept on fd {number} failed: {e}");
                    if pause_for_fds(&stop, &mut 0, "accepting", &e).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Accept errors that concern one client only.
fn transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED) | Some(libc::EPROTO) | Some(libc::EINTR) | Some(libc::EPERM)
    )
}

/// Backs off after fd exhaustion, logging once per burst. Returns true if asked to stop.
async fn pause_for_fds(stop: &Stop, trouble: &mut u32, doing: &str, e: &std::io::Error) -> bool {
    if *trouble == 0 {
        tracing::warn!("{doing} failed: {e}; backing off until file descriptors free up");
    }
    let pause = fd_backoff(*trouble);
    *trouble = trouble.saturating_add(1);
    tokio::select! {
        _ = stop.requested() => true,
        _ = tokio::time::sleep(pause) => false,
    }
}

/// Accepts and closes every client waiting on `listener`; returns how many.
/// Closes the clients that waited while the backend timed out. On a TCP listener, only as
/// many as the accept queue held when this starts: a client that connects while they are
/// closed has not waited yet, and stays queued for the next probe (or the next activation).
/// A unix listener cannot tell its queue length, so its queue is emptied.
fn close_queued(listener: &AsyncFd<OwnedFd>) -> usize {
    let fd = listener.get_ref().as_raw_fd();
    close_up_to(fd, accept_queue_len(fd))
}

/// Accepts and closes up to `limit` queued clients (all of them when `None`).
fn close_up_to(fd: RawFd, limit: Option<usize>) -> usize {
    let limit = limit.unwrap_or(usize::MAX);
    let mut closed = 0;
    while closed < limit {
        match accept4(fd, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                // SAFETY: accept4 just returned this fd; it is closed at once.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                closed += 1;
            }
            Err(_) => break,
        }
    }
    closed
}

/// How many connections wait in a listening TCP socket's accept queue (TCP_INFO reports it
/// as `tcpi_unacked` for a listener); `None` for other sockets.
fn accept_queue_len(fd: RawFd) -> Option<usize> {
    let info = crate::relay::tcp_info(fd).ok()?;
    const TCP_LISTEN: u8 = 10;
    (info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked as usize)
}

fn spawn_relay(
    shared: &Arc<Shared>,
    client: OwnedFd,
    backend: AsyncFd<OwnedFd>,
    permit: OwnedSemaphorePermit,
    busy: Busy,
) {
    shared.served.fetch_add(1, Ordering::Relaxed);
    let cut = shared.stop.cut.clone();
    let started = Instant::now();
    let totals = shared.clone();
    let proxy_protocol = shared.config.proxy_protocol;
    #[cfg(feature = "kernel-relay")]
    let kernel = shared.kernel.clone();
    let limits = crate::relay::Timeouts {
        idle: shared.config.idle_timeout,
        half_close: shared.config.half_close_timeout,
    };
    shared.relays.spawn(async move {
        let _hold = (permit, busy);
        // Borrowed, not copied per connection: it is formatted only when something is logged.
        let target = totals.backend.target();
        let client = match crate::relay::register(client) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot watch a new client for {target}: {e}");
                return;
            }
        };
        if let Some(version) = proxy_protocol {
            if let Err(e) = crate::proxy_header::send(version, client.get_ref(), backend.get_ref())
            {
                crate::relay::reset(&client);
                crate::relay::reset(&backend);
                // A client that is already gone (ENOTCONN from getpeername) is no fault.
                if is_peer_abort(&e) || e.raw_os_error() == Some(libc::ENOTCONN) {
                    tracing::debug!("PROXY protocol header not sent to {target}: {e}");
                } else {
                    tracing::warn!(
                        "cannot send the PROXY protocol header to {target}: {e}; closing the client"
                    );
                }
                return;
            }
        }
        // getpeername(2) only when something will be logged.
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let peer = if debug {
            peer_name(&client)
        } else {
            String::new()
        };
        let span = tracing::debug_span!("conn", client = %peer, backend = %target);
        let progress = crate::relay::Progress::default();
        let close = async {
            tracing::debug!("open");
            #[cfg(feature = "kernel-relay")]
            let relaying =
                crate::kernel_relay::relay(kernel.as_deref(), &client, &backend, limits, &progress);
            #[cfg(not(feature = "kernel-relay"))]
            let relaying = crate::relay::relay_counted(&client, &backend, limits, &progress);
            let relayed = tokio::select! {
                r = relaying => r,
                _ = cut.cancelled() => {
                    crate::relay::reset(&client);
                    crate::relay::reset(&backend);
                    return CloseReason::DrainCut;
                }
            };
            let reason = crate::relay::close_reason(&relayed);
            if let Some(i) = match reason {
                CloseReason::Keepalive => Some(0),
                CloseReason::IdleTimeout => Some(1),
                CloseReason::HalfCloseTimeout => Some(2),
                _ => None,
            } {
                totals.timed_out[i].fetch_add(1, Ordering::Relaxed);
            }
            match relayed {
                Ok(_) => {}
                Err(e) if matches!(reason, CloseReason::Reset | CloseReason::Keepalive) => {
                    tracing::debug!(reason = %reason, "ended: {e}")
                }
                Err(e) => {
                    let peer = if debug {
                        peer.clone()
                    } else {
                        peer_name(&client)
                    };
                    tracing::warn!(reason = %reason, "relay {peer} <-> {target} failed: {e}");
                }
            }
            reason
        }
        .instrument(span)
        .await;
        let moved = progress.moved();
        totals
            .to_backend
            .fetch_add(moved.to_backend, Ordering::Relaxed);
        totals
            .to_client
            .fetch_add(moved.to_client, Ordering::Relaxed);
        if debug {
            ConnectionEnded {
                client: peer,
                backend: target.to_string(),
                bytes_to_backend: moved.to_backend,
                bytes_to_client: moved.to_client,
                duration: started.elapsed(),
                close,
            }
            .log();
        }
    });
    shared
        .peak
        .fetch_max(shared.relays.len(), Ordering::Relaxed);
}

fn is_peer_abort(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECONNRESET) | Some(libc::EPIPE))
}

fn peer_name(fd: &AsyncFd<OwnedFd>) -> String {
    match socket2::SockRef::from(fd.get_ref()).peer_addr() {
        Ok(a) => match a.as_socket() {
            Some(s) => s.to_string(),
            None => "unix client".into(),
        },
        Err(_) => "client".into(),
    }
}

/// Accept=yes: relays each passed connection, then stops the daemon if nothing else listens.
async fn serve_passed_connections(shared: Arc<Shared>, clients: Vec<OwnedFd>, only: bool) {
    let mut failed = false;
    let mut set = tokio::task::JoinSet::new();
    for client in clients {
        let s = shared.clone();
        let busy = Busy::new(&shared);
        let permit = shared
            .limit
            .clone()
            .acquire_owned()
            .await
            .expect("the limit semaphore is never closed");
        set.spawn(async move {
            match s.backend.connect(s.config.connect_timeout).await {
                Ok(b) => {
                    spawn_relay(&s, client, b, permit, busy);
                    true
                }
                Err(ConnectError::TimedOut { last: e, .. })
                | Err(ConnectError::Gone(e))
                | Err(ConnectError::NoFds(e)) => {
                    tracing::warn!(
                        "Failed to connect to remote host {}: {e}; closing the passed connection",
                        s.backend.target()
                    );
                    false
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        failed |= !r.unwrap_or(false);
    }
    if only {
        shared.relays.close();
        shared.relays.wait().await;
        shared.stop.request(if failed {
            Outcome::ConnectFailed
        } else {
            Outcome::Finished
        });
    }
}

/// Stops the daemon after `idle` with no activity, from start-up and whenever the count of
/// connections drops to zero, and no datagram either way for `idle`; never while clients or
/// datagrams wait in a passed socket.
async fn idle_timer(shared: Arc<Shared>, idle: Duration, listeners: Vec<Arc<AsyncFd<OwnedFd>>>) {
    let mut active = shared.activity.subscribe();
    'outer: loop {
        tokio::select! {
            _ = shared.stop.requested() => return,
            r = active.wait_for(|n| *n == 0) => if r.is_err() { return },
        }
        // Idle from now, or from the last datagram relayed, whichever is later.
        let mut until = Instant::now() + idle;
        loop {
            tokio::select! {
                _ = shared.stop.requested() => return,
                _ = active.changed() => continue 'outer,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
            match shared.activity.last_datagram() {
                Some(t) if t + idle > Instant::now() => until = t + idle,
                _ => break,
            }
        }
        if *active.borrow() == 0 && !any_queued(&listeners) {
            shared.stop.request(Outcome::Idle);
            return;
        }
        // A client or datagram is queued but not yet picked up: look again shortly.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// True if any listener has a client waiting to be accepted.
fn any_queued(listeners: &[Arc<AsyncFd<OwnedFd>>]) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds: Vec<PollFd> = listeners
        .iter()
        .map(|l| PollFd::new(l.get_ref().as_fd(), PollFlags::POLLIN))
        .collect();
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

fn status_text(shared: &Shared) -> String {
    let active = shared.relays.len();
    let served = shared.served.load(Ordering::Relaxed);
    let target = shared.backend.target();
    let backend = match shared.backend.health() {
        Health::Untried => format!("backend {target} not contacted yet"),
        Health::Up => format!("backend {target} up"),
        Health::Waiting(since) => format!(
            "waiting for backend {target} to listen ({:.1}s)",
            since.elapsed().as_secs_f64()
        ),
        Health::Down(e) => format!("backend {target} down: {e}"),
    };
    let [keepalive, idle, half] = shared
        .timed_out
        .each_ref()
        .map(|n| n.load(Ordering::Relaxed));
    let ended = if keepalive + idle + half > 0 {
        format!("; ended by keepalive {keepalive}, idle timeout {idle}, half-close timeout {half}")
    } else {
        String::new()
    };
    match shared.datagrams.status() {
        Some(udp) => format!("{active} active, {served} served; {udp}; {backend}{ended}"),
        None => format!("{active} active, {served} served; {backend}{ended}"),
    }
}

/// Refreshes STATUS= when it changed, at most every [`STATUS_INTERVAL`].
async fn status_updates(shared: Arc<Shared>, notifier: Arc<Notifier>) {
    let mut last = status_text(&shared);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(Instant::now() + STATUS_INTERVAL),
        STATUS_INTERVAL,
    );
    loop {
        tokio::select! {
            _ = shared.stop.requested() => return,
            _ = tick.tick() => {}
        }
        let now = status_text(&shared);
        if now != last {
            notifier.send(&format!("STATUS={now}"));
            last = now;
        }
    }
}

/// What waiting for a `-c` slot led to.
enum Slot {
    Got(OwnedSemaphorePermit),
    /// The clients that waited `--queue-timeout` were closed and none is left queued.
    Refused,
    Stop,
}

/// The clients closed for want of a slot since the last one served: one warning each.
#[derive(Default)]
struct Burst {
    /// Closed in this burst; 0 when none is under way.
    closed: usize,
    /// Closed when the warning was logged.
    warned: usize,
}

impl Burst {
    fn closed(&mut self, n: usize, shared: &Shared, waited: Duration) {
        if self.closed == 0 {
            tracing::warn!(
                "Hit connection limit of {} (--connections-max): closed {n} client(s) that waited {:.1}s for a slot (--queue-timeout)",
                shared.config.connections_max,
                waited.as_secs_f64()
            );
            self.warned = n;
        }
        self.closed += n;
    }

    /// A slot was had: the burst is over.
    fn end(&mut self) {
        if self.closed > self.warned {
            tracing::warn!(
                "Hit connection limit: {} client(s) closed unserved in all in that burst",
                self.closed
            );
        }
        *self = Burst::default();
    }
}

/// Waits for a `-c` slot for the clients queued on `listener`, for at most
/// `--queue-timeout` each: the queue is looked at [`QUEUE_CHECKS_PER_TIMEOUT`] times per
/// timeout, and the clients that were already queued one timeout ago are accepted and
/// closed (the accept queue is first in, first out, and nothing else accepts from it
/// meanwhile). A unix listener cannot tell its queue length: all of its queue is closed
/// once a client has been waiting that long. Only this wait counts: a client waiting for
/// a cold backend holds a slot already, and `--connect-timeout` bounds that.
async fn acquire_slot(
    shared: &Arc<Shared>,
    listener: &Arc<AsyncFd<OwnedFd>>,
    burst: &mut Burst,
) -> Slot {
    if let Ok(p) = shared.limit.clone().try_acquire_owned() {
        burst.end();
        return Slot::Got(p);
    }
    let stop = &shared.stop;
    let acquire = shared.limit.clone().acquire_owned();
    tokio::pin!(acquire);
    let Some(limit) = shared.config.queue_timeout else {
        return tokio::select! {
            biased;
            _ = stop.requested() => Slot::Stop,
            p = &mut acquire => Slot::Got(p.expect("the limit semaphore is never closed")),
        };
    };
    let fd = listener.get_ref().as_raw_fd();
    let step = (limit / QUEUE_CHECKS_PER_TIMEOUT).max(QUEUE_CHECK_MIN);
    // (when, queue length then): the first `len` clients queued now were there at `when`.
    let mut seen: std::collections::VecDeque<(Instant, Option<usize>)> = Default::default();
    loop {
        let now = Instant::now();
        seen.push_back((now, accept_queue_len(fd)));
        let mut due = None;
        while let Some(&(when, len)) = seen.front() {
            if now.duration_since(when) < limit {
                break;
            }
            due = Some((when, len));
            seen.pop_front();
        }
        if let Some((when, len)) = due {
            let closed = close_up_to(fd, len);
            if closed > 0 {
                burst.closed(closed, shared, now.duration_since(when).max(limit));
                for (_, l) in seen.iter_mut() {
                    *l = l.map(|l| l.saturating_sub(closed));
                }
            }
            if !any_queued(std::slice::from_ref(listener)) {
                return Slot::Refused;
            }
        }
        tokio::select! {
            biased;
            _ = stop.requested() => return Slot::Stop,
            p = &mut acquire => {
                burst.end();
                return Slot::Got(p.expect("the limit semaphore is never closed"));
            }
            _ = tokio::time::sleep(step) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::{UnixListener, UnixStream};

    /// Waits (bounded) until the kernel has queued `n` connections on a TCP listener: a
    /// loopback handshake usually completes within connect(2), but may finish in softirq
    /// context a moment later on a busy machine.
    fn wait_for_queue(fd: RawFd, n: usize) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let len = accept_queue_len(fd);
            if len == Some(n) || Instant::now() > deadline {
                return len;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The clients queued when the timeout fires are closed; one that connects after that
    /// moment stays queued.
    #[test]
    fn closing_waiting_clients_spares_later_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.as_raw_fd();
        assert_eq!(accept_queue_len(fd), Some(0));
        let mut waited: Vec<TcpStream> =
            (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let snapshot = wait_for_queue(fd, 3);
        assert_eq!(snapshot, Some(3));
        let _late = TcpStream::connect(addr).unwrap();
        assert_eq!(wait_for_queue(fd, 4), Some(4));
        assert_eq!(close_up_to(fd, snapshot), 3);
        assert_eq!(
            accept_queue_len(fd),
            Some(1),
            "the late client is still queued"
        );
        for c in &mut waited {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).unwrap(), 0, "a closed client reads EOF");
        }
        assert!(
            listener.accept().is_ok(),
            "the late client can still be served"
        );
    }

    /// A unix listener has no queue count: every queued client is closed, as before.
    #[test]
    fn unix_listener_queue_is_emptied() {
        let dir = std::env::temp_dir().join(format!("rsproxyd-close-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixListener::bind(&dir).unwrap();
        listener.set_nonblocking(true).unwrap();
        let fd = listener.as_raw_fd();
        assert_eq!(accept_queue_len(fd), None);
        let _clients: Vec<UnixStream> =
            (0..2).map(|_| UnixStream::connect(&dir).unwrap()).collect();
        assert_eq!(close_up_to(fd, accept_queue_len(fd)), 2);
        assert!(listener.accept().is_err(), "nothing left queued");
        let _ = std::fs::remove_file(&dir);
    }
}
