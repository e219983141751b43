//! Where the log goes: the journal's native protocol when stderr is the journal and its socket
//! answers, `<N>` text when it does not, plain text otherwise; and what the text says.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;

/// The journal's socket, which tracing-journald tries with an empty datagram.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Runs rsproxyd on a fresh listener with stderr to a file and JOURNAL_STREAM naming that
/// file, until it exits idle; returns its exit status and what reached the file.
fn run_with_journal_stream(extra_env: &[(&str, &str)]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("rsproxyd-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stderr.txt");
    let file = std::fs::File::create(&path).unwrap();
    let st = nix::sys::stat::fstat(file.as_raw_fd()).unwrap();
    let stream = format!("{}:{}", st.st_dev, st.st_ino);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let raw = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(bin())
        .args(["--exit-idle-time=100ms", "127.0.0.1:9"])
        .env("LISTEN_FDS", "1")
        .env("JOURNAL_STREAM", &stream)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    // SAFETY: only async-signal-safe calls (dup2) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn rsproxyd");
    drop(listener);
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rsproxyd did not exit idle"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (status.success(), text)
}

/// True when the journal's socket takes a datagram here (a machine running journald).
fn journal_reachable() -> bool {
    UnixDatagram::unbound()
        .and_then(|s| s.send_to(&[], JOURNAL_SOCKET))
        .is_ok()
}

/// With stderr as the journal: the exit summary goes to the journal's socket when it
/// answers (nothing on stderr), else to stderr as `<6>` text, as before fields existed.
#[test]
fn journal_stream_uses_the_socket_or_falls_back_to_prefixes() {
    let (ok, text) = run_with_journal_stream(&[]);
    assert!(ok, "{text}");
    if journal_reachable() {
        assert!(!text.contains("exiting"), "went to stderr: {text:?}");
    } else {
        let line = text
            .lines()
            .find(|l| l.contains("exiting (idle)"))
            .unwrap_or_else(|| panic!("no summary in {text:?}"));
        assert!(line.starts_with("<6>"), "{line:?}");
        assert!(
            line.contains("0 connection(s) served") && !line.contains("CONNECTIONS="),
            "{line:?}"
        );
    }
}

/// On plain stderr, a relayed connection's end and the exit summary read as sentences: the
/// journal-only fields (CLIENT=, BYTES_TO_BACKEND=, ...) are left out of the text.
#[test]
fn text_log_has_the_records_without_journal_fields() {
    let backend = echo_backend();
    let (mut proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &["--exit-idle-time=200ms"],
        &[("RUST_LOG", "debug")],
    );
    assert_eq!(exchange(addr, b"hello").unwrap(), b"hello");
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd did not exit");
    assert!(status.success());
    let log = proxy.stderr();
    let ended = log
        .lines()
        .find(|l| l.contains("closed (eof)"))
        .unwrap_or_else(|| panic!("no connection end in {log}"));
    assert!(
        ended.contains(&backend.addr.to_string())
            && ended.contains("5 bytes to the backend, 5 to the client"),
        "{ended}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains("exiting (idle)"))
        .unwrap_or_else(|| panic!("no summary in {log}"));
    assert!(
        summary.contains("1 connection(s) served, 5 bytes to the backend, 5 to clients"),
        "{summary}"
    );
    for field in [
        "CLIENT=",
        "BACKEND=",
        "BYTES_TO_",
        "DURATION_USEC=",
        "CLOSE=",
        "EXIT_REASON=",
    ] {
        assert!(!log.contains(field), "{field} in the text log:\n{log}");
    }
}

/// Sends `data` on a new connection through `addr` and reads the echo, leaving the
/// connection open.
fn echoed(addr: std::net::SocketAddr, data: &[u8]) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    s
}

/// The line of `log` that contains `needle`.
fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {log}"))
}

/// A connection the drain cuts short is reported as `drain-cut`, with the bytes it had
/// moved; so is a client's reset (`reset`); the exit summary adds both up.
#[test]
fn cut_and_reset_connections_report_their_bytes() {
    let backend = echo_backend();
    let (mut proxy, addr) = spawn_proxy(
        &backend.addr.to_string(),
        &["--drain-timeout=100ms"],
        &[("RUST_LOG", "debug")],
    );
    let reset = echoed(addr, b"abc");
    socket2::SockRef::from(&reset)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(reset);
    proxy.wait_stderr("closed (reset)");
    let _held = echoed(addr, b"hello");
    proxy.signal(libc::SIGTERM);
    let status = proxy.wait_exit(DEADLINE).expect("rsproxyd did not exit");
    assert!(status.success(), "{status:?}");
    let log = proxy.stderr();
    let reset = line_with(&log, "closed (reset)");
    assert!(
        reset.contains("3 bytes to the backend, 3 to the client"),
        "{reset}"
    );
    let cut = line_with(&log, "closed (drain-cut)");
    assert!(
        cut.contains("5 bytes to the backend, 5 to the client"),
        "{cut}"
    );
    let summary = line_with(&log, "exiting (asked to stop)");
    assert!(
        summary.contains("2 connection(s) served, 8 bytes to the backend, 8 to clients"),
        "{summary}"
    );
}
