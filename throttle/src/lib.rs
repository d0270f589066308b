//! A warning that may come thousands of times a second (a refused request,
//! a dropped batch) is logged at most once per period, with how many like
//! it were held back since: the log says what happened without becoming
//! the flood.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// `warn!(throttled, "format", args...)`: warns through `throttled`, as
/// from the calling module.
#[macro_export]
macro_rules! warn {
    ($throttled:expr, $($arg:tt)+) => {
        $throttled.warn_at(module_path!(), format_args!($($arg)+))
    };
}

/// Never warned yet.
const NEVER: u64 = u64::MAX;

/// One kind of warning, said at most once per period. Shared by reference
/// between threads and tasks.
pub struct Throttled {
    every_ms: u64,
    start: Instant,
    /// Milliseconds after `start` of the last warning said, or [`NEVER`].
    last_ms: AtomicU64,
    held_back: AtomicU64,
}

impl Throttled {
    /// The period is 30 seconds.
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(30);

    pub fn every(period: Duration) -> Self {
        Self {
            every_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            start: Instant::now(),
            last_ms: AtomicU64::new(NEVER),
            held_back: AtomicU64::new(0),
        }
    }

    /// Logs `message` at warn level, as from `target` (a module path),
    /// unless one was said within the period; returns whether it was said.
    /// [`warn!`] passes the caller's module.
    pub fn warn_at(&self, target: &str, message: std::fmt::Arguments<'_>) -> bool {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= self.every_ms;
        // Of the callers that find it due at once, one says it.
        if !due
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.held_back.swap(0, Ordering::Relaxed) {
            0 => log::warn!(target: target, "{message}"),
            n => log::warn!(target: target, "{message} ({n} more like it since the last)"),
        }
        true
    }
}

impl Default for Throttled {
    fn default() -> Self {
        Self::every(Self::DEFAULT_PERIOD)
    }
}

impl std::fmt::Debug for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttled")
            .field("every_ms", &self.every_ms)
            .field("held_back", &self.held_back.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_the_first_then_holds_back_within_the_period() {
        let t = Throttled::every(Duration::from_secs(3600));
        assert!(warn!(t, "first"));
        assert!(!warn!(t, "second"));
        assert!(!warn!(t, "third {}", 3));
        assert_eq!(t.held_back.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn says_again_once_the_period_has_passed() {
        let t = Throttled::every(Duration::ZERO);
        assert!(warn!(t, "first"));
        assert!(warn!(t, "second"));
        assert_eq!(t.held_back.load(Ordering::Relaxed), 0);
    }
}
