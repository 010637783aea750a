//! correlate::join: which kernel crash event a dump belongs to. Pure: no I/O, no clock.
//!
//! A received dump (socket, pipe) comes with the host pid from the kernel itself: the join is
//! exact. A file's name says what the core_pattern put in it: the host pid when the pattern
//! has `%P`/`%I`; otherwise the namespace pid together with comm, signal and time. When no
//! event or more than one fits, the dump is not attested: never guessed.

use crate::{crash::Crash, pattern::NameFields};

/// `%t` and the kernel's time differ by the time to start dumping; allow this much.
pub const TIME_SLACK: u64 = 5;

/// How a set of name parses matches the pending crashes.
#[derive(Debug, PartialEq, Eq)]
pub enum Join {
    /// Exactly this crash (index) fits.
    One(usize, &'static str),
    /// No crash fits.
    None,
    /// Several crashes fit.
    Many(usize),
    /// The name has no pid: nothing can vouch for it.
    NoPid,
}

/// The kernel writes `/` in `%e` as `!`.
fn escaped_comm(comm: &str) -> String {
    comm.replace('/', "!")
}

/// Whether one crash fits what one file name says.
pub fn fits(crash: &Crash, f: &NameFields) -> bool {
    let unix = crate::sys::unix_secs(crash.time);
    f.host_pid.is_none_or(|p| p == crash.host_pid)
        && f.host_tid.is_none_or(|t| t == crash.host_tid)
        && f.pid.is_none_or(|p| p == crash.visible_pid())
        && f.tid
            .is_none_or(|t| t == crash.tid.unwrap_or(crash.host_tid))
        && f.signal.is_none_or(|s| s == crash.signal.0)
        && f.comm
            .as_ref()
            .is_none_or(|c| *c == escaped_comm(&crash.comm))
        && f.time.is_none_or(|t| t.abs_diff(unix) <= TIME_SLACK)
}

/// The crash a file name belongs to, among `crashes`.
pub fn join<'a>(parses: &[NameFields], crashes: impl IntoIterator<Item = &'a Crash>) -> Join {
    if !parses
        .iter()
        .any(|f| f.pid.is_some() || f.host_pid.is_some() || f.host_tid.is_some())
    {
        return Join::NoPid;
    }
    let matching: Vec<usize> = crashes
        .into_iter()
        .enumerate()
        .filter(|(_, c)| parses.iter().any(|f| fits(c, f)))
        .map(|(i, _)| i)
        .collect();
    match matching[..] {
        [] => Join::None,
        [i] => {
            let how = if parses
                .iter()
                .any(|f| f.host_pid.is_some() || f.host_tid.is_some())
            {
                "host pid (%P/%I) matched the kernel's crash event"
            } else {
                "namespace pid, comm, signal and time matched the kernel's crash event"
            };
            Join::One(i, how)
        }
        _ => Join::Many(matching.len()),
    }
}

/// The crash a received dump belongs to: the latest of the host pid the kernel named (a pid
/// is reused only after its process is gone, and a process dumps once).
pub fn by_host_pid<'a>(
    host_pid: u32,
    crashes: impl IntoIterator<Item = &'a Crash>,
) -> Option<usize> {
    crashes
        .into_iter()
        .enumerate()
        .filter(|(_, c)| c.host_pid == host_pid)
        .max_by_key(|(_, c)| c.boot_ns)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crash::{Hook, Signal},
        pattern::CorePattern,
    };
    use std::time::{Duration, SystemTime};

    fn crash(host_pid: u32, pid: u32, comm: &str, sig: u32, time: u64) -> Crash {
        Crash {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(time),
            boot_ns: u64::from(host_pid) + time,
            host_pid,
            host_tid: host_pid,
            pid: Some(pid),
            tid: Some(pid),
            pidns: None,
            pidns_level: Some(u32::from(pid != host_pid)),
            uid: 0,
            gid: 0,
            signal: Signal(sig),
            si_code: Some(1),
            cgroup_id: 1,
            comm: comm.into(),
            process_comm: None,
            exe_name: None,
            exe_name_truncated: false,
            cmdline: None,
            cmdline_truncated: false,
            hook: Hook::TpBtf,
        }
    }

    fn parse(pattern: &str, name: &str) -> Vec<NameFields> {
        CorePattern::parse(pattern, false)
            .unwrap()
            .match_name_all(name)
    }

    #[test]
    fn host_pid_joins_exactly() {
        let crashes = [
            crash(100, 100, "a", 11, 1000),
            crash(101, 101, "a", 11, 1000),
        ];
        let f = parse("/d/core.%P.%s", "core.101.11");
        assert!(matches!(join(&f, &crashes), Join::One(1, _)));
        assert_eq!(
            join(&parse("/d/core.%P.%s", "core.101.6"), &crashes),
            Join::None
        );
        assert_eq!(join(&parse("/d/core.%P", "core.999"), &crashes), Join::None);
    }

    #[test]
    fn namespace_pid_needs_comm_signal_and_time() {
        // Two containers, both with pid 7 and the same comm and signal: not guessable.
        let crashes = [
            crash(1000, 7, "app", 11, 1000),
            crash(2000, 7, "app", 11, 1001),
        ];
        let f = parse("/d/core-%e-%t-%p-%s", "core-app-1000-7-11");
        assert_eq!(join(&f, &crashes), Join::Many(2));
        // Different comm tells them apart.
        let crashes = [
            crash(1000, 7, "app", 11, 1000),
            crash(2000, 7, "other", 11, 1000),
        ];
        assert!(matches!(join(&f, &crashes), Join::One(0, _)));
        // Time too far off.
        let f = parse("/d/core-%e-%t-%p-%s", "core-app-2000-7-11");
        assert_eq!(join(&f, &crashes), Join::None);
    }

    #[test]
    fn comm_slash_is_escaped_by_the_kernel() {
        let crashes = [crash(5, 5, "a/b", 6, 1000)];
        assert!(matches!(
            join(&parse("/d/core.%e.%p", "core.a!b.5"), &crashes),
            Join::One(0, _)
        ));
    }

    #[test]
    fn names_without_a_pid_are_never_attested() {
        let crashes = [crash(5, 5, "app", 6, 1000)];
        assert_eq!(
            join(&parse("/d/core-%e-%t", "core-app-1000"), &crashes),
            Join::NoPid
        );
    }

    #[test]
    fn fifty_same_comm_crashes_each_join_their_own() {
        let crashes: Vec<_> = (0..50)
            .map(|i| crash(3000 + i, 3000 + i, "same", 11, 1000))
            .collect();
        for i in 0..50u32 {
            let f = parse(
                "/d/core-%e-%t-%p-%s",
                &format!("core-same-1000-{}-11", 3000 + i),
            );
            assert_eq!(
                join(&f, &crashes),
                Join::One(
                    i as usize,
                    "namespace pid, comm, signal and time matched the kernel's crash event"
                )
            );
        }
    }

    #[test]
    fn a_received_dump_joins_the_latest_crash_of_its_pid() {
        let crashes = [
            crash(7, 7, "a", 11, 1000),
            crash(8, 8, "b", 11, 1000),
            crash(7, 7, "a", 6, 2000),
        ];
        assert_eq!(by_host_pid(7, &crashes), Some(2));
        assert_eq!(by_host_pid(8, &crashes), Some(1));
        assert_eq!(by_host_pid(9, &crashes), None);
    }
}
