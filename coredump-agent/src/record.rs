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
    pattern::{Compression, NameFields},
};

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
    /// File name in the dump directory.
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
    /// Fields parsed from the name by the core_pattern.
    pub fields: NameFields,
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
    /// When the crash happened: the kernel's time, else the name's `%t`, else the file's mtime.
    pub fn crash_time(&self) -> SystemTime {
        if let Some(c) = &self.crash {
            return c.time;
        }
        let dump = self.dump.as_ref();
        // `%t` comes from a file name a container may have chosen: never overflow on it.
        dump.and_then(|d| d.fields.time)
            .and_then(|t| SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t)))
            .or_else(|| dump.map(|d| d.modified))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The crashing thread's name: the kernel's, else the name's `%e`.
    pub fn comm(&self) -> Option<&str> {
        self.crash
            .as_ref()
            .map(|c| c.comm.as_str())
            .or_else(|| self.dump.as_ref()?.fields.comm.as_deref())
    }

    /// The signal: the kernel's, else the name's `%s`.
    pub fn signal(&self) -> Option<Signal> {
        self.crash
            .as_ref()
            .map(|c| c.signal)
            .or_else(|| self.dump.as_ref()?.fields.signal.map(Signal))
    }

    /// The pid as the process saw it (kernel, else `%p`, else `%P`).
    pub fn pid(&self) -> Option<u32> {
        self.crash.as_ref().map(Crash::visible_pid).or_else(|| {
            let f = &self.dump.as_ref()?.fields;
            f.pid.or(f.host_pid)
        })
    }
}
