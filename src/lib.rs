//! rsproxyd: a socket-activated proxy for systemd that waits for its backend.
//!
//! # Architecture
//! In data-flow order:
//! - [`cli`]: the command line, with systemd-socket-proxyd's spellings and error texts;
//!   [`timespan`] reads its time spans as systemd does.
//!   [`number`] reads whole numbers as systemd's safe_atou() does.
//! - [`activation`]: the listening (or, with `Accept=yes`, connected) sockets from LISTEN_FDS.
//! - [`notify`]: READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 to systemd.
//! - [`lifecycle`]: what the stream and datagram sides share: the stop trigger, the
//!   outcome, the activity the idle timer watches.
//! - [`server`]: accept loops that take a client only once a backend connection is held,
//!   the exact connection limit, the idle timer and the drain on stop.
//! - [`target`] and [`backend`]: where to connect, and the shared cold-start probe.
//! - [`datagram`]: the datagram relay (`ListenDatagram=`): per-client sessions, replies from
//!   the address the client wrote to, and a cold start that keeps refused datagrams.
//! - [`proxy_header`]: the PROXY protocol v1/v2 header sent first on a relayed backend
//!   connection (`--proxy-protocol`).
//! - [`relay`] and [`splice`]: the per-connection pump, read/write for small messages and
//!   splice(2) for bulk, with half-close passed through, the idle and half-close timeouts,
//!   and why each relay ended. `kernel_relay` (cargo feature `kernel-relay`, experimental,
//!   not in the shipped build) would move established relays into a BPF sockmap instead.
//! - [`keepalive`]: TCP keepalive on the listening sockets (inherited by clients), so a
//!   vanished client is reset; the .socket unit's own settings win.
//! - [`records`]: what is reported about the work (a connection's end, a backend
//!   timeout, the exit summary), each with its journal fields.
//! - [`logging`]: tracing to the journal with those fields when stderr is the journal,
//!   otherwise text to stderr (with journald's `<N>` priorities when the journal's socket
//!   cannot be reached).
//! - [`limits`]: every timeout, schedule and size, in one place; [`tuning`] lets a
//!   benchmark build (feature `tuning`) vary the relay's.
//!
//! Apart from the daemon: [`generator`] turns `/etc/rsproxyd/NAME.proxy` files into units
//! (the `rsproxyd-generator` binary, a systemd.generator(7), does the file-system part).

pub mod activation;
pub mod backend;
pub mod cli;
pub mod datagram;
pub mod generator;
pub mod keepalive;
#[cfg(feature = "kernel-relay")]
pub mod kernel_relay;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod notify;
pub mod number;
pub mod proxy_header;
pub mod records;
pub mod relay;
pub mod server;
pub mod splice;
pub mod target;
pub mod timespan;
pub mod tuning;
