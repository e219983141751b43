//! Reliability of the real binary under load, faults and bad input: nothing lost, corrupted
//! or hung, no fd leak, bounded memory. Every rsproxyd here is started with a real
//! LISTEN_FDS socket. Figures are printed (run with --nocapture); see docs/reliability.md.

mod common;
mod reliability_support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use reliability_support::soak;
use reliability_support::*;

/// A tokio runtime for the test's own clients and backends (two workers, like the machine).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Thousands of seeded random connections (0 B to several MiB, every half-close variant,
/// client concurrency below, at and past `-c`) arrive byte-exact, none lost or hung; the
/// backend never sees more than `-c` at once; fds come back to the baseline; RSS is bounded.
#[test]
fn soak_nothing_lost_corrupted_or_hung() {
    raise_own_fd_limit();
    let long = long_run();
    let limit: usize = env_or("RSPROXYD_SOAK_LIMIT", if long { 256 } else { 32 });
    let cfg = soak::Config {
        connections: env_or(
            "RSPROXYD_SOAK_CONNECTIONS",
            if long { 50_000 } else { 5_000 },
        ),
        phases: vec![(limit / 4).max(1), limit, 2 * limit],
        max_size: env_or("RSPROXYD_SOAK_MAX_MIB", if long { 32usize } else { 8 }) << 20,
        hung_after: Duration::from_secs(env_or("RSPROXYD_SOAK_HUNG_SECS", 10)),
        seed: env_or("RSPROXYD_SOAK_SEED", 1),
    };
    let rt = runtime();
    let buf = soak::payload(cfg.max_size);
    let (backend, stats) = rt.block_on(soak::start_backend(buf, cfg.hung_after));
    let listener = deep_listener();
    let addr = listener.local_addr().unwrap();
    let proxy = spawn_with_fd(
        listener.into(),
        &["-c", &limit.to_string(), &backend.to_string()],
        &[],
    );
    let pid = proxy.pid();

    // Warm up (the runtime and its fds exist once a connection was served), then measure.
    let warm = soak::Plan {
        mode: soak::Mode::EchoHalfClose,
        len: 1000,
        off: 0,
        chunks: 0,
        slow: false,
    };
    rt.block_on(soak::client(addr, warm, buf, cfg.hung_after))
        .expect("warm-up connection");
    let baseline = quiet_baseline(pid);
    let before = rss_of(pid);
    let sampler = FdSampler::start(pid);

    let report = rt.block_on(soak::run(addr, &cfg));

    let peak_fds = sampler.finish();
    poll_until("the backend to finish every connection", DEADLINE, || {
        let (a, f) = (
            stats.accepted.load(Ordering::SeqCst),
            stats.finished.load(Ordering::SeqCst),
        );
        if a == f {
            Ok(())
        } else {
            Err(format!("{f} of {a} finished"))
        }
    });
    let settle = fds_back_to(pid, &baseline, DEADLINE);
    let after = rss_of(pid);
    let backend_failures = stats.failures.lock().unwrap().clone();
    let accepted = stats.accepted.load(Ordering::SeqCst);
    let max_backend = stats.max_current.load(Ordering::SeqCst);
    let secs = report.elapsed.as_secs_f64();
    println!(
        "soak: {} connections ({} completed, {} lost, {} corrupted, {} hung) in {secs:.1} s, \
         seed {}, -c {limit}, client concurrency by phase {:?}",
        report.connections,
        report.completed,
        report.lost,
        report.corrupted,
        report.hung,
        cfg.seed,
        cfg.phases
    );
    println!(
        "soak: payload {} sent, {} received (largest {}), {:.0} MiB/s; modes {:?}",
        mib(report.bytes_sent),
        mib(report.bytes_received),
        mib(report.largest as u64),
        (report.bytes_sent + report.bytes_received) as f64 / (1024.0 * 1024.0) / secs,
        report.modes
    );
    println!(
        "soak: backend saw {accepted} connections (1 warm-up), at most {max_backend} at once, \
         {} failures",
        backend_failures.len()
    );
    println!(
        "soak: rsproxyd fds baseline {}, peak {peak_fds}, after {} (back in {:.0} ms)",
        baseline.total,
        fd_census(pid).total,
        settle.as_secs_f64() * 1000.0
    );
    println!(
        "soak: rsproxyd RSS before {} KiB, peak (VmHWM) {} KiB, after {} KiB",
        before.rss, after.hwm, after.rss
    );

    assert!(
        report.failures.is_empty() && backend_failures.is_empty(),
        "client failures: {:#?}\nbackend failures: {:#?}",
        report.failures,
        &backend_failures[..backend_failures.len().min(20)]
    );
    assert_eq!(
        (report.lost, report.corrupted, report.hung),
        (0, 0, 0),
        "lost, corrupted, hung"
    );
    assert_eq!(report.completed, report.connections);
    assert_eq!(
        accepted,
        report.connections + 1,
        "one backend connection per client, no more"
    );
    assert!(
        max_backend <= limit,
        "the backend saw {max_backend} relayed connections at once with -c {limit}"
    );
    assert!(
        peak_fds <= baseline.total + 6 * limit,
        "peak {peak_fds} fds: more than 2 sockets and 2 pipes a direction for {limit} relays"
    );
    assert!(after.hwm < 256 * 1024, "peak RSS {} KiB", after.hwm);
    assert!(after.rss < 128 * 1024, "RSS after {} KiB", after.rss);
    let log = proxy.stderr();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "warnings during a clean soak:\n{log}"
    );
}

/// An echo backend on the test's runtime, one task per connection (cheap for thousands).
async fn tokio_echo_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Connects, sends one byte and waits for its echo: the connection is relayed, not queued.
fn relayed_client(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"i").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).expect("echo of the first byte");
    assert_eq!(&b, b"i");
    c
}

/// 1,000 idle relayed connections cost two sockets each, no pipe and a few KiB of RSS each
/// (no copy buffer per connection); releasing them returns every fd.
#[test]
fn thousand_idle_connections_held_then_released() {
    let have = raise_own_fd_limit();
    let n: usize = env_or(
        "RSPROXYD_IDLE_CONNECTIONS",
        if long_run() { 10_000 } else { 1_000 },
    );
    assert!(
        have as usize > 2 * n + 100,
        "this test needs {} fds, the hard limit is {have}",
        2 * n + 100
    );
    let rt = runtime();
    let backend = rt.block_on(tokio_echo_backend());
    let listener = deep_listener();
    let addr = listener.local_addr().unwrap();
    let limit = (n + 100).to_string();
    let proxy = spawn_with_fd(listener.into(), &["-c", &limit, &backend.to_string()], &[]);
    let pid = proxy.pid();
    drop(relayed_client(addr));
    let baseline = quiet_baseline(pid);
    let before = rss_of(pid);

    let started = Instant::now();
    let held: Vec<TcpStream> = (0..n).map(|_| relayed_client(addr)).collect();
    let opened_in = started.elapsed();
    let during = fd_census(pid);
    let with = rss_of(pid);
    drop(held);
    let settle = fds_back_to(pid, &baseline, DEADLINE);
    let after = rss_of(pid);

    let per_conn = (with.rss.saturating_sub(before.rss) * 1024) / n as u64;
    println!(
        "idle: {n} connections opened in {:.0} ms; rsproxyd fds {} -> {} ({} TCP, {} pipes) -> {} \
         (back in {:.0} ms)",
        opened_in.as_secs_f64() * 1000.0,
        baseline.total,
        during.total,
        during.tcp_conns,
        during.pipes,
        fd_census(pid).total,
        settle.as_secs_f64() * 1000.0
    );
    println!(
        "idle: rsproxyd RSS before {} KiB, with {n} held {} KiB, after release {} KiB; \
         {per_conn} bytes per idle connection",
        before.rss, with.rss, after.rss
    );
    assert_eq!(during.tcp_conns, 2 * n, "two sockets per relay: {during}");
    assert_eq!(during.pipes, baseline.pipes, "idle relays hold no pipe");
    assert_eq!(during.total, baseline.total + 2 * n, "{during}");
    assert!(
        per_conn < 64 * 1024,
        "{per_conn} bytes per idle connection: at least a copy buffer each"
    );
    assert!(
        after.rss < with.rss + 16 * 1024,
        "RSS grew after release: {after:?}"
    );
}

/// True if `got` equals `data` repeated endlessly, read from offset `pos`.
fn cyclic_eq(data: &[u8], mut pos: usize, mut got: &[u8]) -> bool {
    while !got.is_empty() {
        let at = pos % data.len();
        let n = got.len().min(data.len() - at);
        if got[..n] != data[at..at + n] {
            return false;
        }
        got = &got[n..];
        pos += n;
    }
    true
}

/// A client that streams both ways until the connection ends, checking every echoed byte.
struct Streamer {
    got: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reader: std::thread::JoinHandle<(u64, Result<(), String>, Instant)>,
    writer: std::thread::JoinHandle<()>,
}

impl Streamer {
    fn start(addr: SocketAddr, seed: u64) -> Self {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let data = std::sync::Arc::new(pattern(1 << 20, seed));
        let mut w = c.try_clone().unwrap();
        let d = data.clone();
        let writer = std::thread::spawn(move || {
            for i in 0usize.. {
                let start = (i * 65536) % d.len();
                if w.write_all(&d[start..start + 65536]).is_err() {
                    return;
                }
            }
        });
        let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let g = got.clone();
        let mut r = c;
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut pos = 0usize;
            let verdict = loop {
                match r.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if !cyclic_eq(&data, pos, &buf[..n]) {
                            break Err(format!("echo differs near byte {pos}"));
                        }
                        pos += n;
                        g.store(pos as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        break Err(format!("no EOF or reset within {DEADLINE:?}"))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
                    Err(e) => break Err(format!("read: {e}")),
                }
            };
            let _ = r.shutdown(Shutdown::Both);
            (pos as u64, verdict, Instant::now())
        });
        Streamer {
            got,
            reader,
            writer,
        }
    }
}

/// A backend process killed mid-transfer: every client sees EOF or a reset within seconds
/// (no hang), the bytes before the kill were exact, rsproxyd lives on and its fds return to
/// the baseline. The backend is a second rsproxyd (a real process) in front of an echo.
#[test]
fn backend_killed_mid_transfer() {
    let echo = echo_backend();
    let (mut doomed, doomed_addr) = spawn_proxy(&echo.addr.to_string(), &[], &[]);
    let (proxy, addr) = spawn_proxy(&doomed_addr.to_string(), &["--connect-timeout=1s"], &[]);
    let pid = proxy.pid();
    assert_eq!(exchange(addr, b"warm").unwrap(), b"warm");
    let baseline = quiet_baseline(pid);

    let streams: Vec<Streamer> = (0..8).map(|i| Streamer::start(addr, i)).collect();
    poll_until("every stream to be 1 MiB in", DEADLINE, || {
        let least = streams.iter().map(|s| s.got.load(Ordering::SeqCst)).min();
        match least {
            Some(n) if n >= 1 << 20 => Ok(()),
            other => Err(format!("least so far {other:?}")),
        }
    });
    doomed.child.kill().expect("SIGKILL the backend");
    let killed = Instant::now();
    doomed.wait_exit(DEADLINE).expect("backend reaped");

    let mut slowest = Duration::ZERO;
    let mut total = 0;
    for (i, s) in streams.into_iter().enumerate() {
        let (n, verdict, ended) = s.reader.join().unwrap();
        s.writer.join().unwrap();
        verdict.unwrap_or_else(|e| panic!("stream {i}: {e}"));
        slowest = slowest.max(ended.saturating_duration_since(killed));
        total += n;
    }
    let settle = fds_back_to(pid, &baseline, DEADLINE);
    println!(
        "backend killed: 8 streams ({} echoed before the kill) ended at most {:.0} ms after \
         SIGKILL; rsproxyd fds back to {} in {:.0} ms",
        mib(total),
        slowest.as_secs_f64() * 1000.0,
        baseline.total,
        settle.as_secs_f64() * 1000.0
    );
    assert!(
        slowest < Duration::from_secs(10),
        "a client waited {slowest:?} after its backend died"
    );
    let mut proxy = proxy;
    assert!(proxy.is_running(), "rsproxyd exited: {}", proxy.stderr());
    assert!(!proxy.stderr().contains("panicked"), "{}", proxy.stderr());
}
