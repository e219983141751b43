//! Nothing holds or waits forever (issue 15): TCP keepalive frees the relay of a vanished
//! client, the idle and half-close timeouts end silent relays with a FIN, and a client
//! queued behind `-c` is closed after `--queue-timeout`. Real binary, real peers.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How a backend connection ended, as its backend saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// read() returned 0: a FIN.
    Eof,
    /// read() failed (a reset).
    Error(ErrorKind),
}

/// A backend that echoes each connection and records how each one ended.
struct Recording {
    addr: SocketAddr,
    ends: Arc<Mutex<Vec<End>>>,
}

impl Recording {
    fn ends(&self) -> Vec<End> {
        self.ends.lock().unwrap().clone()
    }

    /// Waits until `n` connections have ended; returns how.
    fn wait_ends(&self, n: usize) -> Vec<End> {
        wait_for(&format!("{n} backend connection(s) to end"), || {
            let e = self.ends();
            (e.len() >= n).then_some(e)
        })
    }
}

/// An echo backend on `listener` that records how each connection ended. With `mute`, it
/// reads but never writes nor closes (a backend that never answers a half-close).
fn recording_backend(listener: TcpListener, mute: bool) -> Recording {
    let addr = listener.local_addr().unwrap();
    let ends = Arc::new(Mutex::new(Vec::new()));
    let log = ends.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let log = log.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let end = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break End::Eof,
                        Ok(n) => {
                            if !mute && s.write_all(&buf[..n]).is_err() {
                                break End::Error(ErrorKind::BrokenPipe);
                            }
                        }
                        Err(e) => break End::Error(e.kind()),
                    }
                };
                log.lock().unwrap().push(end);
                if mute {
                    // Never close its side: the socket stays open until the test exits.
                    std::mem::forget(s);
                }
            });
        }
    });
    Recording { addr, ends }
}

/// Sends one byte and waits for its echo: the connection is relayed.
fn relayed(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
    c
}

/// Reads until the connection ends; returns how long that took and what read() said last.
fn wait_closed(c: &mut TcpStream) -> (Duration, std::io::Result<usize>) {
    let start = Instant::now();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (start.elapsed(), Ok(0)),
            Ok(_) => continue,
            Err(e) => return (start.elapsed(), Err(e)),
        }
    }
}

/// An idle keep-alive client is closed after --connection-idle-timeout with a FIN on both
/// sides (read returns 0, not a reset), the log says why, and rsproxyd then exits idle.
#[test]
fn idle_keepalive_client_gets_a_fin_then_rsproxyd_exits() {
    let backend = recording_backend(TcpListener::bind("127.0.0.1:0").unwrap(), false);
    let (mut proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &["--connection-idle-timeout=2s", "--exit-idle-time=500ms"],
        &[("RUST_LOG", "debug")],
    );
    // One HTTP/1.1 request and its answer (the echo), then the client keeps the
    // connection open for the next request, which never comes.
    let mut c = TcpStream::connect(addr).unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    c.write_all(req).unwrap();
    let mut got = vec![0u8; req.len()];
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.read_exact(&mut got).unwrap();
    let (after, last) = wait_closed(&mut c);
    assert_eq!(
        last.map_err(|e| e.kind()),
        Ok(0),
        "closed by a FIN, not a reset"
    );
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_secs(5),
        "closed {after:?} after the last byte, want about 2 s"
    );
    assert_eq!(
        backend.wait_ends(1),
        vec![End::Eof],
        "the backend got a FIN"
    );
    let status = proxy
        .wait_exit(DEADLINE)
        .expect("no idle exit after the timeout");
    assert!(status.success(), "{status:?}");
    let log = proxy.stderr();
    assert!(log.contains("closed (idle-timeout)"), "{log}");
}

/// A transfer that keeps moving is never cut by the idle timeout, however long it runs:
/// a 2.4 s download in 50 ms steps under --connection-idle-timeout=500ms arrives whole.
#[test]
fn progressing_download_is_not_cut() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 48;
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        let data = pattern(CHUNK * CHUNKS, 15);
        for chunk in data.chunks(CHUNK) {
            if s.write_all(chunk).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50)); // a slow, steady download
        }
    });
    let (_proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &[
            "--connection-idle-timeout=500ms",
            "--half-close-timeout=500ms",
        ],
        &[],
    );
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert!(
        start.elapsed() > Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(got.len(), CHUNK * CHUNKS);
    assert!(got == pattern(CHUNK * CHUNKS, 15), "bytes differ");
}

/// A half-closed relay whose backend never closes its side is ended after
/// --half-close-timeout with FINs, freeing the only -c slot for the next client.
#[test]
fn half_closed_relay_is_freed() {
    let mute = recording_backend(TcpListener::bind("127.0.0.1:0").unwrap(), true);
    let dir = std::env::temp_dir().join(format!("rsproxyd-halfclose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let (proxy, addr) = spawn_proxy(
        &mute.addr.to_string(),
        &["-c", "1", "--half-close-timeout=1s"],
        &[
            ("RUST_LOG", "debug"),
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ],
    );
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        mute.wait_ends(1),
        vec![End::Eof],
        "the FIN reached the backend"
    );
    let (after, last) = wait_closed(&mut c);
    assert_eq!(last.map_err(|e| e.kind()), Ok(0), "closed by a FIN");
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(4),
        "closed {after:?} after the half-close, want about 1 s"
    );
    // The slot is free again: the next client is relayed (the backend reads its bytes).
    let mut next = TcpStream::connect(addr).unwrap();
    next.write_all(b"next").unwrap();
    next.shutdown(Shutdown::Write).unwrap();
    mute.wait_ends(2);
    // The log is read from a pipe by another thread: wait for the line, do not race it.
    proxy.wait_stderr("closed (half-close-timeout)");
    // STATUS= counts it.
    let mut buf = [0u8; 4096];
    let status = loop {
        let n = notify.recv(&mut buf).expect("a STATUS= with the count");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.contains("half-close timeout 1") {
            break msg;
        }
    };
    assert!(
        status.contains("ended by keepalive 0, idle timeout 0"),
        "{status}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without the new options nothing changes: a silent relay is still open after 1.5 s.
#[test]
fn defaults_keep_silent_relays_open() {
    let backend = recording_backend(TcpListener::bind("127.0.0.1:0").unwrap(), false);
    let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    let mut c = relayed(addr);
    c.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut b = [0u8; 1];
    let r = c.read(&mut b);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "a silent relay ended without a timeout set: {r:?}"
    );
    assert!(backend.ends().is_empty());
}

/// As systemd's own socket-proxyd test: -c 1 with one connection held, the next client is
/// closed unserved within --queue-timeout, the journal says "Hit connection limit", and
/// the held connection still works.
#[test]
fn queued_client_closed_after_queue_timeout() {
    for (timeout, at_least, at_most) in [("500ms", 400, 3000), ("0", 0, 1000)] {
        let backend = echo_backend();
        let (proxy, addr) = spawn_proxy(
            &backend.addr.to_string(),
            &["-c", "1", &format!("--queue-timeout={timeout}")],
            &[],
        );
        let mut held = relayed(addr);
        let mut next = TcpStream::connect(addr).unwrap();
        let _ = next.write_all(b"y");
        let (after, last) = wait_closed(&mut next);
        assert!(
            matches!(&last, Ok(0)) || last.is_err(),
            "{timeout}: closed, no byte: {last:?}"
        );
        assert!(
            after >= Duration::from_millis(at_least) && after < Duration::from_millis(at_most),
            "--queue-timeout={timeout}: closed after {after:?}"
        );
        let log = proxy.wait_stderr("Hit connection limit");
        assert_eq!(log.matches("Hit connection limit").count(), 1, "{log}");
        assert_eq!(
            backend.accepted.load(Ordering::SeqCst),
            1,
            "served unserved?"
        );
        held.write_all(b"still").unwrap();
        let mut b = [0u8; 5];
        held.read_exact(&mut b).unwrap();
        assert_eq!(
            &b, b"still",
            "--queue-timeout={timeout}: the held connection"
        );
    }
}

/// Each queued client waits --queue-timeout from its own arrival, not from the first
/// one's: with 2 s and arrivals 1 s apart, each is closed about 2 s after it connected.
/// The burst gets one warning as it starts and one total when a slot is free again.
#[test]
fn queue_timeout_counts_from_each_clients_arrival() {
    let backend = echo_backend();
    let (proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &["-c", "1", "--queue-timeout=2s"],
        &[],
    );
    let held = relayed(addr);
    let waiter = move || {
        thread::spawn(move || {
            let start = Instant::now();
            let mut c = TcpStream::connect(addr).unwrap();
            let (_, last) = wait_closed(&mut c);
            (start.elapsed(), last.map_err(|e| e.kind()))
        })
    };
    let first = waiter();
    thread::sleep(Duration::from_secs(1)); // the second client's arrival, 1 s later
    let second = waiter();
    for (name, w) in [("first", first), ("second", second)] {
        let (after, last) = w.join().unwrap();
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_millis(2900),
            "{name} client closed {after:?} after it connected ({last:?})"
        );
    }
    let log = proxy.wait_stderr("Hit connection limit");
    assert_eq!(log.matches("Hit connection limit").count(), 1, "{log}");
    drop(held);
    assert_eq!(exchange(addr, b"after").unwrap(), b"after");
    let log = proxy.wait_stderr("2 client(s) closed unserved in all");
    assert_eq!(log.matches("Hit connection limit").count(), 2, "{log}");
}

/// A burst of short requests under -c 2 is all served through the queue (it still helps),
/// with no client closed and no warning.
#[test]
fn burst_under_connection_limit_all_served() {
    let backend = echo_backend();
    let (proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &["-c", "2", "--queue-timeout=5s"],
        &[],
    );
    let clients: Vec<_> = (0..40)
        .map(|i| thread::spawn(move || exchange(addr, format!("request {i}").as_bytes())))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(
            c.join().unwrap().unwrap(),
            format!("request {i}").as_bytes()
        );
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 40);
    assert!(!proxy.stderr().contains("Hit connection limit"));
}

/// A client waiting for a cold backend is not the queue timeout's business: with
/// --queue-timeout=100ms it is served once the backend listens 600 ms later.
#[test]
fn cold_backend_wait_is_not_a_queue_wait() {
    let cold = Cold::new();
    let (proxy, addr) = spawn_proxy(
        &cold.addr.to_string(),
        &["-c", "1", "--queue-timeout=100ms", "--connect-timeout=10s"],
        &[],
    );
    let client = thread::spawn(move || exchange(addr, b"cold"));
    thread::sleep(Duration::from_millis(600)); // the backend's start-up time
    let backend = serve(cold.listen(), echo);
    assert_eq!(client.join().unwrap().unwrap(), b"cold");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
    assert!(!proxy.stderr().contains("Hit connection limit"));
}

/// The keepalive on a passed listener (shared with systemd, and inherited by every accepted
/// client): rsproxyd's defaults (60 s idle, 10 s interval, 6 probes) when the unit set
/// nothing, the unit's own values untouched when it set some, and off with --keepalive=off.
#[test]
fn listener_keepalive_defaults_and_unit_settings() {
    let backend = echo_backend();
    let target = backend.addr.to_string();
    let read = |l: &TcpListener| {
        let s = socket2::SockRef::from(l);
        (
            s.keepalive().unwrap(),
            s.keepalive_time().unwrap().as_secs(),
            s.keepalive_interval().unwrap().as_secs(),
            s.keepalive_retries().unwrap(),
        )
    };
    let bare = TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = bare.try_clone().unwrap();
    let before = read(&ours);
    assert!(!before.0, "a fresh listener has keepalive off");
    let _p = spawn_with_fd(bare.into(), &[&target], &[]);
    let got = wait_for("rsproxyd to set keepalive", || {
        let r = read(&ours);
        r.0.then_some(r)
    });
    assert_eq!(got, (true, 60, 10, 6), "rsproxyd's defaults");
    // The next client is relayed as before.
    assert_eq!(exchange(ours.local_addr().unwrap(), b"ka").unwrap(), b"ka");

    let unit = TcpListener::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&unit)
        .set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(5))
                .with_retries(3),
        )
        .unwrap();
    let theirs = unit.try_clone().unwrap();
    let addr = unit.local_addr().unwrap();
    let _p = spawn_with_fd(unit.into(), &[&target], &[]);
    assert_eq!(exchange(addr, b"unit").unwrap(), b"unit");
    assert_eq!(read(&theirs), (true, 30, 5, 3), "the unit's settings");

    let off = TcpListener::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&off).set_keepalive(true).unwrap();
    let mine = off.try_clone().unwrap();
    let _p = spawn_with_fd(off.into(), &["--keepalive=off", &target], &[]);
    wait_for("--keepalive=off to turn it off", || {
        (!read(&mine).0).then_some(())
    });
}

// --- A vanished client, in a network namespace of the test's own ---------------------------

/// Set in the re-executed test process that runs inside `unshare -n`.
const IN_NETNS: &str = "RSPROXYD_TEST_IN_NETNS";

/// Runs `cmd` (in the namespace); panics with its output if it fails.
fn sh(cmd: &str) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client on `from` that connects to `addr` and is relayed.
fn relayed_from(from: &str, addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut c: TcpStream = s.into();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"v").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    c
}

/// A client that vanishes without a FIN or reset (every packet to and from it dropped by
/// nftables, in a network namespace of the test's own) is noticed by TCP keepalive set in
/// the "unit" (on the listening socket, 1 s idle, 1 s interval, 2 probes): its relay is
/// freed and its backend connection reset within that budget, the -c 1 slot serves the
/// next client, and rsproxyd exits idle. The control, with keepalive off, still holds its
/// relay and runs twice that long after the drop.
#[test]
fn vanished_client_is_freed_by_keepalive() {
    if std::env::var_os(IN_NETNS).is_none() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: needs root for unshare -n and nftables");
            return;
        }
        for tool in ["unshare", "nft", "ip"] {
            let found = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{tool} not found (apt-get install util-linux nftables iproute2)"
            );
        }
        let out = std::process::Command::new("unshare")
            .arg("-n")
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "vanished_client_is_freed_by_keepalive",
                "--nocapture",
            ])
            .env(IN_NETNS, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(
            out.status.success(),
            "the test in the namespace failed:\n{text}"
        );
        assert!(text.contains("1 passed"), "the test did not run:\n{text}");
        return;
    }
    // In the namespace: loopback only.
    sh("ip link set lo up");
    let backend = recording_backend(TcpListener::bind("127.0.0.1:0").unwrap(), false);
    let target = backend.addr.to_string();

    // What a unit with KeepAlive=yes, KeepAliveTimeSec=1, KeepAliveIntervalSec=1 and
    // KeepAliveProbes=2 hands over: a listener with these set.
    let unit = TcpListener::bind("127.0.0.1:0").unwrap();
    let unit_addr = unit.local_addr().unwrap();
    socket2::SockRef::from(&unit)
        .set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(1))
                .with_interval(Duration::from_secs(1))
                .with_retries(2),
        )
        .unwrap();
    let args = ["-c", "1", "--exit-idle-time=2s", &target];
    let mut proxy = spawn_with_fd(unit.into(), &args, &[("RUST_LOG", "debug")]);
    // The control: no keepalive in the unit, and rsproxyd's own defaults turned off.
    let bare = TcpListener::bind("127.0.0.1:0").unwrap();
    let bare_addr = bare.local_addr().unwrap();
    let control_backend = recording_backend(TcpListener::bind("127.0.0.1:0").unwrap(), false);
    let control_target = control_backend.addr.to_string();
    let control_args = [
        "-c",
        "1",
        "--exit-idle-time=2s",
        "--keepalive=off",
        &control_target,
    ];
    let mut control = spawn_with_fd(bare.into(), &control_args, &[]);

    let _gone = relayed_from("127.0.0.9", unit_addr);
    let _gone_too = relayed_from("127.0.0.10", bare_addr);
    sh("nft add table inet t && \
        nft add chain inet t out '{ type filter hook output priority 0; }' && \
        nft add rule inet t out ip saddr '{ 127.0.0.9, 127.0.0.10 }' drop && \
        nft add rule inet t out ip daddr '{ 127.0.0.9, 127.0.0.10 }' drop");
    let dropped = Instant::now();

    // Keepalive: 1 s idle + 2 probes 1 s apart, then the kernel reports ETIMEDOUT and the
    // relay resets its backend connection.
    let ends = backend.wait_ends(1);
    let freed = dropped.elapsed();
    assert_eq!(ends, vec![End::Error(ErrorKind::ConnectionReset)]);
    assert!(
        freed < Duration::from_secs(8),
        "freed {freed:?} after the drop"
    );
    let log = proxy.wait_stderr("closed (keepalive)");
    assert!(proxy.is_running(), "{log}");
    // The slot is free: the next client is relayed, then rsproxyd exits idle.
    let next = relayed(unit_addr);
    drop(next);
    let status = proxy.wait_exit(DEADLINE).expect("no idle exit");
    assert!(status.success(), "{status:?}");

    // The control still holds its relay (and so its -c slot), well past the same budget.
    while dropped.elapsed() < 2 * freed.max(Duration::from_secs(3)) {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        control.is_running(),
        "the control exited: {}",
        control.stderr()
    );
    assert_eq!(
        control_backend.ends(),
        vec![],
        "the control's relay ended too"
    );
    println!(
        "vanished client: relay freed {} ms after the drop; control still open after {} ms",
        freed.as_millis(),
        dropped.elapsed().as_millis()
    );
}
