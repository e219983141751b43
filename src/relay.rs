//! One relayed connection: two directions, each byte-exact, with half-close passed through
//! and an error on either side closing both.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::unix::AsyncFd;

use crate::splice::Pipe;
use crate::tuning::{copy_buffer, relay_mode, RelayMode};

thread_local! {
    /// The read/write relay's buffer: one per worker thread, so an idle connection holds none.
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; copy_buffer()]);
}

/// Bytes moved in each direction of a finished relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub to_backend: u64,
    pub to_client: u64,
}

/// Bytes moved so far in each direction, readable while the relay runs and after it failed
/// or was cut short (for the "connection ended" record).
#[derive(Debug, Default)]
pub struct Progress {
    to_backend: AtomicU64,
    to_client: AtomicU64,
}

impl Progress {
    /// Counts bytes moved outside [`relay_counted`] (the kernel relay).
    pub fn add(&self, to_backend: u64, to_client: u64) {
        self.to_backend.fetch_add(to_backend, Ordering::Relaxed);
        self.to_client.fetch_add(to_client, Ordering::Relaxed);
    }

    pub fn moved(&self) -> Moved {
        Moved {
            to_backend: self.to_backend.load(Ordering::Relaxed),
            to_client: self.to_client.load(Ordering::Relaxed),
        }
    }
}

/// Relays between `client` and `backend` until both directions have seen EOF, or one side
/// fails. EOF from one side becomes shutdown(SHUT_WR) on the other once its data is
/// delivered; on an error both sockets are reset so neither peer waits for more.
pub async fn relay(client: &AsyncFd<OwnedFd>, backend: &AsyncFd<OwnedFd>) -> io::Result<Moved> {
    relay_counted(client, backend, &Progress::default()).await
}

/// [`relay`], counting the bytes moved in `progress` as they go.
pub async fn relay_counted(
    client: &AsyncFd<OwnedFd>,
    backend: &AsyncFd<OwnedFd>,
    progress: &Progress,
) -> io::Result<Moved> {
    let result = tokio::try_join!(
        pump(client, backend, &progress.to_backend),
        pump(backend, client, &progress.to_client)
    );
    match result {
        Ok((to_backend, to_client)) => Ok(Moved {
            to_backend,
            to_client,
        }),
        Err(e) => {
            reset(client);
            reset(backend);
            Err(e)
        }
    }
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

/// Copies `src` to `dst` until EOF, then shuts down `dst` for writing. Starts with plain
/// read/write (cheapest for small messages) and switches to splice once a read fills the
/// buffer, i.e. once the direction carries bulk data. Adds what it moved to `moved` as it goes.
async fn pump(
    src: &AsyncFd<OwnedFd>,
    dst: &AsyncFd<OwnedFd>,
    moved: &AtomicU64,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut spill: Vec<u8> = Vec::new();
    let mode = relay_mode();
    let mut splice_ok = mode != RelayMode::Copy;
    let mut pipe: Option<Pipe> = match mode {
        RelayMode::Splice => Pipe::new().ok(),
        RelayMode::Adaptive | RelayMode::Copy => None,
    };
    // A new connection's first read is tried before its readiness is known: the client has
    // usually sent its request already, and this saves a trip through the event loop.
    let mut eager = true;
    loop {
        if let Some(p) = &pipe {
            let cap = p.capacity();
            let n = on_readable(src, false, |_| p.fill(src.get_ref()), |n| *n < cap).await;
            let n = match n {
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
            let mut left = n;
            while left > 0 {
                match on_writable(dst, |_| p.drain(dst.get_ref(), left)).await {
                    Ok(m) => left -= m,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        drain_pipe_by_copy(p, left, dst).await?;
                        left = 0;
                        splice_ok = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            total += n as u64;
            moved.fetch_add(n as u64, Ordering::Relaxed);
            if !splice_ok {
                pipe = None;
            }
            continue;
        }
        let step = on_readable(
            src,
            eager,
            |fd| copy_once(fd, dst.get_ref(), &mut spill),
            |step| matches!(step, Step::Data { full: false, .. }),
        );
        eager = false;
        match step.await? {
            Step::Eof => break,
            Step::Data { n, full } => {
                total += n as u64;
                moved.fetch_add(n as u64, Ordering::Relaxed);
                if !spill.is_empty() {
                    flush(dst, &mut spill).await?;
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
    match shutdown(dst.get_ref().as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(total),
        Err(e) => Err(e.into()),
    }
}

/// Reads once from `src` into the thread's buffer and writes as much as `dst` takes at
/// once; what it does not take goes to `spill`. Runs without awaiting, so the buffer is
/// never held across a suspension.
fn copy_once(src: &OwnedFd, dst: &OwnedFd, spill: &mut Vec<u8>) -> io::Result<Step> {
    BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        let n = retry_eintr(|| nix::unistd::read(src.as_raw_fd(), &mut buf[..]))?;
        if n == 0 {
            return Ok(Step::Eof);
        }
        let mut off = 0;
        while off < n {
            match retry_eintr(|| nix::unistd::write(dst, &buf[off..n])) {
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
async fn flush(dst: &AsyncFd<OwnedFd>, spill: &mut Vec<u8>) -> io::Result<()> {
    let mut off = 0;
    while off < spill.len() {
        off += on_writable(dst, |fd| {
            retry_eintr(|| nix::unistd::write(fd, &spill[off..]))
        })
        .await?;
    }
    *spill = Vec::new();
    Ok(())
}

/// Moves `left` bytes already in `pipe` to `dst` by read/write.
async fn drain_pipe_by_copy(
    pipe: &Pipe,
    mut left: usize,
    dst: &AsyncFd<OwnedFd>,
) -> io::Result<()> {
    let mut buf = vec![0u8; left.min(crate::limits::COPY_BUFFER)];
    while left > 0 {
        let want = left.min(buf.len());
        let n = pipe.read_into(&mut buf[..want])?;
        let mut chunk = buf[..n].to_vec();
        flush(dst, &mut chunk).await?;
        left -= n;
    }
    Ok(())
}

fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Runs a read-side operation `f` when `fd` is readable (at once first, if `eager`).
/// Readiness is cleared on EAGAIN, and when `drained` says the result left the socket empty
/// (a short read), which saves the extra read that would only return EAGAIN.
async fn on_readable<T>(
    fd: &AsyncFd<OwnedFd>,
    eager: bool,
    mut f: impl FnMut(&OwnedFd) -> io::Result<T>,
    drained: impl Fn(&T) -> bool,
) -> io::Result<T> {
    if eager {
        match f(fd.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
    loop {
        let mut guard = fd.readable().await?;
        match f(fd.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            Ok(v) => {
                if drained(&v) {
                    guard.clear_ready();
                }
                return Ok(v);
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

/// Registers a socket or pipe with the event loop.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for as long as it lives and always returns the same fd
    // number; the AsyncFd owns it until it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
