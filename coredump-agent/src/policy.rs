//! policy: which dumps are kept, decided the same way whichever intake brought them.
//!
//! The per-container rate limit ([`RateLimiter`]), the attestation requirement and the free
//! disk floor. Socket and pipe intake ask before the kernel writes anything (a refused dump
//! costs no disk and no write); file intake asks once the file is there. The decisions are pure
//! functions of their inputs and the clock, so they are tested with paused time.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::identity::Identity;

/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// Most containers the rate limiter remembers; beyond, the one idle longest is forgotten (it
/// then starts afresh, which errs towards keeping dumps).
pub const MAX_KEYS: usize = 4096;

/// At most `limit` dumps per key (a container) per [`WINDOW`].
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    windows: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    /// `limit` dumps per key per window; 0 means no limit.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            windows: HashMap::new(),
        }
    }

    /// Whether a dump for `key` is within the limit at `now`; if so, it is counted.
    pub fn admit(&mut self, key: &str, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        if !self.windows.contains_key(key) && self.windows.len() >= MAX_KEYS {
            self.prune(now);
            if self.windows.len() >= MAX_KEYS
                && let Some(idle) = self
                    .windows
                    .iter()
                    .min_by_key(|(_, w)| w.back().copied())
                    .map(|(k, _)| k.clone())
            {
                self.windows.remove(&idle);
            }
        }
        let window = self.windows.entry(key.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= self.limit as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    /// Forgets keys whose every dump is older than the window.
    pub fn prune(&mut self, now: Instant) {
        self.windows
            .retain(|_, w| w.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// Crash events each cgroup may have taken in at once, and how fast its budget refills: a
/// cgroup crashing in a loop cannot crowd other pods' crash events out of the agent (the
/// pending crashes, the journal, the record uploads).
pub const CRASH_BURST: u32 = 50;
/// See [`CRASH_BURST`]: one more event per second.
pub const CRASH_REFILL: Duration = Duration::from_secs(1);
/// Cgroups the budget remembers; beyond, the one idle longest is forgotten.
pub const MAX_BUDGETS: usize = 4096;

/// A token bucket of crash events per cgroup id, taken before anything else is done with an
/// event.
#[derive(Debug, Default)]
pub struct CrashBudget {
    buckets: HashMap<u64, (u32, Instant)>,
}

impl CrashBudget {
    /// Whether a crash event of `cgroup` may be taken in at `now` (if so, it is counted).
    pub fn admit(&mut self, cgroup: u64, now: Instant) -> bool {
        if !self.buckets.contains_key(&cgroup)
            && self.buckets.len() >= MAX_BUDGETS
            && let Some(idle) = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
        {
            self.buckets.remove(&idle);
        }
        let (tokens, since) = self.buckets.entry(cgroup).or_insert((CRASH_BURST, now));
        let refilled = now.duration_since(*since).as_secs() / CRASH_REFILL.as_secs().max(1);
        if refilled > 0 {
            *tokens = (*tokens)
                .saturating_add(u32::try_from(refilled).unwrap_or(u32::MAX))
                .min(CRASH_BURST);
            *since = now;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

/// The rate limit's key for a crash: its container, else its cgroup, both from the kernel's
/// cgroup id. `None` when nothing the kernel reported names one: such a dump (a file no crash
/// event vouches for) is never dropped by a key an attacker could have chosen, such as a comm
/// taken from a file name.
pub fn rate_key(identity: &Identity) -> Option<String> {
    identity
        .container_id
        .clone()
        .or_else(|| identity.cgroup_path.clone())
}

/// What the settings say about one dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it.
    Keep,
    /// Over the container's rate limit: record the crash, drop the dump.
    RateLimited,
}

/// The policy settings, shared by every intake.
#[derive(Debug, Clone)]
pub struct Policy {
    limiter: Arc<Mutex<RateLimiter>>,
    /// Below this many free bytes where dumps land, new ones wait (file) or are refused
    /// (socket, pipe).
    pub min_free_disk: u64,
    /// Larger dumps are not stored.
    pub max_dump_size: u64,
    /// Dumps the kernel does not vouch for are quarantined instead of stored.
    pub require_attestation: bool,
}

impl Policy {
    /// A policy of at most `max_dumps_per_hour` per container (0: no limit).
    pub fn new(
        max_dumps_per_hour: u32,
        min_free_disk: u64,
        max_dump_size: u64,
        require_attestation: bool,
    ) -> Self {
        Self {
            limiter: Arc::new(Mutex::new(RateLimiter::new(max_dumps_per_hour))),
            min_free_disk,
            max_dump_size,
            require_attestation,
        }
    }

    /// The verdict for a dump of the crash named by `identity`, counted if kept.
    pub fn judge(&self, identity: &Identity) -> Verdict {
        let Some(key) = rate_key(identity) else {
            return Verdict::Keep;
        };
        let mut limiter = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if limiter.admit(&key, Instant::now()) {
            Verdict::Keep
        } else {
            Verdict::RateLimited
        }
    }

    /// Forgets containers idle for the whole window (called on a timer).
    pub fn prune(&self) {
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .prune(Instant::now());
    }

    /// Whether the filesystem holding `dir` has less free space than the floor.
    pub fn low_disk(&self, dir: &Path) -> bool {
        self.min_free_disk > 0
            && crate::sys::free_bytes(dir).is_ok_and(|free| free < self.min_free_disk)
    }

    /// Containers the rate limiter remembers.
    pub fn tracked(&self) -> usize {
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limit_is_per_key_and_per_window() {
        let mut r = RateLimiter::new(2);
        let t0 = Instant::now();
        assert!(r.admit("a", t0));
        assert!(r.admit("a", t0));
        assert!(!r.admit("a", t0), "third in the hour");
        assert!(r.admit("b", t0), "another container is not affected");
        tokio::time::advance(WINDOW).await;
        assert!(r.admit("a", Instant::now()), "the window moved on");
        assert!(RateLimiter::new(0).admit("x", t0), "0 is no limit");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_pruned_and_bounded() {
        let mut r = RateLimiter::new(1);
        for i in 0..MAX_KEYS + 100 {
            assert!(r.admit(&format!("c{i}"), Instant::now()));
        }
        assert!(r.len() <= MAX_KEYS, "{}", r.len());
        tokio::time::advance(WINDOW).await;
        r.prune(Instant::now());
        assert!(r.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loop_spends_its_own_budget_only() {
        let mut b = CrashBudget::default();
        let t = Instant::now();
        for _ in 0..CRASH_BURST {
            assert!(b.admit(7, t));
        }
        assert!(!b.admit(7, t), "the looping cgroup is over its budget");
        assert!(b.admit(8, t), "another cgroup is not");
        tokio::time::advance(CRASH_REFILL * 3).await;
        for _ in 0..3 {
            assert!(b.admit(7, Instant::now()));
        }
        assert!(!b.admit(7, Instant::now()));
    }

    #[test]
    fn no_key_from_anything_but_the_kernel() {
        let mut id = Identity::default();
        assert_eq!(rate_key(&id), None);
        id.cgroup_path = Some("/system.slice/x.service".into());
        assert_eq!(rate_key(&id).as_deref(), Some("/system.slice/x.service"));
        id.container_id = Some("ab".repeat(32));
        assert_eq!(rate_key(&id), id.container_id);
        let p = Policy::new(1, 0, u64::MAX, false);
        assert_eq!(p.judge(&Identity::default()), Verdict::Keep);
        assert_eq!(p.judge(&Identity::default()), Verdict::Keep);
        assert_eq!(p.judge(&id), Verdict::Keep);
        assert_eq!(p.judge(&id), Verdict::RateLimited);
    }
}
