//! What the stream and the datagram side share: the stop trigger, why the daemon stopped,
//! and the activity the idle timer watches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why the daemon stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `--exit-idle-time` passed with no connection.
    Idle,
    /// SIGTERM or SIGINT (or the caller's own stop).
    Stopped,
    /// `--follow-backend`: the backend went away after it had been up.
    BackendGone,
    /// `--follow-backend`: the backend did not come up within `--connect-timeout`.
    BackendTimedOut,
    /// `Accept=yes`: the passed connection(s) were relayed.
    Finished,
    /// `Accept=yes`: the backend could not be reached for the passed connection.
    ConnectFailed,
}

impl Outcome {
    /// Exit status: 0 for orderly ends, 1 when a passed connection could not be served.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::ConnectFailed => 1,
            _ => 0,
        }
    }
}

/// The stop trigger: one cancellation root and the first reason given.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<OnceLock<Outcome>>,
    /// Cut the relays still open (drain timeout or a second signal): they are reset, so no
    /// client mistakes a cut transfer for a complete one.
    pub(crate) cut: CancellationToken,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the daemon to stop; the first reason given wins.
    pub fn request(&self, why: Outcome) {
        let _ = self.reason.set(why);
        self.token.cancel();
    }

    /// Stops at once: relays still open are reset rather than drained.
    pub fn cut_now(&self) {
        self.request(Outcome::Stopped);
        self.cut.cancel();
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// True once the relays still open are to be reset rather than drained.
    pub fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }

    /// Resolves when the relays still open are to be reset.
    pub async fn cut(&self) {
        self.cut.cancelled().await
    }

    pub(crate) fn outcome(&self) -> Outcome {
        self.reason.get().cloned().unwrap_or(Outcome::Stopped)
    }
}

/// What keeps the daemon from being idle: connections being relayed (counted while a
/// [`Busy`] lives) and the time of the last datagram relayed either way.
#[derive(Clone, Debug)]
pub struct Activity(Arc<ActivityInner>);

#[derive(Debug)]
struct ActivityInner {
    active: watch::Sender<usize>,
    /// When the activity counter started; datagram times are kept relative to it.
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last datagram; 0: none yet.
    last_datagram: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity(Arc::new(ActivityInner {
            active: watch::Sender::new(0),
            epoch: Instant::now(),
            last_datagram: AtomicU64::new(0),
        }))
    }

    /// Watches the number of busy units.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.0.active.subscribe()
    }

    /// Notes a datagram relayed (either way) now.
    pub fn datagram(&self) {
        let ns = self.0.epoch.elapsed().as_nanos().max(1) as u64;
        self.0.last_datagram.store(ns, Ordering::Relaxed);
    }

    /// When the last datagram was relayed, if any was.
    pub fn last_datagram(&self) -> Option<Instant> {
        match self.0.last_datagram.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.0.epoch + Duration::from_nanos(ns)),
        }
    }

    /// How many busy units are alive.
    pub fn busy_count(&self) -> usize {
        *self.0.active.borrow()
    }
}

/// Something that holds the daemon's [`Activity`].
pub trait Tracked {
    fn activity(&self) -> &Activity;
}

impl Tracked for Activity {
    fn activity(&self) -> &Activity {
        self
    }
}

/// Counts one unit of activity for the idle timer while it lives.
#[derive(Debug)]
pub struct Busy(Activity);

impl Busy {
    pub fn new(of: &impl Tracked) -> Self {
        let a = of.activity().clone();
        a.0.active.send_modify(|n| *n += 1);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.active.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy units are counted while they live; a datagram's time is remembered.
    #[test]
    fn activity_counts_and_remembers() {
        let a = Activity::new();
        assert_eq!(a.last_datagram(), None);
        let b1 = Busy::new(&a);
        let b2 = Busy::new(&a);
        assert_eq!(a.busy_count(), 2);
        drop(b1);
        assert_eq!(a.busy_count(), 1);
        drop(b2);
        assert_eq!(a.busy_count(), 0);
        let before = Instant::now();
        a.datagram();
        let t = a.last_datagram().expect("a datagram was noted");
        assert!(t + Duration::from_millis(1) >= before, "{t:?} {before:?}");
    }
}
