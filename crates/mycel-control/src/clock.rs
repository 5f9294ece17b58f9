//! The control plane's clock: the system's, which a test running the control plane in
//! its own process may move forward, so that what waits on time (a silent node being
//! called lost, a join token expiring, a rollout passing its deadline) happens now
//! instead of after a sleep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, plus however far it was moved forward. Clones
/// share one offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicU64>,
    /// Wakes what waits for time to pass (the heartbeat checker) when it is moved.
    moved: Arc<tokio::sync::Notify>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        system.saturating_add(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock, and every clone of it, forward by `by`; what waits on it looks
    /// at once.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(by, Ordering::Relaxed);
        // One waiter (the heartbeat checker); a permit keeps the news for it if it is
        // busy right now.
        self.moved.notify_one();
    }

    /// Resolves when the clock is moved forward.
    pub(crate) async fn moved(&self) {
        self.moved.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone() {
        let clock = Clock::system();
        let other = clock.clone();
        let before = other.now_ms();
        clock.advance(Duration::from_secs(3600));
        let after = other.now_ms();
        assert!(after >= before + 3_600_000, "{before} → {after}");
        assert!(after < before + 3_700_000, "{before} → {after}");
    }
}
