//! Datagram sockets (ListenDatagram=) through the real binary, with real LISTEN_FDS.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A UDP port on 127.0.0.1 that nobody has bound (the kernel answers ICMP port unreachable).
fn free_udp_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// Starts rsproxyd on a fresh UDP socket in front of `target`; returns its address.
fn spawn_udp(target: &str, extra: &[&str], env: &[(&str, &str)]) -> (Proxy, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let mut args: Vec<&str> = extra.to_vec();
    args.push(target);
    (spawn_with_fds(vec![OwnedFd::from(sock)], &args, env), addr)
}

/// A client socket connected to `proxy`, with the test deadline as its read timeout.
fn client(proxy: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.connect(proxy).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c
}

/// A UDP backend on `addr` that answers each datagram with `reply(datagram, sender)`.
fn udp_backend(
    sock: UdpSocket,
    reply: impl Fn(&[u8], SocketAddr) -> Vec<u8> + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if sock.send_to(&reply(&buf[..n], from), from).is_err() {
                return;
            }
        }
    })
}

fn echo_udp(addr: SocketAddr) -> thread::JoinHandle<()> {
    udp_backend(UdpSocket::bind(addr).unwrap(), |d, _| d.to_vec())
}

/// How many fds a process holds open.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The first datagram of a cold start, sent once, is answered by a backend that binds its
/// port 300 ms later: it was kept and sent again, not lost.
#[test]
fn cold_backend_binding_300ms_later_answers_the_first_datagram() {
    let backend = free_udp_port();
    let (proxy, addr) = spawn_udp(&backend.to_string(), &[], &[("RUST_LOG", "debug")]);
    let c = client(addr);
    c.send(b"first").unwrap();
    proxy.wait_stderr("probe sequence started");
    thread::sleep(Duration::from_millis(300)); // the backend's start-up time
    let _b = echo_udp(backend);
    let mut buf = [0u8; 64];
    let n = c.recv(&mut buf).expect("the first datagram was answered");
    assert_eq!(&buf[..n], b"first");
    let log = proxy.wait_stderr("probe sequence ended");
    assert!(!log.contains("WARN"), "{log}");
}

/// 100 datagrams of sizes from 0 to 65,000 bytes, and one of 65,507 (the IPv4 maximum),
/// arrive whole and unchanged, both ways.
#[test]
fn datagram_boundaries_are_exact() {
    let backend = free_udp_port();
    let _b = echo_udp(backend);
    let (mut proxy, addr) = spawn_udp(&backend.to_string(), &[], &[]);
    let c = client(addr);
    let mut buf = vec![0u8; 70_000];
    // 100 sizes from 0 to 65,000, then the largest UDP payload over IPv4.
    for i in 0..101usize {
        let size = match i {
            99 => 65_000,
            100 => 65_507,
            _ => i * 656,
        };
        let data = pattern(size, i as u64);
        c.send(&data).unwrap();
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(n, size, "datagram {i}");
        assert!(buf[..n] == data[..], "datagram {i} differs");
    }
    // After the exit every line has been read, not only those read so far.
    let log = proxy.stop();
    assert!(!log.contains("WARN"), "{log}");
}

/// 20 clients each get their own backend source port, and only their own replies.
#[test]
fn twenty_clients_have_their_own_sessions() {
    twenty_clients(&[]);
}

/// The same with two event-loop threads (sessions and receive loops on either).
#[test]
fn twenty_clients_with_two_threads() {
    twenty_clients(&["--threads=2"]);
}

fn twenty_clients(extra: &[&str]) {
    let backend = free_udp_port();
    let _b = udp_backend(UdpSocket::bind(backend).unwrap(), |d, from| {
        let mut r = d.to_vec();
        r.extend_from_slice(format!(" via {}", from.port()).as_bytes());
        r
    });
    let (_proxy, addr) = spawn_udp(&backend.to_string(), extra, &[]);
    let clients: Vec<_> = (0..20)
        .map(|i| {
            thread::spawn(move || {
                let c = client(addr);
                let mut ports = HashSet::new();
                for k in 0..5 {
                    c.send(format!("client {i} #{k}").as_bytes()).unwrap();
                }
                let mut buf = [0u8; 128];
                for _ in 0..5 {
                    let n = c.recv(&mut buf).unwrap();
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let (msg, port) = text.split_once(" via ").unwrap();
                    assert!(msg.starts_with(&format!("client {i} #")), "{i} got {text}");
                    ports.insert(port.to_string());
                }
                assert_eq!(ports.len(), 1, "client {i}: backend saw {ports:?}");
                ports.into_iter().next().unwrap()
            })
        })
        .collect();
    let ports: HashSet<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(ports.len(), 20, "backend source ports: {ports:?}");
}

/// With no datagram either way for --exit-idle-time, rsproxyd exits 0, although the
/// session (--session-timeout 60s) is still open; the exit summary counts the session and
/// its bytes.
#[test]
fn idle_exit_with_a_quiet_session_open() {
    let backend = free_udp_port();
    let _b = echo_udp(backend);
    let (mut proxy, addr) = spawn_udp(&backend.to_string(), &["--exit-idle-time=400ms"], &[]);
    let c = client(addr);
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        c.send(b"x").unwrap();
        assert_eq!(c.recv(&mut buf).unwrap(), 1);
    }
    let last = Instant::now();
    let status = proxy
        .wait_exit(DEADLINE)
        .expect("rsproxyd did not idle-exit");
    assert!(status.success(), "{status:?}: {}", proxy.stderr());
    assert!(
        last.elapsed() >= Duration::from_millis(400),
        "exited {:?} after the last datagram",
        last.elapsed()
    );
    let log = proxy.stderr();
    assert!(
        log.contains("1 connection(s) served, 3 bytes to the backend, 3 to clients"),
        "{log}"
    );
}

/// On SIGTERM a datagram already forwarded still gets its reply, and a datagram sent after
/// the stop is not read: it stays in the socket for the next instance.
#[test]
fn sigterm_relays_replies_and_leaves_unread_datagrams() {
    let backend = free_udp_port();
    let slow = UdpSocket::bind(backend).unwrap();
    let _b = udp_backend(slow, |d, _| {
        thread::sleep(Duration::from_millis(150)); // a reply that takes a while
        d.to_vec()
    });
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let kept = sock.try_clone().unwrap();
    let mut proxy = spawn_with_fds(vec![OwnedFd::from(sock)], &[&backend.to_string()], &[]);
    let c = client(addr);
    let mut buf = [0u8; 16];
    c.send(b"warm").unwrap();
    assert_eq!(c.recv(&mut buf).unwrap(), 4);
    c.send(b"asked").unwrap();
    // Wait until rsproxyd has read it (the socket's queue is empty again), then stop it.
    wait_for("the datagram to be read", || {
        let mut p = [0u8; 1];
        kept.set_nonblocking(true).unwrap();
        matches!(kept.peek_from(&mut p), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            .then_some(())
    });
    proxy.signal(libc::SIGTERM);
    let stopped = Instant::now();
    let n = c.recv(&mut buf).expect("the reply came during the drain");
    assert_eq!(&buf[..n], b"asked");
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd did not exit");
    assert!(status.success(), "{status:?}");
    // The drain ended once replies stopped, long before --drain-timeout (30s).
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
    c.send(b"later").unwrap();
    kept.set_nonblocking(false).unwrap();
    kept.set_read_timeout(Some(DEADLINE)).unwrap();
    let (n, _) = kept.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"later",
        "the unread datagram is still in the socket"
    );
}

/// A backend that never binds: at --connect-timeout one warning names the backend, the error
/// and the dropped datagrams; the sessions end and the fds return to the baseline.
#[test]
fn backend_that_never_binds_times_out_without_leaks() {
    let backend = free_udp_port();
    let target = backend.to_string();
    let (mut proxy, addr) = spawn_udp(
        &target,
        &["--connect-timeout=300ms", "--session-timeout=200ms"],
        &[],
    );
    // Baseline once the runtime is up: the first datagram waits for the socket.
    let warm = client(addr);
    wait_for("rsproxyd to start", || {
        (std::fs::read_link(format!("/proc/{}/exe", proxy.pid()))
            .map(|p| p.to_string_lossy().contains("rsproxyd"))
            .unwrap_or(false)
            && proxy.stderr().is_empty())
        .then_some(())
    });
    thread::sleep(Duration::from_millis(100)); // let the runtime open its fds
    let baseline = fd_count(proxy.pid());
    let clients: Vec<UdpSocket> = (0..3).map(|_| client(addr)).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send(format!("d{i}").as_bytes()).unwrap();
    }
    let log = proxy.wait_stderr("Failed to relay datagrams to remote host");
    assert!(log.contains(&target), "{log}");
    assert!(log.contains("Connection refused"), "{log}");
    assert!(log.contains("dropped 3 datagram(s)"), "{log}");
    assert_eq!(log.matches("Failed to relay").count(), 1, "{log}");
    wait_for("the sessions' sockets to close", || {
        (fd_count(proxy.pid()) <= baseline).then_some(())
    });
    assert!(proxy.is_running(), "rsproxyd exited after a timeout");
    drop(warm);
}

/// A SOCK_SEQPACKET socket is refused with an error naming its fd, and rsproxyd exits 1.
#[test]
fn seqpacket_socket_is_refused() {
    let sp = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
    let mut proxy = spawn_with_fds(vec![OwnedFd::from(sp)], &["127.0.0.1:9"], &[]);
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd did not exit");
    assert_eq!(status.code(), Some(1));
    let err = proxy.stderr();
    assert!(err.contains("passed fd 3 is a seqpacket"), "{err}");
}

/// -c bounds sessions: a datagram from a client beyond them is dropped with one warning,
/// and the clients within keep being served.
#[test]
fn session_limit_drops_new_clients() {
    let backend = free_udp_port();
    let _b = echo_udp(backend);
    let (proxy, addr) = spawn_udp(&backend.to_string(), &["-c", "2"], &[]);
    let mut buf = [0u8; 16];
    let held: Vec<UdpSocket> = (0..2).map(|_| client(addr)).collect();
    for c in &held {
        c.send(b"in").unwrap();
        assert_eq!(c.recv(&mut buf).unwrap(), 2);
    }
    let third = client(addr);
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    third.send(b"out").unwrap();
    third.send(b"out").unwrap();
    assert!(third.recv(&mut buf).is_err(), "a third session was served");
    let log = proxy.wait_stderr("dropped a datagram from new client");
    assert_eq!(log.matches("dropped a datagram").count(), 1, "{log}");
    held[0].send(b"again").unwrap();
    assert_eq!(held[0].recv(&mut buf).unwrap(), 5);
}

/// A unix datagram TARGET that appears late gets the first datagram, and replies come back.
#[test]
fn unix_datagram_target_cold_start() {
    let dir = std::env::temp_dir().join(format!("rsproxyd-dgram-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let target = dir.to_string_lossy().to_string();
    let (proxy, addr) = spawn_udp(&target, &[], &[("RUST_LOG", "debug")]);
    let c = client(addr);
    c.send(b"hello unix").unwrap();
    proxy.wait_stderr("probe sequence started");
    thread::sleep(Duration::from_millis(100)); // the backend's start-up time
    let b = std::os::unix::net::UnixDatagram::bind(&dir).unwrap();
    b.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = b.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello unix");
    b.send_to_addr(b"reply", &from).unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"reply");
    let _ = std::fs::remove_file(&dir);
}

/// A child process killed (by pid) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free for both TCP and UDP on 127.0.0.1, with both sockets bound to it.
fn tcp_and_udp_on_one_port() -> (TcpListener, UdpSocket) {
    for _ in 0..100 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if let Ok(t) = TcpListener::bind(("127.0.0.1", port)) {
            return (t, u);
        }
    }
    panic!("no port free for both TCP and UDP");
}

fn dig(port: u16, extra: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+tries=1",
            "+time=10",
        ])
        .args(extra)
        .arg("example.test")
        .arg("A")
        .output()
        .expect("run dig (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// dnsmasq started late answers dig over UDP (the first query, sent once) and then over TCP,
/// through one rsproxyd holding a stream and a datagram socket on the same port.
#[test]
fn dnsmasq_over_udp_and_tcp_through_one_proxy() {
    let (tcp, udp) = tcp_and_udp_on_one_port();
    let port = udp.local_addr().unwrap().port();
    // dnsmasq's port: free for TCP and UDP, released just before dnsmasq binds it.
    let (bt, bu) = tcp_and_udp_on_one_port();
    let backend_port = bu.local_addr().unwrap().port();
    drop((bt, bu));
    let target = format!("127.0.0.1:{backend_port}");
    let _proxy = spawn_with_fds(
        vec![OwnedFd::from(tcp), OwnedFd::from(udp)],
        &[&target],
        &[],
    );
    let query = thread::spawn(move || dig(port, &[]));
    thread::sleep(Duration::from_millis(300)); // dnsmasq's start-up time
    let dir = std::env::temp_dir().join(format!("rsproxyd-dnsmasq-{}", std::process::id()));
    let _dnsmasq = Daemon(
        Command::new("dnsmasq")
            .args([
                "--no-daemon",
                &format!("--port={backend_port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--address=/example.test/127.0.0.42",
                "-C",
                "/dev/null",
                &format!("--pid-file={}", dir.display()),
                "--user=",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (dnsmasq-base)"),
    );
    assert_eq!(query.join().unwrap(), "127.0.0.42", "dig over UDP");
    assert_eq!(dig(port, &["+tcp"]), "127.0.0.42", "dig over TCP");
    let _ = std::fs::remove_file(&dir);
}

/// On a socket bound to a wildcard address, replies leave from the address each client wrote
/// to (a connected client accepts nothing else), for IPv4 and for IPv4 on a dual-stack [::].
#[test]
fn replies_come_from_the_address_the_client_wrote_to() {
    let backend = free_udp_port();
    let _b = echo_udp(backend);
    for bind in ["0.0.0.0:0", "[::]:0"] {
        let sock = socket2::Socket::new(
            if bind.starts_with('[') {
                socket2::Domain::IPV6
            } else {
                socket2::Domain::IPV4
            },
            socket2::Type::DGRAM,
            None,
        )
        .unwrap();
        if bind.starts_with('[') {
            sock.set_only_v6(false).unwrap();
        }
        sock.bind(&bind.parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let port = sock.local_addr().unwrap().as_socket().unwrap().port();
        let _proxy = spawn_with_fds(vec![OwnedFd::from(sock)], &[&backend.to_string()], &[]);
        for dst in ["127.0.0.1", "127.0.0.3"] {
            let c = client(format!("{dst}:{port}").parse().unwrap());
            c.send(dst.as_bytes()).unwrap();
            let mut buf = [0u8; 32];
            let n = c
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("bound {bind}, sent to {dst}: {e}"));
            assert_eq!(&buf[..n], dst.as_bytes());
        }
    }
}

/// Ten clients that write to a cold backend (three datagrams each), and one more that comes
/// during the cold period, all get every datagram answered once it binds, with one probe
/// sequence: what one probe found is sent on for every session.
#[test]
fn cold_start_keeps_the_datagrams_of_every_client() {
    let backend = free_udp_port();
    let (proxy, addr) = spawn_udp(&backend.to_string(), &[], &[("RUST_LOG", "debug")]);
    let clients: Vec<UdpSocket> = (0..10).map(|_| client(addr)).collect();
    for (i, c) in clients.iter().enumerate() {
        for k in 0..3 {
            c.send(format!("{i}/{k}").as_bytes()).unwrap();
        }
    }
    proxy.wait_stderr("probe sequence started");
    // A client that arrives during the cold period joins it.
    let mut clients = clients;
    clients.push(client(addr));
    for k in 0..3 {
        clients[10].send(format!("10/{k}").as_bytes()).unwrap();
    }
    thread::sleep(Duration::from_millis(300)); // the backend's start-up time
    let _b = echo_udp(backend);
    for (i, c) in clients.iter().enumerate() {
        let mut got: Vec<String> = (0..3)
            .map(|_| {
                let mut buf = [0u8; 16];
                let n = c.recv(&mut buf).expect("every datagram answered");
                String::from_utf8_lossy(&buf[..n]).to_string()
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![format!("{i}/0"), format!("{i}/1"), format!("{i}/2")]
        );
    }
    // Logged before the first answer: once it is read, so is every sequence started before.
    let log = proxy.wait_stderr("probe sequence ended");
    assert_eq!(log.matches("probe sequence started").count(), 1, "{log}");
}

/// A host-name TARGET is resolved for datagrams, its addresses tried in order: `localhost`
/// reaches a cold backend that binds 127.0.0.1 only, whichever address comes first.
#[test]
fn host_name_target_addresses_tried_in_order() {
    let backend = free_udp_port();
    let target = format!("localhost:{}", backend.port());
    let (_proxy, addr) = spawn_udp(&target, &[], &[]);
    let c = client(addr);
    c.send(b"by name").unwrap();
    thread::sleep(Duration::from_millis(100)); // the backend's start-up time
    let _b = echo_udp(backend);
    let mut buf = [0u8; 16];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"by name");
}

/// A unix datagram socket is relayed too, and a datagram longer than the relay's buffer is
/// dropped with a warning (MSG_TRUNC), never passed on cut short; the next one goes through.
#[test]
fn unix_listener_and_oversized_datagram() {
    use std::os::unix::net::UnixDatagram;
    let backend = free_udp_port();
    let _b = echo_udp(backend);
    let base = std::env::temp_dir().join(format!("rsproxyd-dgl-{}", std::process::id()));
    let (listen, me) = (base.with_extension("l"), base.with_extension("c"));
    let _ = std::fs::remove_file(&listen);
    let _ = std::fs::remove_file(&me);
    let sock = UnixDatagram::bind(&listen).unwrap();
    let proxy = spawn_with_fds(
        vec![OwnedFd::from(sock)],
        &[&backend.to_string()],
        &[("RUST_LOG", "debug")],
    );
    let c = UnixDatagram::bind(&me).unwrap();
    c.connect(&listen).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.send(&pattern(70_000, 1)).unwrap();
    let log = proxy.wait_stderr("70000-byte datagram");
    assert!(log.contains("cut short"), "{log}");
    c.send(b"small").unwrap();
    let mut buf = [0u8; 16];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"small");
    let _ = std::fs::remove_file(&listen);
    let _ = std::fs::remove_file(&me);
}

/// STATUS= counts the sessions, and RUST_LOG=debug logs each session's start and its end
/// with the client, the backend and the datagrams and bytes each way.
#[test]
fn status_counts_sessions_and_debug_logs_their_end() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("rsproxyd-dgnotify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let notify = UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let backend = free_udp_port();
    let _b = echo_udp(backend);
    let (proxy, addr) = spawn_udp(
        &backend.to_string(),
        &["--session-timeout=1s"],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("RUST_LOG", "debug"),
        ],
    );
    let c = client(addr);
    c.send(b"12345").unwrap();
    let mut buf = [0u8; 4096];
    assert_eq!(c.recv(&mut buf).unwrap(), 5);
    let client_addr = c.local_addr().unwrap().to_string();
    // STATUS= is refreshed every second while something changed.
    loop {
        let n = notify.recv(&mut buf).expect("a STATUS= with the session");
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        if m.contains("1 UDP session(s), 1 served") {
            break;
        }
    }
    let log = proxy.wait_stderr("session end");
    let end = log.lines().find(|l| l.contains("session end")).unwrap();
    for want in [
        format!("client={client_addr}"),
        format!("backend={backend}"),
        "to_backend_bytes=5".into(),
        "to_backend_datagrams=1".into(),
        "to_client_bytes=5".into(),
        "to_client_datagrams=1".into(),
        "duration_ms=".into(),
    ] {
        assert!(end.contains(&want), "{want} not in {end}");
    }
    assert!(log.contains("session start"), "{log}");
    // The journal record of a TCP connection's end, for the session too (CLOSE= and the bytes).
    let record = format!("{client_addr} <-> {backend} closed (");
    let record = log
        .lines()
        .find(|l| l.contains(&record))
        .unwrap_or_else(|| panic!("no connection-ended record for the session in {log}"));
    assert!(
        record.contains("5 bytes to the backend, 5 to the client"),
        "{record}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With --follow-backend, a backend that never binds makes rsproxyd exit 0 at
/// --connect-timeout, after the warning, so the next datagram starts the backend again.
#[test]
fn follow_backend_exits_when_the_backend_never_binds() {
    let backend = free_udp_port();
    let (mut proxy, addr) = spawn_udp(
        &backend.to_string(),
        &["--connect-timeout=300ms", "--follow-backend"],
        &[],
    );
    let c = client(addr);
    c.send(b"anyone?").unwrap();
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd did not exit");
    assert!(status.success(), "{status:?}");
    let log = proxy.stderr();
    assert!(
        log.contains("Failed to relay datagrams to remote host"),
        "{log}"
    );
    assert!(log.contains("exiting (--follow-backend)"), "{log}");
}

/// A backend that never answers (and sends no ICMP error, being bound) gets each datagram
/// exactly once: with no error within the grace they count as delivered, nothing is sent
/// twice, and the copies kept meanwhile do not keep rsproxyd from its idle exit.
#[test]
fn silent_backend_gets_each_datagram_once() {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    backend
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let target = backend.local_addr().unwrap().to_string();
    let (mut proxy, addr) = spawn_udp(&target, &["--exit-idle-time=300ms"], &[]);
    let c = client(addr);
    for i in 0..5u8 {
        c.send(&[i]).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while let Ok(n) = backend.recv(&mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4], "each datagram once, in order");
    let status = proxy
        .wait_exit(DEADLINE)
        .expect("rsproxyd did not idle-exit");
    assert!(status.success(), "{status:?}");
}

/// While the backend is cold a session keeps at most 64 datagrams: of 100 sent, the oldest
/// 36 are dropped with one warning, and the backend gets the newest 64, in order.
#[test]
fn cold_start_bound_per_session_drops_the_oldest() {
    let backend = free_udp_port();
    let (proxy, addr) = spawn_udp(&backend.to_string(), &[], &[]);
    let c = client(addr);
    for i in 0..100u8 {
        c.send(&[i]).unwrap();
    }
    let log = proxy.wait_stderr("dropping the oldest");
    assert_eq!(log.matches("dropping the oldest").count(), 1, "{log}");
    let b = UdpSocket::bind(backend).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    let deadline = Instant::now() + DEADLINE;
    while got.len() < 64 && Instant::now() < deadline {
        if let Ok((n, from)) = b.recv_from(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            let _ = b.send_to(b"ok", from); // an answer ends the probe at once
        }
    }
    assert_eq!(got, (36..100).collect::<Vec<u8>>());
    b.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(b.recv(&mut buf).is_err(), "a datagram came twice");
}

/// An IPv6 TARGET gets datagrams from an IPv4 client and its replies come back.
#[test]
fn ipv6_target() {
    let b = UdpSocket::bind("[::1]:0").expect("IPv6 loopback (::1)");
    let backend = b.local_addr().unwrap();
    let _b = udp_backend(b, |d, _| d.to_vec());
    let (_proxy, addr) = spawn_udp(&backend.to_string(), &[], &[]);
    let c = client(addr);
    c.send(b"over v6").unwrap();
    let mut buf = [0u8; 16];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"over v6");
}
