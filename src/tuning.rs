//! Relay settings that benchmarks compare, read from the environment only in a build with
//! the `tuning` feature (`benches/tuning.sh` builds one). A normal build has no knobs: it
//! always uses the values in [`crate::limits`] and the adaptive relay.
//!
//! Variables (tuning builds only; an unset or unreadable one keeps the default):
//! - `RSPROXYD_TUNE_RELAY`: `adaptive` (read/write, then splice once a read fills the
//!   buffer), `copy` (read/write only) or `splice` (splice from the first byte);
//! - `RSPROXYD_TUNE_PIPE`: bytes asked of each splice pipe (F_SETPIPE_SZ);
//! - `RSPROXYD_TUNE_BUFFER`: bytes of the read/write buffer.

use crate::limits::{COPY_BUFFER, PIPE_SIZE};

/// How a relay direction moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// read/write first; splice once a read fills the buffer (the shipped behaviour).
    Adaptive,
    /// read/write only.
    Copy,
    /// splice from the first byte.
    Splice,
}

/// The relay mode in effect.
pub fn relay_mode() -> RelayMode {
    #[cfg(feature = "tuning")]
    {
        static MODE: std::sync::OnceLock<RelayMode> = std::sync::OnceLock::new();
        *MODE.get_or_init(|| match std::env::var("RSPROXYD_TUNE_RELAY").as_deref() {
            Ok("copy") => RelayMode::Copy,
            Ok("splice") => RelayMode::Splice,
            _ => RelayMode::Adaptive,
        })
    }
    #[cfg(not(feature = "tuning"))]
    {
        RelayMode::Adaptive
    }
}

/// Bytes asked of each splice pipe.
pub fn pipe_size() -> usize {
    #[cfg(feature = "tuning")]
    {
        static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *SIZE.get_or_init(|| tuned("RSPROXYD_TUNE_PIPE", PIPE_SIZE))
    }
    #[cfg(not(feature = "tuning"))]
    {
        PIPE_SIZE
    }
}

/// Bytes of the read/write relay's buffer.
/// (Read once per thread, when its buffer is made.)
pub fn copy_buffer() -> usize {
    #[cfg(feature = "tuning")]
    {
        tuned("RSPROXYD_TUNE_BUFFER", COPY_BUFFER)
    }
    #[cfg(not(feature = "tuning"))]
    {
        COPY_BUFFER
    }
}

#[cfg(feature = "tuning")]
fn tuned(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}
