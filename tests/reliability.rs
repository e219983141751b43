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
    // In kernel-relay mode (RSPROXYD_TEST_KERNEL_RELAY=1), count the relays that went in,
    // and leave out the idle and half-close timeouts, which the kernel relay does not
    // enforce (with them it would relay everything in user space).
    let (env, timeouts): (&[(&str, &str)], &[&str]) = if kernel_relay_mode() {
        (&[("RUST_LOG", "rsproxyd::kernel_relay=debug")], &[])
    } else {
        (
            &[],
            &["--connection-idle-timeout=5s", "--half-close-timeout=5s"],
        )
    };
    let limit_arg = limit.to_string();
    let backend_arg = backend.to_string();
    let mut args = vec!["-c", limit_arg.as_str()];
    args.extend_from_slice(timeouts);
    args.push(&backend_arg);
    let mut proxy = spawn_with_fd(listener.into(), &args, env);
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
    // After the exit every line has been read, not only those read so far.
    let log = proxy.stop();
    if kernel_relay_mode() {
        let in_kernel = log.matches("relayed in the kernel").count();
        println!(
            "soak: {in_kernel} relays in the kernel, {} fell back to user space",
            log.matches("relaying in user space").count()
        );
        // The mode is only tested if relays did go into the kernel.
        assert!(in_kernel > 0, "no relay went into the kernel:\n{log}");
    }
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
        if long_run() { 8_000 } else { 1_000 },
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
    // After the exit every line has been read, not only those read so far.
    let log = proxy.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// Backend connections that accept but never read hold their own relays only: with four of
/// `-c 8` stuck behind a full window, 40 other connections flow through byte-exact, and the
/// stuck ones end cleanly when the backend lets go.
#[test]
fn backend_that_never_reads_does_not_stop_the_others() {
    const STUCK: usize = 4;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<TcpStream>();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            if i < STUCK {
                // Accepted, never read: kept open until the test drops it.
                let _ = held_tx.send(conn);
            } else {
                std::thread::spawn(move || echo(conn));
            }
        }
    });
    let (proxy, addr) = spawn_proxy(&backend_addr.to_string(), &["-c", "8"], &[]);
    let pid = proxy.pid();

    // The stuck uploads, one at a time so that they take the first backend connections.
    let mut uploads = Vec::new();
    for i in 0..STUCK {
        let mut c = TcpStream::connect(addr).unwrap();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s = sent.clone();
        poll_until("the stuck backend to accept", DEADLINE, || {
            let a = accepted.load(Ordering::SeqCst);
            if a > i {
                Ok(())
            } else {
                Err(format!("{a} accepted"))
            }
        });
        uploads.push((
            std::thread::spawn(move || {
                let chunk = pattern(65536, 5);
                // 256 MiB: far more than every buffer on the way can hold.
                for _ in 0..4096 {
                    if c.write_all(&chunk).is_err() {
                        return;
                    }
                    s.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            }),
            sent,
        ));
    }
    let stuck: Vec<TcpStream> = (0..STUCK)
        .map(|_| held_rx.recv_timeout(DEADLINE).expect("stuck connection"))
        .collect();
    poll_until("every stuck upload to be 1 MiB in", DEADLINE, || {
        let least = uploads.iter().map(|(_, s)| s.load(Ordering::SeqCst)).min();
        match least {
            Some(n) if n >= 1 << 20 => Ok(()),
            other => Err(format!("least so far {other:?}")),
        }
    });

    let started = Instant::now();
    let flowing: Vec<_> = (0..40u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern((i as usize * 37_411) % (1 << 20), i);
                (data.len(), exchange(addr, &data).map(|got| got == data))
            })
        })
        .collect();
    let mut bytes = 0;
    for (i, f) in flowing.into_iter().enumerate() {
        let (len, r) = f.join().unwrap();
        assert!(
            matches!(r, Ok(true)),
            "connection {i} ({len} bytes) beside the stuck ones: {r:?}"
        );
        bytes += len;
    }
    let took = started.elapsed();
    let stuck_at: Vec<u64> = uploads
        .iter()
        .map(|(_, s)| s.load(Ordering::SeqCst))
        .collect();
    println!(
        "never-reading backend: 40 connections ({}) flowed in {:.0} ms beside {STUCK} stuck \
         uploads, stuck after {:?} bytes",
        mib(bytes as u64),
        took.as_secs_f64() * 1000.0,
        stuck_at
    );
    for n in &stuck_at {
        assert!(*n < 4096 * 65536, "a stuck upload completed: {n} bytes");
    }
    // Let go of the stuck backend connections: the uploads end, every fd comes back.
    drop(stuck);
    for (u, _) in uploads {
        u.join().unwrap();
    }
    let baseline = quiet_baseline(pid);
    assert_eq!(exchange(addr, b"after").unwrap(), b"after");
    let mut proxy = proxy;
    assert!(proxy.is_running());
    fds_back_to(pid, &baseline, DEADLINE);
}

/// Clients that vanish mid-transfer (reset by SO_LINGER 0, or closed with unread data) end
/// their relays: the backend sees every one of those connections end, rsproxyd's fds return
/// to the baseline, and the next client is served.
#[test]
fn client_that_vanishes_mid_transfer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let e = ended.clone();
    let backend = serve(listener, move |mut s| {
        let mut cmd = [0u8; 1];
        if s.read_exact(&mut cmd).is_err() {
            e.fetch_add(1, Ordering::SeqCst);
            return;
        }
        match cmd[0] {
            b'D' => {
                // An endless download, until the connection breaks.
                let chunk = pattern(65536, 11);
                while s.write_all(&chunk).is_ok() {}
            }
            b'U' => {
                let mut buf = vec![0u8; 65536];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
            _ => echo(s),
        }
        e.fetch_add(1, Ordering::SeqCst);
    });
    let (proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    let pid = proxy.pid();
    assert_eq!(exchange(addr, b"Ewarm").unwrap(), b"warm");
    let baseline = quiet_baseline(pid);
    let warm_ended = ended.load(Ordering::SeqCst);

    let mut seed = 0x5eed_u64;
    let mut next = move |lo: usize, hi: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (seed >> 33) as usize % (hi - lo)
    };
    let vanishing = 40;
    for i in 0..vanishing {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        match i % 4 {
            // Downloads that reset part-way.
            0 | 1 => {
                c.write_all(b"D").unwrap();
                let mut left = next(1, 4 << 20);
                let mut buf = vec![0u8; 65536];
                while left > 0 {
                    let n = c.read(&mut buf[..left.min(65536)]).expect("download");
                    assert!(n > 0, "download ended early");
                    left -= n;
                }
                socket2::SockRef::from(&c)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            // Uploads that reset part-way.
            2 => {
                c.write_all(b"U").unwrap();
                c.write_all(&pattern(next(1, 4 << 20), i as u64)).unwrap();
                socket2::SockRef::from(&c)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            // Downloads closed with unread data (the kernel resets them).
            _ => {
                c.write_all(b"D").unwrap();
                let mut buf = vec![0u8; 1024];
                c.read_exact(&mut buf).unwrap();
            }
        }
        drop(c);
    }
    poll_until(
        "the backend to see every vanished client's connection end",
        DEADLINE,
        || {
            let n = ended.load(Ordering::SeqCst) - warm_ended;
            if n == vanishing {
                Ok(())
            } else {
                Err(format!("{n} of {vanishing} ended"))
            }
        },
    );
    let settle = fds_back_to(pid, &baseline, DEADLINE);
    println!(
        "vanishing clients: {vanishing} reset or abandoned mid-transfer; backend saw all end; \
         rsproxyd fds back to {} in {:.0} ms",
        baseline.total,
        settle.as_secs_f64() * 1000.0
    );
    assert_eq!(exchange(addr, b"Eafter").unwrap(), b"after");
    let mut proxy = proxy;
    assert!(proxy.is_running());
    // After the exit every line has been read, not only those read so far.
    let log = proxy.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// Sends a byte and waits for the connection to end; returns how long after connecting it
/// ended (EOF or reset) and whether any byte came back.
fn wait_for_close(addr: SocketAddr) -> std::thread::JoinHandle<(Duration, Result<usize, String>)> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = c.write_all(b"hello");
        let mut got = Vec::new();
        let r = match c.read_to_end(&mut got) {
            Ok(_) => Ok(got.len()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got.len()),
            Err(e) => Err(e.to_string()),
        };
        (start.elapsed(), r)
    })
}

/// Waits for the `n`th (from 0) "Failed to connect to remote host" warning and returns it.
fn nth_connect_warning(proxy: &Proxy, n: usize) -> String {
    poll_until(&format!("connect-timeout warning {n}"), DEADLINE, || {
        let log = proxy.stderr();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Failed to connect to remote host"))
            .collect();
        match lines.get(n) {
            Some(l) => Ok(l.to_string()),
            None => Err(format!("{} warnings", lines.len())),
        }
    })
}

/// A backend that never binds (TCP port refusing, unix path never created): each round of
/// waiting clients is closed at --connect-timeout, not before and not hung, rsproxyd stays up
/// and its fds return to the baseline.
#[test]
fn backend_never_binds() {
    let cold = Cold::new();
    let dir = std::env::temp_dir().join(format!("rsproxyd-rel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("never.sock");
    for target in [cold.addr.to_string(), path.to_str().unwrap().to_string()] {
        let (mut proxy, addr) = spawn_proxy(&target, &["--connect-timeout=500ms"], &[]);
        let pid = proxy.pid();
        // The first round doubles as the warm-up: the runtime's fds exist after it.
        for round in 0..3 {
            let clients: Vec<_> = (0..5).map(|_| wait_for_close(addr)).collect();
            let mut waits = Vec::new();
            for c in clients {
                let (waited, r) = c.join().unwrap();
                assert_eq!(
                    r,
                    Ok(0),
                    "{target} round {round}: a client got data or hung"
                );
                waits.push(waited);
            }
            let longest = waits.iter().max().copied().unwrap_or_default();
            println!(
                "never binds ({target}): round {round}: 5 clients closed after {:?} ms",
                waits.iter().map(|w| w.as_millis()).collect::<Vec<_>>()
            );
            assert!(
                longest >= Duration::from_millis(500),
                "{target} round {round}: closed before --connect-timeout: {waits:?}"
            );
            assert!(
                longest < Duration::from_secs(10),
                "kept waiting long past --connect-timeout: {waits:?}"
            );
            assert!(proxy.is_running(), "rsproxyd exited: {}", proxy.stderr());
            // The warning comes once the waiting clients are closed; a client that connects
            // while rsproxyd is still closing them is closed with them, without a wait.
            let warning = nth_connect_warning(&proxy, round);
            assert!(warning.contains("closed 5 waiting client(s)"), "{warning}");
        }
        let baseline = quiet_baseline(pid);
        let clients: Vec<_> = (0..5).map(|_| wait_for_close(addr)).collect();
        for c in clients {
            assert_eq!(c.join().unwrap().1, Ok(0));
        }
        fds_back_to(pid, &baseline, DEADLINE);
        nth_connect_warning(&proxy, 3);
        // After the exit every line has been read, not only those read so far.
        let log = proxy.stop();
        assert!(!log.contains("panicked"), "{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Out of file descriptors (hard limit 64), rsproxyd neither spins nor floods its log: it
/// uses under 30% of a core while clients wait, warns once, and serves every waiting client
/// once fds free up.
#[test]
fn fd_exhaustion_no_busy_loop_and_recovery() {
    const CLIENTS: usize = 60;
    const FD_LIMIT: u64 = 64;
    let backend = echo_backend();
    let (proxy, addr) = spawn_proxy(&backend.addr.to_string(), &["-c", "1000"], &[]);
    let pid = proxy.pid();
    // rsproxyd raises its soft limit to the hard one at start: lower both once that is done
    // (it has served a client).
    assert_eq!(exchange(addr, b"warm").unwrap(), b"warm");
    limit_fds_of(pid, FD_LIMIT);
    assert_eq!(
        fd_limits_of(pid),
        (FD_LIMIT.to_string(), FD_LIMIT.to_string())
    );
    let baseline = quiet_baseline(pid);

    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (release, served) = (release.clone(), served.clone());
            let mut c = TcpStream::connect(addr).unwrap();
            std::thread::spawn(move || {
                c.set_read_timeout(Some(DEADLINE)).unwrap();
                let msg = [i as u8];
                c.write_all(&msg).unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b)
                    .map_err(|e| format!("client {i}: {e}"))?;
                if b != msg {
                    return Err(format!("client {i}: got {b:?}"));
                }
                served.fetch_add(1, Ordering::SeqCst);
                // Hold the relay (and its two fds) until the test lets go.
                while !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            })
        })
        .collect();
    proxy.wait_stderr("backing off until file descriptors free up");
    let held = poll_until("rsproxyd to reach its fd limit", DEADLINE, || {
        let n = fd_count(pid);
        if n as u64 >= FD_LIMIT - 1 {
            Ok(n)
        } else {
            Err(format!("{n} fds"))
        }
    });
    let served_before = served.load(Ordering::SeqCst);
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1)); // a stretch of exhaustion to measure over
    let cpu = cpu_time(pid) - cpu0;
    let share = cpu.as_secs_f64() / t0.elapsed().as_secs_f64();
    let still_served = served.load(Ordering::SeqCst);
    let warnings = proxy.stderr().matches("backing off").count();
    println!(
        "fd exhaustion: limit {FD_LIMIT}, {held} fds open, {served_before} of {CLIENTS} clients \
         served, the rest queued; CPU {:.1}% of a core over {:.2} s; {warnings} warning(s)",
        share * 100.0,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        still_served < CLIENTS,
        "every client was served: no exhaustion happened"
    );
    assert!(share < 0.30, "busy loop: {:.0}% of a core", share * 100.0);
    assert!(warnings <= 3, "log flood:\n{}", proxy.stderr());

    release.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap().unwrap();
    }
    assert_eq!(served.load(Ordering::SeqCst), CLIENTS);
    fds_back_to(pid, &baseline, DEADLINE);
    assert_eq!(exchange(addr, b"after").unwrap(), b"after");
    let mut proxy = proxy;
    assert!(proxy.is_running());
    // After the exit every line has been read, not only those read so far.
    let log = proxy.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// SIGTERM with uploads and downloads in flight: rsproxyd stops taking clients (a late one
/// stays queued for the next activation), every transfer completes byte-exact, and it exits 0.
#[test]
fn sigterm_under_load_drains_then_exits_zero() {
    const SIZE: usize = 4 << 20;
    const EACH: usize = 6;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = serve(listener, |mut s| {
        let mut cmd = [0u8; 2];
        if s.read_exact(&mut cmd).is_err() {
            return;
        }
        let seed = u64::from(cmd[1]);
        if cmd[0] == b'D' {
            let data = pattern(SIZE, seed);
            for chunk in data.chunks(256 * 1024) {
                if s.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(15)); // a slow download
            }
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.read_to_end(&mut Vec::new());
        } else {
            // Ready: the upload is relayed; then a reply after the client's half-close.
            if s.write_all(b"R").is_err() {
                return;
            }
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let verdict = if got == pattern(SIZE, seed) {
                "OK"
            } else {
                "BAD"
            };
            let _ = s.write_all(verdict.as_bytes());
        }
    });
    let listener = deep_listener();
    let addr = listener.local_addr().unwrap();
    let keep = listener.try_clone().unwrap();
    let mut proxy = spawn_with_fd(
        listener.into(),
        &["--drain-timeout=30s", &backend.addr.to_string()],
        &[("RUST_LOG", "debug")],
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let mut transfers = Vec::new();
    for i in 0..(2 * EACH) as u8 {
        let ready = ready_tx.clone();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        transfers.push(std::thread::spawn(move || -> Result<(), String> {
            if i % 2 == 0 {
                c.write_all(&[b'D', i]).unwrap();
                let mut got = vec![0u8; 1];
                c.read_exact(&mut got).map_err(|e| e.to_string())?;
                ready.send(()).unwrap();
                c.read_to_end(&mut got).map_err(|e| e.to_string())?;
                c.shutdown(Shutdown::Write).unwrap();
                if got.len() != SIZE || got != pattern(SIZE, u64::from(i)) {
                    return Err(format!("download {i}: {} bytes, differing", got.len()));
                }
            } else {
                c.write_all(&[b'U', i]).unwrap();
                let mut r = [0u8; 1];
                c.read_exact(&mut r).map_err(|e| e.to_string())?;
                ready.send(()).unwrap();
                for chunk in pattern(SIZE, u64::from(i)).chunks(256 * 1024) {
                    c.write_all(chunk).map_err(|e| e.to_string())?;
                    std::thread::sleep(Duration::from_millis(15)); // a slow upload
                }
                c.shutdown(Shutdown::Write).unwrap();
                let mut verdict = String::new();
                c.read_to_string(&mut verdict).map_err(|e| e.to_string())?;
                if verdict != "OK" {
                    return Err(format!("upload {i}: backend says {verdict:?}"));
                }
            }
            Ok(())
        }));
    }
    for _ in 0..2 * EACH {
        ready_rx
            .recv_timeout(DEADLINE)
            .expect("a transfer to start");
    }
    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    proxy.wait_stderr("signal received");
    let mut late = TcpStream::connect(addr).unwrap();
    late.write_all(b"late").unwrap();
    for (i, t) in transfers.into_iter().enumerate() {
        t.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("transfer {i}: {e}"));
    }
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd did not exit");
    println!(
        "SIGTERM under load: {} transfers of {} completed byte-exact; exit {status} {:.0} ms \
         after the signal",
        2 * EACH,
        mib(SIZE as u64),
        signalled.elapsed().as_secs_f64() * 1000.0
    );
    assert!(status.success(), "{status:?}: {}", proxy.stderr());
    assert_eq!(
        backend.accepted.load(Ordering::SeqCst),
        2 * EACH,
        "the late client reached the backend"
    );
    // The late client waits in the socket's queue for the next activation, unharmed.
    keep.set_nonblocking(false).unwrap();
    let (mut queued, _) = keep.accept().unwrap();
    queued.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 4];
    queued.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"late");
    assert!(!proxy.stderr().contains("panicked"));
}

/// The drain is bounded: a connection that stays open past --drain-timeout is closed and
/// rsproxyd still exits 0, after the grace and not long after it.
#[test]
fn sigterm_drain_is_bounded() {
    let backend = echo_backend();
    let (mut proxy, addr) = spawn_proxy(&backend.addr.to_string(), &["--drain-timeout=500ms"], &[]);
    let mut c = relayed_client(addr);
    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    let status = proxy
        .wait_exit(DEADLINE)
        .expect("no exit after the drain timeout");
    let took = signalled.elapsed();
    let mut rest = Vec::new();
    let end = c.read_to_end(&mut rest);
    println!(
        "drain bound: exit {status} {:.0} ms after SIGTERM with one idle connection open; the \
         client then read {end:?}",
        took.as_secs_f64() * 1000.0
    );
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        matches!(&end, Ok(0))
            || matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    assert!(
        proxy.stderr().contains("drain timeout"),
        "{}",
        proxy.stderr()
    );
}

/// An endless slow download behind rsproxyd with `args`; returns it and a client that has
/// read its first byte.
fn slow_download(args: &[&str], env: &[(&str, &str)]) -> (Proxy, TcpStream) {
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        let chunk = pattern(16 * 1024, 3);
        while s.write_all(&chunk).is_ok() {
            std::thread::sleep(Duration::from_millis(10)); // the backend's pace
        }
    });
    let (proxy, addr) = spawn_proxy(&backend.addr.to_string(), args, env);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut first = [0u8; 1];
    c.read_exact(&mut first).unwrap();
    (proxy, c)
}

/// A second SIGTERM cuts transfers at once, with a reset (not a FIN that would make the cut
/// look like the end of the data), and exits non-zero.
#[test]
fn second_signal_cut_is_a_reset_not_a_clean_eof() {
    let (mut proxy, mut c) = slow_download(&[], &[("RUST_LOG", "debug")]);
    proxy.signal(libc::SIGTERM);
    // Two signals sent before the handler ran would be merged into one by the kernel.
    proxy.wait_stderr("signal received");
    proxy.signal(libc::SIGTERM);
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    let status = proxy.wait_exit(DEADLINE).expect("no exit");
    println!(
        "second signal: the client read {} more bytes, then {end:?}; rsproxyd {status}",
        got.len()
    );
    assert!(!status.success());
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a transfer cut by the second signal ended with {end:?}: indistinguishable from a \
         complete one"
    );
}

/// A transfer cut by --drain-timeout ends with a reset, so the client cannot take the cut
/// for a complete transfer (a clean EOF would look like the end of the data).
#[test]
fn drain_timeout_cut_is_a_reset_not_a_clean_eof() {
    let (mut proxy, mut c) = slow_download(&["--drain-timeout=300ms"], &[]);
    proxy.signal(libc::SIGTERM);
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    let status = proxy.wait_exit(DEADLINE).expect("no exit");
    println!(
        "drain cut: the client read {} more bytes, then {end:?}; rsproxyd {status}",
        got.len()
    );
    assert!(status.success());
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a transfer cut at the drain timeout ended with {end:?}: indistinguishable from a \
         complete one"
    );
}

/// What an fd passed to rsproxyd is, for the bad-input table.
#[derive(Clone, Copy, Debug)]
enum Passed {
    Listener,
    Udp,
    UnixDatagram,
    SeqPacketListener,
    Pipe,
    DevNull,
    Directory,
}

impl Passed {
    fn open(self) -> std::os::fd::OwnedFd {
        use std::os::fd::OwnedFd;
        match self {
            Passed::Listener => TcpListener::bind("127.0.0.1:0").unwrap().into(),
            Passed::Udp => std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into(),
            Passed::UnixDatagram => std::os::unix::net::UnixDatagram::unbound().unwrap().into(),
            Passed::SeqPacketListener => {
                let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
                    .unwrap();
                let name = format!("\0rsproxyd-rel-seq-{}", std::process::id());
                s.bind(&socket2::SockAddr::unix(name).unwrap()).unwrap();
                s.listen(8).unwrap();
                s.into()
            }
            Passed::Pipe => {
                let (r, _w) = nix::unistd::pipe().unwrap();
                r
            }
            Passed::DevNull => std::fs::File::open("/dev/null").unwrap().into(),
            Passed::Directory => OwnedFd::from(std::fs::File::open("/").unwrap()),
        }
    }
}

/// One row of the bad-input table: arguments, LISTEN_FDS and LISTEN_PID (None: unset;
/// "$$": rsproxyd's own pid), the fds passed from 3 on, and the text the error must contain.
struct Bad<'a> {
    args: Vec<std::ffi::OsString>,
    listen_fds: Option<&'a str>,
    listen_pid: Option<String>,
    fds: Vec<Passed>,
    want: &'a str,
    /// systemd-socket-proxyd refuses it too (it checks TARGET only per connection).
    ssp_refuses: bool,
}

/// Runs rsproxyd for one row; returns (exit code, stdout + stderr). Kills it (by pid) if it
/// is still running after 10 s: a bad input it accepted.
fn run_bad(binary: &str, row: &Bad) -> (Option<i32>, String) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut script = String::new();
    if let Some(pid) = &row.listen_pid {
        script.push_str(&format!("LISTEN_PID={pid} "));
    }
    if let Some(n) = row.listen_fds {
        script.push_str(&format!("LISTEN_FDS='{n}' "));
    }
    script.push_str("exec \"$0\" \"$@\"");
    let fds: Vec<std::os::fd::OwnedFd> = row.fds.iter().map(|p| p.open()).collect();
    // Move them out of the 3.. range first, so that dup2 onto 3.. clobbers none of them.
    let high: Vec<i32> = fds
        .iter()
        .map(|f| {
            nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap()
        })
        .collect();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg(binary)
        .args(&row.args)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let targets = high.clone();
    // SAFETY: only async-signal-safe calls (dup2, close) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in 3..16 {
                if !targets.contains(&fd) {
                    libc::close(fd);
                }
            }
            for (i, fd) in targets.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn rsproxyd");
    for fd in high {
        // SAFETY: our own dup from above, not used elsewhere.
        unsafe { libc::close(fd) };
    }
    drop(fds);
    let end = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    (code, text)
}

/// Every malformed TARGET, option value and LISTEN_* environment in the table (beyond the
/// rows of tests/errors.rs) exits 1 with a message naming what is wrong, and none panics.
#[test]
fn bad_input_table() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use Passed::*;
    let s = |v: &[&str]| -> Vec<OsString> { v.iter().map(OsString::from).collect() };
    let long_path = format!("/{}", "a".repeat(107));
    let long_abstract = format!("@{}", "a".repeat(107));
    let test_pid = std::process::id().to_string();
    let ours = Some("$$".to_string());
    // Arguments only: a valid activation environment, so the message is the command line's.
    let args = |args: Vec<OsString>, want: &'static str, ssp_refuses: bool| Bad {
        args,
        listen_fds: Some("1"),
        listen_pid: Some("$$".to_string()),
        fds: vec![Listener],
        want,
        ssp_refuses,
    };
    let tgt = |a, want| args(a, want, false);
    let cli = |a, want| args(a, want, true);
    // The environment only: a valid command line.
    let env = |fds: Option<&'static str>, pid: Option<String>, passed: Vec<Passed>, want| Bad {
        args: s(&["127.0.0.1:80"]),
        listen_fds: fds,
        listen_pid: pid,
        fds: passed,
        want,
        ssp_refuses: true,
    };
    let table: Vec<Bad> = vec![
        // TARGET
        tgt(s(&[""]), "target is empty"),
        tgt(s(&["localhost"]), "'localhost' has no port"),
        tgt(s(&["127.0.0.1:"]), "bad port ''"),
        tgt(s(&["127.0.0.1:0"]), "bad port '0'"),
        tgt(s(&["127.0.0.1:65536"]), "bad port '65536'"),
        tgt(s(&["127.0.0.1:http"]), "bad port 'http'"),
        tgt(s(&["127.0.0.1:+80"]), "bad port '+80'"),
        tgt(s(&["127.0.0.1: 80"]), "bad port ' 80'"),
        tgt(
            s(&["127.0.0.1:99999999999999999999"]),
            "bad port '99999999999999999999'",
        ),
        tgt(s(&[":8080"]), "has no host before the port"),
        tgt(s(&["[::1]"]), "'[::1]' has no port"),
        tgt(s(&["[::1:8080"]), "bad bracketed address"),
        tgt(s(&["[127.0.0.1]:80"]), "bad bracketed address"),
        tgt(s(&["[]:80"]), "bad bracketed address"),
        tgt(s(&["[::1]8080"]), "'[::1]8080' has no port"),
        tgt(s(&["[::1]:0"]), "bad port '0'"),
        tgt(s(&["[fe80::1%eth0]:80"]), "bad bracketed address"),
        tgt(s(&["fe80::1%eth0:80"]), "without brackets"),
        tgt(s(&["./app.sock"]), "must be absolute"),
        tgt(s(&["unix:/run/x.sock"]), "bad port '/run/x.sock'"),
        tgt(s(&["@"]), "abstract socket needs a name"),
        tgt(s(&[&long_path]), "108 bytes, longer than the 107"),
        tgt(s(&[&long_abstract]), "108 bytes, longer than the 107"),
        tgt(
            vec![OsString::from_vec(b"\xff:80".to_vec())],
            "invalid UTF-8",
        ),
        cli(s(&["-c", "5", "a:1", "b:2", "c:3"]), "Too many parameters"),
        tgt(s(&["--", "-c"]), "'-c' has no port"),
        // Option values
        cli(
            s(&["-c", "-5", "a:1"]),
            "Failed to parse --connections-max= argument: -5",
        ),
        cli(
            s(&["--connections-max=", "a:1"]),
            "--connections-max= argument:  (",
        ),
        cli(s(&["-c", "1.5", "a:1"]), "--connections-max= argument: 1.5"),
        cli(
            s(&["-c", "18446744073709551616", "a:1"]),
            "--connections-max= argument: 18446744073709551616",
        ),
        cli(
            s(&["--connections-max=∞", "a:1"]),
            "--connections-max= argument: ∞",
        ),
        cli(
            s(&["--exit-idle-time=5mins", "a:1"]),
            "--exit-idle-time= argument: 5mins",
        ),
        cli(
            s(&["--exit-idle-time=1..2s", "a:1"]),
            "--exit-idle-time= argument: 1..2s",
        ),
        cli(
            s(&["--exit-idle-time=s5", "a:1"]),
            "--exit-idle-time= argument: s5",
        ),
        cli(
            s(&["--exit-idle-time=Infinity", "a:1"]),
            "--exit-idle-time= argument: Infinity",
        ),
        cli(
            s(&["--exit-idle-time=1ns", "a:1"]),
            "--exit-idle-time= argument: 1ns",
        ),
        cli(
            s(&["--exit-idle-time=1 infinity", "a:1"]),
            "--exit-idle-time= argument: 1 infinity",
        ),
        cli(
            s(&["--drain-timeout=1e3", "a:1"]),
            "--drain-timeout= argument: 1e3",
        ),
        cli(
            s(&["--drain-timeout=-1s", "a:1"]),
            "--drain-timeout= argument: -1s",
        ),
        cli(
            s(&["--connect-timeout=", "a:1"]),
            "--connect-timeout= argument:  (",
        ),
        cli(
            s(&["--connect-timeout=5 min 3x", "a:1"]),
            "--connect-timeout= argument: 5 min 3x",
        ),
        cli(
            s(&["--connect-timeout"]),
            "a value is required for '--connect-timeout",
        ),
        cli(
            s(&["--follow-backend=yes", "a:1"]),
            "unexpected value 'yes' for '--follow-backend'",
        ),
        cli(
            s(&["--proxy-protocol=v3", "a:1"]),
            "Failed to parse --proxy-protocol= argument: v3 (expected one of: v1, v2)",
        ),
        cli(
            s(&["--queue-timeout=soon", "a:1"]),
            "Failed to parse --queue-timeout= argument: soon",
        ),
        cli(
            s(&["--session-timeout=-1s", "a:1"]),
            "Failed to parse --session-timeout= argument: -1s",
        ),
        cli(s(&["-x", "a:1"]), "unexpected argument '-x'"),
        // LISTEN_* environment
        env(Some(""), ours.clone(), vec![Listener], "LISTEN_FDS=\"\""),
        env(
            Some("-1"),
            ours.clone(),
            vec![Listener],
            "LISTEN_FDS=\"-1\"",
        ),
        env(
            Some("1x"),
            ours.clone(),
            vec![Listener],
            "LISTEN_FDS=\"1x\"",
        ),
        // sd_listen_fds() reads numbers with base 0: 0x1 is taken (by both), 08 is not.
        env(
            Some("08"),
            ours.clone(),
            vec![Listener],
            "LISTEN_FDS=\"08\"",
        ),
        env(
            Some("99999999999"),
            ours.clone(),
            vec![Listener],
            "LISTEN_FDS=\"99999999999\"",
        ),
        env(Some("1"), None, vec![Listener], "LISTEN_PID is not"),
        env(None, ours.clone(), vec![Listener], "LISTEN_FDS is not set"),
        env(
            Some("1"),
            Some("''".into()),
            vec![Listener],
            "LISTEN_PID=\"\"",
        ),
        env(
            Some("1"),
            Some("0".into()),
            vec![Listener],
            "LISTEN_PID=\"0\"",
        ),
        env(
            Some("1"),
            Some("-5".into()),
            vec![Listener],
            "LISTEN_PID=\"-5\"",
        ),
        env(
            Some("1"),
            Some("99999999999".into()),
            vec![Listener],
            "LISTEN_PID=\"99999999999\"",
        ),
        env(
            Some("1"),
            Some(test_pid.clone()),
            vec![Listener],
            "is not our pid",
        ),
        // The passed fds
        env(Some("1"), ours.clone(), vec![Pipe], "fd 3 is not a socket"),
        env(
            Some("1"),
            ours.clone(),
            vec![Directory],
            "fd 3 is not a socket",
        ),
        env(
            Some("1"),
            ours.clone(),
            vec![SeqPacketListener],
            "fd 3 is a seqpacket socket",
        ),
        // Datagram sockets are relayed (ListenDatagram=); the fd after one is still checked.
        env(
            Some("2"),
            ours.clone(),
            vec![UnixDatagram, DevNull],
            "fd 4 is not a socket",
        ),
        env(
            Some("2"),
            ours.clone(),
            vec![Udp, SeqPacketListener],
            "fd 4 is a seqpacket socket",
        ),
        env(
            Some("2"),
            ours.clone(),
            vec![Listener, DevNull],
            "fd 4 is not a socket",
        ),
        env(
            Some("3"),
            ours.clone(),
            vec![Listener, Listener],
            "fd 5 is not open",
        ),
    ];
    let ssp = [
        "/lib/systemd/systemd-socket-proxyd",
        "/usr/lib/systemd/systemd-socket-proxyd",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    let mut failures = Vec::new();
    let mut ssp_checked = 0;
    for row in &table {
        let (code, text) = run_bad(bin(), row);
        let what = format!(
            "{:?} LISTEN_FDS={:?} LISTEN_PID={:?} fds {:?}",
            row.args, row.listen_fds, row.listen_pid, row.fds
        );
        if code != Some(1) || !text.contains(row.want) || text.contains("panicked") {
            failures.push(format!(
                "{what}: exit {code:?}, want 1 and {:?}; output {text:?}",
                row.want
            ));
        }
        if let (Some(ssp), true) = (ssp, row.ssp_refuses) {
            let (code, text) = run_bad(ssp, row);
            ssp_checked += 1;
            if code != Some(1) {
                failures.push(format!(
                    "{what}: systemd-socket-proxyd accepts it (exit {code:?}, {text:?})"
                ));
            }
        }
    }
    println!(
        "bad input: {} rows, {} failed; {ssp_checked} of them also refused by {}",
        table.len(),
        failures.len(),
        ssp.unwrap_or("systemd-socket-proxyd (not installed: not compared)")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A repeated option takes its last value, as in systemd-socket-proxyd (getopt), so a unit
/// that starts the original starts rsproxyd too.
#[test]
fn repeated_options_take_the_last_value() {
    let backend = echo_backend();
    let (mut proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &[
            "-c",
            "1",
            "--connections-max=4",
            "--exit-idle-time=1s",
            "--exit-idle-time=infinity",
        ],
        &[],
    );
    let client = std::thread::spawn(move || exchange(addr, b"again"));
    poll_until("rsproxyd to serve or to exit", DEADLINE, || {
        if client.is_finished() || !proxy.is_running() {
            Ok(())
        } else {
            Err("neither yet".into())
        }
    });
    if !proxy.is_running() {
        let status = proxy.wait_exit(DEADLINE);
        panic!(
            "refused a command line systemd-socket-proxyd takes ({status:?}): {}",
            proxy.stderr()
        );
    }

    assert_eq!(client.join().unwrap().unwrap(), b"again");
}
