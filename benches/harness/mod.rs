//! LISTEN_FDS harness shared by the criterion bench and the `loadgen` tool: starts any proxy
//! the way systemd does (listener on fd 3, LISTEN_FDS=1, LISTEN_PID = the proxy's pid) and
//! runs the measurements that need no async runtime (cold start, peak RSS).
//!
//! Standard library only, so `benches/compare.sh` can build `loadgen` with plain `rustc`.
#![allow(dead_code)] // each of the two users needs a different part of this module

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

extern "C" {
    fn dup2(oldfd: i32, newfd: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// The fd systemd passes the first socket on (SD_LISTEN_FDS_START).
pub const LISTEN_FD: RawFd = 3;
/// fcntl(2) command that sets the fd flags (clears FD_CLOEXEC when given 0).
const F_SETFD: i32 = 2;
/// Signal used to end a proxy we started: nothing it holds needs a graceful stop.
const SIGKILL: i32 = 9;
/// Connection limit given to every proxy, so that none refuses load the others accept.
pub const MAX_CONNECTIONS: u32 = 4096;
/// Placeholder in a proxy command line that is replaced by the backend's `HOST:PORT`.
pub const BACKEND_PLACEHOLDER: &str = "{BACKEND}";
/// How long a single cold-start or RSS step may take before the trial is declared failed.
pub const STEP_DEADLINE: Duration = Duration::from_secs(10);

/// Where the programs under test live.
#[derive(Clone, Debug)]
pub struct Programs {
    pub rsproxyd: PathBuf,
    pub ssp: PathBuf,
    pub haproxy: PathBuf,
    /// `benches/guard.sh`: the seed's ExecStartPre loop (`ss -tln` every 100 ms).
    pub guard: PathBuf,
}

impl Programs {
    /// Debian's locations for the peers, `rsproxyd` and the guard as given.
    pub fn new(rsproxyd: impl Into<PathBuf>, guard: impl Into<PathBuf>) -> Self {
        Programs {
            rsproxyd: rsproxyd.into(),
            ssp: PathBuf::from("/lib/systemd/systemd-socket-proxyd"),
            haproxy: PathBuf::from("/usr/sbin/haproxy"),
            guard: guard.into(),
        }
    }
}

/// What sits between the client and the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// No proxy: the client talks to the backend (the ceiling).
    Direct,
    Rsproxyd,
    /// `/lib/systemd/systemd-socket-proxyd`.
    Ssp,
    /// `systemd-socket-proxyd` behind the seed's bash/ss cold-start guard.
    SspGuard,
    /// HAProxy, `mode tcp`, splicing (see [`haproxy_splice_options`]), `bind fd@3`.
    Haproxy,
}

impl Proxy {
    pub const ALL: [Proxy; 5] = [
        Proxy::Direct,
        Proxy::Rsproxyd,
        Proxy::Ssp,
        Proxy::SspGuard,
        Proxy::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Proxy::Direct => "direct",
            Proxy::Rsproxyd => "rsproxyd",
            Proxy::Ssp => "ssp",
            Proxy::SspGuard => "ssp+guard",
            Proxy::Haproxy => "haproxy",
        }
    }

    pub fn parse(name: &str) -> Option<Proxy> {
        Proxy::ALL.into_iter().find(|p| p.name() == name.trim())
    }

    /// The command line that runs this proxy in front of `backend`, `None` for `Direct`.
    /// HAProxy's configuration is written to `scratch` (one file per call).
    pub fn argv(
        self,
        programs: &Programs,
        backend: &str,
        scratch: &Path,
    ) -> io::Result<Option<Vec<OsString>>> {
        let max = MAX_CONNECTIONS.to_string();
        let argv: Vec<OsString> = match self {
            Proxy::Direct => return Ok(None),
            Proxy::Rsproxyd => vec![
                programs.rsproxyd.clone().into(),
                "-c".into(),
                max.into(),
                backend.into(),
            ],
            Proxy::Ssp => vec![
                programs.ssp.clone().into(),
                "-c".into(),
                max.into(),
                backend.into(),
            ],
            Proxy::SspGuard => vec![
                "/bin/bash".into(),
                programs.guard.clone().into(),
                backend.into(),
                programs.ssp.clone().into(),
                "-c".into(),
                max.into(),
                backend.into(),
            ],
            Proxy::Haproxy => {
                static SEQ: AtomicU32 = AtomicU32::new(0);
                let path = scratch.join(format!(
                    "haproxy-{}-{}.cfg",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, haproxy_config(backend))?;
                vec![
                    programs.haproxy.clone().into(),
                    "-db".into(),
                    "-q".into(),
                    "-f".into(),
                    path.into(),
                ]
            }
        };
        Ok(Some(argv))
    }
}

/// HAProxy's splice options. `option splice-auto` never spliced an iperf3 stream with
/// Debian's 2.6.12 here (strace: recvfrom/sendto of 16 KiB only) and left it at about half the
/// bulk rate, so the default forces splicing both ways; `HAPROXY_SPLICE=auto` picks the auto
/// mode instead.
pub fn haproxy_splice_options() -> &'static str {
    match std::env::var("HAPROXY_SPLICE").as_deref() {
        Ok("auto") => "    option splice-auto\n",
        _ => "    option splice-request\n    option splice-response\n",
    }
}

/// HAProxy as a plain TCP relay on the passed socket (fd 3), with splicing on.
pub fn haproxy_config(backend: &str) -> String {
    format!(
        "global\n\
         \x20   maxconn {max}\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   maxconn {max}\n\
         {splice}\
         \x20   timeout connect 5s\n\
         \x20   timeout client 5m\n\
         \x20   timeout server 5m\n\
         frontend fe\n\
         \x20   bind fd@{fd}\n\
         \x20   default_backend be\n\
         backend be\n\
         \x20   server s1 {backend}\n",
        max = MAX_CONNECTIONS,
        splice = haproxy_splice_options(),
        fd = LISTEN_FD,
    )
}

/// A `127.0.0.1` listener on a port the kernel picks.
pub fn loopback_listener() -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
}

/// A loopback port that was free a moment ago (for backends that bind later).
pub fn free_port() -> io::Result<u16> {
    Ok(loopback_listener()?.local_addr()?.port())
}

/// Replaces [`BACKEND_PLACEHOLDER`] in every argument.
pub fn substitute(template: &[OsString], backend: &str) -> Vec<OsString> {
    template
        .iter()
        .map(|a| match a.to_str() {
            Some(s) if s.contains(BACKEND_PLACEHOLDER) => {
                s.replace(BACKEND_PLACEHOLDER, backend).into()
            }
            _ => a.clone(),
        })
        .collect()
}

/// Makes `fd` the child's fd 3, inheritable across exec. Runs between fork and exec, so it
/// only makes async-signal-safe calls.
fn place_listen_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fd syscalls on fds this process owns; dup2 onto 3 clears FD_CLOEXEC on
    // the copy, and when the listener already is fd 3 we clear the flag ourselves.
    let rc = unsafe {
        if fd == LISTEN_FD {
            fcntl(fd, F_SETFD, 0)
        } else {
            dup2(fd, LISTEN_FD)
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether proxies may write to our stderr (`RSPROXYD_BENCH_VERBOSE=1`).
fn verbose() -> bool {
    std::env::var_os("RSPROXYD_BENCH_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Starts `argv` as systemd would: `listener` as fd 3, `LISTEN_FDS=1` and `LISTEN_PID` set to
/// the pid that ends up running `argv[0]` (a `sh` that execs it reads its own `$$`). The child
/// leads its own process group so [`stop`] can end it along with anything it forked.
pub fn spawn_activated(listener: TcpListener, argv: &[OsString]) -> io::Result<Child> {
    if argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .args(argv)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .process_group(0);
    if !verbose() {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    // SAFETY: the closure only calls dup2/fcntl, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || place_listen_fd(fd));
    }
    let child = cmd.spawn()?;
    drop(listener); // the proxy holds the socket now; our copy would keep it open
    Ok(child)
}

/// Replaces the current process with `argv`, activated on `listener` (same pid, so
/// `LISTEN_PID` is ours). Returns only on failure.
pub fn exec_activated(listener: TcpListener, argv: &[OsString]) -> io::Error {
    let Some((program, args)) = argv.split_first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "empty command");
    };
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", std::process::id().to_string())
        .env_remove("LISTEN_FDNAMES");
    // SAFETY: as in spawn_activated.
    unsafe {
        cmd.pre_exec(move || place_listen_fd(fd));
    }
    let err = cmd.exec();
    drop(listener);
    err
}

/// Ends a child started by [`spawn_activated`] and its process group, and reaps it.
pub fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: a negative pid signals the process group this child leads (we created
            // it with process_group(0)); it holds only processes we started.
            unsafe {
                kill(-pid, SIGKILL);
            }
        }
    }
    let _ = child.wait();
}

/// A proxy started in front of a backend; ended and cleaned up on drop.
pub struct Instance {
    pub proxy: Proxy,
    /// Where clients connect (the backend itself for `Direct`).
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Instance {
    /// Starts `proxy` in front of `backend` on a fresh loopback listener.
    pub fn start(
        proxy: Proxy,
        programs: &Programs,
        backend: SocketAddr,
        scratch: &Path,
    ) -> io::Result<Instance> {
        let Some(argv) = proxy.argv(programs, &backend.to_string(), scratch)? else {
            return Ok(Instance {
                proxy,
                addr: backend,
                child: None,
            });
        };
        let listener = loopback_listener()?;
        let addr = listener.local_addr()?;
        let child = spawn_activated(listener, &argv)?;
        Ok(Instance {
            proxy,
            addr,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the proxy process has already exited.
    pub fn check_alive(&mut self) -> io::Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} exited early: {status}",
                    self.proxy.name()
                )));
            }
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            stop(child);
        }
    }
}

/// Peak resident set size (VmHWM) of `pid`, in KiB.
pub fn vm_hwm_kib(pid: u32) -> io::Result<u64> {
    status_field_kib(pid, "VmHWM:")
}

/// Current resident set size (VmRSS) of `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> io::Result<u64> {
    status_field_kib(pid, "VmRSS:")
}

fn status_field_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// Connects to `addr`, retrying refusals until `deadline` (a just-started proxy may not be
/// listening yet when it binds its own socket, e.g. HAProxy started without `fd@3`).
pub fn connect_until(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One round trip of `msg` through `stream`, which must lead to an echo backend.
pub fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    stream.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back)?;
    if back != msg {
        return Err(io::Error::other("echo returned different bytes"));
    }
    Ok(())
}

/// Builds a proxy's command line for a backend `HOST:PORT` chosen by the trial.
pub type CommandFor<'a> = &'a dyn Fn(&str) -> io::Result<Vec<OsString>>;

/// One cold start, as socket activation sees it: a client connects and sends a byte, the
/// proxy (`command` for the backend) is started on the queued listener, and the backend binds
/// `bind_after` later. Returns the delay from the backend's bind to the client's first byte
/// reaching it; also checks the backend's reply reaches the client.
pub fn cold_start_trial(command: CommandFor, bind_after: Duration) -> io::Result<Duration> {
    let backend_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let argv = command(&backend_addr.to_string())?;

    let listener = loopback_listener()?;
    let mut client = TcpStream::connect(listener.local_addr()?)?; // queued in the backlog
    client.write_all(b"?")?;
    client.set_read_timeout(Some(STEP_DEADLINE))?;
    let arrived = Instant::now();
    let mut child = spawn_activated(listener, &argv)?;

    let result = (|| {
        thread::sleep(bind_after.saturating_sub(arrived.elapsed()));
        let backend = TcpListener::bind(backend_addr)?;
        let bound = Instant::now();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let first = (|| {
                let (mut conn, _) = backend.accept()?;
                let mut byte = [0u8; 1];
                conn.read_exact(&mut byte)?;
                let at = Instant::now();
                conn.write_all(b"!")?;
                Ok::<_, io::Error>((at, conn))
            })();
            let _ = tx.send(first);
        });
        let waited = wait_first_byte(&rx, &client);
        if waited.is_err() {
            // unblock the accept thread so it does not outlive the trial
            let _ = TcpStream::connect(backend_addr);
        }
        let (first_byte, _conn) = waited??;
        let mut reply = [0u8; 1];
        client.read_exact(&mut reply)?;
        if &reply != b"!" {
            return Err(io::Error::other("wrong reply through the proxy"));
        }
        Ok(first_byte - bound)
    })();
    stop(&mut child);
    result
}

/// What the backend thread of a cold-start trial reports: when the first byte arrived.
type FirstByte = io::Result<(Instant, TcpStream)>;

/// Waits for the backend thread's report, failing early if the proxy gives up on the client
/// (systemd-socket-proxyd without the guard closes it when the backend refuses).
fn wait_first_byte(rx: &mpsc::Receiver<FirstByte>, client: &TcpStream) -> io::Result<FirstByte> {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(report) => return Ok(report),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("backend thread vanished"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        client.set_nonblocking(true)?;
        let peeked = client.peek(&mut [0u8; 1]);
        client.set_nonblocking(false)?;
        match peeked {
            Ok(0) => return Err(io::Error::other("the proxy closed the client")),
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no byte reached the backend",
            ));
        }
    }
}

/// An echo backend on std threads (one small-stack thread per connection), for [`rss_trial`].
pub fn spawn_echo_threads() -> io::Result<SocketAddr> {
    let listener = loopback_listener()?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Peak RSS of a proxy, in KiB: `idle` after one request on a fresh process, `loaded` with
/// `conns` connections open through it (each with one round trip done).
#[derive(Clone, Copy, Debug)]
pub struct Rss {
    pub idle_kib: u64,
    pub loaded_kib: u64,
}

/// Starts the proxy (`command` for the backend) in front of an echo backend and measures
/// [`Rss`].
pub fn rss_trial(command: CommandFor, conns: usize) -> io::Result<Rss> {
    let backend = spawn_echo_threads()?;
    let argv = command(&backend.to_string())?;
    let listener = loopback_listener()?;
    let addr = listener.local_addr()?;
    let mut child = spawn_activated(listener, &argv)?;
    let pid = child.id();
    let result = (|| {
        let deadline = Instant::now() + STEP_DEADLINE;
        {
            let mut first = connect_until(addr, deadline)?;
            first.set_read_timeout(Some(STEP_DEADLINE))?;
            round_trip(&mut first, b"ping")?;
        }
        thread::sleep(Duration::from_millis(100)); // let the closed connection be torn down
        let idle_kib = vm_hwm_kib(pid)?;
        let mut open = Vec::with_capacity(conns);
        for _ in 0..conns {
            let mut s = connect_until(addr, deadline)?;
            s.set_read_timeout(Some(STEP_DEADLINE))?;
            round_trip(&mut s, b"x")?;
            open.push(s);
        }
        let loaded_kib = vm_hwm_kib(pid)?;
        Ok(Rss {
            idle_kib,
            loaded_kib,
        })
    })();
    stop(&mut child);
    result
}

/// A tiny xorshift generator: cold-start bind delays need spread, not quality.
pub struct Jitter(u64);

impl Jitter {
    pub fn from_clock() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64);
        Jitter(seed | 1)
    }

    /// A duration drawn uniformly from `[lo, hi)`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = hi.saturating_sub(lo).as_micros().max(1) as u64;
        lo + Duration::from_micros(self.0 % span)
    }
}

/// Median (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}
