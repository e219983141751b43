//! Every timeout, schedule and size the daemon uses, named in one place.

use std::time::Duration;

/// Default for `--connections-max`, the same as systemd-socket-proxyd.
pub const DEFAULT_CONNECTIONS_MAX: usize = 256;

/// Default for `--threads`: one event loop. It used about 15% less CPU per request than a
/// two-thread pool in the keep-alive benchmark (benches/), and one core carries more
/// traffic than a socket-activated backend usually sees.
pub const DEFAULT_THREADS: usize = 1;

/// Upper bound for `--threads`.
pub const MAX_THREADS: usize = 256;

/// Default for `--connect-timeout`: how long clients may wait for a cold backend.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for `--drain-timeout`: how long relays in flight may run after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// After the drain timeout, how long the relays still open get to reset their sockets.
pub const RESET_GRACE: Duration = Duration::from_secs(1);

/// Probe delay while the backend has been cold for less than [`PROBE_FAST_FOR`].
pub const PROBE_FAST_DELAY: Duration = Duration::from_millis(1);

/// How long the cold-start probe runs at [`PROBE_FAST_DELAY`] (most backends bind by then).
pub const PROBE_FAST_FOR: Duration = Duration::from_millis(500);

/// Probe delay after that, until [`PROBE_MEDIUM_FOR`].
pub const PROBE_MEDIUM_DELAY: Duration = Duration::from_millis(2);

/// How long the probe runs at [`PROBE_MEDIUM_DELAY`] before slowing to [`PROBE_SLOW_DELAY`].
pub const PROBE_MEDIUM_FOR: Duration = Duration::from_secs(5);

/// Probe delay for backends that take longer than [`PROBE_MEDIUM_FOR`] to start.
/// Still under the 5 ms budget between the backend's bind and the client's connection.
pub const PROBE_SLOW_DELAY: Duration = Duration::from_millis(4);

/// How often names in TARGET are resolved again while the probe runs.
pub const PROBE_RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// First pause after accept() or socket() fails for lack of file descriptors.
pub const FD_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Longest such pause.
pub const FD_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often STATUS= is refreshed for `systemctl status` (only when something changed).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Size of the per-thread buffer for the read/write relay; a read that fills it
/// switches that direction to splice(2).
pub const COPY_BUFFER: usize = 64 * 1024;

/// Capacity asked of each splice pipe with F_SETPIPE_SZ (the kernel may round or refuse;
/// past the per-user limit a pipe keeps its default size). 1 MiB used about 5% less CPU per
/// GB than 256 KiB in two of three iperf3 rounds; more than pipe-max-size is refused.
pub const PIPE_SIZE: usize = 1024 * 1024;

/// Longest unix socket path (sun_path holds 108 bytes including the NUL).
pub const UNIX_PATH_MAX: usize = 107;

/// Returns how long the cold-start probe sleeps after a refused attempt, given how long the
/// backend has been cold.
pub fn probe_delay(cold_for: Duration) -> Duration {
    if cold_for < PROBE_FAST_FOR {
        PROBE_FAST_DELAY
    } else if cold_for < PROBE_MEDIUM_FOR {
        PROBE_MEDIUM_DELAY
    } else {
        PROBE_SLOW_DELAY
    }
}

/// Returns the pause after the `n`th consecutive fd-exhaustion failure (n starts at 0).
pub fn fd_backoff(n: u32) -> Duration {
    FD_BACKOFF_MIN
        .saturating_mul(1u32 << n.min(16))
        .min(FD_BACKOFF_MAX)
}

// --- PROXY protocol (--proxy-protocol) ---

/// At most this many bytes the client has already sent go out in the same write as the
/// PROXY protocol header (one segment to the backend instead of two); an HTTP request or a
/// TLS ClientHello usually fits.
pub const PROXY_EARLY_DATA: usize = 4096;

// --- rsproxyd-generator ---------------------------------------------------------------------

/// `ExitIdleTime=` of a generated proxy when the `.proxy` file gives none: scaling to zero is
/// the point of a generated unit, so idle proxies (and their backends) go after 10 minutes.
pub const GENERATED_EXIT_IDLE_TIME: &str = "10min";

/// `ConnectionIdleTimeout=` of a generated proxy when the file gives none: as the contrib
/// units, a relay silent for 10 minutes ends (FIN to both sides), so a client that keeps a
/// connection open without using it cannot keep the service from scaling to zero.
pub const GENERATED_CONNECTION_IDLE_TIMEOUT: &str = "10min";

/// `HalfCloseTimeout=` of a generated proxy when the file gives none: a minute of silence
/// after one side's FIN ends the relay, as in the contrib units.
pub const GENERATED_HALF_CLOSE_TIMEOUT: &str = "1min";

/// How much longer than the drain timeout systemd waits before it SIGKILLs a generated proxy
/// (`TimeoutStopSec=`): 30 s drain + 15 s = the contrib units' 45 s.
pub const GENERATED_STOP_MARGIN: Duration = Duration::from_secs(15);

// --- Datagram sockets (ListenDatagram=, src/datagram.rs) -------------------------------------

/// Default for `--session-timeout`: a datagram session with no datagram either way for this
/// long ends (60 s, as Envoy's UDP proxy and rathole use).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// Receive buffer for one datagram: the largest UDP payload over IPv6 is 65,527 bytes (over
/// IPv4 65,507), so every UDP datagram fits; a longer one (a unix datagram) is detected by
/// MSG_TRUNC, counted and logged, never passed on cut short.
pub const DATAGRAM_BUFFER: usize = 64 * 1024;

/// A datagram sent to the backend with no ICMP error (ECONNREFUSED) within this long counts
/// as delivered: a backend behind a filter that sends no ICMP at all must not stall anything.
/// On loopback the error arrives within microseconds of the send.
pub const DATAGRAM_REFUSAL_GRACE: Duration = Duration::from_millis(100);

/// The slowest a cold-start probe datagram is resent: the kernel sends at most 1,000 ICMP
/// errors a second (net.ipv4.icmp_msgs_per_sec), loopback included; probing at half that
/// leaves room, so a refusal is not mistaken for a delivery because its ICMP was rate-limited.
pub const DATAGRAM_PROBE_MIN_DELAY: Duration = Duration::from_millis(2);

/// Datagrams one session keeps while its backend is cold; beyond that the oldest is dropped.
pub const DATAGRAM_HELD_PER_SESSION: usize = 64;

/// Bytes of datagrams all sessions together keep while the backend is cold.
pub const DATAGRAM_HELD_BYTES: usize = 8 * 1024 * 1024;

/// On stop, the datagram drain ends once no datagram has gone either way for this long: the
/// replies to datagrams already forwarded have come by then (a local DNS answer takes
/// milliseconds). `--drain-timeout` bounds it in any case.
pub const DATAGRAM_REPLY_GRACE: Duration = Duration::from_millis(500);

/// A burst of dropped datagrams ends after this long without a drop: the first drop of a burst
/// is warned about, the rest only counted (and the count given in the next warning).
pub const DATAGRAM_WARN_BURST: Duration = Duration::from_secs(10);

/// Datagrams read from one listening socket per wake-up before other tasks get a turn.
pub const DATAGRAM_RECV_BATCH: usize = 64;

// --- Timeouts (issue 15): dead peers, silent connections, the -c queue -----------------

/// TCP keepalive idle time rsproxyd sets when the .socket unit set no keepalive: a silent
/// connection is probed after a minute (the kernel's own default is two hours).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Interval between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered probes before the kernel resets the connection: a vanished peer is noticed
/// within [`KEEPALIVE_IDLE`] + 6 x [`KEEPALIVE_INTERVAL`] = 2 minutes.
pub const KEEPALIVE_PROBES: u32 = 6;

/// TCP_USER_TIMEOUT set with those defaults: how long sent data may stay unacknowledged
/// before the kernel gives up. Keepalive probes only run on a connection with nothing in
/// flight; a client that vanishes mid-download would otherwise hold its relay for the
/// ~15 minutes of retransmissions (tcp_retries2). The same 2 minutes as the keepalive.
pub const USER_TIMEOUT: Duration = Duration::from_secs(120);

/// Default for `--connection-idle-timeout` and `--half-close-timeout`: none, as
/// systemd-socket-proxyd (a relay may stay silent forever).
pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Option<Duration> = None;

/// While clients wait for a `-c` slot, how many times per `--queue-timeout` the accept
/// queue is looked at: a queued client is closed at most this fraction late.
pub const QUEUE_CHECKS_PER_TIMEOUT: u32 = 8;

/// The shortest pause between two such looks.
pub const QUEUE_CHECK_MIN: Duration = Duration::from_millis(10);

// --- Kernel relay (--kernel-relay, cargo feature `kernel-relay`) ---

/// At most this many relays at once go into the sockmap (each holds two entries in each of
/// its two maps); past it a relay runs in user space. The maps' hash tables are sized for
/// it at start-up, so it also bounds their memory with a large `--connections-max`.
pub const KERNEL_RELAY_MAX_RELAYS: usize = 65_536;

/// After a FIN, how many times the relay yields before it sleeps between looks at whether
/// the peer's send queue has taken everything before the FIN (it usually has at once).
pub const KERNEL_RELAY_FIN_YIELDS: u32 = 16;

/// The sleep between those looks after the yields.
pub const KERNEL_RELAY_FIN_POLL: Duration = Duration::from_millis(1);
#[cfg(test)]
mod tests {
    use super::*;

    /// The probe schedule is fine-grained at first and never sleeps longer than 4 ms.
    #[test]
    fn probe_schedule_table() {
        let table = [
            (0, 1),
            (1, 1),
            (499, 1),
            (500, 2),
            (4_999, 2),
            (5_000, 4),
            (3_600_000, 4),
        ];
        for (cold_ms, want_ms) in table {
            assert_eq!(
                probe_delay(Duration::from_millis(cold_ms)),
                Duration::from_millis(want_ms),
                "cold for {cold_ms} ms"
            );
        }
    }

    /// The fd backoff doubles from 10 ms and is capped at one second.
    #[test]
    fn fd_backoff_table() {
        let table = [(0, 10), (1, 20), (2, 40), (6, 640), (7, 1000), (40, 1000)];
        for (n, want_ms) in table {
            assert_eq!(fd_backoff(n), Duration::from_millis(want_ms), "attempt {n}");
        }
    }
}
