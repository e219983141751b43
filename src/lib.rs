//! rsproxyd: a socket-activated proxy for systemd that waits for its backend.
//!
//! # Architecture
//! In data-flow order:
//! - [`cli`]: the command line, with systemd-socket-proxyd's spellings and error texts;
//!   [`timespan`] reads its time spans as systemd does.
//!   [`number`] reads whole numbers as systemd's safe_atou() does.
//! - [`activation`]: the listening (or, with `Accept=yes`, connected) sockets from LISTEN_FDS.
//! - [`notify`]: READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 to systemd.
//! - [`server`]: accept loops that take a client only once a backend connection is held,
//!   the exact connection limit, the idle timer and the drain on stop.
//! - [`target`] and [`backend`]: where to connect, and the shared cold-start probe.
//! - [`relay`] and [`splice`]: the per-connection pump, read/write for small messages and
//!   splice(2) for bulk, with half-close passed through, the idle and half-close timeouts,
//!   and why each relay ended.
//! - [`keepalive`]: TCP keepalive on the listening sockets (inherited by clients), so a
//!   vanished client is reset; the .socket unit's own settings win.
//! - [`logging`]: tracing to stderr, with journald priorities.
//! - [`limits`]: every timeout, schedule and size, in one place; [`tuning`] lets a
//!   benchmark build (feature `tuning`) vary the relay's.

pub mod activation;
pub mod backend;
pub mod cli;
pub mod keepalive;
pub mod limits;
pub mod logging;
pub mod notify;
pub mod number;
pub mod relay;
pub mod server;
pub mod splice;
pub mod target;
pub mod timespan;
pub mod tuning;
