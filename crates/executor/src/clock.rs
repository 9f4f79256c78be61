//! Time as executors and the engine see it.
//!
//! Execution runs on [`SystemClock`]. Simulation runs on a [`VirtualClock`]: real work
//! takes real time, but every wait (soak, backoff, sampling interval) is skipped by moving
//! the clock forward, so a seven-week plan runs in seconds while its timestamps, windows
//! and budgets still read in plan time.

use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::BoxFuture;

/// A source of time and of waiting.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Waits for `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Whether waits are skipped rather than waited (simulation).
    fn is_virtual(&self) -> bool;

    /// The real time a wait of `plan` takes on this clock; `None` when waits take none
    /// (whoever watches while others wait must then look at step boundaries instead).
    fn real_time(&self, plan: Duration) -> Option<Duration> {
        (!self.is_virtual()).then_some(plan)
    }
}

/// Wall-clock time; waits really wait.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn is_virtual(&self) -> bool {
        false
    }
}

/// Compressed time: the wall clock plus every wait skipped so far.
///
/// Concurrent waits are skipped one after the other, so a parallel group's waits add up in
/// plan time: a simulated phase may look longer than it would really take, never shorter.
/// Real work (a copy, a query) takes its real time in plan time too.
#[derive(Debug, Default)]
pub struct VirtualClock {
    skipped: Mutex<SignedDuration>,
    /// Real seconds a waited plan second takes (`None`: waits take no real time).
    pace: Option<f64>,
}

impl VirtualClock {
    /// A virtual clock that starts at the wall clock's time.
    pub fn new() -> VirtualClock {
        VirtualClock::default()
    }

    /// A virtual clock whose waits take real time at this pace: `day` of real time per
    /// simulated day (a simulation's time scale, so load keeps running during soaks).
    pub fn paced(day: Duration) -> VirtualClock {
        VirtualClock { skipped: Mutex::default(), pace: Some(day.as_secs_f64() / 86_400.0) }
    }

    fn skipped(&self) -> SignedDuration {
        *self.skipped.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        Timestamp::now().saturating_add(self.skipped()).unwrap_or(Timestamp::MAX)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let real = self.real_time(duration).unwrap_or(Duration::ZERO);
        {
            let mut skipped = self.skipped.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let step = SignedDuration::try_from(duration - real).unwrap_or(SignedDuration::MAX);
            *skipped = skipped.saturating_add(step);
        }
        if real.is_zero() {
            // Yield, so a loop of waits cannot starve the runtime.
            Box::pin(tokio::task::yield_now())
        } else {
            Box::pin(tokio::time::sleep(real))
        }
    }

    fn is_virtual(&self) -> bool {
        true
    }

    fn real_time(&self, plan: Duration) -> Option<Duration> {
        self.pace.filter(|pace| *pace > 0.0).map(|pace| plan.mul_f64(pace.min(1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn virtual_waits_move_the_clock_not_the_wall() {
        let clock = VirtualClock::new();
        let before = clock.now();
        for _ in 0..7 {
            clock.sleep(Duration::from_secs(7 * 24 * 3600)).await;
        }
        let moved = clock.now().duration_since(before);
        assert!(moved >= SignedDuration::from_hours(49 * 24), "moved {moved:?}");
    }

    #[tokio::test]
    async fn paced_waits_take_their_scaled_real_time() {
        // One simulated day per 100 ms of real time.
        let clock = VirtualClock::paced(Duration::from_millis(100));
        let (before, wall) = (clock.now(), std::time::Instant::now());
        clock.sleep(Duration::from_secs(2 * 86_400)).await;
        assert!(wall.elapsed() >= Duration::from_millis(200), "really waited the scaled time");
        assert!(clock.now().duration_since(before) >= SignedDuration::from_hours(48));
    }
}
