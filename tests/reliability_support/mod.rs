//! Support for tests/reliability.rs: what the kernel says about the rsproxyd process
//! (/proc/PID: fds, RSS, CPU time, limits), polling with a deadline, and the soak engine.
#![allow(dead_code)]

pub mod soak;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Polls `f` every few ms until it returns Some; panics with `what` and the last state
/// `f` reported after `limit`.
pub fn poll_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(state) => assert!(
                Instant::now() < end,
                "timed out after {limit:?} waiting for {what}; last state: {state}"
            ),
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Raises this test process's soft open-file limit to its hard limit (the soak and the idle
/// test hold thousands of sockets on the client and backend side).
pub fn raise_own_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Sets both the soft and the hard open-file limit of process `pid` (rsproxyd raises its
/// soft limit to the hard one at start, so the hard one is what bounds it).
pub fn limit_fds_of(pid: i32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit(2) on our own child's pid, with a valid new limit and no old one asked.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The soft and hard "Max open files" of `pid`, from /proc/PID/limits.
pub fn fd_limits_of(pid: i32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let mut f = line["Max open files".len()..].split_whitespace();
    (
        f.next().unwrap_or_default().to_string(),
        f.next().unwrap_or_default().to_string(),
    )
}

/// A 127.0.0.1:0 listener with a deep accept queue, so clients past `-c` wait in the kernel
/// rather than in SYN retries.
pub fn deep_listener() -> TcpListener {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(4096).unwrap();
    s.into()
}

/// Number of open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What the fds of a process are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdCensus {
    pub total: usize,
    /// Sockets other than the listener (fd 3) and unix sockets: relayed connections (either
    /// side) and backend connections being set up.
    pub tcp_conns: usize,
    /// Pipes: splice buffers of relays, and any the process holds anyway (stderr here).
    pub pipes: usize,
    /// Link targets of every fd, for messages.
    pub links: Vec<String>,
}

impl std::fmt::Display for FdCensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: HashMap<String, usize> = HashMap::new();
        for l in &self.links {
            let kind = l.split(':').next().unwrap_or(l).to_string();
            *kinds.entry(kind).or_default() += 1;
        }
        let mut kinds: Vec<_> = kinds.into_iter().collect();
        kinds.sort();
        write!(
            f,
            "{} fds ({} TCP connections, {} pipes; by kind {:?})",
            self.total, self.tcp_conns, self.pipes, kinds
        )
    }
}

/// The inodes of every unix socket in this network namespace (/proc/net/unix, field 6).
fn unix_socket_inodes() -> HashSet<u64> {
    let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_ascii_whitespace().nth(6)?.parse().ok())
        .collect()
}

/// Classifies the open fds of `pid`. Fd 3 is the passed listener; other sockets that are not
/// unix sockets (the runtime's signal pair, NOTIFY_SOCKET) are relayed connections, whatever
/// their TCP state (one in state CLOSE is listed nowhere but still holds its fd).
pub fn fd_census(pid: i32) -> FdCensus {
    let mut c = FdCensus::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return c;
    };
    let unix = unix_socket_inodes();
    for e in dir.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy().to_string();
        c.total += 1;
        let listener = e.file_name() == "3";
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse::<u64>().ok())
        {
            if !listener && !unix.contains(&inode) {
                c.tcp_conns += 1;
            }
        } else if link.starts_with("pipe:") {
            c.pipes += 1;
        }
        c.links.push(link);
    }
    c
}

/// Waits until `pid` holds no TCP connection and returns the census: the baseline to come
/// back to (a relay's pipes are dropped with its sockets).
pub fn quiet_baseline(pid: i32) -> FdCensus {
    poll_until(
        "rsproxyd to hold no TCP connection",
        Duration::from_secs(20),
        || {
            let c = fd_census(pid);
            if c.tcp_conns == 0 {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
}

/// Waits (connections close asynchronously) until `pid` is back to `baseline`: the same
/// number of fds and of pipes, and no TCP connection; returns how long that took.
pub fn fds_back_to(pid: i32, baseline: &FdCensus, limit: Duration) -> Duration {
    let start = Instant::now();
    poll_until(
        &format!("rsproxyd fds back to the baseline of {}", baseline.total),
        limit,
        || {
            let c = fd_census(pid);
            if c.total == baseline.total && c.pipes == baseline.pipes && c.tcp_conns == 0 {
                Ok(())
            } else {
                Err(format!("{c}; baseline {baseline}"))
            }
        },
    );
    start.elapsed()
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...).
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// CPU time (user + system, all threads) the process has used so far.
pub fn cpu_time(pid: i32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &text[text.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Memory figures of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub rss: u64,
    pub hwm: u64,
}

pub fn rss_of(pid: i32) -> Rss {
    Rss {
        rss: status_kib(pid, "VmRSS"),
        hwm: status_kib(pid, "VmHWM"),
    }
}

/// Runs a sampler thread that records the highest fd count of `pid` until stopped.
pub struct FdSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<thread::JoinHandle<usize>>,
}

impl FdSampler {
    pub fn start(pid: i32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(fd_count(pid));
                thread::sleep(Duration::from_millis(20)); // sampling period
            }
            peak
        });
        FdSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns the highest fd count seen.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Reads an integer from the environment, or the default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// True when the long (opt-in) variants were asked for with RSPROXYD_SOAK=long.
pub fn long_run() -> bool {
    std::env::var("RSPROXYD_SOAK").is_ok_and(|v| v == "long")
}

/// MiB with one decimal, for reports.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
