//! Test support: spawn the real rsproxyd binary with a real LISTEN_FDS socket, and small
//! backends on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Generous upper bound for anything a test waits on; never used as a delay.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rsproxyd")
}

/// A running rsproxyd. Killed (by its pid) when dropped, if still running.
pub struct Proxy {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// True when `RSPROXYD_TEST_KERNEL_RELAY=1`: every rsproxyd the tests start then runs with
/// `--kernel-relay`, so the suites check the kernel relay too.
/// The binary has `--kernel-relay` only when built with the cargo feature `kernel-relay`;
/// asking for the mode without it stops the test with a message saying so, rather than
/// passing with the user-space relay.
pub fn kernel_relay_mode() -> bool {
    let asked = std::env::var_os("RSPROXYD_TEST_KERNEL_RELAY").is_some_and(|v| v == "1");
    assert!(
        !asked || cfg!(feature = "kernel-relay"),
        "RSPROXYD_TEST_KERNEL_RELAY=1 needs the kernel relay: run with --features kernel-relay"
    );
    asked
}

/// rsproxyd under a shell that sets LISTEN_PID to its own pid (the shell's `$$` survives the
/// exec) and LISTEN_FDS to `fds`, with `--kernel-relay` first when `kernel`; stderr piped.
/// `prefix`, if any, is a command that execs the shell (same pid), such as `setpriv ...`.
fn activated_command(
    prefix: &[&str],
    fds: usize,
    kernel: bool,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("/bin/sh");
            c
        }
        None => Command::new("/bin/sh"),
    };
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(bin())
        .args(kernel.then_some("--kernel-relay"))
        .envs(kernel.then_some(("RSPROXYD_KERNEL_RELAY_UNSAFE", "1")))
        .args(args)
        .env("LISTEN_FDS", fds.to_string())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts rsproxyd with `socket` as fd 3, LISTEN_FDS=1 and LISTEN_PID set to its own pid
/// (the shell's `$$` survives the exec).
pub fn spawn_with_fd(socket: OwnedFd, args: &[&str], env: &[(&str, &str)]) -> Proxy {
    spawn_with_fd_under(&[], socket, args, env)
}

/// [`spawn_with_fd`] with rsproxyd started through `prefix` (see [`activated_command`]).
pub fn spawn_with_fd_under(
    prefix: &[&str],
    socket: OwnedFd,
    args: &[&str],
    env: &[(&str, &str)],
) -> Proxy {
    let mut cmd = activated_command(prefix, 1, kernel_relay_mode(), args, env);
    let raw = socket.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if raw == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn rsproxyd");
    drop(socket);
    capture(child)
}

/// Starts rsproxyd in front of `target` on a fresh 127.0.0.1:0 listener; returns its address.
pub fn spawn_proxy(target: &str, extra: &[&str], env: &[(&str, &str)]) -> (Proxy, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut args: Vec<&str> = extra.to_vec();
    args.push(target);
    (spawn_with_fd(listener.into(), &args, env), addr)
}

impl Proxy {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The whole lines of rsproxyd's stderr that the reader thread has read so far: a line
    /// logged a moment ago may not be in it yet. Wait for a line with [`Proxy::wait_stderr`]
    /// (or for the exit with [`Proxy::wait_exit`], which joins the reader) before asserting
    /// on it, and for a later line before asserting that one is absent.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for rsproxyd to exit, up to `limit`; None if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    r.join().unwrap();
                }
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops rsproxyd with SIGTERM, asserts it exits 0 and returns all it wrote to stderr
    /// (the reader is joined): for checking that a line is absent from the whole run.
    pub fn stop(&mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self
            .wait_exit(DEADLINE)
            .expect("rsproxyd did not exit after SIGTERM");
        let log = self.stderr();
        assert!(status.success(), "{status:?}: {log}");
        log
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) -> String {
        wait_for(&format!("stderr to contain {needle:?}"), || {
            let s = self.stderr();
            s.contains(needle).then_some(s)
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` every few ms until it returns Some, panicking after [`DEADLINE`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// A TCP port on 127.0.0.1 that refuses connections until [`Cold::listen`].
pub struct Cold {
    socket: Socket,
    pub addr: SocketAddr,
}

impl Cold {
    pub fn new() -> Self {
        Self::bind("127.0.0.1:0".parse().unwrap())
    }

    pub fn bind(addr: SocketAddr) -> Self {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        socket.bind(&addr.into()).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        Cold { socket, addr }
    }

    pub fn listen(self) -> TcpListener {
        self.listen_with_backlog(1024)
    }

    /// Listens with an accept queue of `backlog` (0: one connection fills it).
    pub fn listen_with_backlog(self, backlog: i32) -> TcpListener {
        self.socket.listen(backlog).unwrap();
        self.socket.into()
    }
}

/// A backend that runs `handler` for each connection on its own thread and counts them.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

pub fn serve(
    listener: TcpListener,
    handler: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Backend {
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let h = handler.clone();
            thread::spawn(move || h(conn));
        }
    });
    Backend { addr, accepted }
}

/// Echoes everything back, then half-closes when the client does.
pub fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

pub fn echo_backend() -> Backend {
    serve(TcpListener::bind("127.0.0.1:0").unwrap(), echo)
}

/// Connects, sends `data`, half-closes, and returns everything received until EOF.
pub fn exchange(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(DEADLINE))?;
    let mut writer = s.try_clone()?;
    let data = data.to_vec();
    let w = thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    w.join().unwrap()?;
    Ok(got)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Starts rsproxyd with `sockets` as fds 3, 4, ... and LISTEN_FDS set to their number (a
/// stream and a datagram socket on one port, as a .socket unit with both passes them).
pub fn spawn_with_fds(sockets: Vec<OwnedFd>, args: &[&str], env: &[(&str, &str)]) -> Proxy {
    let mut cmd = activated_command(&[], sockets.len(), false, args, env);
    // Above every fd the child will be given, so that the dup2 calls below never overwrite a
    // socket before it is moved.
    let high: Vec<i32> = sockets
        .iter()
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a socket we own; the copy is closed at exec.
        .map(|s| unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) })
        .collect();
    assert!(
        high.iter().all(|&fd| fd >= 100),
        "cannot duplicate the sockets"
    );
    let moved = high.clone();
    // SAFETY: only async-signal-safe calls (dup2) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in moved.iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn rsproxyd");
    for fd in high {
        // SAFETY: the duplicates made above; nothing else closes them.
        unsafe { libc::close(fd) };
    }
    drop(sockets);
    capture(child)
}

/// Wraps a spawned rsproxyd, collecting its stderr in the background.
fn capture(mut child: Child) -> Proxy {
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr piped");
    let sink = stderr.clone();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Read but not yet in `sink`: the end of a line (or a character) that a read cut.
        // Only whole lines go in, so a line found in the log is never half of it.
        let mut partial = Vec::new();
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            partial.extend_from_slice(&buf[..n]);
            if let Some(end) = partial.iter().rposition(|&b| b == b'\n') {
                let lines: Vec<u8> = partial.drain(..=end).collect();
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&lines));
            }
        }
        sink.lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&partial));
    });
    Proxy {
        child,
        stderr,
        reader: Some(reader),
    }
}
