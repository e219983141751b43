//! The new-connection path after it was cut down (issue 14): the queue counted once per
//! wake-up, the connect finished by a second connect(2), the FIN taken from readiness
//! instead of a read that returns 0, the last data sent with the FIN, and no second shutdown.
//! Each test pins a behaviour one of those shortcuts could break.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::*;

/// Reads until EOF or an error; returns the bytes and how it ended.
fn read_all(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// A backend that writes and then resets (data and RST arriving together, since the backend
/// is faster than the relay) is passed on as a reset, never as a clean end of the stream:
/// the FIN shortcut must tell a reset from a FIN.
#[test]
fn data_then_reset_is_a_reset_not_a_clean_end() {
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |s| {
        let _ = (&s).write_all(b"partial answer");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    for i in 0..20 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let (got, end) = read_all(&mut c);
        assert!(
            b"partial answer".starts_with(&got),
            "connection {i}: wrong bytes {got:?}"
        );
        let e = end.expect_err(&format!(
            "connection {i}: a backend reset arrived as a clean EOF after {} bytes",
            got.len()
        ));
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "connection {i}: {e}");
    }
}

/// A backend that speaks first and half-closes at once (data and FIN together, small and
/// bulk): the client gets every byte, then EOF, and can still send; the backend gets that
/// and then the client's EOF.
#[test]
fn data_with_fin_arrives_whole_and_half_close_holds() {
    for len in [1usize, 700, 65536, 3 << 20] {
        let data = pattern(len, len as u64);
        let sent = data.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), move |mut s| {
            s.write_all(&sent).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let r = s.read_to_end(&mut back).map(|_| back);
            tx.send(r.map_err(|e| e.to_string())).unwrap();
        });
        let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let (got, end) = read_all(&mut c);
        end.unwrap_or_else(|e| panic!("{len} bytes: the client read failed: {e}"));
        assert!(
            got == data,
            "{len} bytes: got {} bytes, not the same",
            got.len()
        );
        c.write_all(b"thanks").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let back = rx.recv_timeout(DEADLINE).unwrap().unwrap();
        assert_eq!(back, b"thanks", "{len} bytes: the half-closed way back");
    }
}

/// Clients already queued on a TCP listener when rsproxyd starts (as the first ones are
/// under socket activation) are all served, each with its own backend connection: counting
/// the queue once per wake-up loses none.
#[test]
fn queued_tcp_clients_are_all_served() {
    let backend = echo_backend();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let _proxy = spawn_with_fd(listener.into(), &[&backend.addr.to_string()], &[]);
    for (i, mut c) in clients.into_iter().enumerate() {
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let msg = format!("client {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let (got, end) = read_all(&mut c);
        end.unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        40
    );
}

/// The same for a unix listener, whose queue length cannot be read: it is looked at again
/// after each client, so none waits for another to arrive.
#[test]
fn queued_unix_clients_are_all_served() {
    let backend = echo_backend();
    let dir = std::env::temp_dir().join(format!("rsproxyd-queued-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let listener = UnixListener::bind(&dir).unwrap();
    let clients: Vec<UnixStream> = (0..8).map(|_| UnixStream::connect(&dir).unwrap()).collect();
    let _proxy = spawn_with_fd(listener.into(), &[&backend.addr.to_string()], &[]);
    for (i, mut c) in clients.into_iter().enumerate() {
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let msg = format!("unix client {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    let _ = std::fs::remove_file(&dir);
}

/// A backend handshake that does not finish within connect(2) (the backend's accept queue
/// is full, so its SYN is dropped and sent again a second later) is waited for: the client
/// is served once the backend makes room, not failed or dropped.
#[test]
fn slow_handshake_is_waited_for() {
    // Backlog 0: one connection fills the accept queue.
    let backend = Cold::new().listen_with_backlog(0);
    let baddr = backend.local_addr().unwrap();
    let filler = TcpStream::connect(baddr).unwrap();
    let (proxy, addr) = spawn_proxy(&baddr.to_string(), &["--connect-timeout=15s"], &[]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"ping").unwrap();
    // Make room only once rsproxyd's handshake is pending (its SYN dropped): then the
    // accept queue holds just the filler.
    wait_for("rsproxyd's connection to be pending", || {
        let ss = std::process::Command::new("ss")
            .args(["-tnH", "state", "syn-sent", "dst", &baddr.to_string()])
            .output()
            .ok()?;
        (!ss.stdout.is_empty()).then_some(())
    });
    let (first, _) = backend.accept().unwrap();
    drop((first, filler));
    let (mut s, _) = backend.accept().unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").unwrap();
    drop(s);
    let (got, end) = read_all(&mut c);
    end.unwrap();
    assert_eq!(got, b"pong");
    drop(proxy);
}

/// Segments the backend's side of a connection has received (TCP_INFO `tcpi_segs_in`).
fn segments_in(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    rsproxyd::relay::tcp_info(s.as_raw_fd())
        .expect("TCP_INFO")
        .tcpi_segs_in
}

/// A client whose request is there when it is accepted: the backend connection's handshake
/// ACK rides on that request, so the backend receives two segments (SYN, then ACK with the
/// request) instead of three, and accepts the connection with the request already in.
#[test]
fn request_carries_the_backend_handshake_ack() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let baddr = backend.local_addr().unwrap().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Queued, request sent, before rsproxyd starts: each is there when it is accepted.
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("request {i}\n").as_bytes()).unwrap();
    }
    let _proxy = spawn_with_fd(listener.into(), &[&baddr], &[]);
    for i in 0..3 {
        let (mut s, _) = backend.accept().unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut got = [0u8; 10];
        s.read_exact(&mut got).unwrap();
        assert!(got.starts_with(b"request "), "connection {i}: {got:?}");
        assert_eq!(
            segments_in(&s),
            2,
            "connection {i}: the backend got the handshake's ACK apart from the request"
        );
    }
}

/// A backend that speaks first (SMTP, SSH, MySQL) gets its connection at once even though
/// its handshake ACK is held for the client's first bytes: a client that sends nothing still
/// gets the greeting in far less than the 200 ms Linux would hold that ACK for.
#[test]
fn backend_that_speaks_first_is_not_kept_waiting() {
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        let _ = s.write_all(b"220 ready\r\n");
        let _ = s.read(&mut [0u8; 1]);
    });
    let (_proxy, addr) = spawn_proxy(&backend.addr.to_string(), &[], &[]);
    let mut took: Vec<Duration> = (0..7)
        .map(|i| {
            let start = std::time::Instant::now();
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut got = [0u8; 11];
            c.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"220 ready\r\n", "connection {i}");
            start.elapsed()
        })
        .collect();
    took.sort();
    assert!(
        took[3] < Duration::from_millis(100),
        "greetings took {took:?}: the backend waited for its handshake ACK"
    );
}
