//! Behaviour of the real binary, started with real LISTEN_FDS on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Bytes arrive unchanged in both directions for 1 byte, 10 MiB and random sizes.
#[test]
fn relay_is_byte_exact() {
    let backend = echo_backend();
    let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    let mut sizes = vec![0usize, 1, 10 * 1024 * 1024];
    let mut seed = 7u64;
    for _ in 0..12 {
        seed = seed
            .wrapping_mul(2862933555777941757)
            .wrapping_add(3037000493);
        sizes.push((seed >> 40) as usize % (3 * 1024 * 1024));
    }
    for (i, size) in sizes.into_iter().enumerate() {
        let data = pattern(size, i as u64);
        let got = exchange(addr, &data).expect("exchange");
        assert_eq!(got.len(), data.len(), "size {size}");
        assert!(got == data, "bytes differ for size {size}");
    }
}

/// A client that half-closes still gets the reply the backend sends after seeing EOF.
#[test]
fn half_close_passes_the_reply_through() {
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let reply = format!("received {} bytes", got.len());
        s.write_all(reply.as_bytes()).unwrap();
    });
    let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    let got = exchange(addr, &[b'x'; 100_000]).unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), "received 100000 bytes");
}

/// The backend's half-close reaches the client while the client can still send.
#[test]
fn half_close_from_the_backend_side() {
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        s.write_all(b"hello").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"late data");
    });
    let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"hello");
    c.write_all(b"late data").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    wait_for("backend to get the late data", || {
        (backend.accepted.load(Ordering::SeqCst) == 1).then_some(())
    });
}

/// A client that arrives before the backend listens is served once it does, not reset.
#[test]
fn cold_backend_listening_300ms_later() {
    let cold = Cold::new();
    let (_proxy, addr) = spawn_proxy(&cold.addr.to_string(), &[], &[]);
    let client = thread::spawn(move || exchange(addr, b"ping"));
    thread::sleep(Duration::from_millis(300)); // the backend's start-up time
    let backend = serve(cold.listen(), echo);
    assert_eq!(client.join().unwrap().unwrap(), b"ping");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
}

/// 50 clients at a cold backend are all served, with one probe sequence, one backend
/// connection each and no extra probe connections.
#[test]
fn fifty_clients_one_probe_sequence() {
    let cold = Cold::new();
    let (proxy, addr) = spawn_proxy(&cold.addr.to_string(), &[], &[("RUST_LOG", "debug")]);
    let clients: Vec<_> = (0..50)
        .map(|i| thread::spawn(move || exchange(addr, format!("client {i}").as_bytes())))
        .collect();
    proxy.wait_stderr("probe sequence started");
    thread::sleep(Duration::from_millis(300)); // the backend's start-up time
    let backend = serve(cold.listen(), echo);
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.join().unwrap().unwrap(), format!("client {i}").as_bytes());
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 50);
    // The log is read from a pipe by another thread: wait for every connection's end record
    // (each logged after the probe that served it), so no probe line can still be unread.
    let log = wait_for("the 50 connections' end records", || {
        let log = proxy.stderr();
        (log.matches(" closed (").count() >= 50).then_some(log)
    });
    assert_eq!(log.matches("probe sequence started").count(), 1, "{log}");
    assert_eq!(log.matches("probe sequence ended").count(), 1, "{log}");
}

/// When the backend never listens, waiting clients are closed at --connect-timeout with one
/// warning naming the backend, and the daemon keeps serving.
#[test]
fn connect_timeout_closes_clients_and_keeps_serving() {
    let cold = Cold::new();
    let target = cold.addr.to_string();
    let (mut proxy, addr) = spawn_proxy(&target, &["--connect-timeout=300ms"], &[]);
    let started = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || exchange(addr, b"hi")))
        .collect();
    for c in clients {
        match c.join().unwrap() {
            Ok(got) => assert!(got.is_empty(), "a refused client got data: {got:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    let log = proxy.wait_stderr("Failed to connect to remote host");
    assert!(log.contains(&target), "{log}");
    assert!(log.contains("Connection refused"), "{log}");
    assert!(log.contains("waited"), "{log}");
    assert!(proxy.is_running(), "rsproxyd exited after a timeout");
    let backend = serve(cold.listen(), echo);
    assert_eq!(exchange(addr, b"now").unwrap(), b"now");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
}

/// `-c 2` relays exactly two connections; the third waits in the queue (not accepted, not
/// reset) and is served when a slot frees.
#[test]
fn connection_limit_is_exact() {
    let backend = echo_backend();
    let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &["-c", "2"], &[]);
    let mut held = Vec::new();
    for i in 0..2u8 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.write_all(&[i]).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        held.push(c);
    }
    let mut third = TcpStream::connect(addr).unwrap();
    third.write_all(b"3").unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let early = third.read(&mut b);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "third client got {early:?} while two were relayed"
    );
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 2);
    drop(held.pop());
    third.set_read_timeout(Some(DEADLINE)).unwrap();
    third.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"3");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 3);
}

/// `-c 1` never relays two at once (the original serves two).
#[test]
fn connection_limit_one() {
    let backend = echo_backend();
    let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &["-c1"], &[]);
    let mut first = TcpStream::connect(addr).unwrap();
    first.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    first.read_exact(&mut b).unwrap();
    let mut second = TcpStream::connect(addr).unwrap();
    second.write_all(b"b").unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        second.read(&mut b).is_err(),
        "second relayed while first open"
    );
    drop(first);
    second.set_read_timeout(Some(DEADLINE)).unwrap();
    second.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
}

/// --exit-idle-time counts from start-up: with no client at all, rsproxyd exits 0.
#[test]
fn idle_exit_timer_runs_from_start() {
    let backend = echo_backend();
    let started = Instant::now();
    let (mut proxy, _addr) =
        spawn_proxy(&backend.addr.to_string(), &["--exit-idle-time=300ms"], &[]);
    let status = proxy
        .wait_exit(DEADLINE)
        .expect("rsproxyd did not idle-exit");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// The idle timer does not fire while a connection is open, and restarts when it closes.
#[test]
fn idle_exit_waits_for_connections() {
    let backend = echo_backend();
    let (mut proxy, addr) =
        spawn_proxy(&backend.addr.to_string(), &["--exit-idle-time=200ms"], &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert!(
        proxy.wait_exit(Duration::from_millis(600)).is_none(),
        "exited with a connection open"
    );
    let closed = Instant::now();
    drop(c);
    let status = proxy.wait_exit(DEADLINE).expect("no idle exit after close");
    assert!(status.success());
    assert!(closed.elapsed() >= Duration::from_millis(200));
}

/// Accept=yes: a connected socket as fd 3 is relayed as one connection, then rsproxyd exits 0.
#[test]
fn accept_yes_relays_the_passed_connection() {
    let backend = echo_backend();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server_side, _) = l.accept().unwrap();
    let mut proxy = spawn_with_fd(server_side.into(), &[&backend.addr.to_string()], &[]);
    client.write_all(b"accept=yes").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"accept=yes");
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd kept running");
    assert!(status.success(), "{status:?}");
}

/// Unix socket paths and abstract names work as targets.
#[test]
fn unix_and_abstract_targets() {
    let dir = std::env::temp_dir().join(format!("rsproxyd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("backend.sock");
    let _ = std::fs::remove_file(&path);
    let name = format!("rsproxyd-test-{}", std::process::id());
    let path_listener = UnixListener::bind(&path).unwrap();
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        UnixListener::bind_addr(&a).unwrap()
    };
    for l in [path_listener, abstract_listener] {
        thread::spawn(move || {
            for s in l.incoming() {
                let mut s: UnixStream = s.unwrap();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).unwrap();
                    s.write_all(&got).unwrap();
                });
            }
        });
    }
    for target in [path.to_str().unwrap().to_string(), format!("@{name}")] {
        let (_proxy, addr) = spawn_proxy(&target, &[], &[]);
        let data = pattern(300_000, 3);
        assert_eq!(exchange(addr, &data).unwrap(), data, "{target}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A unix path that does not exist yet is waited for, like a refused TCP port.
#[test]
fn unix_target_created_late() {
    let dir = std::env::temp_dir().join(format!("rsproxyd-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("late.sock");
    let _ = std::fs::remove_file(&path);
    let (_proxy, addr) = spawn_proxy(path.to_str().unwrap(), &[], &[]);
    let client = thread::spawn(move || exchange(addr, b"late"));
    thread::sleep(Duration::from_millis(200)); // the backend's start-up time
    let l = UnixListener::bind(&path).unwrap();
    let (mut s, _) = l.accept().unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    s.write_all(&got).unwrap();
    drop(s);
    assert_eq!(client.join().unwrap().unwrap(), b"late");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[::1]:PORT` is accepted (the original fails on brackets).
#[test]
fn bracketed_ipv6_target() {
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    };
    let backend = serve(l, echo);
    let target = format!("[::1]:{}", backend.addr.port());
    let (_proxy, addr) = spawn_proxy(&target, &[], &[]);
    assert_eq!(exchange(addr, b"six").unwrap(), b"six");
}

/// A host name is resolved and every address is tried: `localhost` reaches a backend that
/// listens on 127.0.0.1 only, whichever of ::1 and 127.0.0.1 the resolver lists first.
#[test]
fn host_name_tries_every_address() {
    let backend = echo_backend();
    let target = format!("localhost:{}", backend.addr.port());
    let (_proxy, addr) = spawn_proxy(&target, &["--connect-timeout=0"], &[]);
    assert_eq!(exchange(addr, b"named").unwrap(), b"named");
}

/// SIGTERM stops accepting but lets a transfer in flight finish, then exits 0.
#[test]
fn sigterm_drains_transfers_in_flight() {
    const SIZE: usize = 8 * 1024 * 1024;
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        let data = pattern(SIZE, 99);
        for chunk in data.chunks(256 * 1024) {
            if s.write_all(chunk).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(20)); // a slow download
        }
    });
    let (mut proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = vec![0u8; 1024];
    c.read_exact(&mut got).unwrap();
    proxy.signal(libc::SIGTERM);
    // New clients are no longer accepted once the signal is handled.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), SIZE);
    assert!(got == pattern(SIZE, 99), "drained bytes differ");
    // The relay ends when the client closes its side too.
    drop(c);
    let status = proxy.wait_exit(DEADLINE).expect("no exit after drain");
    assert!(status.success(), "{status:?}");
}

/// A second SIGTERM exits at once, without waiting for the drain.
#[test]
fn second_signal_exits_at_once() {
    let backend = echo_backend();
    let (mut proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    proxy.signal(libc::SIGTERM);
    assert!(
        proxy.wait_exit(Duration::from_millis(300)).is_none(),
        "did not drain"
    );
    proxy.signal(libc::SIGTERM);
    let status = proxy.wait_exit(DEADLINE).expect("second signal ignored");
    assert!(!status.success());
}

/// Clients waiting for a cold backend when SIGTERM arrives stay queued in the socket (not
/// reset), and the next activation serves them.
#[test]
fn stop_while_cold_leaves_clients_queued() {
    let cold = Cold::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let keep = listener.try_clone().unwrap();
    let target = cold.addr.to_string();
    let mut first = spawn_with_fd(listener.into(), &[&target], &[("RUST_LOG", "debug")]);
    let client = thread::spawn(move || exchange(addr, b"queued"));
    first.wait_stderr("probe sequence started");
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(DEADLINE).expect("no exit").success());
    let backend = serve(cold.listen(), echo);
    let _second = spawn_with_fd(keep.into(), &[&target], &[]);
    assert_eq!(client.join().unwrap().unwrap(), b"queued");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
}

/// --follow-backend: a backend that went away makes rsproxyd exit 0 without taking the new
/// client, which the next activation (with the backend started again) serves.
#[test]
fn follow_backend_exits_when_backend_goes_away() {
    let backend_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = backend_listener.local_addr().unwrap();
    let first_backend = thread::spawn(move || {
        let (s, _) = backend_listener.accept().unwrap();
        echo(s);
        // Returning closes the listener: the backend has exited.
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let keep = listener.try_clone().unwrap();
    let t = target.to_string();
    let mut proxy = spawn_with_fd(listener.into(), &["--follow-backend", &t], &[]);
    assert_eq!(exchange(addr, b"one").unwrap(), b"one");
    first_backend.join().unwrap();
    let client = thread::spawn(move || exchange(addr, b"two"));
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd did not exit");
    assert!(status.success(), "{status:?}");
    assert!(proxy.stderr().contains("went away"), "{}", proxy.stderr());
    // The next activation: backend started again, a new rsproxyd on the same socket.
    let backend = serve(TcpListener::bind(target).unwrap(), echo);
    let _next = spawn_with_fd(keep.into(), &["--follow-backend", &t], &[]);
    assert_eq!(client.join().unwrap().unwrap(), b"two");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
}

/// --follow-backend: a backend that never comes up gets the waiting clients closed at the
/// timeout, then rsproxyd exits 0 so the next connection starts everything again.
#[test]
fn follow_backend_exits_after_timeout() {
    let cold = Cold::new();
    let (mut proxy, addr) = spawn_proxy(
        &cold.addr.to_string(),
        &["--follow-backend", "--connect-timeout=200ms"],
        &[],
    );
    let got = exchange(addr, b"x");
    assert!(
        matches!(&got, Ok(v) if v.is_empty()) || got.is_err(),
        "{got:?}"
    );
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd did not exit");
    assert!(status.success(), "{status:?}");
    assert!(proxy.stderr().contains("Failed to connect to remote host"));
}

/// sd_notify: READY=1 with a STATUS= once the sockets are taken, WATCHDOG=1 when asked for,
/// STOPPING=1 on SIGTERM.
#[test]
fn sd_notify_messages() {
    let dir = std::env::temp_dir().join(format!("rsproxyd-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let backend = echo_backend();
    let (proxy, _addr) = spawn_proxy(
        &backend.addr.to_string(),
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "100000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv = |seen: &mut Vec<String>| {
        let n = sock.recv(&mut buf).expect("notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
    };
    recv(&mut seen);
    assert!(seen[0].starts_with("READY=1\nSTATUS="), "{seen:?}");
    assert!(seen[0].contains(&backend.addr.to_string()), "{seen:?}");
    while !seen.iter().any(|m| m == "WATCHDOG=1") {
        recv(&mut seen);
    }
    proxy.signal(libc::SIGTERM);
    while !seen.iter().any(|m| m.starts_with("STOPPING=1")) {
        recv(&mut seen);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
