//! correlate::follow: the names of the dump directory being followed (file intake), each with
//! its state and timer. Bounded: a container that floods the directory with names can fill it,
//! but not grow it, and a name that stops changing is dropped after `--dump-wait`. No I/O.

use std::{collections::HashMap, ffi::OsString, time::Duration};

use tokio::time::Instant;

use crate::{job::OpenedDump, pattern::NameFields};

/// Most names followed at once.
pub const MAX_FOLLOWED: usize = 4096;

/// How long each state waits before the name is looked at again.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    /// After `IN_CREATE` (it may be an `O_TMPFILE` linked in, or a dump just starting).
    pub settle: Duration,
    /// While being written: the kernel sends `IN_CLOSE_WRITE` before it drops the writer count,
    /// so the check right after that event can still see a writer, and no further event comes.
    pub writing_recheck: Duration,
    /// While the disk is nearly full.
    pub deferred_retry: Duration,
    /// A finished file waiting for its crash event.
    pub event_wait: Duration,
    /// A file that has not grown for this long is no longer followed.
    pub stall: Duration,
}

/// Where a followed name is.
#[derive(Debug)]
pub enum State {
    /// Appeared; look again after a moment.
    Created,
    /// Being written; `size` when last looked at, which last changed at `grew`.
    Writing {
        /// Size when last looked at.
        size: u64,
        /// When it last changed.
        grew: Instant,
    },
    /// Finished, waiting for its crash event.
    Waiting(Box<OpenedDump>),
    /// Finished, but the disk is nearly full.
    Deferred,
}

/// One followed name.
#[derive(Debug)]
pub struct Followed {
    /// What its name says, by every parse of the core_pattern.
    pub parses: Vec<NameFields>,
    /// Its state.
    pub state: State,
    /// When it entered this state.
    pub since: Instant,
}

/// The followed names.
#[derive(Debug, Default)]
pub struct Follower {
    files: HashMap<OsString, Followed>,
}

impl Follower {
    /// The state of `name`, if followed.
    pub fn get(&self, name: &OsString) -> Option<&Followed> {
        self.files.get(name)
    }

    /// Follows `name` in `state` from `now`; false (and not followed) when [`MAX_FOLLOWED`]
    /// names are followed already: it is looked at again on its next event.
    pub fn follow(
        &mut self,
        name: OsString,
        parses: Vec<NameFields>,
        state: State,
        now: Instant,
    ) -> bool {
        if self.files.len() >= MAX_FOLLOWED && !self.files.contains_key(&name) {
            return false;
        }
        self.files.insert(
            name,
            Followed {
                parses,
                state,
                since: now,
            },
        );
        true
    }

    /// The next state of a name found still being written at `size`: `None` if it has not
    /// grown for `stall` (it is dropped: a failed dump, or a file a container holds open).
    pub fn writing(
        previous: Option<&Followed>,
        size: u64,
        now: Instant,
        stall: Duration,
    ) -> Option<State> {
        let grew = match previous.map(|f| &f.state) {
            Some(State::Writing { size: before, grew }) if *before == size => *grew,
            _ => now,
        };
        (now.duration_since(grew) < stall).then_some(State::Writing { size, grew })
    }

    /// Stops following `name`.
    pub fn take(&mut self, name: &OsString) -> Option<Followed> {
        self.files.remove(name)
    }

    /// Names whose timer ran out at `now`.
    pub fn due(&self, now: Instant, t: &Timers) -> Vec<OsString> {
        self.files
            .iter()
            .filter(|(_, f)| {
                let wait = match f.state {
                    State::Created => t.settle,
                    State::Writing { .. } => t.writing_recheck,
                    State::Waiting(_) => t.event_wait,
                    State::Deferred => t.deferred_retry,
                };
                now.duration_since(f.since) >= wait
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// What the names not yet finished say: the crashes they may belong to wait for them.
    pub fn in_progress(&self) -> impl Iterator<Item = &NameFields> {
        self.files
            .values()
            .filter(|f| !matches!(f.state, State::Waiting(_)))
            .flat_map(|f| &f.parses)
    }

    /// Names followed.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no name is followed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timers = Timers {
        settle: Duration::from_millis(500),
        writing_recheck: Duration::from_secs(1),
        deferred_retry: Duration::from_secs(10),
        event_wait: Duration::from_secs(5),
        stall: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn timers_fire_per_state() {
        let mut f = Follower::default();
        let now = Instant::now();
        assert!(f.follow("a".into(), vec![], State::Created, now));
        assert!(f.follow("b".into(), vec![], State::Deferred, now));
        assert!(f.due(Instant::now(), &T).is_empty());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(f.due(Instant::now(), &T), [OsString::from("a")]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(f.due(Instant::now(), &T).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_stops_growing_is_dropped_after_the_stall_time() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        let s = Follower::writing(None, 0, t0, T.stall).unwrap();
        f.follow("core.1".into(), vec![], s, t0);
        tokio::time::advance(Duration::from_secs(30)).await;
        let s = Follower::writing(f.get(&"core.1".into()), 0, Instant::now(), T.stall).unwrap();
        f.follow("core.1".into(), vec![], s, Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(
            Follower::writing(f.get(&"core.1".into()), 0, Instant::now(), T.stall).is_none(),
            "no growth for the stall time"
        );
        // Growth resets the clock.
        assert!(Follower::writing(f.get(&"core.1".into()), 10, Instant::now(), T.stall).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_followed_set_is_bounded() {
        let mut f = Follower::default();
        for i in 0..MAX_FOLLOWED {
            assert!(f.follow(
                format!("n{i}").into(),
                vec![],
                State::Created,
                Instant::now()
            ));
        }
        assert!(!f.follow("one more".into(), vec![], State::Created, Instant::now()));
        assert!(
            f.follow("n1".into(), vec![], State::Deferred, Instant::now()),
            "a followed name can change state"
        );
        assert_eq!(f.len(), MAX_FOLLOWED);
    }
}
