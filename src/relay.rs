//! One relayed connection: two directions, each byte-exact, with half-close passed through,
//! an error on either side closing both, the idle and half-close timeouts, and why it ended
//! ([`CloseReason`]).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::records::CloseReason;
use crate::splice::Pipe;
use crate::tuning::{copy_buffer, relay_mode, RelayMode};

thread_local! {
    /// The read/write relay's buffer: one per worker thread, so an idle connection holds none.
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; copy_buffer()]);
}

/// Bytes moved in each direction of a finished relay, and why it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub to_backend: u64,
    pub to_client: u64,
    /// [`CloseReason::Eof`], [`CloseReason::IdleTimeout`] or
    /// [`CloseReason::HalfCloseTimeout`]: the ends without an error.
    pub reason: CloseReason,
}

/// The relay's silence limits (`None`: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// `--connection-idle-timeout`.
    pub idle: Option<Duration>,
    /// `--half-close-timeout`.
    pub half_close: Option<Duration>,
}

/// Why a relay with this result ended (a cut by the stop is known only to the caller).
pub fn close_reason(result: &io::Result<Moved>) -> CloseReason {
    match result {
        Ok(m) => m.reason,
        Err(e) => CloseReason::of_error(e),
    }
}

/// Bytes moved so far each way, readable while the relay runs and after it failed or was
/// cut short (for the connection-ended record and the exit summary), and, while a timeout is
/// set, when the last byte moved. Updated per read or write with relaxed atomics, plus a clock
/// read (vDSO, no system call) only when a timeout is set; the relay's one timer looks at it
/// only when it fires.
#[derive(Debug)]
pub struct Progress {
    /// Whether [`Progress::touch`] notes the time (a timeout is set).
    timed: AtomicBool,
    start: Instant,
    /// Milliseconds from `start` to the last byte moved (or FIN passed on).
    last_ms: AtomicU64,
    moved: [AtomicU64; 2],
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            timed: AtomicBool::new(false),
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            moved: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

impl Progress {
    /// Counts bytes moved outside [`relay_counted`] (the kernel relay).
    #[cfg(feature = "kernel-relay")]
    pub fn add(&self, to_backend: u64, to_client: u64) {
        self.moved[0].fetch_add(to_backend, Ordering::Relaxed);
        self.moved[1].fetch_add(to_client, Ordering::Relaxed);
    }

    /// The bytes moved so far each way.
    pub fn moved(&self) -> Moved {
        Moved {
            to_backend: self.moved[0].load(Ordering::Relaxed),
            to_client: self.moved[1].load(Ordering::Relaxed),
            reason: CloseReason::Eof,
        }
    }

    /// Notes that `n` bytes moved in direction `dir` (0: to the backend) just now.
    #[inline]
    fn touch(&self, dir: usize, n: usize) {
        if n > 0 {
            self.moved[dir].fetch_add(n as u64, Ordering::Relaxed);
        }
        if self.timed.load(Ordering::Relaxed) {
            let ms = self.start.elapsed().as_millis() as u64;
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Relays between `client` and `backend` until both directions have seen EOF, one side
/// fails, or a timeout in `limits` passes. EOF from one side becomes shutdown(SHUT_WR) on
/// the other once its data is delivered, except for the direction that ends second: its
/// FIN (and any last data held for it) goes out when the caller closes both sockets, which
/// it must do as soon as this returns; on an error both sockets are reset so neither
/// peer waits for more; at a timeout both are shut down for writing (each peer sees a FIN,
/// a normal close). The timeouts cost one timer per relay, armed only when one is set and
/// re-armed when it fires (not per message).
pub async fn relay(
    client: &AsyncFd<OwnedFd>,
    backend: &AsyncFd<OwnedFd>,
    limits: Timeouts,
) -> io::Result<Moved> {
    relay_counted(client, backend, limits, &Progress::default()).await
}

/// [`relay`], counting the bytes moved in `act` as they go.
pub async fn relay_counted(
    client: &AsyncFd<OwnedFd>,
    backend: &AsyncFd<OwnedFd>,
    limits: Timeouts,
    act: &Progress,
) -> io::Result<Moved> {
    if limits.idle.is_none() && limits.half_close.is_none() {
        let ended = AtomicBool::new(false);
        return match tokio::try_join!(
            pump(client, backend, act, 0, &ended),
            pump(backend, client, act, 1, &ended)
        ) {
            Ok((to_backend, to_client)) => Ok(Moved {
                to_backend,
                to_client,
                reason: CloseReason::Eof,
            }),
            Err(e) => {
                reset(client);
                reset(backend);
                Err(e)
            }
        };
    }
    act.timed.store(true, Ordering::Relaxed);
    act.touch(0, 0);
    let ended = AtomicBool::new(false);
    let up = pump(client, backend, act, 0, &ended);
    let down = pump(backend, client, act, 1, &ended);
    tokio::pin!(up, down);
    let (mut to_backend, mut to_client) = (None, None);
    let mut half_closed = false;
    let deadline = |half_closed: bool| -> Option<Instant> {
        let limit = match (limits.idle, limits.half_close.filter(|_| half_closed)) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        // None past the clock's range: a limit of centuries never fires.
        act.last().checked_add(limit)
    };
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let timer = tokio::time::sleep_until(deadline(false).unwrap_or(far).into());
    tokio::pin!(timer);
    let result = loop {
        tokio::select! {
            r = &mut up, if to_backend.is_none() => match r {
                Ok(n) => to_backend = Some(n),
                Err(e) => break Err(e),
            },
            r = &mut down, if to_client.is_none() => match r {
                Ok(n) => to_client = Some(n),
                Err(e) => break Err(e),
            },
            _ = &mut timer => {
                let Some(at) = deadline(half_closed) else {
                    timer.as_mut().reset(far.into());
                    continue;
                };
                if Instant::now() < at {
                    timer.as_mut().reset(at.into());
                    continue;
                }
                // Whichever limit ran out: the shorter one once half-closed.
                let reason = match (limits.idle, limits.half_close) {
                    (Some(idle), Some(half)) if half_closed && half < idle => {
                        CloseReason::HalfCloseTimeout
                    }
                    (None, Some(_)) => CloseReason::HalfCloseTimeout,
                    _ => CloseReason::IdleTimeout,
                };
                for fd in [client, backend] {
                    let _ = shutdown(fd.get_ref().as_raw_fd(), Shutdown::Write);
                }
                break Ok(Moved {
                    to_backend: act.moved[0].load(Ordering::Relaxed),
                    to_client: act.moved[1].load(Ordering::Relaxed),
                    reason,
                });
            }
        }
        match (to_backend, to_client) {
            (Some(a), Some(b)) => {
                break Ok(Moved {
                    to_backend: a,
                    to_client: b,
                    reason: CloseReason::Eof,
                })
            }
            _ if !half_closed => {
                // The first FIN: from now on the half-close timeout counts too.
                half_closed = true;
                if let Some(at) = deadline(true) {
                    timer.as_mut().reset(at.into());
                }
            }
            _ => {}
        }
    };
    if result.is_err() {
        reset(client);
        reset(backend);
    }
    result
}

/// Sends the ACK that a backend connection's handshake held back (see
/// `backend::hold_handshake_ack`) now, for a client that has sent nothing yet: a backend
/// that speaks first sees its connection only once that ACK arrives. Not a TCP socket (a
/// unix backend): nothing to send, and the error is ignored.
pub fn ack_now(fd: &AsyncFd<OwnedFd>) {
    let _ = socket2::SockRef::from(fd.get_ref()).set_quickack(true);
}

/// Makes closing `fd` send a reset instead of a FIN, so the peer sees the failure.
pub fn reset(fd: &AsyncFd<OwnedFd>) {
    let _ = socket2::SockRef::from(fd.get_ref()).set_linger(Some(std::time::Duration::ZERO));
}

/// What one read did.
enum Step {
    Eof,
    /// `n` bytes read; `full` when they filled the whole buffer (bulk traffic).
    Data {
        n: usize,
        full: bool,
    },
}

/// Copies `src` to `dst` until EOF, then shuts down `dst` for writing, unless `ended` says
/// the other direction has ended already: then the caller closes both sockets at once, and
/// that close sends the FIN (both receive queues are empty by then, so it is a FIN, not a
/// reset). Starts with plain read/write (cheapest for small messages) and switches to splice
/// once a read fills the buffer, i.e. once the direction carries bulk data.
/// `act` notes each byte moved, as direction `dir` (0: to the backend).
async fn pump(
    src: &AsyncFd<OwnedFd>,
    dst: &AsyncFd<OwnedFd>,
    act: &Progress,
    dir: usize,
    ended: &AtomicBool,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut spill: Vec<u8> = Vec::new();
    let mode = relay_mode();
    let mut splice_ok = mode != RelayMode::Copy;
    let mut pipe: Option<Pipe> = match mode {
        RelayMode::Splice => Pipe::new().ok(),
        RelayMode::Adaptive | RelayMode::Copy => None,
    };
    // A new connection's first read from the client is tried before its readiness is known:
    // the client has usually sent its request already, and this saves a trip through the
    // event loop. Not from the backend: it was connected just now and has rarely written
    // yet, so that read would mostly find nothing (EAGAIN). If the client's read finds
    // nothing, the backend's held handshake ACK goes out at once (see `ack_now`).
    let ack_backend = || ack_now(dst);
    let mut eager: Option<&(dyn Fn() + Sync)> = (dir == 0).then_some(&ack_backend);
    loop {
        if let Some(p) = &pipe {
            let cap = p.capacity();
            let n = on_readable(src, None, |_, _| p.fill(src.get_ref()), |n| *n < cap).await;
            let n = match n.map(|(n, _)| n) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // This pair of fds cannot splice; go back to read/write for good.
                    pipe = None;
                    splice_ok = false;
                    continue;
                }
                r => r?,
            };
            if n == 0 {
                break;
            }
            act.touch(dir, n);
            let mut left = n;
            while left > 0 {
                match on_writable(dst, |_| p.drain(dst.get_ref(), left)).await {
                    Ok(m) => {
                        left -= m;
                        act.touch(dir, 0);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        drain_pipe_by_copy(p, left, dst, act, dir).await?;
                        left = 0;
                        splice_ok = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            total += n as u64;
            if !splice_ok {
                pipe = None;
            }
            continue;
        }
        let step = on_readable(
            src,
            eager,
            |fd, fin| copy_once(fd, dst.get_ref(), &mut spill, fin),
            |step| matches!(step, Step::Data { full: false, .. }),
        );
        eager = None;
        let (step, fin) = step.await?;
        match step {
            Step::Eof => break,
            Step::Data { n, full } => {
                total += n as u64;
                act.touch(dir, n);
                if !spill.is_empty() {
                    flush(dst, &mut spill, act, dir).await?;
                }
                if fin {
                    // The peer's FIN came before this read, which emptied the socket: this
                    // was the last of its data, and the read that would return 0 is saved.
                    break;
                }
                if full && splice_ok {
                    match Pipe::new() {
                        Ok(p) => pipe = Some(p),
                        Err(e) => {
                            tracing::debug!("no pipe for splice ({e}); staying with read/write");
                            splice_ok = false;
                        }
                    }
                }
            }
        }
    }
    // The FIN passed on counts as activity: the half-close timeout runs from it.
    act.touch(dir, 0);
    if ended.swap(true, Ordering::Relaxed) {
        return Ok(total);
    }
    match shutdown(dst.get_ref().as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(total),
        Err(e) => Err(e.into()),
    }
}

/// Reads once from `src` into the thread's buffer and writes as much as `dst` takes at
/// once; what it does not take goes to `spill`. Runs without awaiting, so the buffer is
/// never held across a suspension. `fin`: `src`'s peer has sent its FIN, so a read that
/// does not fill the buffer gets the last data; that data is written with MSG_MORE, which
/// holds it for the FIN (or close) that follows at once, so both leave in one segment.
fn copy_once(src: &OwnedFd, dst: &OwnedFd, spill: &mut Vec<u8>, fin: bool) -> io::Result<Step> {
    BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        let n = retry_eintr(|| nix::unistd::read(src.as_raw_fd(), &mut buf[..]))?;
        if n == 0 {
            return Ok(Step::Eof);
        }
        let last = fin && n < buf.len();
        let mut off = 0;
        while off < n {
            let wrote = if last {
                retry_eintr(|| send_more(dst, &buf[off..n]))
            } else {
                retry_eintr(|| nix::unistd::write(dst, &buf[off..n]))
            };
            match wrote {
                Ok(w) => off += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        spill.extend_from_slice(&buf[off..n]);
        Ok(Step::Data {
            n,
            full: n == buf.len(),
        })
    })
}

/// Writes all of `spill` to `dst`, waiting for room, and frees it.
async fn flush(
    dst: &AsyncFd<OwnedFd>,
    spill: &mut Vec<u8>,
    act: &Progress,
    dir: usize,
) -> io::Result<()> {
    let mut off = 0;
    while off < spill.len() {
        off += on_writable(dst, |fd| {
            retry_eintr(|| nix::unistd::write(fd, &spill[off..]))
        })
        .await?;
        act.touch(dir, 0);
    }
    *spill = Vec::new();
    Ok(())
}

/// Moves `left` bytes already in `pipe` to `dst` by read/write.
async fn drain_pipe_by_copy(
    pipe: &Pipe,
    mut left: usize,
    dst: &AsyncFd<OwnedFd>,
    act: &Progress,
    dir: usize,
) -> io::Result<()> {
    let mut buf = vec![0u8; left.min(crate::limits::COPY_BUFFER)];
    while left > 0 {
        let want = left.min(buf.len());
        let n = pipe.read_into(&mut buf[..want])?;
        let mut chunk = buf[..n].to_vec();
        flush(dst, &mut chunk, act, dir).await?;
        left -= n;
    }
    Ok(())
}

/// send(2) with MSG_MORE (which nix does not name): the kernel holds the bytes back for
/// what follows (a FIN here) instead of sending them in a segment of their own.
fn send_more(dst: &OwnedFd, buf: &[u8]) -> nix::Result<usize> {
    // SAFETY: `buf` is valid for reading `buf.len()` bytes for the whole call.
    let rc = unsafe {
        libc::send(
            dst.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_MORE | libc::MSG_NOSIGNAL,
        )
    };
    nix::errno::Errno::result(rc).map(|n| n as usize)
}

fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Runs a read-side operation `f` when `fd` is readable, or at once first if `eager` is
/// given, and then, if that finds nothing yet, runs `eager` before it waits.
/// Readiness is cleared on EAGAIN, and when `drained` says the result left the socket empty
/// (a short read), which saves the extra read that would only return EAGAIN.
/// `f` is told whether the peer's FIN had arrived before it ran (the event loop saw the
/// read side closed, with no error, i.e. no reset); the second value returned says that,
/// and that `f` drained the socket: the stream has ended, no read needs to say so.
async fn on_readable<T>(
    fd: &AsyncFd<OwnedFd>,
    eager: Option<&(dyn Fn() + Sync)>,
    mut f: impl FnMut(&OwnedFd, bool) -> io::Result<T>,
    drained: impl Fn(&T) -> bool,
) -> io::Result<(T, bool)> {
    if let Some(nothing_yet) = eager {
        match f(fd.get_ref(), false) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => nothing_yet(),
            r => return r.map(|v| (v, false)),
        }
    }
    loop {
        // ERROR too, so that a reset (which also closes the read side) is told from a FIN.
        let mut guard = fd.ready(Interest::READABLE | Interest::ERROR).await?;
        let ready = guard.ready();
        let fin = ready.is_read_closed() && !ready.is_error();
        match f(fd.get_ref(), fin) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            Ok(v) => {
                let ended = drained(&v);
                if ended {
                    guard.clear_ready();
                }
                return Ok((v, fin && ended));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs a write-side operation `f`, at once, and again each time `fd` becomes writable
/// while it returns EAGAIN (writes usually fit, so readiness is not asked first).
async fn on_writable<T>(
    fd: &AsyncFd<OwnedFd>,
    mut f: impl FnMut(&OwnedFd) -> io::Result<T>,
) -> io::Result<T> {
    match f(fd.get_ref()) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        r => return r,
    }
    loop {
        let mut guard = fd.writable().await?;
        match f(fd.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            r => return r,
        }
    }
}

/// setsockopt(2) of an option whose value is an int.
pub fn set_int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option reads one int from the pointer given, of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's TCP_INFO for a TCP socket (listening or connected).
pub fn tcp_info(fd: std::os::fd::RawFd) -> io::Result<libc::tcp_info> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable tcp_info of `len` bytes; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised, then filled (in part) by the kernel: every field is valid.
    Ok(unsafe { info.assume_init() })
}

/// Registers a socket or pipe with the event loop.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for as long as it lives and always returns the same fd
    // number; the AsyncFd owns it until it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// Relays between two socket pairs with `limits`; `setup` acts on the client's and the
    /// backend's far ends first. Returns the result, how long it took, and what each far
    /// end read after it (0 = a FIN).
    fn run(
        limits: Timeouts,
        setup: impl FnOnce(&mut UnixStream, &mut UnixStream),
    ) -> (io::Result<Moved>, Duration, usize, usize) {
        let (mut client_far, client_near) = UnixStream::pair().unwrap();
        let (mut backend_far, backend_near) = UnixStream::pair().unwrap();
        setup(&mut client_far, &mut backend_far);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = Instant::now();
        let result = rt.block_on(async {
            client_near.set_nonblocking(true).unwrap();
            backend_near.set_nonblocking(true).unwrap();
            let c = register(OwnedFd::from(client_near)).unwrap();
            let b = register(OwnedFd::from(backend_near)).unwrap();
            relay(&c, &b, limits).await
        });
        let took = start.elapsed();
        let mut buf = [0u8; 16];
        for s in [&client_far, &backend_far] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let mut drain = |s: &mut UnixStream| {
            let mut n = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return n,
                    Ok(k) => n += k,
                    Err(e) => panic!("far end read {e}"),
                }
            }
        };
        let c = drain(&mut client_far);
        let b = drain(&mut backend_far);
        (result, took, c, b)
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    /// A silent relay ends at the idle timeout with a FIN to both sides, as `idle-timeout`.
    #[test]
    fn idle_timeout_ends_with_fins() {
        let limits = Timeouts {
            idle: ms(200),
            half_close: None,
        };
        let (r, took, c, b) = run(limits, |c, _| c.write_all(b"hello").unwrap());
        let m = r.unwrap();
        assert_eq!(m.reason, CloseReason::IdleTimeout);
        assert_eq!(m.to_backend, 5);
        assert_eq!(
            (c, b),
            (0, 5),
            "the backend got the bytes, then a FIN; the client a FIN"
        );
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    /// After one side's FIN the half-close timeout applies, and is named when it is the
    /// shorter limit; when the idle timeout is shorter, that one is named.
    #[test]
    fn half_close_timeout_and_which_limit_is_named() {
        let table = [
            (ms(5000), ms(200), CloseReason::HalfCloseTimeout),
            (None, ms(200), CloseReason::HalfCloseTimeout),
            (ms(200), ms(5000), CloseReason::IdleTimeout),
        ];
        for (idle, half_close, want) in table {
            let limits = Timeouts { idle, half_close };
            let (r, took, _, _) = run(limits, |c, _| {
                c.write_all(b"req").unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
            });
            assert_eq!(r.unwrap().reason, want, "{limits:?}");
            assert!(took < Duration::from_secs(3), "{limits:?}: {took:?}");
        }
    }

    /// Both FINs end the relay normally as `eof`, timeouts set or not; a reset is
    /// `reset`, ETIMEDOUT (keepalive) is `keepalive`.
    #[test]
    fn close_reasons() {
        for limits in [
            Timeouts::default(),
            Timeouts {
                idle: ms(5000),
                half_close: ms(5000),
            },
            // Beyond what an Instant can hold: no overflow, simply no limit.
            Timeouts {
                idle: Some(Duration::MAX),
                half_close: Some(Duration::MAX),
            },
        ] {
            let (r, _, _, _) = run(limits, |c, b| {
                c.shutdown(std::net::Shutdown::Write).unwrap();
                b.shutdown(std::net::Shutdown::Write).unwrap();
            });
            assert_eq!(close_reason(&r), CloseReason::Eof);
        }
        let err = |n| Err(io::Error::from_raw_os_error(n));
        assert_eq!(close_reason(&err(libc::ECONNRESET)), CloseReason::Reset);
        assert_eq!(close_reason(&err(libc::ETIMEDOUT)), CloseReason::Keepalive);
        assert_eq!(close_reason(&err(libc::EIO)), CloseReason::Error);
        assert_eq!(CloseReason::HalfCloseTimeout.as_str(), "half-close-timeout");
    }
}
