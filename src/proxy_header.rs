//! The PROXY protocol header (v1 text, v2 binary) that tells the backend who the client is.
//!
//! Built from the client's two addresses as HAProxy's `doc/proxy-protocol.txt` specifies:
//! the source is the client (the accepted socket's peer), the destination the address the
//! client connected to. IPv4-mapped IPv6 addresses (a `[::]` listener reached over IPv4) are
//! sent as IPv4, since some receivers refuse mapped or mixed forms. A client that has no IP
//! address (a unix-socket listener) gets v1 `PROXY UNKNOWN` and, in v2, the LOCAL command
//! with no addresses: the receiver then uses the connection's own endpoints, which is all
//! it could do with an unnamed unix client, and nginx and HAProxy both take it.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use crate::limits::PROXY_EARLY_DATA;

/// The version of the PROXY protocol to send (`--proxy-protocol=v1|v2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The human-readable line, as systemd-socket-proxyd 261 sends.
    V1,
    /// The binary header.
    V2,
}

impl Version {
    /// The values `--proxy-protocol=` accepts, for messages.
    pub const ACCEPTED: &'static str = "v1, v2";

    /// Reads a `--proxy-protocol=` value; `None` if it is not one of [`Self::ACCEPTED`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            _ => None,
        }
    }
}

/// A client's (source, destination) addresses; `None` for a client without an IP address.
pub type Endpoints = Option<(SocketAddr, SocketAddr)>;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// v2 version 2 with the PROXY command: the connection is relayed for the addresses given.
const V2_CMD_PROXY: u8 = 0x21;
/// v2 version 2 with the LOCAL command: use the connection's own endpoints.
const V2_CMD_LOCAL: u8 = 0x20;
/// v2 family and transport: unspecified.
const V2_FAM_UNSPEC: u8 = 0x00;
/// v2 family and transport: TCP over IPv4.
const V2_FAM_TCP4: u8 = 0x11;
/// v2 family and transport: TCP over IPv6.
const V2_FAM_TCP6: u8 = 0x21;

/// The longest header this module builds (a v1 TCP6 line is at most 104 bytes, the spec's
/// bound is 107; a v2 TCP6 header is 52). It fits a fresh socket's send buffer in one write.
pub const MAX_LEN: usize = 107;

/// The header for a connection from `source` to `destination`, or for a client with no IP
/// address (`None`).
pub fn build(version: Version, endpoints: Endpoints) -> Vec<u8> {
    let endpoints = endpoints.map(|(s, d)| same_family(unmap(s.ip()), s, unmap(d.ip()), d));
    match version {
        Version::V1 => v1(endpoints),
        Version::V2 => v2(endpoints),
    }
}

/// The header for `client`, an accepted (or passed, `Accept=yes`) connected socket: its
/// peer is the source, its own address the destination. Fails if the client is gone.
pub fn for_client(version: Version, client: impl AsFd) -> io::Result<Vec<u8>> {
    let sock = socket2::SockRef::from(&client);
    let peer = sock.peer_addr()?;
    let local = sock.local_addr()?;
    let endpoints = match (peer.as_socket(), local.as_socket()) {
        (Some(p), Some(l)) => Some((p, l)),
        _ => None,
    };
    Ok(build(version, endpoints))
}

/// Writes the header for `client` to `backend`, a freshly connected socket whose send
/// buffer is empty, in a single send(2): a header split across segments is refused by some
/// receivers (nginx, for v2). What the client has already sent (up to
/// [`PROXY_EARLY_DATA`] bytes, looked at with MSG_PEEK) rides in the same write after the
/// header, so the backend gets one segment rather than two; only the bytes that went out
/// are then taken from the client, the rest is left to the relay. A short or failed header
/// write is an error; the caller then resets both sides, so no client byte ever reaches the
/// backend without its header.
pub fn send(version: Version, client: impl AsFd, backend: impl AsFd) -> io::Result<()> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let header = for_client(version, &client)?;
    let client_fd = client.as_fd().as_raw_fd();
    let mut early = [0u8; PROXY_EARLY_DATA];
    // Nothing there yet, EOF, or an error: the header goes alone; the relay sees the rest.
    let peeked = loop {
        match recv(
            client_fd,
            &mut early,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.unwrap_or(0),
        }
    };
    let bufs = [IoSlice::new(&header), IoSlice::new(&early[..peeked])];
    let sock = socket2::SockRef::from(&backend);
    let sent = loop {
        match sock.send_vectored_with_flags(&bufs, libc::MSG_NOSIGNAL) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    if sent < header.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "the PROXY protocol header went out short ({sent} of {} bytes)",
                header.len()
            ),
        ));
    }
    // Take from the client exactly the bytes that went out with the header.
    let relayed = sent - header.len();
    if relayed > 0 {
        let taken = loop {
            match recv(client_fd, &mut early[..relayed], MsgFlags::MSG_DONTWAIT) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.map_err(io::Error::from)?,
            }
        };
        if taken != relayed {
            // Cannot happen (the bytes were peeked and only this task reads the client),
            // but relaying the rest now would send some bytes twice.
            return Err(io::Error::other(format!(
                "the client's first {relayed} bytes went to the backend but only {taken} could be taken back"
            )));
        }
    }
    Ok(())
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it stands for.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Both ends in one family, as the header requires: IPv4 if both are, else both IPv6 (an
/// IPv4 end is then written mapped; real sockets never mix, so this is only a fallback).
fn same_family(
    src_ip: IpAddr,
    src: SocketAddr,
    dst_ip: IpAddr,
    dst: SocketAddr,
) -> (SocketAddr, SocketAddr) {
    let to6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    if src_ip.is_ipv4() == dst_ip.is_ipv4() {
        (
            SocketAddr::new(src_ip, src.port()),
            SocketAddr::new(dst_ip, dst.port()),
        )
    } else {
        (
            SocketAddr::new(to6(src_ip), src.port()),
            SocketAddr::new(to6(dst_ip), dst.port()),
        )
    }
}

fn v1(endpoints: Endpoints) -> Vec<u8> {
    let Some((src, dst)) = endpoints else {
        return b"PROXY UNKNOWN\r\n".to_vec();
    };
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    // Addresses are printed without ports, brackets or scope ids: Display of an IpAddr.
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn v2(endpoints: Endpoints) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    let Some((src, dst)) = endpoints else {
        out.extend_from_slice(&[V2_CMD_LOCAL, V2_FAM_UNSPEC, 0, 0]);
        return out;
    };
    let mut addrs = Vec::with_capacity(36);
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            V2_FAM_TCP4
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            V2_FAM_TCP6
        }
        // same_family() never leaves the two ends in different families.
        _ => {
            out.extend_from_slice(&[V2_CMD_LOCAL, V2_FAM_UNSPEC, 0, 0]);
            return out;
        }
    };
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&[V2_CMD_PROXY, family]);
    // At most 36 bytes of addresses: the u16 length cannot overflow.
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&addrs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(src: &str, dst: &str) -> Endpoints {
        Some((src.parse().unwrap(), dst.parse().unwrap()))
    }

    /// v1 lines are exactly as the specification spells them, mapped addresses unmapped.
    #[test]
    fn v1_golden_lines() {
        let table: Vec<(Endpoints, &str)> = vec![
            (
                pair("127.0.0.5:40000", "127.0.0.1:8080"),
                "PROXY TCP4 127.0.0.5 127.0.0.1 40000 8080\r\n",
            ),
            (
                pair("192.168.0.1:56324", "192.168.0.11:443"),
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            ),
            (
                pair("[::1]:1", "[::1]:65535"),
                "PROXY TCP6 ::1 ::1 1 65535\r\n",
            ),
            (
                pair("[2001:db8::1]:5000", "[2001:db8:0:0:1::2]:80"),
                "PROXY TCP6 2001:db8::1 2001:db8::1:0:0:2 5000 80\r\n",
            ),
            // A [::] listener reached over IPv4: both ends arrive mapped.
            (
                pair("[::ffff:127.0.0.77]:3333", "[::ffff:127.0.0.1]:80"),
                "PROXY TCP4 127.0.0.77 127.0.0.1 3333 80\r\n",
            ),
            // Scope ids cannot be written in the header and are left out.
            (
                pair("[fe80::1%2]:7", "[fe80::2%2]:8"),
                "PROXY TCP6 fe80::1 fe80::2 7 8\r\n",
            ),
            // Mixed families (no real socket has them) fall back to IPv6 on both ends.
            (
                pair("10.0.0.1:1", "[::1]:2"),
                "PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n",
            ),
            (None, "PROXY UNKNOWN\r\n"),
        ];
        for (endpoints, want) in table {
            let got = build(Version::V1, endpoints);
            assert_eq!(String::from_utf8(got).unwrap(), want, "{endpoints:?}");
        }
    }

    /// The longest v1 line stays within the specification's 107 bytes.
    #[test]
    fn v1_longest_line_fits() {
        let long = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535";
        let got = build(Version::V1, pair(long, long));
        assert_eq!(got.len(), 104);
        assert!(got.len() <= MAX_LEN);
    }

    /// v2 headers are byte-exact: signature, command, family, big-endian length, addresses.
    #[test]
    fn v2_golden_bytes() {
        const SIG: [u8; 12] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
        ];
        let mut v6 = SIG.to_vec();
        v6.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        v6.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
        ]);
        v6.extend_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
        let table: Vec<(Endpoints, Vec<u8>)> = vec![
            (
                pair("127.0.0.5:40000", "127.0.0.1:8080"),
                [
                    &SIG[..],
                    &[0x21, 0x11, 0x00, 0x0c],
                    &[127, 0, 0, 5, 127, 0, 0, 1],
                    &[0x9c, 0x40, 0x1f, 0x90],
                ]
                .concat(),
            ),
            (
                pair("[::ffff:127.0.0.77]:258", "[::ffff:10.1.2.3]:1"),
                [
                    &SIG[..],
                    &[0x21, 0x11, 0x00, 0x0c],
                    &[127, 0, 0, 77, 10, 1, 2, 3],
                    &[0x01, 0x02, 0x00, 0x01],
                ]
                .concat(),
            ),
            (pair("[::1]:40000", "[2001:db8::2]:80"), v6),
            (None, [&SIG[..], &[0x20, 0x00, 0x00, 0x00]].concat()),
        ];
        for (endpoints, want) in table {
            let got = build(Version::V2, endpoints);
            assert_eq!(got, want, "{endpoints:?}");
            assert_eq!(&got[..12], &V2_SIGNATURE);
            let len = u16::from_be_bytes([got[14], got[15]]) as usize;
            assert_eq!(got.len(), 16 + len, "length field of {endpoints:?}");
        }
    }

    /// Only the two spellings systemd and rsproxyd document are accepted.
    #[test]
    fn version_values() {
        let table = [
            ("v1", Some(Version::V1)),
            ("v2", Some(Version::V2)),
            ("V1", None),
            ("1", None),
            ("v3", None),
            ("", None),
            (" v1", None),
        ];
        for (s, want) in table {
            assert_eq!(Version::parse(s), want, "{s:?}");
        }
    }

    /// send puts the header first, and in the same write up to PROXY_EARLY_DATA bytes the
    /// client already sent; those are taken from the client, the rest stays for the relay.
    #[test]
    fn send_carries_early_client_bytes_after_the_header() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        for sent_by_client in [0usize, 11, PROXY_EARLY_DATA, PROXY_EARLY_DATA + 5904] {
            let (held_client, mut client) = UnixStream::pair().unwrap();
            let (held_backend, mut backend) = UnixStream::pair().unwrap();
            let data: Vec<u8> = (0..sent_by_client).map(|i| (i % 251) as u8).collect();
            client.write_all(&data).unwrap();
            send(Version::V1, &held_client, &held_backend).unwrap();
            drop(held_backend);
            let mut got = Vec::new();
            backend.read_to_end(&mut got).unwrap();
            let carried = sent_by_client.min(PROXY_EARLY_DATA);
            let want = [&b"PROXY UNKNOWN\r\n"[..], &data[..carried]].concat();
            assert_eq!(got, want, "{sent_by_client} bytes sent by the client");
            drop(client);
            let mut left = Vec::new();
            (&held_client).read_to_end(&mut left).unwrap();
            assert_eq!(left, &data[carried..], "left for the relay");
        }
    }

    /// A backend that is gone makes send fail, and the client's bytes stay unread (the
    /// caller resets both sides; nothing is relayed without the header).
    #[test]
    fn send_to_a_gone_backend_fails_and_takes_nothing() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        let (held_client, mut client) = UnixStream::pair().unwrap();
        let (held_backend, backend) = UnixStream::pair().unwrap();
        drop(backend);
        client.write_all(b"request").unwrap();
        let err = send(Version::V2, &held_client, &held_backend).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
        drop(client);
        let mut left = Vec::new();
        (&held_client).read_to_end(&mut left).unwrap();
        assert_eq!(left, b"request");
    }

    /// for_client reads the peer as the source and the socket's own address as the
    /// destination, and gives a unix client UNKNOWN / LOCAL.
    #[test]
    fn for_client_reads_both_ends() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = listener.local_addr().unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.5:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        sock.connect(&dst.into()).unwrap();
        let src = sock.local_addr().unwrap().as_socket().unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let want = format!(
            "PROXY TCP4 127.0.0.5 127.0.0.1 {} {}\r\n",
            src.port(),
            dst.port()
        );
        assert_eq!(for_client(Version::V1, &accepted).unwrap(), want.as_bytes());

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(for_client(Version::V1, &a).unwrap(), b"PROXY UNKNOWN\r\n");
        assert_eq!(
            for_client(Version::V2, &a).unwrap(),
            [&V2_SIGNATURE[..], &[0x20, 0, 0, 0]].concat()
        );
    }
}
