//! The TARGET argument: parsing `HOST:PORT`, `[IPV6]:PORT`, `/path` and `@abstract`, and
//! turning it into socket addresses to connect to.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use socket2::SockAddr;

use crate::limits::UNIX_PATH_MAX;

/// Where connections are relayed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An IP address or a host name, and a port.
    Inet { host: Host, port: u16 },
    /// A unix socket in the file system.
    Unix(String),
    /// A unix socket in the abstract namespace (`@name`; the name without the `@`).
    Abstract(String),
}

/// The host part of an inet TARGET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Why a TARGET could not be parsed. The text is shown to users.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("target is empty")]
    Empty,
    #[error(
        "target '{0}' has no port: expected HOST:PORT, [IPV6]:PORT, /path/to.sock or @abstract"
    )]
    NoPort(String),
    #[error("target '{0}' has no host before the port")]
    NoHost(String),
    #[error("target '{target}' has a bad port '{port}': expected a number from 1 to 65535")]
    BadPort { target: String, port: String },
    #[error("target '{0}' has a bad bracketed address: expected [IPV6]:PORT, e.g. [::1]:8080")]
    BadBrackets(String),
    #[error(
        "target '{0}' looks like an IPv6 address without brackets: write it as [ADDRESS]:PORT"
    )]
    UnbracketedIpv6(String),
    #[error("target '{0}': a unix socket path must be absolute (start with /)")]
    RelativePath(String),
    #[error("target '{target}': unix socket name is {len} bytes, longer than the {UNIX_PATH_MAX} the kernel allows")]
    PathTooLong { target: String, len: usize },
    #[error("target '@': an abstract socket needs a name after the @")]
    EmptyAbstract,
    #[error("target '{0}' contains a NUL byte")]
    Nul(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if s.contains('\0') {
            return Err(TargetError::Nul(s.escape_debug().to_string()));
        }
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                return Err(TargetError::EmptyAbstract);
            }
            // The abstract name follows a leading NUL in sun_path.
            if name.len() > UNIX_PATH_MAX - 1 {
                return Err(TargetError::PathTooLong {
                    target: s.into(),
                    len: name.len() + 1,
                });
            }
            return Ok(Target::Abstract(name.into()));
        }
        if s.starts_with('/') {
            if s.len() > UNIX_PATH_MAX {
                return Err(TargetError::PathTooLong {
                    target: s.into(),
                    len: s.len(),
                });
            }
            return Ok(Target::Unix(s.into()));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or_else(|| TargetError::BadBrackets(s.into()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| TargetError::NoPort(s.into()))?;
            let ip: std::net::Ipv6Addr = addr
                .parse()
                .map_err(|_| TargetError::BadBrackets(s.into()))?;
            return Ok(Target::Inet {
                host: Host::Ip(IpAddr::V6(ip)),
                port: parse_port(s, port)?,
            });
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            if s.contains('/') {
                return Err(TargetError::RelativePath(s.into()));
            }
            return Err(TargetError::NoPort(s.into()));
        };
        if host.contains(':') {
            return Err(TargetError::UnbracketedIpv6(s.into()));
        }
        if host.is_empty() {
            return Err(TargetError::NoHost(s.into()));
        }
        let port = parse_port(s, port)?;
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(host.into()),
        };
        Ok(Target::Inet { host, port })
    }
}

fn parse_port(target: &str, port: &str) -> Result<u16, TargetError> {
    let bad = || TargetError::BadPort {
        target: target.into(),
        port: port.into(),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(p) => Ok(p),
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Inet {
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            } => write!(f, "[{ip}]:{port}"),
            Target::Inet {
                host: Host::Ip(ip),
                port,
            } => write!(f, "{ip}:{port}"),
            Target::Inet {
                host: Host::Name(n),
                port,
            } => write!(f, "{n}:{port}"),
            Target::Unix(p) => f.write_str(p),
            Target::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

impl Target {
    /// Returns true when connecting needs a name lookup first.
    pub fn needs_resolving(&self) -> bool {
        matches!(
            self,
            Target::Inet {
                host: Host::Name(_),
                ..
            }
        )
    }

    /// Returns the addresses to try, in order. Names are resolved with the system resolver
    /// (getaddrinfo, so /etc/hosts applies); every address it returns is tried.
    pub async fn resolve(&self) -> io::Result<Vec<SockAddr>> {
        match self {
            Target::Inet {
                host: Host::Ip(ip),
                port,
            } => Ok(vec![SockAddr::from(SocketAddr::new(*ip, *port))]),
            Target::Inet {
                host: Host::Name(name),
                port,
            } => {
                let addrs: Vec<SockAddr> = tokio::net::lookup_host((name.as_str(), *port))
                    .await?
                    .map(SockAddr::from)
                    .collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{name} has no addresses"),
                    ));
                }
                Ok(addrs)
            }
            Target::Unix(path) => Ok(vec![SockAddr::unix(path)?]),
            Target::Abstract(name) => Ok(vec![abstract_addr(name.as_bytes())?]),
        }
    }
}

/// Builds the address of an abstract unix socket: socket2 treats a leading NUL as the
/// abstract namespace and does not add a terminating one.
fn abstract_addr(name: &[u8]) -> io::Result<SockAddr> {
    use std::os::unix::ffi::OsStrExt;
    let mut raw = Vec::with_capacity(name.len() + 1);
    raw.push(0);
    raw.extend_from_slice(name);
    SockAddr::unix(std::ffi::OsStr::from_bytes(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn inet(ip: IpAddr, port: u16) -> Target {
        Target::Inet {
            host: Host::Ip(ip),
            port,
        }
    }

    /// Every TARGET form users write parses to the right address, and prints back the same.
    #[test]
    fn good_targets() {
        let table: Vec<(&str, Target)> = vec![
            ("127.0.0.1:8080", inet(Ipv4Addr::LOCALHOST.into(), 8080)),
            ("0.0.0.0:1", inet(Ipv4Addr::UNSPECIFIED.into(), 1)),
            ("[::1]:443", inet(Ipv6Addr::LOCALHOST.into(), 443)),
            (
                "[fe80::1]:65535",
                inet("fe80::1".parse::<IpAddr>().unwrap(), 65535),
            ),
            (
                "localhost:80",
                Target::Inet {
                    host: Host::Name("localhost".into()),
                    port: 80,
                },
            ),
            (
                "backend.internal:9000",
                Target::Inet {
                    host: Host::Name("backend.internal".into()),
                    port: 9000,
                },
            ),
            ("/run/app.sock", Target::Unix("/run/app.sock".into())),
            ("@app", Target::Abstract("app".into())),
        ];
        for (input, want) in table {
            let got: Target = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
            assert_eq!(got.to_string(), input, "display of {input}");
        }
    }

    /// Every malformed TARGET is refused with an error that names what is wrong.
    #[test]
    fn bad_targets() {
        let long_path = format!("/{}", "a".repeat(UNIX_PATH_MAX));
        let long_abstract = format!("@{}", "a".repeat(UNIX_PATH_MAX));
        let table: Vec<(&str, &str)> = vec![
            ("", "target is empty"),
            ("127.0.0.1", "has no port"),
            ("localhost", "has no port"),
            ("127.0.0.1:", "bad port ''"),
            ("127.0.0.1:0", "bad port '0'"),
            ("127.0.0.1:65536", "bad port '65536'"),
            ("127.0.0.1:http", "bad port 'http'"),
            ("127.0.0.1:+80", "bad port '+80'"),
            ("127.0.0.1:-1", "bad port '-1'"),
            (":8080", "no host"),
            ("::1:8080", "without brackets"),
            ("[::1]", "has no port"),
            ("[::1:8080", "bad bracketed"),
            ("[127.0.0.1]:80", "bad bracketed"),
            ("[]:80", "bad bracketed"),
            ("[::1]8080", "has no port"),
            ("run/app.sock", "must be absolute"),
            ("@", "needs a name"),
            (&long_path, "longer than the 107"),
            (&long_abstract, "longer than the 107"),
            ("/run/a\0b", "NUL byte"),
        ];
        for (input, want) in table {
            let err = input
                .parse::<Target>()
                .expect_err(&format!("{input:?} should be refused"));
            let text = err.to_string();
            assert!(
                text.contains(want),
                "{input:?}: got {text:?}, want {want:?}"
            );
        }
    }

    /// A literal address resolves to itself without a lookup; a name needs one.
    #[tokio::test]
    async fn resolve_literals() {
        let t: Target = "[::1]:9".parse().unwrap();
        assert!(!t.needs_resolving());
        let addrs = t.resolve().await.unwrap();
        assert_eq!(addrs[0].as_socket(), Some("[::1]:9".parse().unwrap()));
        let t: Target = "localhost:9".parse().unwrap();
        assert!(t.needs_resolving());
        assert!(!t.resolve().await.unwrap().is_empty());
        let t: Target = "@x".parse().unwrap();
        let a = t.resolve().await.unwrap();
        assert_eq!(
            a[0].len() as usize,
            std::mem::size_of::<libc::sa_family_t>() + 2
        );
    }
}
