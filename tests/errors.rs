//! Bad command lines and bad activation environments: a clear message, exit 1, no panic.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// What fd 3 is when rsproxyd starts.
enum Fd3 {
    Closed,
    Listener,
    File,
    /// A unix SOCK_SEQPACKET socket (datagram sockets are relayed; these are not).
    Seqpacket,
}

fn run(
    args: &[&str],
    listen_fds: Option<&str>,
    listen_pid: Option<&str>,
    fd3: Fd3,
) -> (i32, String) {
    let pid_expr = listen_pid.map_or("$$".to_string(), |p| p.to_string());
    let script = match listen_fds {
        Some(n) => format!("LISTEN_PID={pid_expr} LISTEN_FDS={n} exec \"$0\" \"$@\""),
        None => "exec \"$0\" \"$@\"".to_string(),
    };
    let fd: Option<OwnedFd> = match fd3 {
        Fd3::Closed => None,
        Fd3::Listener => Some(std::net::TcpListener::bind("127.0.0.1:0").unwrap().into()),
        Fd3::File => Some(std::fs::File::open("/dev/null").unwrap().into()),
        Fd3::Seqpacket => Some(
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
                .unwrap()
                .into(),
        ),
    };
    let raw = fd.as_ref().map(|f| f.as_raw_fd());
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg(common::bin())
        .args(args)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, close) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            match raw {
                Some(r) if r != 3 => {
                    libc::dup2(r, 3);
                }
                Some(_) => {
                    libc::fcntl(3, libc::F_SETFD, 0);
                }
                None => {
                    libc::close(3);
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run rsproxyd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Every bad flag, value and activation environment in the table fails with exit code 1 and
/// a message naming what was wrong; none panics.
#[test]
fn error_table() {
    use Fd3::*;
    let ok_env = Some("1");
    type Row<'a> = (
        &'a [&'a str],
        Option<&'a str>,
        Option<&'a str>,
        Fd3,
        &'a str,
    );
    let table: Vec<Row> = vec![
        (&[], ok_env, None, Listener, "Not enough parameters."),
        (
            &["a:1", "b:2"],
            ok_env,
            None,
            Listener,
            "Too many parameters",
        ),
        (
            &["-c", "0", "a:1"],
            ok_env,
            None,
            Listener,
            "Failed to parse --connections-max= argument: 0",
        ),
        (
            &["-c", "many", "a:1"],
            ok_env,
            None,
            Listener,
            "Failed to parse --connections-max= argument: many",
        ),
        (
            &["--exit-idle-time=soon", "a:1"],
            ok_env,
            None,
            Listener,
            "Failed to parse --exit-idle-time= argument: soon",
        ),
        (
            &["--connect-timeout=-1", "a:1"],
            ok_env,
            None,
            Listener,
            "Failed to parse --connect-timeout= argument: -1",
        ),
        (&["--bogus", "a:1"], ok_env, None, Listener, "--bogus"),
        (
            &["--proxy-protocol=v3", "a:1"],
            ok_env,
            None,
            Listener,
            "Failed to parse --proxy-protocol= argument: v3 (expected one of: v1, v2)",
        ),
        (
            &["--proxy-protocol=", "a:1"],
            ok_env,
            None,
            Listener,
            "Failed to parse --proxy-protocol= argument:  (expected one of: v1, v2)",
        ),
        (
            &["--proxy-protocol", "a:1"],
            ok_env,
            None,
            Listener,
            "Failed to parse --proxy-protocol= argument: a:1 (expected one of: v1, v2)",
        ),
        (&["127.0.0.1"], ok_env, None, Listener, "has no port"),
        (&["::1:80"], ok_env, None, Listener, "without brackets"),
        (
            &["relative/path.sock"],
            ok_env,
            None,
            Listener,
            "must be absolute",
        ),
        (
            &["127.0.0.1:80"],
            None,
            None,
            Listener,
            "Didn't get any sockets passed in",
        ),
        (&["127.0.0.1:80"], Some("0"), None, Listener, "LISTEN_FDS=0"),
        (
            &["127.0.0.1:80"],
            Some("abc"),
            None,
            Listener,
            "LISTEN_FDS=\"abc\"",
        ),
        (
            &["127.0.0.1:80"],
            ok_env,
            Some("1"),
            Listener,
            "is not our pid",
        ),
        (
            &["127.0.0.1:80"],
            ok_env,
            Some("x"),
            Listener,
            "LISTEN_PID=\"x\"",
        ),
        (&["127.0.0.1:80"], ok_env, None, Closed, "fd 3 is not open"),
        (
            &["127.0.0.1:80"],
            Some("2"),
            None,
            Listener,
            "fd 4 is not open",
        ),
        (
            &["127.0.0.1:80"],
            ok_env,
            None,
            File,
            "fd 3 is not a socket",
        ),
        (
            &["127.0.0.1:80"],
            ok_env,
            None,
            Seqpacket,
            "fd 3 is a seqpacket",
        ),
    ];
    for (args, fds, pid, fd3, want) in table {
        let (code, text) = run(args, fds, pid, fd3);
        assert_eq!(
            code, 1,
            "{args:?} {fds:?} {pid:?}: exit {code}, output {text:?}"
        );
        assert!(
            text.contains(want),
            "{args:?} {fds:?} {pid:?}: want {want:?} in {text:?}"
        );
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}

/// Errors about the activation environment say how to start rsproxyd.
#[test]
fn activation_errors_say_how_to_run() {
    let (code, text) = run(&["127.0.0.1:80"], None, None, Fd3::Listener);
    assert_eq!(code, 1);
    assert!(text.contains("systemd-socket-activate"), "{text}");
}

/// --help and --version print and exit 0, even without sockets.
#[test]
fn help_and_version_exit_zero() {
    for flag in ["--help", "-h", "--version"] {
        let (code, text) = run(&[flag], None, None, Fd3::Closed);
        assert_eq!(code, 0, "{flag}: {text}");
        assert!(text.contains("rsproxyd"), "{flag}: {text}");
    }
    let (_, help) = run(&["--help"], None, None, Fd3::Closed);
    for opt in [
        "--connections-max",
        "--exit-idle-time",
        "--connect-timeout",
        "--drain-timeout",
        "--follow-backend",
        "--proxy-protocol",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}: {help}");
    }
}
