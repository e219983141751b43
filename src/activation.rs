//! Socket activation: the fds systemd passes in (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES).

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use socket2::{Domain, SockRef, Type};

use crate::number::{parse_c_number, parse_c_unsigned, CNumber};

/// The first fd systemd passes (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: RawFd = 3;

/// How to fix a missing or broken activation environment; appended to those errors.
const HOW_TO_RUN: &str =
    "start rsproxyd from a .socket unit, or under systemd-socket-activate -l ADDRESS";

/// A socket handed over by systemd.
#[derive(Debug)]
pub struct Activated {
    pub fd: OwnedFd,
    /// The fd number it arrived as, for messages.
    pub number: RawFd,
    /// A listening stream socket (`Accept=no`); otherwise, unless [`Activated::datagram`],
    /// one connected client (`Accept=yes`).
    pub listening: bool,
    /// A datagram socket (`ListenDatagram=`): UDP over IPv4 or IPv6, or a unix datagram
    /// socket. Relayed by [`crate::datagram`]; `listening` is false.
    pub datagram: bool,
}

/// Why the passed sockets cannot be served. The text is shown to users.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("Didn't get any sockets passed in: LISTEN_FDS is not set ({HOW_TO_RUN})")]
    NoListenFds,
    #[error("Didn't get any sockets passed in: LISTEN_FDS=0 ({HOW_TO_RUN})")]
    ZeroListenFds,
    #[error("LISTEN_FDS={0:?} is not a number of file descriptors ({HOW_TO_RUN})")]
    BadListenFds(String),
    #[error(
        "LISTEN_FDS is set but LISTEN_PID is not, so the sockets cannot be ours ({HOW_TO_RUN})"
    )]
    NoListenPid,
    #[error("LISTEN_PID={0:?} is not a process id ({HOW_TO_RUN})")]
    BadListenPid(String),
    #[error("LISTEN_PID={theirs} is not our pid {ours}: the sockets were passed to another process ({HOW_TO_RUN})")]
    WrongPid { theirs: u32, ours: u32 },
    #[error("passed fd {0} is not open")]
    NotOpen(RawFd),
    #[error("passed fd {0} is not a socket")]
    NotSocket(RawFd),
    #[error(
        "passed fd {fd} is a {kind} socket; rsproxyd relays stream sockets (ListenStream=) and datagram sockets (ListenDatagram=) only, not SOCK_SEQPACKET (ListenSequentialPacket=) or raw ones"
    )]
    NotStream { fd: RawFd, kind: String },
    #[error(
        "passed fd {fd} is a {family} datagram socket; rsproxyd relays datagrams of IPv4, IPv6 and unix sockets only"
    )]
    DatagramFamily { fd: RawFd, family: String },
    #[error("passed fd {fd} cannot be set up: {err}")]
    Setup { fd: RawFd, err: String },
}

/// Checks LISTEN_PID and LISTEN_FDS as sd_listen_fds(3) does and returns how many fds were
/// passed, starting at fd 3.
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    our_pid: u32,
) -> Result<usize, ActivationError> {
    let fds = listen_fds.ok_or(ActivationError::NoListenFds)?;
    // Numbers are read as sd_listen_fds() reads them (strtol/strtoul with base 0).
    let count = match parse_c_number(fds) {
        Some(CNumber::NonNegative(n)) if n <= (i32::MAX - LISTEN_FDS_START) as u64 => n as usize,
        _ => return Err(ActivationError::BadListenFds(fds.into())),
    };
    let pid = listen_pid.ok_or(ActivationError::NoListenPid)?;
    let theirs = parse_c_unsigned(pid, i32::MAX as u64)
        .filter(|p| *p > 0)
        .map(|p| p as u32)
        .ok_or_else(|| ActivationError::BadListenPid(pid.into()))?;
    if theirs != our_pid {
        return Err(ActivationError::WrongPid {
            theirs,
            ours: our_pid,
        });
    }
    if count == 0 {
        return Err(ActivationError::ZeroListenFds);
    }
    Ok(count)
}

/// Takes the passed sockets from the environment and removes the LISTEN_* variables.
/// Must run before any thread is started (it changes the environment).
///
/// libsystemd does the taking: it reads the variables, removes them, sets FD_CLOEXEC on each
/// passed fd and hands them over in order. What it does not do is done here, on top:
/// - the numbers are read first as sd_listen_fds(3) reads them ([`parse_listen_env`]): the
///   crate reads them with `str::parse`, so it refuses `0x2` and ` 2`, reads `010` as ten
///   fds rather than eight, and returns no sockets (not an error) when LISTEN_PID is missing
///   or names another process. The crate is then given the numbers it reads the same way;
/// - an fd that is not open is named ([`ActivationError::NotOpen`]), in fd order with the
///   other per-fd errors; the crate stops at it with an error that names no variable;
/// - each fd is checked to be a stream socket, and told listening (`Accept=no`) from
///   connected (`Accept=yes`) by [`classify`].
pub fn take_from_env() -> Result<Vec<Activated>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let ours = std::process::id();
    let checked = parse_listen_env(pid.as_deref(), fds.as_deref(), ours);
    let open = checked.as_ref().map_or(0, |&count| leading_open(count));
    std::env::set_var("LISTEN_PID", ours.to_string());
    std::env::set_var("LISTEN_FDS", open.to_string());
    // Removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, whatever the outcome.
    let received = libsystemd::activation::receive_descriptors(true);
    let count = checked?;
    let received = received.map_err(|e| ActivationError::Setup {
        fd: LISTEN_FDS_START,
        err: e.to_string(),
    })?;
    let mut sockets = Vec::with_capacity(count);
    for (number, passed) in (LISTEN_FDS_START..).zip(received) {
        let raw = passed.into_raw_fd();
        debug_assert_eq!(raw, number, "libsystemd hands the fds over in order");
        // SAFETY: systemd passed this fd to us (LISTEN_PID matched) and it is open
        // (`leading_open`); nothing else in the process owns it, and each is adopted once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        sockets.push(classify(fd, raw)?);
    }
    if open < count {
        return Err(ActivationError::NotOpen(LISTEN_FDS_START + open as RawFd));
    }
    Ok(sockets)
}

/// How many of the `count` fds from [`LISTEN_FDS_START`] on are open, up to the first that
/// is not.
fn leading_open(count: usize) -> usize {
    (0..count)
        .take_while(|&i| fcntl(LISTEN_FDS_START + i as RawFd, FcntlArg::F_GETFD).is_ok())
        .count()
}

/// Checks that `fd` is a stream or datagram socket and prepares it for the event loop.
pub fn classify(fd: OwnedFd, number: RawFd) -> Result<Activated, ActivationError> {
    let stat = nix::sys::stat::fstat(number).map_err(|_| ActivationError::NotOpen(number))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ActivationError::NotSocket(number));
    }
    let sock = SockRef::from(&fd);
    let setup = |e: std::io::Error| ActivationError::Setup {
        fd: number,
        err: e.to_string(),
    };
    let ty = sock.r#type().map_err(setup)?;
    let datagram = ty == Type::DGRAM;
    if datagram {
        let domain = sock.domain().map_err(setup)?;
        if domain != Domain::IPV4 && domain != Domain::IPV6 && domain != Domain::UNIX {
            return Err(ActivationError::DatagramFamily {
                fd: number,
                family: format!("{domain:?}"),
            });
        }
    } else if ty != Type::STREAM {
        let kind = match ty {
            Type::SEQPACKET => "seqpacket".to_string(),
            Type::RAW => "raw".to_string(),
            other => format!("type {other:?}"),
        };
        return Err(ActivationError::NotStream { fd: number, kind });
    }
    let listening = !datagram && sock.is_listener().map_err(setup)?;
    fcntl(number, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| setup(e.into()))?;
    let flags = fcntl(number, FcntlArg::F_GETFL).map_err(|e| setup(e.into()))?;
    fcntl(
        number,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| setup(e.into()))?;
    if !datagram && matches!(sock.domain(), Ok(d) if d == Domain::IPV4 || d == Domain::IPV6) {
        // Accepted sockets inherit TCP_NODELAY; small messages must not wait for Nagle.
        let _ = sock.set_nodelay(true);
    }
    Ok(Activated {
        fd,
        number,
        listening,
        datagram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The activation environment is accepted only when it is complete and meant for us.
    #[test]
    fn listen_env_table() {
        use ActivationError::*;
        let ours = 4242;
        type Row<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Result<usize, ActivationError>,
        );
        let table: Vec<Row> = vec![
            (Some("4242"), Some("1"), Ok(1)),
            (Some("4242"), Some("3"), Ok(3)),
            // Any base, as sd_listen_fds() reads them (strtol with base 0); nothing after.
            (Some(" 4242"), Some(" 2"), Ok(2)),
            (Some("0x1092"), Some("0x2"), Ok(2)),
            (Some("4242"), Some("010"), Ok(8)),
            (Some("4242"), Some("08"), Err(BadListenFds("08".into()))),
            (Some("4242"), Some("2 "), Err(BadListenFds("2 ".into()))),
            (Some("4242 "), Some("1"), Err(BadListenPid("4242 ".into()))),
            (Some("-4242"), Some("1"), Err(BadListenPid("-4242".into()))),
            (None, None, Err(NoListenFds)),
            (Some("4242"), None, Err(NoListenFds)),
            (Some("4242"), Some("0"), Err(ZeroListenFds)),
            (Some("4242"), Some(""), Err(BadListenFds("".into()))),
            (Some("4242"), Some("-1"), Err(BadListenFds("-1".into()))),
            (Some("4242"), Some("two"), Err(BadListenFds("two".into()))),
            (
                Some("4242"),
                Some("99999999999"),
                Err(BadListenFds("99999999999".into())),
            ),
            (None, Some("1"), Err(NoListenPid)),
            (Some(""), Some("1"), Err(BadListenPid("".into()))),
            (Some("0"), Some("1"), Err(BadListenPid("0".into()))),
            (Some("abc"), Some("1"), Err(BadListenPid("abc".into()))),
            (
                Some("1"),
                Some("1"),
                Err(WrongPid {
                    theirs: 1,
                    ours: 4242,
                }),
            ),
        ];
        for (pid, fds, want) in table {
            assert_eq!(parse_listen_env(pid, fds, ours), want, "{pid:?} {fds:?}");
        }
    }

    /// Where libsystemd reads the activation environment differently from sd_listen_fds(3),
    /// rsproxyd keeps systemd's reading: each row is a case the crate alone gets wrong.
    /// (It changes LISTEN_* in this process; no other test reads them.)
    #[test]
    fn libsystemd_differs_where_we_check_first() {
        let ours = std::process::id();
        let hex = format!("{ours:#x}");
        let dec = ours.to_string();
        type Row<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            bool,
            Result<usize, ActivationError>,
        );
        let table: Vec<Row> = vec![
            // The crate passes over a missing LISTEN_PID, another process's, or LISTEN_FDS=0:
            // no sockets and no error, where systemd's tools say why.
            (None, Some("1"), true, Err(ActivationError::NoListenPid)),
            (
                Some("1"),
                Some("1"),
                true,
                Err(ActivationError::WrongPid { theirs: 1, ours }),
            ),
            (
                Some(&dec),
                Some("0"),
                true,
                Err(ActivationError::ZeroListenFds),
            ),
            // The crate refuses what strtoul with base 0 reads: hex and leading space.
            (Some(&hex), Some("1"), false, Ok(1)),
            (Some(&dec), Some("0x1"), false, Ok(1)),
            (Some(&dec), Some(" 1"), false, Ok(1)),
        ];
        for (pid, fds, crate_finds_none, want) in table {
            for (var, value) in [("LISTEN_PID", pid), ("LISTEN_FDS", fds)] {
                match value {
                    Some(v) => std::env::set_var(var, v),
                    None => std::env::remove_var(var),
                }
            }
            let theirs = libsystemd::activation::receive_descriptors(true);
            match theirs {
                Ok(v) => assert!(crate_finds_none && v.is_empty(), "{pid:?} {fds:?}"),
                Err(e) => assert!(!crate_finds_none, "{pid:?} {fds:?}: {e}"),
            }
            assert_eq!(parse_listen_env(pid, fds, ours), want, "{pid:?} {fds:?}");
        }
        // And `010` is eight fds to systemd (octal), where `str::parse` reads ten: that row
        // is in `listen_env_table`; the crate is not run on it, as it would touch fds 3..12.
    }

    /// Every activation error that a user can cause says how to start rsproxyd properly.
    #[test]
    fn env_errors_say_how_to_run() {
        for e in [
            ActivationError::NoListenFds,
            ActivationError::ZeroListenFds,
            ActivationError::NoListenPid,
        ] {
            assert!(e.to_string().contains("systemd-socket-activate"), "{e}");
        }
        assert!(ActivationError::NoListenFds
            .to_string()
            .starts_with("Didn't get any sockets passed in"));
    }

    /// Listening and connected stream sockets and datagram sockets (UDP, unix) are told
    /// apart; seqpacket sockets and files are refused with the fd named.
    #[test]
    fn classify_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&l);
        let a = classify(OwnedFd::from(l), n).unwrap();
        assert!(a.listening);
        let n = std::os::fd::AsRawFd::as_raw_fd(&c);
        let a = classify(OwnedFd::from(c), n).unwrap();
        assert!(!a.listening);
        assert!(!a.datagram);
        for u in [
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            std::net::UdpSocket::bind("[::1]:0").unwrap(),
        ] {
            let n = std::os::fd::AsRawFd::as_raw_fd(&u);
            let a = classify(OwnedFd::from(u), n).unwrap();
            assert!(a.datagram && !a.listening);
        }
        let (u, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&u);
        assert!(classify(OwnedFd::from(u), n).unwrap().datagram);
        let sp = socket2::Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&sp);
        let e = classify(OwnedFd::from(sp), n).unwrap_err().to_string();
        assert!(
            e.contains(&format!("fd {n}")) && e.contains("seqpacket"),
            "{e}"
        );
        let f = std::fs::File::open("/dev/null").unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert_eq!(
            classify(OwnedFd::from(f), n).unwrap_err(),
            ActivationError::NotSocket(n)
        );
    }
}
