//! `Crash`: the typed, serializable form of one kernel crash event, as the rest of the
//! pipeline (and `coredump-agent probe`) sees it.

use std::{fmt, str::FromStr, time::SystemTime};

use coredump_common::{
    CrashEvent, FLAG_ARGS, FLAG_ARGS_TRUNCATED, FLAG_EXE_NAME, FLAG_EXE_NAME_TRUNCATED,
    FLAG_NO_SI_CODE, FLAG_NS_PIDS, FLAG_PROCESS_COMM,
};
use serde::{Deserialize, Serialize};

/// Which kernel hook produced an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// BTF tracepoint `tp_btf/signal_deliver` (cheaper; needs kernel BTF).
    TpBtf,
    /// Classic tracepoint `signal/signal_deliver` (works without BTF).
    Tracepoint,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TpBtf => "tp_btf/signal_deliver",
            Self::Tracepoint => "tracepoint/signal/signal_deliver",
        })
    }
}

/// A signal number that prints, serializes and parses as its name (`SIGSEGV`) and also parses
/// from a number (`11`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(pub u32);

const SIGNAL_NAMES: [(u32, &str); 31] = [
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (4, "SIGILL"),
    (5, "SIGTRAP"),
    (6, "SIGABRT"),
    (7, "SIGBUS"),
    (8, "SIGFPE"),
    (9, "SIGKILL"),
    (10, "SIGUSR1"),
    (11, "SIGSEGV"),
    (12, "SIGUSR2"),
    (13, "SIGPIPE"),
    (14, "SIGALRM"),
    (15, "SIGTERM"),
    (16, "SIGSTKFLT"),
    (17, "SIGCHLD"),
    (18, "SIGCONT"),
    (19, "SIGSTOP"),
    (20, "SIGTSTP"),
    (21, "SIGTTIN"),
    (22, "SIGTTOU"),
    (23, "SIGURG"),
    (24, "SIGXCPU"),
    (25, "SIGXFSZ"),
    (26, "SIGVTALRM"),
    (27, "SIGPROF"),
    (28, "SIGWINCH"),
    (29, "SIGIO"),
    (30, "SIGPWR"),
    (31, "SIGSYS"),
];

impl Signal {
    /// The conventional name, if the number has one.
    pub fn name(self) -> Option<&'static str> {
        SIGNAL_NAMES
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, name)| *name)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "SIG{}", self.0),
        }
    }
}

/// The signal string was neither a known name nor a number.
#[derive(Debug, thiserror::Error)]
#[error("unknown signal `{0}` (use a name like SIGSEGV or SEGV, or a number like 11)")]
pub struct UnknownSignal(String);

impl FromStr for Signal {
    type Err = UnknownSignal;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.parse::<u32>() {
            return Ok(Self(n));
        }
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNAL_NAMES
            .iter()
            .find(|(_, full)| &full[3..] == name)
            .map(|(n, _)| Self(*n))
            .or_else(|| name.parse().ok().map(Self))
            .ok_or_else(|| UnknownSignal(s.to_owned()))
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde for `SystemTime` as RFC 3339 UTC with nanoseconds.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Latest time RFC 3339 can write (9999-12-31T23:59:59Z).
    const MAX_SECS: u64 = 253_402_300_799;

    /// Serializes as `2026-11-26T08:20:30.123456789Z`. Times outside 1970..=9999 (a file's
    /// mtime is whatever its writer set) are clamped rather than failing the whole record.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let max = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(MAX_SECS);
        let t = (*t).clamp(SystemTime::UNIX_EPOCH, max);
        s.collect_str(&humantime::format_rfc3339_nanos(t))
    }

    /// Parses RFC 3339 (any offset-free `Z` form).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

/// One crash as reported by the kernel probe. This is the kernel's word: pids, credentials and
/// cgroup cannot be forged by the crashing process (its name can: `prctl(PR_SET_NAME)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crash {
    /// Wall-clock time of the signal delivery.
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// `CLOCK_BOOTTIME` nanoseconds of the delivery (exact ordering between events).
    pub boot_ns: u64,
    /// Process id in the host pid namespace (`%P`).
    pub host_pid: u32,
    /// Thread id in the host pid namespace (`%I`).
    pub host_tid: u32,
    /// Process id in the process's own pid namespace (`%p`), when the probe could read it.
    pub pid: Option<u32>,
    /// Thread id in the process's own pid namespace (`%i`).
    pub tid: Option<u32>,
    /// Inode of the process's pid namespace (compare with `readlink /proc/<pid>/ns/pid`).
    pub pidns: Option<u32>,
    /// Depth of the pid namespace (0 = host).
    pub pidns_level: Option<u32>,
    /// Real uid (host view).
    pub uid: u32,
    /// Real gid (host view).
    pub gid: u32,
    /// The signal.
    pub signal: Signal,
    /// `si_code` (negative: sent by a process, e.g. -6 `SI_TKILL`; positive: a fault kind).
    pub si_code: Option<i32>,
    /// cgroup v2 id (inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Name of the crashing thread (`%e`).
    pub comm: String,
    /// Name of the process (its main thread), when the probe could read it.
    pub process_comm: Option<String>,
    /// File name of the executable (`mm->exe_file`, without its directory), when the probe
    /// could read it. Unlike the comm, the process cannot change it.
    #[serde(default)]
    pub exe_name: Option<String>,
    /// `exe_name` is only the start of a longer name (over 63 bytes).
    #[serde(default)]
    pub exe_name_truncated: bool,
    /// The command line as the process's memory held it at the signal (what
    /// `/proc/<pid>/cmdline` shows, split on NUL; at most its first 512 bytes), when the probe
    /// could read it.
    #[serde(default)]
    pub cmdline: Option<Vec<String>>,
    /// `cmdline` is only the start of a longer one (its last argument may be cut too).
    #[serde(default)]
    pub cmdline_truncated: bool,
    /// The kernel hook that reported it.
    pub hook: Hook,
}

/// A NUL-padded kernel name as a string (invalid UTF-8 replaced).
fn comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Splits an argument area (`/proc/<pid>/cmdline` bytes) into arguments: NUL-separated, the
/// last one NUL-terminated unless `truncated` cut it. Empty arguments inside are kept (they
/// are real ones); trailing empty ones are dropped: they are the NUL padding a process leaves
/// when it rewrites its title in place (`setproctitle`). Invalid UTF-8 is replaced.
pub fn split_cmdline(bytes: &[u8], truncated: bool) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let bytes = match bytes.split_last() {
        Some((0, rest)) if !truncated => rest,
        _ => bytes,
    };
    let mut args: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    while args.last().is_some_and(String::is_empty) && args.len() > 1 {
        args.pop();
    }
    args
}

impl Crash {
    /// Converts a raw probe event; `time` is its wall-clock time (see `sys::boot_to_system_time`).
    pub fn from_event(ev: &CrashEvent, hook: Hook, time: SystemTime) -> Self {
        let CrashEvent {
            boot_ns,
            cgroup_id,
            host_tgid,
            host_tid,
            ns_tgid,
            ns_tid,
            pidns_inum,
            pidns_level,
            uid,
            gid,
            signal,
            si_code,
            flags,
            reserved: _,
            thread_comm,
            process_comm,
            args_len: _,
            exe_name_len: _,
            args: _,
            exe_name: _,
        } = *ev;
        let ns = flags & FLAG_NS_PIDS != 0;
        Self {
            time,
            boot_ns,
            host_pid: host_tgid,
            host_tid,
            pid: ns.then_some(ns_tgid),
            tid: ns.then_some(ns_tid),
            pidns: (ns && pidns_inum != 0).then_some(pidns_inum),
            pidns_level: ns.then_some(pidns_level),
            uid,
            gid,
            signal: Signal(signal),
            si_code: (flags & FLAG_NO_SI_CODE == 0).then_some(si_code),
            cgroup_id,
            comm: comm(&thread_comm),
            process_comm: (flags & FLAG_PROCESS_COMM != 0).then(|| comm(&process_comm)),
            exe_name: (flags & FLAG_EXE_NAME != 0)
                .then(|| String::from_utf8_lossy(ev.exe_name()).into_owned()),
            exe_name_truncated: flags & FLAG_EXE_NAME != 0 && flags & FLAG_EXE_NAME_TRUNCATED != 0,
            cmdline: (flags & FLAG_ARGS != 0)
                .then(|| split_cmdline(ev.args(), flags & FLAG_ARGS_TRUNCATED != 0)),
            cmdline_truncated: flags & FLAG_ARGS != 0 && flags & FLAG_ARGS_TRUNCATED != 0,
            hook,
        }
    }

    /// The pid as the process saw it: the namespace pid when known, else the host pid.
    pub fn visible_pid(&self) -> u32 {
        self.pid.unwrap_or(self.host_pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse_and_print() {
        assert_eq!("SIGSEGV".parse::<Signal>().unwrap(), Signal(11));
        assert_eq!("segv".parse::<Signal>().unwrap(), Signal(11));
        assert_eq!("6".parse::<Signal>().unwrap(), Signal(6));
        assert_eq!(Signal(6).to_string(), "SIGABRT");
        assert_eq!(Signal(40).to_string(), "SIG40");
        assert_eq!("SIG40".parse::<Signal>().unwrap(), Signal(40));
        assert!("SIGNOPE".parse::<Signal>().is_err());
    }

    #[test]
    fn event_converts_with_and_without_namespace_fields() {
        let mut ev = CrashEvent {
            boot_ns: 5,
            cgroup_id: 77,
            host_tgid: 1000,
            host_tid: 1001,
            ns_tgid: 7,
            ns_tid: 8,
            pidns_inum: 4026531836,
            pidns_level: 1,
            uid: 1,
            gid: 2,
            signal: 11,
            si_code: 1,
            flags: FLAG_NS_PIDS | FLAG_PROCESS_COMM,
            reserved: 0,
            thread_comm: *b"worker-3\0\0\0\0\0\0\0\0",
            process_comm: *b"server\0\0\0\0\0\0\0\0\0\0",
            args_len: 0,
            exe_name_len: 0,
            args: [0; coredump_common::ARGS_LEN],
            exe_name: [0; coredump_common::EXE_NAME_LEN],
        };
        let c = Crash::from_event(&ev, Hook::TpBtf, SystemTime::UNIX_EPOCH);
        assert_eq!((c.pid, c.tid, c.visible_pid()), (Some(7), Some(8), 7));
        assert_eq!(c.comm, "worker-3");
        assert_eq!(c.process_comm.as_deref(), Some("server"));
        assert_eq!(
            (&c.exe_name, &c.cmdline),
            (&None, &None),
            "not read: unknown, not empty"
        );
        assert_eq!(c.si_code, Some(1));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["signal"], "SIGSEGV");
        assert_eq!(json["time"], "1970-01-01T00:00:00.000000000Z");
        assert_eq!(serde_json::from_value::<Crash>(json).unwrap(), c);

        let mut ancient = c.clone();
        ancient.time = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(1);
        assert_eq!(
            serde_json::to_value(&ancient).unwrap()["time"],
            "1970-01-01T00:00:00.000000000Z"
        );

        ev.flags = FLAG_NO_SI_CODE;
        let c = Crash::from_event(&ev, Hook::Tracepoint, SystemTime::UNIX_EPOCH);
        assert_eq!((c.pid, c.visible_pid(), c.si_code), (None, 1000, None));
        assert_eq!(c.process_comm, None);
    }

    /// An event whose argument area and executable name are `args` and `exe` as the probe
    /// would write them (cut to the event's buffers, flagged as such).
    fn event_with(args: &[u8], exe: &[u8], extra_flags: u32) -> CrashEvent {
        use coredump_common::{ARGS_LEN, EXE_NAME_LEN};
        let mut ev = CrashEvent::from_bytes(&[0xAA; CrashEvent::SIZE]).unwrap();
        ev.flags = FLAG_ARGS | FLAG_EXE_NAME | extra_flags;
        let n = args.len().min(ARGS_LEN);
        ev.args[..n].copy_from_slice(&args[..n]);
        ev.args_len = n as u32;
        if args.len() > ARGS_LEN {
            ev.flags |= FLAG_ARGS_TRUNCATED;
        }
        let n = exe.len().min(EXE_NAME_LEN - 1);
        ev.exe_name[..n].copy_from_slice(&exe[..n]);
        ev.exe_name[n] = 0;
        ev.exe_name_len = n as u32;
        if exe.len() >= EXE_NAME_LEN {
            ev.flags |= FLAG_EXE_NAME_TRUNCATED;
        }
        ev
    }

    fn decode(ev: &CrashEvent) -> Crash {
        Crash::from_event(ev, Hook::TpBtf, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn command_line_and_exe_name_decode_as_proc_shows_them() {
        let c = decode(&event_with(
            b"/usr/bin/server\0--port\08080\0\0with space\0",
            b"server",
            0,
        ));
        assert_eq!(
            c.cmdline.as_deref(),
            Some(&["/usr/bin/server", "--port", "8080", "", "with space"].map(String::from)[..]),
            "split on NUL, an empty argument kept, bytes past args_len ignored"
        );
        assert!(!c.cmdline_truncated);
        assert_eq!(c.exe_name.as_deref(), Some("server"));
        assert!(!c.exe_name_truncated);

        // The record round-trips, and old records without the fields still read.
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["cmdline"][4], "with space");
        assert_eq!(json["exe_name"], "server");
        assert_eq!(serde_json::from_value::<Crash>(json.clone()).unwrap(), c);
        let mut old = json;
        for key in [
            "exe_name",
            "exe_name_truncated",
            "cmdline",
            "cmdline_truncated",
        ] {
            old.as_object_mut().unwrap().remove(key);
        }
        let old: Crash = serde_json::from_value(old).unwrap();
        assert_eq!(
            (old.exe_name, old.cmdline, old.cmdline_truncated),
            (None, None, false)
        );
    }

    #[test]
    fn long_command_line_and_exe_name_are_cut_and_marked() {
        use coredump_common::ARGS_LEN;
        let mut args = b"java\0-cp\0".to_vec();
        args.extend(std::iter::repeat_n(b'x', 2 * ARGS_LEN));
        args.extend(b"\0Main\0");
        let exe = [b'e'; 100];
        let c = decode(&event_with(&args, &exe, 0));
        let cmdline = c.cmdline.unwrap();
        assert!(c.cmdline_truncated);
        assert_eq!(cmdline.len(), 3, "{cmdline:?}");
        assert_eq!(cmdline[..2], ["java", "-cp"]);
        assert_eq!(
            cmdline[2],
            "x".repeat(ARGS_LEN - 9),
            "the cut argument, as far as it went"
        );
        assert!(c.exe_name_truncated);
        assert_eq!(c.exe_name.unwrap(), "e".repeat(63));

        // Cut right after a terminator: no phantom empty argument.
        assert_eq!(split_cmdline(b"a\0b\0", true), ["a", "b"]);
        // A cut inside a multi-byte character is replaced, not an error.
        assert_eq!(
            split_cmdline("a\0é".as_bytes().split_last().unwrap().1, true),
            ["a", "\u{fffd}"]
        );
    }

    #[test]
    fn empty_unreadable_and_padded_command_lines() {
        // Read, and empty: known to be empty (not "unknown").
        let c = decode(&event_with(b"", b"x", 0));
        assert_eq!(c.cmdline, Some(vec![]));
        // argc == 0: the kernel stores one empty argument.
        assert_eq!(
            decode(&event_with(b"\0", b"x", 0)).cmdline,
            Some(vec![String::new()])
        );
        // setproctitle leaves the rest of the area NUL padded.
        assert_eq!(
            decode(&event_with(b"nginx: worker process\0\0\0\0\0", b"nginx", 0)).cmdline,
            Some(vec!["nginx: worker process".to_owned()])
        );
        // The read failed (a page of the area not resident): unknown, whatever the buffer holds.
        let mut ev = event_with(b"stale\0", b"x", 0);
        ev.flags &= !FLAG_ARGS;
        ev.flags |= coredump_common::FLAG_ARGS_FAULT;
        let c = decode(&ev);
        assert_eq!((c.cmdline, c.cmdline_truncated), (None, false));
        // The executable's name could not be read.
        ev.flags &= !FLAG_EXE_NAME;
        ev.flags |= FLAG_EXE_NAME_TRUNCATED;
        let c = decode(&ev);
        assert_eq!((c.exe_name, c.exe_name_truncated), (None, false));
        // A partial read (only the first page): what was read, marked cut.
        let mut ev = event_with(b"a\0bb", b"x", FLAG_ARGS_TRUNCATED);
        ev.flags |= coredump_common::FLAG_ARGS_FAULT;
        let c = decode(&ev);
        assert_eq!(
            (c.cmdline.unwrap(), c.cmdline_truncated),
            (vec!["a".into(), "bb".into()], true)
        );
    }
}
