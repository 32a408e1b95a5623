//! The threshold state machine of one target: results in, a flip out only after `rise`
//! consecutive successes or `fall` consecutive failures. Pure: no I/O, no clock.

use super::Health;

/// A flip of a target's health, with the streak that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flip {
    /// The health the target now has.
    pub health: Health,
    /// How many results in a row made the flip (`rise` or `fall`).
    pub streak: u32,
}

/// Health of one target and its current streak of identical results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Threshold {
    health: Health,
    rise: u32,
    fall: u32,
    /// Successes in a row while down (reset by a failure).
    successes: u32,
    /// Failures in a row while up (reset by a success).
    failures: u32,
}

impl Threshold {
    /// A target in `health` with no results yet. A `rise` or `fall` of 0 counts as 1: a flip
    /// needs at least one result.
    pub fn new(health: Health, rise: u32, fall: u32) -> Threshold {
        Threshold {
            health,
            rise: rise.max(1),
            fall: fall.max(1),
            successes: 0,
            failures: 0,
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one probe result (a timeout is a failure) and returns the flip it caused, if any.
    pub fn record(&mut self, success: bool) -> Option<Flip> {
        if success {
            self.failures = 0;
            if self.health == Health::Up {
                return None;
            }
            self.successes += 1;
            if self.successes < self.rise {
                return None;
            }
            self.health = Health::Up;
        } else {
            self.successes = 0;
            if self.health == Health::Down {
                return None;
            }
            self.failures += 1;
            if self.failures < self.fall {
                return None;
            }
            self.health = Health::Down;
        }
        let streak = if success { self.rise } else { self.fall };
        self.successes = 0;
        self.failures = 0;
        Some(Flip {
            health: self.health,
            streak,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a string of results (`s` success, `f` failure) and returns the position and new
    /// health of every flip.
    fn run(threshold: &mut Threshold, results: &str) -> Vec<(usize, Health)> {
        results
            .chars()
            .enumerate()
            .filter_map(|(i, c)| {
                let success = match c {
                    's' => true,
                    'f' => false,
                    other => panic!("bad result {other:?}"),
                };
                threshold.record(success).map(|flip| (i, flip.health))
            })
            .collect()
    }

    #[test]
    fn up_goes_down_after_exactly_fall_failures() {
        let mut t = Threshold::new(Health::Up, 2, 3);
        assert_eq!(run(&mut t, "ff"), vec![]);
        assert_eq!(t.health(), Health::Up);
        assert_eq!(
            t.record(false),
            Some(Flip {
                health: Health::Down,
                streak: 3
            })
        );
        assert_eq!(t.health(), Health::Down);
    }

    #[test]
    fn down_goes_up_after_exactly_rise_successes() {
        let mut t = Threshold::new(Health::Down, 2, 3);
        assert_eq!(t.record(true), None);
        assert_eq!(
            t.record(true),
            Some(Flip {
                health: Health::Up,
                streak: 2
            })
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut t = Threshold::new(Health::Up, 2, 3);
        assert_eq!(run(&mut t, "ffsffsffs"), vec![]);
        assert_eq!(t.health(), Health::Up);
        assert_eq!(run(&mut t, "fff"), vec![(2, Health::Down)]);
    }

    #[test]
    fn a_failure_resets_the_success_count() {
        let mut t = Threshold::new(Health::Down, 3, 2);
        assert_eq!(run(&mut t, "ssfssfssf"), vec![]);
        assert_eq!(t.health(), Health::Down);
        assert_eq!(run(&mut t, "sss"), vec![(2, Health::Up)]);
    }

    #[test]
    fn results_matching_the_health_never_flip() {
        let mut t = Threshold::new(Health::Up, 1, 1);
        assert_eq!(run(&mut t, &"s".repeat(100)), vec![]);
        let mut t = Threshold::new(Health::Down, 1, 1);
        assert_eq!(run(&mut t, &"f".repeat(100)), vec![]);
    }

    #[test]
    fn rise_1_fall_1_flips_on_every_change() {
        let mut t = Threshold::new(Health::Up, 1, 1);
        assert_eq!(
            run(&mut t, "fsfss"),
            vec![
                (0, Health::Down),
                (1, Health::Up),
                (2, Health::Down),
                (3, Health::Up)
            ]
        );
    }

    #[test]
    fn flapping_below_the_thresholds_never_flips() {
        let mut t = Threshold::new(Health::Up, 2, 3);
        assert_eq!(run(&mut t, &"fs".repeat(50)), vec![]);
        assert_eq!(run(&mut t, &"ffs".repeat(50)), vec![]);
        assert_eq!(t.health(), Health::Up);
        let mut t = Threshold::new(Health::Down, 2, 3);
        assert_eq!(run(&mut t, &"sf".repeat(50)), vec![]);
        assert_eq!(t.health(), Health::Down);
    }

    #[test]
    fn flapping_at_the_thresholds_flips_each_time() {
        let mut t = Threshold::new(Health::Up, 2, 3);
        assert_eq!(
            run(&mut t, "fffssfffss"),
            vec![
                (2, Health::Down),
                (4, Health::Up),
                (7, Health::Down),
                (9, Health::Up)
            ]
        );
    }

    #[test]
    fn counts_restart_after_a_flip() {
        // The failures that took it down do not count towards the next fall, nor extra
        // successes beyond rise towards anything.
        let mut t = Threshold::new(Health::Up, 2, 2);
        assert_eq!(run(&mut t, "ff"), vec![(1, Health::Down)]);
        assert_eq!(run(&mut t, "ffff"), vec![]);
        assert_eq!(run(&mut t, "sssss"), vec![(1, Health::Up)]);
        assert_eq!(run(&mut t, "f"), vec![]);
        assert_eq!(t.health(), Health::Up);
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut t = Threshold::new(Health::Up, 0, 0);
        assert_eq!(run(&mut t, "fs"), vec![(0, Health::Down), (1, Health::Up)]);
    }

    #[test]
    fn exhaustive_against_a_model() {
        // Every sequence of up to 10 results, for every rise/fall in 1..=4 and both starting
        // states, against a direct definition: a flip happens when the last `n` results, all
        // since the previous flip, are of the opposite kind.
        for rise in 1..=4u32 {
            for fall in 1..=4u32 {
                for start in [Health::Up, Health::Down] {
                    for len in 0..=10u32 {
                        for bits in 0..(1u32 << len) {
                            let results: Vec<bool> = (0..len).map(|i| bits >> i & 1 == 1).collect();
                            let mut t = Threshold::new(start, rise, fall);
                            let mut health = start;
                            let mut since_flip = 0usize;
                            for (i, &ok) in results.iter().enumerate() {
                                since_flip += 1;
                                let (want, need) = match health {
                                    Health::Up => (false, fall as usize),
                                    Health::Down => (true, rise as usize),
                                };
                                let recent = &results[i + 1 - since_flip..=i];
                                let run_len =
                                    recent.iter().rev().take_while(|&&r| r == want).count();
                                let expected = if ok == want && run_len == need {
                                    health = match health {
                                        Health::Up => Health::Down,
                                        Health::Down => Health::Up,
                                    };
                                    since_flip = 0;
                                    Some(health)
                                } else {
                                    None
                                };
                                assert_eq!(
                                    t.record(ok).map(|f| f.health),
                                    expected,
                                    "rise {rise} fall {fall} start {start:?} results {results:?} at {i}"
                                );
                            }
                            assert_eq!(t.health(), health);
                        }
                    }
                }
            }
        }
    }
}
