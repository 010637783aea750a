//! How many parts of one upload are in flight: found while uploading, not fixed.
//!
//! Throughput to a store is parts in flight × part size ÷ per-part latency, until the link or
//! the server saturates. Latency differs by store (1 ms on loopback, 20-80 ms to S3 from
//! another region), so no fixed number suits all: too few leaves the link idle, too many
//! queues requests at a saturated server and gets throttled. The controller starts with a few
//! parts and, after each round (as many parts done as were allowed in flight), compares the
//! round's throughput with the best so far:
//! - clearly better (by [`GAIN`]): one more part in flight per [`STEP`] of the current number;
//! - not better: the best number is kept, and probing stops;
//! - a part that failed or was throttled: half as many, and probing stops.
//!
//! Pure logic: time comes in as arguments, so it is tested without a server or a clock.
//! Memory does not grow with the number: parts are streamed from file ranges.

use std::time::{Duration, Instant};

/// A round counts as better when its throughput beats the best by this factor.
const GAIN: f64 = 1.10;
/// Growth per better round: a quarter more (at least one).
const STEP: usize = 4;

/// The number of parts in flight for one upload.
#[derive(Debug)]
pub struct Concurrency {
    limit: usize,
    max: usize,
    /// Still looking for the number where throughput stops growing.
    probing: bool,
    /// Best throughput seen (bytes/s) and the limit it was seen with.
    best: Option<(f64, usize)>,
    round: Round,
}

#[derive(Debug)]
struct Round {
    started: Instant,
    bytes: u64,
    parts: usize,
}

impl Concurrency {
    /// Starts at `initial` parts in flight (at least 1), never more than `max`.
    pub fn new(initial: usize, max: usize, now: Instant) -> Self {
        let max = max.max(1);
        Self {
            limit: initial.clamp(1, max),
            max,
            probing: true,
            best: None,
            round: Round {
                started: now,
                bytes: 0,
                parts: 0,
            },
        }
    }

    /// Parts allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A part of `bytes` finished at `now`.
    pub fn part_done(&mut self, bytes: u64, now: Instant) {
        self.round.bytes += bytes;
        self.round.parts += 1;
        if self.round.parts < self.limit {
            return;
        }
        let elapsed = now
            .saturating_duration_since(self.round.started)
            .max(Duration::from_micros(1));
        let rate = self.round.bytes as f64 / elapsed.as_secs_f64();
        self.start_round(now);
        if !self.probing {
            return;
        }
        match self.best {
            Some((best, at)) if rate < best * GAIN => {
                // No better than with fewer: keep the number that did as well with less.
                self.limit = at.min(self.limit);
                self.probing = false;
            }
            _ => {
                self.best = Some((rate, self.limit));
                if self.limit >= self.max {
                    self.probing = false;
                } else {
                    self.limit = (self.limit + (self.limit / STEP).max(1)).min(self.max);
                }
            }
        }
    }

    /// A part failed or was throttled (503 SlowDown) at `now`: half as many, and no more
    /// probing upwards for this upload.
    pub fn backed_off(&mut self, now: Instant) {
        self.limit = (self.limit / 2).max(1);
        self.probing = false;
        self.start_round(now);
    }

    fn start_round(&mut self, now: Instant) {
        self.round = Round {
            started: now,
            bytes: 0,
            parts: 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: u64 = 8 << 20;

    /// A store whose throughput grows with parts in flight up to `saturation` of them (each
    /// part takes `latency` plus its transfer at `per_part_rate`), then stays flat: runs an
    /// upload of `parts` parts and returns the limits used, round by round.
    fn simulate(
        latency: Duration,
        per_part_rate: f64,
        saturation: usize,
        parts: usize,
    ) -> Vec<usize> {
        let mut now = Instant::now();
        let mut c = Concurrency::new(4, 32, now);
        let mut limits = Vec::new();
        let mut done = 0;
        while done < parts {
            let n = c.limit();
            limits.push(n);
            // One round: n parts, sharing the store's capacity.
            let share = per_part_rate * saturation.min(n) as f64 / n as f64;
            let part_time = latency + Duration::from_secs_f64(PART as f64 / share);
            for _ in 0..n {
                now += part_time / n as u32;
                c.part_done(PART, now);
                done += 1;
            }
        }
        limits
    }

    #[test]
    fn grows_until_throughput_stops_growing_then_holds() {
        // 20 ms per request, 50 MiB/s per connection, the store saturates at 12 in flight.
        let limits = simulate(Duration::from_millis(20), 50.0 * 1048576.0, 12, 400);
        let settled = *limits.last().unwrap();
        assert!((10..=16).contains(&settled), "{limits:?}");
        assert!(
            limits.windows(2).filter(|w| w[0] != w[1]).count() < 10,
            "{limits:?}"
        );
    }

    #[test]
    fn a_saturated_store_keeps_the_start() {
        // On loopback the store is the limit from the start: more parts gain nothing.
        let limits = simulate(Duration::from_micros(200), 300.0 * 1048576.0, 2, 100);
        assert!(*limits.last().unwrap() <= 5, "{limits:?}");
    }

    #[test]
    fn stops_at_the_cap() {
        let limits = simulate(Duration::from_millis(80), 20.0 * 1048576.0, 100, 2000);
        assert_eq!(*limits.last().unwrap(), 32, "{limits:?}");
    }

    #[test]
    fn backs_off_by_half_and_stops_probing() {
        let now = Instant::now();
        let mut c = Concurrency::new(8, 32, now);
        c.backed_off(now);
        assert_eq!(c.limit(), 4);
        for i in 0..100 {
            c.part_done(PART, now + Duration::from_millis(i));
        }
        assert_eq!(c.limit(), 4, "no probing after a back-off");
        c.backed_off(now);
        c.backed_off(now);
        c.backed_off(now);
        assert_eq!(c.limit(), 1, "never below one");
    }
}
