//! TCP keepalive for relayed connections, so a client that vanished without a FIN or reset
//! is noticed and its relay freed.
//!
//! Clients: keepalive is set once, at start-up, on each passed TCP *listening* socket;
//! accepted sockets inherit SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT from
//! it, so it costs no system call per connection. The .socket unit's own choice wins: if
//! the listening socket already has SO_KEEPALIVE on (`KeepAlive=yes`), or any of the three
//! timings differs from the kernel's default (`KeepAliveTimeSec=`, `KeepAliveIntervalSec=`,
//! `KeepAliveProbes=`; the defaults are read from a fresh socket, i.e. the
//! net.ipv4.tcp_keepalive_* sysctls), the socket is left exactly as the unit set it. Otherwise rsproxyd sets [`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`] and
//! [`KEEPALIVE_PROBES`], and TCP_USER_TIMEOUT [`USER_TIMEOUT`] (the same budget for a peer
//! that vanishes while data is in flight, when keepalive does not probe). `--keepalive=off` turns SO_KEEPALIVE off on the listening socket
//! instead, whatever the unit said.
//!
//! With `Accept=yes`, the passed connection itself gets the same treatment.
//!
//! Since the listening socket outlives rsproxyd, the next run finds the values an earlier
//! run set and keeps them: the same result.
//!
//! Backends: a backend on a loopback address or a unix socket cannot vanish silently (its
//! kernel is ours and resets the connection when it exits), so nothing is set there. A
//! backend on another machine gets the same defaults on each connection (four setsockopt
//! calls, only for such targets).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use socket2::{SockAddr, SockRef, TcpKeepalive};

use crate::limits::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES, USER_TIMEOUT};

/// `--keepalive`: what to do about TCP keepalive on the listening sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Keep the unit's settings if it made any; else set rsproxyd's defaults.
    #[default]
    Auto,
    /// Turn SO_KEEPALIVE off on the listening sockets.
    Off,
}

/// What was found on, and done to, one listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not a TCP socket: nothing to do.
    NotTcp,
    /// The unit (or an earlier run) set keepalive: left as it is.
    KeptUnits(Timing),
    /// rsproxyd's defaults were set.
    SetDefaults(Timing),
    /// `--keepalive=off`: SO_KEEPALIVE is now off.
    TurnedOff,
}

/// The keepalive settings of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub enabled: bool,
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (idle {}s, interval {}s, {} probes)",
            if self.enabled { "on" } else { "off" },
            self.idle.as_secs(),
            self.interval.as_secs(),
            self.probes
        )
    }
}

/// rsproxyd's own keepalive settings.
pub fn defaults() -> Timing {
    Timing {
        enabled: true,
        idle: KEEPALIVE_IDLE,
        interval: KEEPALIVE_INTERVAL,
        probes: KEEPALIVE_PROBES,
    }
}

/// Reads a listening socket's keepalive settings; `None` if it is not a TCP socket.
pub fn read(fd: BorrowedFd<'_>) -> Option<Timing> {
    let sock = SockRef::from(&fd);
    let domain = sock.domain().ok()?;
    if domain != socket2::Domain::IPV4 && domain != socket2::Domain::IPV6 {
        return None;
    }
    Some(Timing {
        enabled: sock.keepalive().ok()?,
        idle: sock.keepalive_time().ok()?,
        interval: sock.keepalive_interval().ok()?,
        probes: sock.keepalive_retries().ok()?,
    })
}

/// The kernel's defaults (what a socket has when nobody set its own), read from a fresh
/// socket of the same family: the values of net.ipv4.tcp_keepalive_* in this network
/// namespace, without needing /proc/sys (hidden by `ProcSubset=pid`). `None` if no socket
/// can be made.
pub fn kernel_defaults(domain: socket2::Domain) -> Option<Timing> {
    let fresh = socket2::Socket::new(domain, socket2::Type::STREAM, None).ok()?;
    Some(Timing {
        enabled: false,
        idle: fresh.keepalive_time().ok()?,
        interval: fresh.keepalive_interval().ok()?,
        probes: fresh.keepalive_retries().ok()?,
    })
}

/// True if `found` carries a choice someone made (the unit, or an earlier run): keepalive
/// on, or a timing that is not the kernel's default. When the kernel's defaults cannot be
/// read, only SO_KEEPALIVE counts.
pub fn set_by_unit(found: &Timing, kernel: Option<&Timing>) -> bool {
    found.enabled
        || kernel.is_some_and(|k| {
            (found.idle, found.interval, found.probes) != (k.idle, k.interval, k.probes)
        })
}

/// Applies `mode` to a passed listening (or `Accept=yes` connected) socket, once at
/// start-up (see the module docs).
pub fn prepare_listener(fd: BorrowedFd<'_>, mode: Mode) -> io::Result<Decision> {
    let Some(found) = read(fd) else {
        return Ok(Decision::NotTcp);
    };
    let sock = SockRef::from(&fd);
    match mode {
        Mode::Off => {
            sock.set_keepalive(false)?;
            Ok(Decision::TurnedOff)
        }
        Mode::Auto if set_by_unit(&found, kernel_defaults(sock.domain()?).as_ref()) => {
            Ok(Decision::KeptUnits(found))
        }
        Mode::Auto => {
            let t = defaults();
            sock.set_tcp_keepalive(&as_socket2(&t))?;
            sock.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
            Ok(Decision::SetDefaults(t))
        }
    }
}

fn as_socket2(t: &Timing) -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(t.idle)
        .with_interval(t.interval)
        .with_retries(t.probes)
}

/// True if connections to `addr` need keepalive: TCP to an address that is not loopback.
pub fn backend_needs_it(addr: &SockAddr) -> bool {
    addr.as_socket().is_some_and(|a| !a.ip().is_loopback())
}

/// Sets rsproxyd's defaults (and TCP_USER_TIMEOUT) on a new backend socket (only for targets that need it, see
/// [`backend_needs_it`]).
pub fn set_on_backend(fd: impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd();
    let sock = SockRef::from(&fd);
    sock.set_tcp_keepalive(&as_socket2(&defaults()))?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn kernel() -> Timing {
        Timing {
            enabled: false,
            idle: Duration::from_secs(7200),
            interval: Duration::from_secs(75),
            probes: 9,
        }
    }

    /// Only SO_KEEPALIVE on, or a timing other than the kernel's, counts as the unit's choice.
    #[test]
    fn what_counts_as_set_by_the_unit() {
        let k = kernel();
        assert!(
            !set_by_unit(&k, Some(&k)),
            "the kernel's defaults: nobody set anything"
        );
        let on = Timing { enabled: true, ..k };
        assert!(set_by_unit(&on, Some(&k)), "KeepAlive=yes");
        let idle = Timing {
            idle: Duration::from_secs(30),
            ..k
        };
        assert!(set_by_unit(&idle, Some(&k)), "KeepAliveTimeSec=30");
        let probes = Timing { probes: 3, ..k };
        assert!(set_by_unit(&probes, Some(&k)), "KeepAliveProbes=3");
        assert!(
            !set_by_unit(&idle, None),
            "without the kernel's values only the flag counts"
        );
    }

    /// A fresh socket carries the kernel's defaults, which nobody counts as a choice.
    #[test]
    fn kernel_defaults_from_a_fresh_socket() {
        let k = kernel_defaults(socket2::Domain::IPV4).unwrap();
        assert!(k.idle > Duration::ZERO && k.probes > 0, "{k:?}");
        let bare = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(read(bare.as_fd()), Some(k));
        assert!(!set_by_unit(&k, Some(&k)));
    }

    /// The defaults land on a bare listener and are inherited by the sockets it accepts; a
    /// listener with its own settings is left alone, and so are its accepted sockets.
    #[test]
    fn listener_settings_are_inherited() {
        let bare = TcpListener::bind("127.0.0.1:0").unwrap();
        let d = prepare_listener(bare.as_fd(), Mode::Auto).unwrap();
        assert_eq!(d, Decision::SetDefaults(defaults()));
        let _c = TcpStream::connect(bare.local_addr().unwrap()).unwrap();
        let (accepted, _) = bare.accept().unwrap();
        assert_eq!(read(accepted.as_fd()), Some(defaults()));
        assert_eq!(
            SockRef::from(&accepted).tcp_user_timeout().unwrap(),
            Some(USER_TIMEOUT),
            "TCP_USER_TIMEOUT is inherited too"
        );

        let unit = TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = TcpKeepalive::new()
            .with_time(Duration::from_secs(3))
            .with_interval(Duration::from_secs(2))
            .with_retries(4);
        SockRef::from(&unit).set_tcp_keepalive(&theirs).unwrap();
        let want = Timing {
            enabled: true,
            idle: Duration::from_secs(3),
            interval: Duration::from_secs(2),
            probes: 4,
        };
        assert_eq!(
            prepare_listener(unit.as_fd(), Mode::Auto).unwrap(),
            Decision::KeptUnits(want)
        );
        let _c = TcpStream::connect(unit.local_addr().unwrap()).unwrap();
        let (accepted, _) = unit.accept().unwrap();
        assert_eq!(read(accepted.as_fd()), Some(want));
        assert_eq!(
            SockRef::from(&accepted).tcp_user_timeout().unwrap(),
            None,
            "the unit's choice: no user timeout added"
        );

        assert_eq!(
            prepare_listener(unit.as_fd(), Mode::Off).unwrap(),
            Decision::TurnedOff
        );
        let _c = TcpStream::connect(unit.local_addr().unwrap()).unwrap();
        let (accepted, _) = unit.accept().unwrap();
        assert!(!read(accepted.as_fd()).unwrap().enabled);
    }

    /// Unix sockets are not touched; only non-loopback TCP backends get keepalive.
    #[test]
    fn unix_and_loopback_are_left_alone() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(read(a.as_fd()), None);
        let path = std::env::temp_dir().join(format!("rsproxyd-ka-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(
            prepare_listener(l.as_fd(), Mode::Auto).unwrap(),
            Decision::NotTcp
        );
        let _ = std::fs::remove_file(&path);
        let lo: SockAddr = "127.0.0.1:80"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        let six: SockAddr = "[::1]:80".parse::<std::net::SocketAddr>().unwrap().into();
        let far: SockAddr = "192.0.2.1:80"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        assert!(!backend_needs_it(&lo));
        assert!(!backend_needs_it(&six));
        assert!(backend_needs_it(&far));
    }
}
