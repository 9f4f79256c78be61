//! Time as executors and the engine see it.
//!
//! Execution runs on [`SystemClock`]. Simulation runs on a [`VirtualClock`]: real work
//! takes real time, but every wait (soak, backoff, sampling interval) is skipped by moving
//! the clock forward, so a seven-week plan runs in seconds while its timestamps, windows
//! and budgets still read in plan time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
/// Concurrent waits are skipped side by side, so a parallel group's waits add up in plan
/// time: a simulated phase may look longer than it would really take, never shorter.
/// Real work (a copy, a query) takes its real time in plan time too. On a paced clock a
/// wait's skip accrues while it runs, in step with its real time, so plan time moves on
/// smoothly through a long soak (what runs meanwhile — an alert's `for:`, a fault due at a
/// simulated time — reads the right time), and a wait cut short skips only its share.
#[derive(Debug, Default)]
pub struct VirtualClock {
    skips: Arc<Mutex<Skips>>,
    /// Real seconds a waited plan second takes (`None`: waits take no real time).
    pace: Option<f64>,
}

/// The plan time a virtual clock has skipped.
#[derive(Debug, Default)]
struct Skips {
    /// Skipped by waits that ended.
    done: SignedDuration,
    /// Paced waits under way, by id.
    running: HashMap<u64, Paced>,
    next_id: u64,
}

/// A paced wait under way.
#[derive(Debug)]
struct Paced {
    started: Instant,
    /// The real time it takes.
    real: Duration,
    /// The plan time it skips once it has taken all of it.
    skip: Duration,
}

impl Paced {
    /// The plan time skipped so far.
    fn skipped(&self) -> SignedDuration {
        let share = (self.started.elapsed().as_secs_f64() / self.real.as_secs_f64()).min(1.0);
        SignedDuration::try_from(self.skip.mul_f64(share)).unwrap_or(SignedDuration::MAX)
    }
}

impl Skips {
    fn total(&self) -> SignedDuration {
        self.running.values().fold(self.done, |total, wait| total.saturating_add(wait.skipped()))
    }
}

/// Ends a paced wait (done or dropped): what it skipped so far stays skipped.
struct PacedGuard {
    skips: Arc<Mutex<Skips>>,
    id: u64,
}

impl Drop for PacedGuard {
    fn drop(&mut self) {
        let mut skips = self.skips.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(wait) = skips.running.remove(&self.id) {
            skips.done = skips.done.saturating_add(wait.skipped());
        }
    }
}

impl VirtualClock {
    /// A virtual clock that starts at the wall clock's time.
    pub fn new() -> VirtualClock {
        VirtualClock::default()
    }

    /// A virtual clock whose waits take real time at this pace: `day` of real time per
    /// simulated day (a simulation's time scale, so load keeps running during soaks).
    pub fn paced(day: Duration) -> VirtualClock {
        VirtualClock { skips: Arc::default(), pace: Some(day.as_secs_f64() / 86_400.0) }
    }

    fn skips(&self) -> std::sync::MutexGuard<'_, Skips> {
        self.skips.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        Timestamp::now().saturating_add(self.skips().total()).unwrap_or(Timestamp::MAX)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let real = self.real_time(duration).unwrap_or(Duration::ZERO);
        let skip = duration.saturating_sub(real);
        if real.is_zero() {
            let mut skips = self.skips();
            skips.done = skips.done.saturating_add(SignedDuration::try_from(skip).unwrap_or(SignedDuration::MAX));
            // Yield, so a loop of waits cannot starve the runtime.
            return Box::pin(tokio::task::yield_now());
        }
        let guard = {
            let mut skips = self.skips();
            let id = skips.next_id;
            skips.next_id += 1;
            skips.running.insert(id, Paced { started: Instant::now(), real, skip });
            PacedGuard { skips: self.skips.clone(), id }
        };
        Box::pin(async move {
            tokio::time::sleep(real).await;
            drop(guard);
        })
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

    #[tokio::test]
    async fn paced_plan_time_moves_on_through_a_wait_and_a_cut_wait_skips_its_share() {
        // One simulated day per 400 ms: a 10-day wait takes 4 s.
        let clock = VirtualClock::paced(Duration::from_millis(400));
        let before = clock.now();
        let wait = clock.sleep(Duration::from_secs(10 * 86_400));
        assert!(clock.now().duration_since(before) < SignedDuration::from_hours(24), "no jump at the start");
        let cut = tokio::time::timeout(Duration::from_millis(1_000), wait).await;
        assert!(cut.is_err(), "the wait was cut short");
        let moved = clock.now().duration_since(before);
        // 1 s of 4 s: about 2.5 days (the runtime may be late, never early).
        assert!(
            moved >= SignedDuration::from_hours(60) && moved < SignedDuration::from_hours(9 * 24),
            "moved {moved:?}"
        );
        let after_cut = clock.now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let idle = clock.now().duration_since(after_cut);
        assert!(idle < SignedDuration::from_secs(60), "a dropped wait skips nothing more: {idle:?}");
    }
}
