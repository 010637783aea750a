//! `Record`: everything known about one crash and its dump.
//!
//! `correlate` builds it, `spool` persists it (so a restart resumes with full identity), the
//! store writes it beside the dump as `<key>.json`, and `info` shows it. It is a contract
//! with users' tooling: fields are only ever added.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{
    crash::{Crash, Signal, rfc3339},
    identity::Identity,
    intake::Intake,
    pattern::{Compression, NameFields},
};

/// The first 8 characters of this boot's id: ids made with it are unique per boot.
pub fn boot_tag() -> &'static str {
    static TAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().chars().take(8).collect())
            .unwrap_or_else(|_| "noboot".into())
    });
    &TAG
}

/// Version of the record's JSON shape.
pub const SCHEMA: u32 = 1;

/// One crash, its dump (if any) and who it belonged to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Version of this shape.
    pub schema: u32,
    /// Stable id, unique on the node: the spool file name and the dedup key.
    pub id: String,
    /// Node (Kubernetes node name or hostname).
    pub node: String,
    /// Cluster name, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The kernel's crash event, when one was joined.
    pub crash: Option<Crash>,
    /// Whether the kernel vouches for this dump, and why (not).
    pub attestation: Attestation,
    /// The dump file; `None` for a crash without a dump.
    pub dump: Option<DumpFile>,
    /// Read from `/proc/<pid>` at crash time, best effort.
    #[serde(default)]
    pub process: Option<ProcessInfo>,
    /// cgroup, container and pod.
    #[serde(default)]
    pub identity: Identity,
    /// What this agent was, when it made the record.
    pub agent: AgentInfo,
    /// What the store confirmed for the dump (`get` verifies downloads against it). Set in
    /// the copy stored beside the dump, once the dump itself is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredDump>,
    /// What brought the dump: `file` (the dump directory), `socket` (the kernel's coredump
    /// socket) or `pipe` (the agent's pipe helper).
    #[serde(default)]
    pub intake: Intake,
    /// With socket and pipe intake: the id the dump was received under (its files in the
    /// receive directory are `<id>.json` and `<id>.core…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_id: Option<String>,
    /// With socket and pipe intake: what the kernel said when it handed the crash over (the
    /// host pid; the pipe helper's `%` arguments), also when no dump came with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<NameFields>,
    /// What crashed, read from the core: signal, backtrace, modules and their build-ids,
    /// signature. Absent for a crash without a dump, or with `--report off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::report::Report>,
}

/// The dump as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDump {
    /// Object key.
    pub key: String,
    /// Bytes stored (after compression).
    pub size: u64,
    /// SHA-256 of the bytes stored, lowercase hex.
    pub sha256: String,
    /// Compression of the stored bytes.
    pub compression: Option<Compression>,
}

/// The kernel's word on a dump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// A crash event of the kernel probe was joined with this dump, unambiguously.
    pub attested: bool,
    /// How it was joined, or why it could not be.
    pub reason: String,
}

/// A finished dump file in the dump directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpFile {
    /// File name in the dump directory (the receive directory for socket and pipe intake).
    pub name: String,
    /// Size in bytes, as found.
    pub size: u64,
    /// Owner uid of the file.
    pub owner_uid: u32,
    /// Device and inode, to tell a replaced file from the one recorded.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Modification time.
    #[serde(with = "rfc3339")]
    pub modified: SystemTime,
    /// Compression of the file as written (from its name or magic bytes).
    pub compression: Option<Compression>,
    /// Fields parsed from the name by the core_pattern; with socket and pipe intake, what the
    /// kernel said (host pid, and the pipe helper's `%` arguments).
    pub fields: NameFields,
    /// Bytes the kernel wrote, when the file holds them compressed (received dumps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<u64>,
}

/// Facts read from `/proc/<pid>` while the crashing process was still there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// `/proc/<pid>/exe`.
    pub exe: Option<String>,
    /// `/proc/<pid>/cmdline`, split on NUL.
    pub cmdline: Vec<String>,
    /// `/proc/<pid>/cgroup`, verbatim.
    pub cgroup: Option<String>,
    /// Selected `/proc/<pid>/status` lines (Name, PPid, Uid, Gid, NSpid, VmRSS…).
    pub status: Vec<(String, String)>,
}

/// A command line as [`Record::cmdline`] chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandLine<'a> {
    /// The arguments, `argv[0]` first.
    pub args: &'a [String],
    /// Only the start of a longer command line (the last argument may be cut too).
    pub truncated: bool,
}

impl std::fmt::Display for CommandLine<'_> {
    /// The arguments joined with spaces, and ` ...` when cut.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.args.join(" "))?;
        if self.truncated {
            f.write_str(" ...")?;
        }
        Ok(())
    }
}

/// Whether the path `/proc/<pid>/exe` gave is the file the kernel named `name` (or, for a cut
/// name, whose name starts so). A deleted executable reads as `<path> (deleted)`.
fn names_file(path: &str, name: &str, truncated: bool) -> bool {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let file = path.rsplit('/').next().unwrap_or(path);
    if truncated {
        file.starts_with(name)
    } else {
        file == name
    }
}

/// Whether `full` (from `/proc`, empty arguments dropped) continues the cut command line
/// `cut`: the same arguments, the last of them possibly longer.
fn continues(full: &[String], cut: &[String]) -> bool {
    let cut: Vec<&String> = cut.iter().filter(|a| !a.is_empty()).collect();
    let Some((last, whole)) = cut.split_last() else {
        return true;
    };
    full.len() > whole.len()
        && full.iter().zip(whole).all(|(f, c)| f == *c)
        && full[whole.len()].starts_with(last.as_str())
        && full.concat().len() > cut.iter().map(|a| a.len()).sum::<usize>()
}

/// Whether a command line read from `/proc` filled all the bytes `enrich` keeps of it.
fn proc_cut(args: &[String]) -> bool {
    args.iter().map(|a| a.len() + 1).sum::<usize>() >= crate::enrich::MAX_CMDLINE
}

/// The agent that made a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent version.
    pub version: String,
    /// `uname -r` of the node.
    pub kernel: String,
}

impl AgentInfo {
    /// This agent on this kernel.
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

impl Record {
    /// What the dump's name, or the kernel handing the crash over, said.
    fn fields(&self) -> Option<&NameFields> {
        self.dump
            .as_ref()
            .map(|d| &d.fields)
            .or(self.kernel.as_ref())
    }

    /// When the crash happened: the kernel's time, else the name's `%t`, else the file's mtime.
    pub fn crash_time(&self) -> SystemTime {
        if let Some(c) = &self.crash {
            return c.time;
        }
        // `%t` comes from a file name a container may have chosen: never overflow on it.
        self.fields()
            .and_then(|f| f.time)
            .and_then(|t| SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t)))
            .or_else(|| self.dump.as_ref().map(|d| d.modified))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The crashing thread's name: the kernel's, else the name's `%e`.
    pub fn comm(&self) -> Option<&str> {
        self.crash
            .as_ref()
            .map(|c| c.comm.as_str())
            .or_else(|| self.fields()?.comm.as_deref())
    }

    /// The signal: the kernel's, else the name's `%s`.
    pub fn signal(&self) -> Option<Signal> {
        self.crash
            .as_ref()
            .map(|c| c.signal)
            .or_else(|| self.fields()?.signal.map(Signal))
    }

    /// The executable. `/proc/<pid>/exe` (a full path) when it names the file the kernel
    /// reported at the signal, else the kernel's file name, else the dump name's `%E`.
    ///
    /// `/proc` is read after the event arrives: the process may be gone by then, and its pid
    /// even reused by another one. The kernel's name is checked, not assumed.
    pub fn exe(&self) -> Option<&str> {
        let kernel = self.crash.as_ref().and_then(|c| {
            c.exe_name
                .as_deref()
                .map(|name| (name, c.exe_name_truncated))
        });
        let from_proc = self.process.as_ref().and_then(|p| p.exe.as_deref());
        match (from_proc, kernel) {
            (Some(path), Some((name, truncated))) if names_file(path, name, truncated) => {
                Some(path)
            }
            (Some(path), None) => Some(path),
            (_, Some((name, _))) => Some(name),
            (None, None) => self.dump.as_ref()?.fields.exe_path.as_deref(),
        }
    }

    /// The command line. The kernel's, read at the signal, when it has one; when it was cut,
    /// `/proc/<pid>/cmdline` if that continues it (it keeps up to 4 KiB); `/proc` alone when
    /// the kernel gave none.
    pub fn cmdline(&self) -> Option<CommandLine<'_>> {
        let from_proc = self
            .process
            .as_ref()
            .map(|p| p.cmdline.as_slice())
            .filter(|c| !c.is_empty());
        match self.crash.as_ref() {
            Some(Crash {
                cmdline: Some(args),
                cmdline_truncated: truncated,
                ..
            }) => match from_proc {
                Some(full) if *truncated && continues(full, args) => Some(CommandLine {
                    args: full,
                    truncated: proc_cut(full),
                }),
                _ => Some(CommandLine {
                    args,
                    truncated: *truncated,
                }),
            },
            _ => from_proc.map(|args| CommandLine {
                args,
                truncated: proc_cut(args),
            }),
        }
    }

    /// The pid as the process saw it (kernel, else `%p`, else `%P`).
    pub fn pid(&self) -> Option<u32> {
        self.crash.as_ref().map(Crash::visible_pid).or_else(|| {
            let f = self.fields()?;
            f.pid.or(f.host_pid)
        })
    }
}
