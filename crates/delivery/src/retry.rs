//! When to try a deferred recipient again.
//!
//! Exponential-ish steps (1m, 5m, 15m, 30m, 1h, 2h, 4h, then every 4h) with ±10 % jitter, so
//! that a destination that was down does not get every deferred message in the same second
//! when it comes back. Tests scale the schedule down instead of waiting hours.

use std::time::Duration;

use rand::Rng;

/// The retry steps; the last one repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    steps: Vec<Duration>,
    jitter: f64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        let minutes = [1, 5, 15, 30, 60, 120, 240];
        Self {
            steps: minutes
                .iter()
                .map(|m| Duration::from_secs(m * 60))
                .collect(),
            jitter: Self::JITTER,
        }
    }
}

impl RetrySchedule {
    /// The jitter of the default schedule and of `[delivery] retry_schedule`: ±10 %.
    pub const JITTER: f64 = 0.1;

    /// A custom schedule. An empty list means "retry after one minute".
    pub fn new(steps: Vec<Duration>, jitter: f64) -> Self {
        let steps = if steps.is_empty() {
            vec![Duration::from_secs(60)]
        } else {
            steps
        };
        Self {
            steps,
            jitter: jitter.clamp(0.0, 0.5),
        }
    }

    /// The default schedule multiplied by `factor` (e.g. `0.001` turns 1 minute into 60 ms).
    pub fn scaled(factor: f64) -> Self {
        let base = Self::default();
        Self {
            steps: base
                .steps
                .iter()
                .map(|d| d.mul_f64(factor.max(0.0)))
                .collect(),
            jitter: base.jitter,
        }
    }

    /// The delay after the `failures`-th failed attempt (1 = first failure), with jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let index = (failures.max(1) as usize - 1).min(self.steps.len() - 1);
        let base = self.steps[index];
        if self.jitter == 0.0 {
            return base;
        }
        let spread = rand::rng().random_range(-self.jitter..=self.jitter);
        base.mul_f64(1.0 + spread)
    }

    /// The delay without jitter, for display and tests.
    pub fn nominal(&self, failures: u32) -> Duration {
        let index = (failures.max(1) as usize - 1).min(self.steps.len() - 1);
        self.steps[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_steps_then_every_four_hours() {
        let s = RetrySchedule::default();
        let mins: Vec<u64> = (1..=9).map(|n| s.nominal(n).as_secs() / 60).collect();
        assert_eq!(mins, [1, 5, 15, 30, 60, 120, 240, 240, 240]);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let s = RetrySchedule::default();
        for _ in 0..100 {
            let d = s.delay(2).as_secs_f64();
            assert!((270.0..=330.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn scaled_schedule() {
        assert_eq!(
            RetrySchedule::scaled(0.001).nominal(1),
            Duration::from_millis(60)
        );
    }
}
