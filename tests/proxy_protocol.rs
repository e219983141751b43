//! `--proxy-protocol=v1|v2` through the real binary with real LISTEN_FDS: byte-exact headers
//! for every kind of listener, and real receivers (nginx, HAProxy) that read them.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use common::*;
use socket2::{Domain, Socket, Type};

/// The v2 signature, written out from the specification (HAProxy's doc/proxy-protocol.txt).
const SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header the specification gives for a TCP connection from `src` to `dst`.
fn golden(version: &str, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match version {
        "v1" => {
            let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {fam} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        "v2" => {
            let mut h = SIG.to_vec();
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    h.extend_from_slice(&[0x21, 0x21, 0, 36]);
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                other => panic!("mixed families {other:?}"),
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
        v => panic!("no such version {v}"),
    }
}

/// What a client of a unix-socket listener gets: v1 UNKNOWN, v2 LOCAL with no addresses.
fn golden_unix(version: &str) -> Vec<u8> {
    match version {
        "v1" => b"PROXY UNKNOWN\r\n".to_vec(),
        _ => [&SIG[..], &[0x20, 0x00, 0x00, 0x00]].concat(),
    }
}

/// A backend that reads each connection to EOF and reports the bytes it got.
fn capture_backend() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let b = serve(TcpListener::bind("127.0.0.1:0").unwrap(), move |mut s| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
    });
    (b.addr, rx)
}

/// A TCP connection to `to` from the address `src` (port chosen by the kernel).
fn connect_from(src: IpAddr, to: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(src, 0).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends `data`, half-closes and reads until EOF.
fn send_and_finish(mut s: impl Read + Write, data: &[u8], shut: impl FnOnce()) -> Vec<u8> {
    s.write_all(data).unwrap();
    shut();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

fn recv(rx: &mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    rx.recv_timeout(DEADLINE)
        .expect("the backend got no connection")
}

/// The kinds of listener systemd may pass.
#[derive(Clone, Copy, Debug)]
enum Front {
    /// 127.0.0.1
    V4,
    /// ::1
    V6,
    /// `[::]` with IPV6_V6ONLY off, reached over IPv4.
    Dual,
    Unix,
}

/// Where a client reaches rsproxyd.
enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A fresh per-test directory, removed on drop.
struct TempDir(PathBuf);

static DIRS: AtomicUsize = AtomicUsize::new(0);

impl TempDir {
    fn new(what: &str) -> Self {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("rsproxyd-pp-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// False (with a note) where the machine has no IPv6 loopback: the IPv6 and `[::]` cases
/// are then left out, the IPv4 and unix ones still run.
fn has_ipv6(front: Front) -> bool {
    let needs = matches!(front, Front::V6 | Front::Dual);
    if needs && TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED {front:?}: no IPv6 loopback on this machine");
        return false;
    }
    true
}

/// Starts rsproxyd on a listener of kind `front` in front of `target`.
fn spawn_front(front: Front, dir: &Path, version: &str, target: &str) -> (Proxy, Addr) {
    let flag = format!("--proxy-protocol={version}");
    let args = [flag.as_str(), target];
    let (fd, addr): (OwnedFd, Addr) = match front {
        Front::V4 => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            (l.into(), Addr::Tcp(a))
        }
        Front::V6 => {
            let l = TcpListener::bind("[::1]:0").unwrap();
            let a = l.local_addr().unwrap();
            (l.into(), Addr::Tcp(a))
        }
        Front::Dual => {
            let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
            s.set_only_v6(false).unwrap();
            s.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            s.listen(128).unwrap();
            let port = s.local_addr().unwrap().as_socket().unwrap().port();
            (
                s.into(),
                Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            )
        }
        Front::Unix => {
            let path = dir.join(format!("front-{version}.sock"));
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path).unwrap();
            (l.into(), Addr::Unix(path))
        }
    };
    (spawn_with_fd(fd, &args, &[]), addr)
}

/// Every version, every TCP listener kind, chosen source addresses: the backend gets the
/// specification's header byte for byte, then the client's bytes.
#[test]
fn golden_headers_for_tcp_listeners() {
    let (backend, rx) = capture_backend();
    let dir = TempDir::new("golden");
    let cases: [(Front, &str); 4] = [
        (Front::V4, "127.0.0.5"),
        (Front::V4, "127.0.0.77"),
        (Front::V6, "::1"),
        (Front::Dual, "127.0.0.5"),
    ];
    for version in ["v1", "v2"] {
        for (front, src) in cases.into_iter().filter(|(f, _)| has_ipv6(*f)) {
            let (_proxy, addr) = spawn_front(front, &dir.0, version, &backend.to_string());
            let Addr::Tcp(to) = addr else { unreachable!() };
            let c = connect_from(src.parse().unwrap(), to);
            let me = c.local_addr().unwrap();
            let payload = format!("hello from {me}");
            let shut = c.try_clone().unwrap();
            send_and_finish(c, payload.as_bytes(), || {
                shut.shutdown(Shutdown::Write).unwrap()
            });
            // The [::] listener's client arrives IPv4-mapped; the header carries it as IPv4.
            let want = [golden(version, me, to), payload.into_bytes()].concat();
            let got = recv(&rx);
            assert_eq!(
                got,
                want,
                "{version} {front:?} from {src}: got {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
}

/// A unix-socket listener's client is announced as v1 `PROXY UNKNOWN` and v2 LOCAL.
#[test]
fn unix_listener_sends_unknown_and_local() {
    let (backend, rx) = capture_backend();
    let dir = TempDir::new("unix");
    for version in ["v1", "v2"] {
        let (_proxy, addr) = spawn_front(Front::Unix, &dir.0, version, &backend.to_string());
        let Addr::Unix(path) = addr else {
            unreachable!()
        };
        let c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let shut = c.try_clone().unwrap();
        send_and_finish(c, b"unix data", || shut.shutdown(Shutdown::Write).unwrap());
        assert_eq!(
            recv(&rx),
            [golden_unix(version), b"unix data".to_vec()].concat(),
            "{version}"
        );
    }
}

/// Accept=yes: the passed connected socket's peer and address make the header.
#[test]
fn accept_yes_connection_gets_its_header() {
    let (backend, rx) = capture_backend();
    for version in ["v1", "v2"] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = connect_from("127.0.0.77".parse().unwrap(), l.local_addr().unwrap());
        let (server_side, _) = l.accept().unwrap();
        let flag = format!("--proxy-protocol={version}");
        let mut proxy = spawn_with_fd(server_side.into(), &[&flag, &backend.to_string()], &[]);
        let me = c.local_addr().unwrap();
        let to = c.peer_addr().unwrap();
        let shut = c.try_clone().unwrap();
        send_and_finish(c, b"passed", || shut.shutdown(Shutdown::Write).unwrap());
        assert_eq!(
            recv(&rx),
            [golden(version, me, to), b"passed".to_vec()].concat()
        );
        let status = proxy.wait_exit(DEADLINE).expect("rsproxyd kept running");
        assert!(status.success(), "{status:?}");
    }
}

/// A backend that speaks first (SMTP-style) gets the header although the client sends
/// nothing, and its greeting reaches the client.
#[test]
fn server_speaks_first_still_gets_the_header() {
    for version in ["v1", "v2"] {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = listener.local_addr().unwrap();
        let want_len = if version == "v1" { 0 } else { 28 };
        serve(listener, move |mut s| {
            // Read the header (v1: up to its CRLF) before saying anything.
            let mut header = vec![0u8; want_len];
            if want_len > 0 {
                s.read_exact(&mut header).unwrap();
            } else {
                let mut b = [0u8; 1];
                while !header.ends_with(b"\r\n") {
                    s.read_exact(&mut b).unwrap();
                    header.push(b[0]);
                }
            }
            s.write_all(b"220 ready\r\n").unwrap();
            let _ = tx.lock().unwrap().send(header);
        });
        let dir = TempDir::new("first");
        let (_proxy, addr) = spawn_front(Front::V4, &dir.0, version, &backend.to_string());
        let Addr::Tcp(to) = addr else { unreachable!() };
        let mut c = connect_from("127.0.0.5".parse().unwrap(), to);
        let me = c.local_addr().unwrap();
        let mut greeting = [0u8; 11];
        c.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"220 ready\r\n");
        assert_eq!(recv(&rx), golden(version, me, to), "{version}");
    }
}

/// Clients that arrive while the backend is still starting each get their own header
/// first on the connection the cold-start probe made, and their data after it.
#[test]
fn cold_start_header_arrives_first() {
    let cold = Cold::new();
    let (proxy, to) = spawn_proxy(
        &cold.addr.to_string(),
        &["--proxy-protocol=v2"],
        &[("RUST_LOG", "debug")],
    );
    let clients: Vec<_> = ["127.0.0.5", "127.0.0.77", "127.0.0.5"]
        .into_iter()
        .enumerate()
        .map(|(i, src)| {
            let c = connect_from(src.parse().unwrap(), to);
            let me = c.local_addr().unwrap();
            let shut = c.try_clone().unwrap();
            let data = format!("client {i}");
            let t = thread::spawn(move || {
                send_and_finish(c, data.as_bytes(), || {
                    shut.shutdown(Shutdown::Write).unwrap()
                })
            });
            (me, format!("client {i}"), t)
        })
        .collect();
    proxy.wait_stderr("probe sequence started");
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = serve(cold.listen(), move |mut s| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
    });
    let mut got: Vec<Vec<u8>> = (0..3).map(|_| recv(&rx)).collect();
    let mut want: Vec<Vec<u8>> = clients
        .into_iter()
        .map(|(me, data, t)| {
            t.join().unwrap();
            [golden("v2", me, to), data.into_bytes()].concat()
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        backend.accepted.load(Ordering::SeqCst),
        3,
        "no extra connections"
    );
}

/// A real receiver, run in the foreground from a temporary directory, killed by pid.
struct Receiver {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for a receiver's configuration.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn installed(bin: &str) -> bool {
    let found = Path::new(bin).exists();
    if !found {
        eprintln!("SKIP: {bin} is not installed (apt-get install nginx-light haproxy)");
    }
    found
}

const NGINX: &str = "/usr/sbin/nginx";
const HAPROXY: &str = "/usr/sbin/haproxy";

/// nginx answering `$proxy_protocol_addr $proxy_protocol_port` on a `proxy_protocol` port.
fn start_nginx() -> Receiver {
    start_nginx_at(TempDir::new("nginx"), free_port())
}

/// nginx as in [`start_nginx`], on a given port and directory.
fn start_nginx_at(dir: TempDir, port: u16) -> Receiver {
    let d = dir.0.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n\
         client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n\
         uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
         server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n\
         return 200 \"$proxy_protocol_addr $proxy_protocol_port\";\n  }}\n}}\n"
    );
    std::fs::write(dir.0.join("nginx.conf"), conf).unwrap();
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(dir.0.join("nginx.conf"))
        .arg("-e")
        .arg(dir.0.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    Receiver { child, dir, port }
}

/// HAProxy 2.6 answering `%[src] %[src_port]` on an `accept-proxy` bind.
fn start_haproxy() -> Receiver {
    let dir = TempDir::new("haproxy");
    let port = free_port();
    let conf = format!(
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 20s\n  timeout server 5s\n\
         frontend fe\n  bind 127.0.0.1:{port} accept-proxy\n\
         http-request return status 200 content-type text/plain lf-string \"%[src] %[src_port]\"\n"
    );
    std::fs::write(dir.0.join("haproxy.cfg"), conf).unwrap();
    let child = Command::new(HAPROXY)
        .arg("-db")
        .arg("-f")
        .arg(dir.0.join("haproxy.cfg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    Receiver { child, dir, port }
}

/// An HTTP/1.0 GET on `s`; returns the status code and the body.
fn http_get(mut s: impl Read + Write) -> (u16, String) {
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Asks `receiver`, through rsproxyd with each version and listener kind, who the client
/// is. `unix_answer` checks the answer for the unix-socket client.
fn ask_receiver(receiver: &mut Receiver, unix_answer: impl Fn(&str) -> bool) {
    let target = format!("127.0.0.1:{}", receiver.port);
    let cases: [(Front, &str); 5] = [
        (Front::V4, "127.0.0.5"),
        (Front::V4, "127.0.0.77"),
        (Front::V6, "::1"),
        (Front::Dual, "127.0.0.77"),
        (Front::Unix, ""),
    ];
    for version in ["v1", "v2"] {
        for (front, src) in cases.into_iter().filter(|(f, _)| has_ipv6(*f)) {
            // A receiver that could not start (its port taken meanwhile) says so here.
            if let Ok(Some(status)) = receiver.child.try_wait() {
                panic!(
                    "the receiver exited ({status}); files in {:?}",
                    receiver.dir.0
                );
            }
            let (_proxy, addr) = spawn_front(front, &receiver.dir.0, version, &target);
            match addr {
                Addr::Tcp(to) => {
                    let c = connect_from(src.parse().unwrap(), to);
                    let me = c.local_addr().unwrap();
                    let (status, body) = http_get(c);
                    assert_eq!(status, 200, "{version} {front:?} {src}: {body}");
                    assert_eq!(
                        body.trim(),
                        format!("{} {}", me.ip(), me.port()),
                        "{version} {front:?} from {src}"
                    );
                }
                Addr::Unix(path) => {
                    let c = UnixStream::connect(path).unwrap();
                    c.set_read_timeout(Some(DEADLINE)).unwrap();
                    let (status, body) = http_get(c);
                    assert_eq!(status, 200, "{version} unix: {body}");
                    assert!(unix_answer(&body), "{version} unix client: {body:?}");
                }
            }
        }
    }
}

/// nginx, reading v1 and v2 from rsproxyd, answers each client's own address and port;
/// for a unix-socket client it has no address (UNKNOWN / LOCAL are accepted).
#[test]
fn nginx_sees_the_client_address() {
    if !installed(NGINX) {
        return;
    }
    let mut nginx = start_nginx();
    ask_receiver(&mut nginx, |body| body.trim().is_empty());
    let log = std::fs::read_to_string(nginx.dir.0.join("error.log")).unwrap();
    assert!(!log.contains("broken header"), "{log}");
}

/// HAProxy, reading v1 and v2 from rsproxyd, answers each client's own address and port;
/// for a unix-socket client (UNKNOWN / LOCAL) it keeps the connection's real source.
#[test]
fn haproxy_sees_the_client_address() {
    if !installed(HAPROXY) {
        return;
    }
    let mut haproxy = start_haproxy();
    ask_receiver(&mut haproxy, |body| body.starts_with("127.0.0.1 "));
}

/// Across a cold start (nginx binds only after clients wait), every client is answered
/// with its own address and nginx logs no `broken header` and nothing at error level: the
/// probe's connections are the clients' connections, each with its header.
#[test]
fn nginx_cold_start_keeps_its_error_log_clean() {
    if !installed(NGINX) {
        return;
    }
    for version in ["v1", "v2"] {
        let dir = TempDir::new("cold");
        let port = free_port();
        let target = format!("127.0.0.1:{port}");
        let flag = format!("--proxy-protocol={version}");
        let (proxy, to) = spawn_proxy(&target, &[&flag], &[("RUST_LOG", "debug")]);
        let clients: Vec<_> = ["127.0.0.5", "127.0.0.77", "127.0.0.5", "127.0.0.77"]
            .into_iter()
            .map(|src| {
                let c = connect_from(src.parse().unwrap(), to);
                let me = c.local_addr().unwrap();
                (me, thread::spawn(move || http_get(c)))
            })
            .collect();
        // One more client gives up before the backend is there.
        drop(connect_from("127.0.0.5".parse().unwrap(), to));
        proxy.wait_stderr("probe sequence started");
        let nginx = start_nginx_at(dir, port);
        for (me, t) in clients {
            let (status, body) = t.join().unwrap();
            assert_eq!(status, 200, "{version}: {body}");
            assert_eq!(
                body.trim(),
                format!("{} {}", me.ip(), me.port()),
                "{version}"
            );
        }
        let log_path = nginx.dir.0.join("error.log");
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(!log.contains("broken header"), "{version}: {log}");
        for level in ["[error]", "[crit]", "[alert]", "[emerg]"] {
            assert!(!log.contains(level), "{version}: {level} in {log}");
        }
    }
}

/// With the header on, bulk transfers (splice) stay byte-exact both ways, a half-close
/// still passes the reply through, and `-c 1` serves clients one after another.
#[test]
fn bulk_half_close_and_limit_unchanged() {
    // Reads the v1 line, then echoes everything and half-closes after the client does.
    let backend = serve(TcpListener::bind("127.0.0.1:0").unwrap(), |mut s| {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if s.read_exact(&mut b).is_err() {
                return;
            }
            line.push(b[0]);
        }
        assert!(
            line.starts_with(b"PROXY TCP4 127.0.0.1 127.0.0.1 "),
            "{line:?}"
        );
        echo(s);
    });
    let (_proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &["--proxy-protocol=v1", "-c", "1"],
        &[],
    );
    for (i, size) in [10 * 1024 * 1024, 1, 300_000].into_iter().enumerate() {
        let data = pattern(size, i as u64);
        let got = exchange(addr, &data).expect("exchange");
        assert!(got == data, "bytes differ for size {size}");
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 3);
}
