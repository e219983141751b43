//! `--kernel-relay` through the real binary: the relay's behaviours with the bytes moved by
//! the kernel (BPF sockmap). Needs root (CAP_BPF and CAP_NET_ADMIN); each test says so and
//! passes without checking anything when not root.
#![cfg(feature = "kernel-relay")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use common::*;

/// The line rsproxyd logs (at debug) when a relay enters the kernel.
const IN_KERNEL: &str = "relayed in the kernel";

fn root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!("skipped: --kernel-relay needs root (CAP_BPF and CAP_NET_ADMIN)");
    }
    root
}

/// rsproxyd with `--kernel-relay` and debug logging in front of `target`.
fn kernel_proxy(target: &str, extra: &[&str]) -> (Proxy, std::net::SocketAddr) {
    let mut args = vec!["--kernel-relay"];
    args.extend_from_slice(extra);
    spawn_proxy(target, &args, &[("RUST_LOG", "debug"), (UNSAFE, "1")])
}

/// Lets `--kernel-relay` run although it is known to be unsafe (see src/kernel_relay.rs).
const UNSAFE: &str = "RSPROXYD_KERNEL_RELAY_UNSAFE";

/// How many relays entered the kernel so far.
fn in_kernel(proxy: &Proxy) -> usize {
    proxy.stderr().matches(IN_KERNEL).count()
}

/// The log once it holds `n` connection-end records. Each relay's lines (its warning, its
/// "relayed in the kernel") come before its end record, so they have all been read then: the
/// stderr reader is a thread of its own, and a log taken right after an exchange may lack them.
fn log_after_ends(proxy: &Proxy, n: usize) -> String {
    wait_for(&format!("{n} connection-end records"), || {
        let log = proxy.stderr();
        (log.matches(" closed (").count() >= n).then_some(log)
    })
}

/// How many relays entered the kernel, counted once the log holds `ends` connection-end
/// records (see [`log_after_ends`]).
fn in_kernel_after_ends(proxy: &Proxy, ends: usize) -> usize {
    log_after_ends(proxy, ends).matches(IN_KERNEL).count()
}

/// Connects and waits until the relay is in the kernel (nothing sent yet, so nothing
/// keeps it in user space).
fn connect_in_kernel(proxy: &Proxy, addr: std::net::SocketAddr) -> TcpStream {
    let before = in_kernel(proxy);
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    wait_for("the relay to enter the kernel", || {
        (in_kernel(proxy) > before).then_some(())
    });
    c
}

/// Sends `data` on `s`, half-closes, and returns everything received until EOF.
fn exchange_on(s: TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut reader = s.try_clone()?;
    let mut writer = s;
    let data = data.to_vec();
    let w = thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut got = Vec::new();
    reader.read_to_end(&mut got)?;
    w.join().unwrap()?;
    Ok(got)
}

/// Where `got` first differs from `want`, and where its following runs of bytes come from in
/// `want` (a duplicated segment shows as a run that starts earlier than where it lands).
fn describe(got: &[u8], want: &[u8]) -> String {
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let mut s = format!(
        "got {} want {} first diff at {}",
        got.len(),
        want.len(),
        first
    );
    let mut at = first;
    for _ in 0..6 {
        if at + 64 > got.len() {
            break;
        }
        let needle = &got[at..at + 64];
        let found = want.windows(64).position(|w| w == needle);
        let run = found.map(|f| {
            got[at..]
                .iter()
                .zip(&want[f..])
                .take_while(|(a, b)| a == b)
                .count()
        });
        s += &format!("; got[{at}..] = want[{found:?}..] for {run:?}");
        match run {
            Some(r) if r > 0 => at += r,
            _ => break,
        }
    }
    s
}

/// Open fds of a process.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Bytes arrive unchanged both ways for 0 bytes, 1 byte, 10 MiB and random sizes, each
/// relay in the kernel; and also when the client sent all and its FIN before the relay
/// started (then the relay may stay in user space).
#[test]
fn byte_exact_small_and_bulk() {
    if !root() {
        return;
    }
    let backend = echo_backend();
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &[]);
    let mut sizes = vec![0usize, 1, 100, 10 * 1024 * 1024];
    let mut seed = 11u64;
    for _ in 0..8 {
        seed = seed
            .wrapping_mul(2862933555777941757)
            .wrapping_add(3037000493);
        sizes.push((seed >> 40) as usize % (3 * 1024 * 1024));
    }
    for (i, size) in sizes.iter().enumerate() {
        let data = pattern(*size, i as u64);
        let got = exchange_on(connect_in_kernel(&proxy, addr), &data)
            .unwrap_or_else(|e| panic!("size {size}: {e}; rsproxyd: {}", proxy.stderr()));
        assert_eq!(got.len(), data.len(), "size {size}");
        assert!(
            got == data,
            "bytes differ for size {size}: {}; rsproxyd: {}",
            describe(&got, &data),
            proxy.stderr()
        );
        let got = exchange(addr, &data).unwrap_or_else(|e| {
            panic!(
                "size {size}, sent at once: {e}; rsproxyd: {}",
                proxy.stderr()
            )
        });
        assert!(
            got == data,
            "bytes differ for size {size}, sent at once: {}; rsproxyd: {}",
            describe(&got, &data),
            proxy.stderr()
        );
    }
    let log = log_after_ends(&proxy, 2 * sizes.len());
    assert!(!log.contains("WARN"), "{log}");
}

/// IPv6 on both sides (an IPv6 listener, an IPv6 backend) goes into the kernel too, and
/// a client on IPv4 relayed to an IPv6 backend.
#[test]
fn ipv6_both_sides_and_mixed() {
    if !root() {
        return;
    }
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        println!("skipped: no IPv6 loopback on this machine");
        return;
    };
    let backend = serve(l, echo);
    let target = format!("[::1]:{}", backend.addr.port());
    let listener = TcpListener::bind("[::1]:0").unwrap();
    let addr6 = listener.local_addr().unwrap();
    let proxy = spawn_with_fd(
        listener.into(),
        &["--kernel-relay", &target],
        &[("RUST_LOG", "debug"), (UNSAFE, "1")],
    );
    let data = pattern(3_000_000, 6);
    assert!(exchange_on(connect_in_kernel(&proxy, addr6), &data).unwrap() == data);
    let (proxy4, addr4) = kernel_proxy(&target, &[]);
    assert!(exchange_on(connect_in_kernel(&proxy4, addr4), &data).unwrap() == data);
}

/// Many small messages on a kept connection (request, reply, request...) stay in order.
#[test]
fn small_messages_ping_pong() {
    if !root() {
        return;
    }
    let backend = echo_backend();
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.set_nodelay(true).unwrap();
    for i in 0..2000u32 {
        let msg = format!("message {i} {}", "x".repeat((i % 97) as usize));
        c.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes(), "message {i}");
    }
    // The relay is still open (no end record to wait for): wait for its line.
    wait_for("the relay to enter the kernel", || {
        (in_kernel(&proxy) >= 1).then_some(())
    });
    assert_eq!(in_kernel(&proxy), 1);
}

/// Data the client sent before the relay started (queued while the backend was cold), a
/// greeting the backend sent before it, and what follows, all arrive once and in order.
#[test]
fn data_sent_before_the_relay_starts() {
    if !root() {
        return;
    }
    let cold = Cold::new();
    let (proxy, addr) = kernel_proxy(&cold.addr.to_string(), &[]);
    let early = pattern(300_000, 5);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(&early).unwrap();
    let backend = serve(cold.listen(), |mut s| {
        s.write_all(b"greeting;").unwrap();
        echo(s);
    });
    let mut greeting = [0u8; 9];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"greeting;");
    let mut got = vec![0u8; early.len()];
    c.read_exact(&mut got).unwrap();
    assert!(got == early, "early bytes differ");
    c.write_all(b"after").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"after");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(in_kernel_after_ends(&proxy, 1), 1);
}

/// With --proxy-protocol, the header goes first, then the client's bytes exactly once,
/// also when the header's write took only part of the client's first segment.
#[test]
fn proxy_header_then_bytes_once() {
    if !root() {
        return;
    }
    let cold = Cold::new();
    let (proxy, addr) = kernel_proxy(&cold.addr.to_string(), &["--proxy-protocol=v1"]);
    let early = pattern(20_000, 9);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    // One write: one loopback segment, of which the header's write takes only 4 KiB.
    c.write_all(&early).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let _backend = serve(cold.listen(), move |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        tx.send(got).unwrap();
    });
    let got = rx.recv_timeout(DEADLINE).unwrap();
    let header_end = got.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    assert!(
        got.starts_with(b"PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "{got:?}"
    );
    assert_eq!(got.len() - header_end, early.len());
    assert!(
        got[header_end..] == early[..],
        "bytes after the header differ"
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // Both sides may have finished before the relay started; then it stays in user space.
    drop(proxy);
    // Now with data flowing after the header too.
    let backend = echo_backend();
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &["--proxy-protocol=v2"]);
    let data = pattern(1_000_000, 3);
    // Sent once the relay is in the kernel: sent at once, the client's FIN could come
    // before the relay starts under load, which keeps it in user space.
    let got = exchange_on(connect_in_kernel(&proxy, addr), &data).unwrap();
    // The echo backend sends the v2 header back first.
    assert_eq!(got.len(), data.len() + 28);
    assert!(got[28..] == data[..]);
    wait_for("a relay in the kernel", || {
        (in_kernel(&proxy) == 1).then_some(())
    });
}

/// The client's half-close reaches the backend after every byte before it, and the reply
/// sent after it comes back; the same from the backend's side.
#[test]
fn half_close_both_directions() {
    if !root() {
        return;
    }
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let reply = format!("received {} bytes", got.len());
        s.write_all(reply.as_bytes()).unwrap();
    });
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &[]);
    for size in [1usize, 100_000, 5_000_000] {
        let got = exchange_on(connect_in_kernel(&proxy, addr), &pattern(size, 1)).unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            format!("received {size} bytes")
        );
    }
    assert_eq!(in_kernel(&proxy), 3);

    let (tx, rx) = std::sync::mpsc::channel();
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), move |mut s| {
        s.write_all(&pattern(2_000_000, 4)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        tx.send(got).unwrap();
    });
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    assert!(
        buf == pattern(2_000_000, 4),
        "bytes before the backend's FIN differ"
    );
    c.write_all(b"late data").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), b"late data");
    assert_eq!(in_kernel_after_ends(&proxy, 1), 1);
}

/// A backend that resets mid-transfer makes the client see a reset, not a clean EOF; a
/// client that resets makes the backend see one.
#[test]
fn reset_is_passed_on() {
    if !root() {
        return;
    }
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        s.write_all(&[1u8; 100_000]).unwrap();
        let mut b = [0u8; 1];
        let _ = s.read(&mut b); // the client's go-ahead
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut first = vec![0u8; 100_000];
    c.read_exact(&mut first).unwrap();
    c.write_all(b"g").unwrap();
    let mut rest = Vec::new();
    let end = c.read_to_end(&mut rest);
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the backend's reset reached the client as {end:?}"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), move |mut s| {
        let mut got = Vec::new();
        tx.send(s.read_to_end(&mut got).map_err(|e| e.kind()))
            .unwrap();
    });
    let (proxy2, addr) = kernel_proxy(&backend.addr.to_string(), &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"some bytes").unwrap();
    wait_for("the relay in the kernel", || {
        (in_kernel(&proxy2) == 1).then_some(())
    });
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let end = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
    assert_eq!(in_kernel_after_ends(&proxy, 1), 1);
}

/// `-c 2`: two relays in the kernel at once; the third client waits unaccepted and is
/// served when one of them ends.
#[test]
fn connection_limit_is_exact() {
    if !root() {
        return;
    }
    let backend = echo_backend();
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &["-c", "2"]);
    let mut held = Vec::new();
    for i in 0..2u8 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.write_all(&[i]).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i);
        held.push(c);
    }
    let mut third = TcpStream::connect(addr).unwrap();
    third.write_all(b"3").unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(third.read(&mut b).is_err(), "a third client was served");
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 2);
    drop(held.pop());
    third.set_read_timeout(Some(DEADLINE)).unwrap();
    third.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"3");
    wait_for("three relays in the kernel", || {
        (in_kernel(&proxy) == 3).then_some(())
    });
}

/// --exit-idle-time counts from the end of the last relay in the kernel.
#[test]
fn idle_exit_after_the_last_relay() {
    if !root() {
        return;
    }
    let backend = echo_backend();
    let (mut proxy, addr) = kernel_proxy(&backend.addr.to_string(), &["--exit-idle-time=500ms"]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    for _ in 0..8 {
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        thread::sleep(Duration::from_millis(100)); // a client that stays connected
    }
    assert!(proxy.is_running(), "exited while a relay was open");
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    let status = proxy.wait_exit(DEADLINE).expect("no idle exit");
    assert!(status.success());
    assert_eq!(in_kernel(&proxy), 1);
}

/// SIGTERM lets a relay in the kernel finish its transfer; at --drain-timeout one still
/// running is reset, not closed with a FIN.
#[test]
fn drain_then_cut_with_a_reset() {
    if !root() {
        return;
    }
    const SIZE: usize = 4 * 1024 * 1024;
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        for chunk in pattern(SIZE, 99).chunks(256 * 1024) {
            if s.write_all(chunk).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(20)); // a slow download
        }
    });
    let (mut proxy, addr) = kernel_proxy(&backend.addr.to_string(), &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = vec![0u8; 1024];
    c.read_exact(&mut got).unwrap();
    proxy.signal(libc::SIGTERM);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    got.extend_from_slice(&rest);
    assert!(got == pattern(SIZE, 99), "drained bytes differ");
    drop(c);
    let status = proxy.wait_exit(DEADLINE).expect("no exit after drain");
    assert!(status.success());
    assert_eq!(in_kernel(&proxy), 1);

    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        let chunk = pattern(16 * 1024, 3);
        while s.write_all(&chunk).is_ok() {
            thread::sleep(Duration::from_millis(10)); // the backend's pace
        }
    });
    let (mut proxy, addr) = kernel_proxy(&backend.addr.to_string(), &["--drain-timeout=300ms"]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut first = [0u8; 1];
    c.read_exact(&mut first).unwrap();
    proxy.signal(libc::SIGTERM);
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    let status = proxy.wait_exit(DEADLINE).expect("no exit");
    assert!(status.success());
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a transfer cut at the drain timeout ended with {end:?}"
    );
    assert_eq!(in_kernel(&proxy), 1);
}

/// With `-c 1` the maps hold exactly one relay's entries: 40 relays one after another all
/// enter the kernel (an entry left behind would make the next one fall back to user
/// space), and the proxy's open fds with one relay open are the same after them as before.
#[test]
fn no_leaked_fds_or_map_entries() {
    if !root() {
        return;
    }
    let backend = echo_backend();
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &["-c", "1"]);
    // One relay first, so the fds the daemon opens once are counted in the baseline.
    assert_eq!(
        exchange_on(connect_in_kernel(&proxy, addr), b"warm-up").unwrap(),
        b"warm-up"
    );
    // With -c 1 a relay starts only once the one before it gave back its slot, which it
    // does after closing its sockets (the "closed" line is logged before that): so the fds
    // are counted with exactly one relay open, here and at the end.
    let held = connect_in_kernel(&proxy, addr);
    let before = fd_count(proxy.pid());
    assert_eq!(exchange_on(held, b"held").unwrap(), b"held");
    for i in 0..30u64 {
        let data = pattern(1000 + i as usize * 997, i);
        assert!(
            exchange_on(connect_in_kernel(&proxy, addr), &data).unwrap() == data,
            "relay {i}"
        );
        if i % 3 == 0 {
            // Some relays end with a reset from the client instead.
            let mut c = connect_in_kernel(&proxy, addr);
            c.write_all(b"bye").unwrap();
            let mut b = [0u8; 3];
            c.read_exact(&mut b).unwrap();
            socket2::SockRef::from(&c)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
    let last = connect_in_kernel(&proxy, addr);
    assert_eq!(fd_count(proxy.pid()), before, "{}", proxy.stderr());
    assert_eq!(exchange_on(last, b"last").unwrap(), b"last");
    assert_eq!(in_kernel(&proxy), 43);
    wait_for("the last relay to end", || {
        (proxy.stderr().matches(" closed (").count() == 43).then_some(())
    });
    let log = proxy.stderr();
    assert!(!log.contains("relaying in user space"), "{log}");
}

/// A unix-socket backend: one warning at start-up, and the relay works in user space.
#[test]
fn unix_backend_warns_once_and_relays() {
    if !root() {
        return;
    }
    let path = std::env::temp_dir().join(format!("rsproxyd-kr-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                s.write_all(&got).unwrap();
            });
        }
    });
    let (proxy, addr) = kernel_proxy(path.to_str().unwrap(), &[]);
    assert_eq!(exchange(addr, b"hello").unwrap(), b"hello");
    assert_eq!(exchange(addr, b"again").unwrap(), b"again");
    let log = log_after_ends(&proxy, 2);
    assert_eq!(log.matches("--kernel-relay").count(), 1, "{log}");
    assert!(log.contains("unix socket"), "{log}");
    assert_eq!(in_kernel(&proxy), 0);
    let _ = std::fs::remove_file(&path);
}

/// With `--connection-idle-timeout` or `--half-close-timeout`, which the kernel relay cannot
/// enforce: one warning naming them, no relay in the kernel, and the idle timeout still ends
/// a silent relay (the user-space relay enforces it).
#[test]
fn timeouts_keep_the_relay_in_user_space() {
    if !root() {
        return;
    }
    let backend = echo_backend();
    for flag in [
        "--connection-idle-timeout=300ms",
        "--half-close-timeout=300ms",
    ] {
        let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &[flag]);
        assert_eq!(exchange(addr, b"hello").unwrap(), b"hello");
        wait_for("the --kernel-relay warning", || {
            proxy.stderr().contains("--kernel-relay:").then_some(())
        });
        let log = log_after_ends(&proxy, 1);
        assert_eq!(log.matches("--kernel-relay:").count(), 1, "{flag}: {log}");
        assert!(log.contains("--connection-idle-timeout"), "{flag}: {log}");
        assert_eq!(in_kernel(&proxy), 0, "{flag}: {log}");
        if flag.starts_with("--connection-idle-timeout") {
            // A silent relay is ended with a FIN: the read sees EOF, not the read deadline.
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut buf = [0u8; 16];
            assert_eq!(c.read(&mut buf).unwrap(), 0, "{flag}: {}", proxy.stderr());
        }
    }
}

/// Opt-in stress run, as root: N echo exchanges of 2.5 MB sent at once, bytes flowing both
/// ways; every one must come back unchanged. Before the verdict program trimmed overlapping
/// retransmissions, a few in a thousand came back with one received segment sent twice on
/// kernel 6.18 (docs/performance.md, "Duplicated segments"; the unit test
/// `an_overlapping_retransmission_is_relayed_once` pins the cause). Ignored by default (a
/// stress run of seconds to minutes, whose outcome depends on retransmissions the load
/// happens to cause): run it with `--run-ignored only`; `RSPROXYD_KERNEL_RELAY_STRESS=N`
/// sets N (default 1,000).
#[test]
#[ignore = "opt-in stress run (duplicated segments): --run-ignored only, as root"]
fn bulk_both_ways_many_times() {
    let n: usize = std::env::var("RSPROXYD_KERNEL_RELAY_STRESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    assert!(
        root(),
        "the kernel relay's stress run needs root (CAP_BPF, CAP_NET_ADMIN)"
    );
    let backend = echo_backend();
    let (proxy, addr) = kernel_proxy(&backend.addr.to_string(), &[]);
    let data = pattern(2_500_000, 7);
    let mut bad = Vec::new();
    for _ in 0..n {
        let got = exchange(addr, &data).unwrap();
        if got != data {
            bad.push(describe(&got, &data));
        }
    }
    assert!(
        in_kernel_after_ends(&proxy, n) > 0,
        "no relay went into the kernel"
    );
    assert!(
        bad.is_empty(),
        "{} of {n} exchanges differ: {bad:#?}",
        bad.len()
    );
}

/// Without CAP_BPF and CAP_NET_ADMIN (root with an empty bounding set, so the exec leaves it
/// no capabilities): one warning says why, no relay goes into the kernel, and bytes are
/// relayed as without `--kernel-relay`.
#[test]
fn without_capabilities_one_warning_and_user_space() {
    if !root() {
        return;
    }
    let backend = echo_backend();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let target = backend.addr.to_string();
    let proxy = spawn_with_fd_under(
        &["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"],
        listener.into(),
        &["--kernel-relay", &target],
        &[("RUST_LOG", "debug"), (UNSAFE, "1")],
    );
    let data = pattern(3 * 1024 * 1024, 5);
    assert!(exchange(addr, &data).unwrap() == data);
    assert!(exchange(addr, b"x").unwrap() == b"x");
    let log = log_after_ends(&proxy, 2);
    assert_eq!(log.matches("WARN").count(), 1, "{log}");
    assert!(
        log.contains("--kernel-relay: cannot create a BPF sockmap")
            && log.contains("CAP_BPF and CAP_NET_ADMIN")
            && log.contains("relaying in user space"),
        "{log}"
    );
    assert_eq!(in_kernel(&proxy), 0, "{log}");
}

/// Without RSPROXYD_KERNEL_RELAY_UNSAFE=1, `--kernel-relay` is refused: one warning says why
/// (no backpressure), no relay goes into the kernel, and bytes are relayed in user space.
#[test]
fn refused_unless_asked_for_as_unsafe() {
    if !root() {
        return;
    }
    let backend = echo_backend();
    let (proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &["--kernel-relay"],
        &[("RUST_LOG", "debug")],
    );
    let data = pattern(3 * 1024 * 1024, 6);
    assert!(exchange(addr, &data).unwrap() == data);
    let log = log_after_ends(&proxy, 1);
    assert_eq!(log.matches("WARN").count(), 1, "{log}");
    assert!(
        log.contains("--kernel-relay: refused: the kernel relay has no backpressure")
            && log.contains("RSPROXYD_KERNEL_RELAY_UNSAFE=1 runs it anyway"),
        "{log}"
    );
    assert_eq!(in_kernel(&proxy), 0, "{log}");
}
