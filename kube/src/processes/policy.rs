//! When a supervised process starts again (pure): the restart policy and the backoff, fed
//! with exits and clock readings. The driver (`super`) spawns, waits and sleeps.

use std::time::{Duration, Instant};

use config::{Backoff, RestartPolicy};

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Could not be started at all (no such program, no permission).
    SpawnFailed,
}

impl Exit {
    fn failed(self) -> bool {
        self != Exit::Code(0)
    }
}

/// What to do after an exit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    /// Start again after this pause.
    RestartIn(Duration),
    /// Leave it stopped (the policy says so).
    Stay,
}

/// The restart bookkeeping of one process.
#[derive(Clone, Debug)]
pub struct Restarts {
    policy: RestartPolicy,
    backoff: Backoff,
    /// Restarts in a row without a run of `reset_after_secs`.
    in_a_row: u32,
    started: Option<Instant>,
}

impl Restarts {
    pub fn new(policy: RestartPolicy, backoff: Backoff) -> Restarts {
        Restarts {
            policy,
            backoff,
            in_a_row: 0,
            started: None,
        }
    }

    /// The process started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.started = Some(now);
    }

    /// The process ended at `now` as `exit`. `random` in [0, 1) spreads the pause (jitter),
    /// so that processes failing together do not restart together.
    pub fn exited(&mut self, exit: Exit, now: Instant, random: f64) -> Next {
        let restart = match self.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit.failed(),
            RestartPolicy::Never => false,
        };
        let ran = self
            .started
            .take()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        if ran >= Duration::from_secs(self.backoff.reset_after_secs) {
            self.in_a_row = 0;
        }
        if !restart {
            return Next::Stay;
        }
        let base = self
            .backoff
            .initial_ms
            .saturating_mul(1u64 << self.in_a_row.min(32))
            .min(self.backoff.max_ms);
        self.in_a_row = self.in_a_row.saturating_add(1);
        let spread = f64::from(self.backoff.jitter_percent) / 100.0 * (2.0 * random - 1.0);
        let ms = (base as f64 * (1.0 + spread)).max(0.0);
        Next::RestartIn(Duration::from_millis(ms as u64))
    }

    /// Restarts in a row so far.
    #[cfg(test)]
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(jitter_percent: u32) -> Backoff {
        Backoff {
            initial_ms: 100,
            max_ms: 1_000,
            jitter_percent,
            reset_after_secs: 10,
        }
    }

    fn pauses(r: &mut Restarts, exits: usize, ran: Duration) -> Vec<Next> {
        let t0 = Instant::now();
        (0..exits)
            .map(|i| {
                let at = t0 + Duration::from_secs(100 * i as u64);
                r.started(at);
                r.exited(Exit::Code(1), at + ran, 0.5)
            })
            .collect()
    }

    #[test]
    fn the_pause_doubles_up_to_its_cap_and_resets_after_a_healthy_run() {
        let mut r = Restarts::new(RestartPolicy::Always, backoff(0));
        let ms = |n: u64| Next::RestartIn(Duration::from_millis(n));
        assert_eq!(
            pauses(&mut r, 6, Duration::from_secs(1)),
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(r.in_a_row(), 6);
        // A run of reset_after_secs starts the count again.
        assert_eq!(pauses(&mut r, 1, Duration::from_secs(10)), [ms(100)]);
    }

    #[test]
    fn jitter_spreads_the_pause_within_its_percent() {
        let t = Instant::now();
        for (random, want) in [(0.0, 80), (0.5, 100), (0.999_999, 119)] {
            let mut r = Restarts::new(RestartPolicy::Always, backoff(20));
            r.started(t);
            assert_eq!(
                r.exited(Exit::Code(1), t, random),
                Next::RestartIn(Duration::from_millis(want)),
                "{random}"
            );
        }
    }

    #[test]
    fn the_policy_decides_whether_to_restart() {
        let t = Instant::now();
        for (policy, exit, restarts) in [
            (RestartPolicy::Always, Exit::Code(0), true),
            (RestartPolicy::Always, Exit::Signal(9), true),
            (RestartPolicy::OnFailure, Exit::Code(0), false),
            (RestartPolicy::OnFailure, Exit::Code(3), true),
            (RestartPolicy::OnFailure, Exit::Signal(15), true),
            (RestartPolicy::OnFailure, Exit::SpawnFailed, true),
            (RestartPolicy::Never, Exit::Code(3), false),
        ] {
            let mut r = Restarts::new(policy, backoff(0));
            r.started(t);
            let next = r.exited(exit, t, 0.5);
            assert_eq!(next != Next::Stay, restarts, "{policy:?} {exit:?}");
        }
    }

    #[test]
    fn huge_counts_saturate() {
        let mut r = Restarts::new(
            RestartPolicy::Always,
            Backoff {
                initial_ms: u64::MAX / 2,
                max_ms: u64::MAX,
                jitter_percent: 100,
                reset_after_secs: u64::MAX,
            },
        );
        let t = Instant::now();
        for _ in 0..100 {
            assert!(matches!(
                r.exited(Exit::Code(1), t, 0.99),
                Next::RestartIn(_)
            ));
        }
    }
}
