//! store::layout: the object layout contract, shared by every store. From a
//! [`Record`] it makes the key a dump is stored under, its tags (what `find` searches) and its
//! user metadata (what `info` shows).
//!
//! Users' scripts and lifecycle rules depend on this, so it only ever grows:
//!
//! ```text
//! <prefix>/<namespace>/<pod>/<crash-time>_<container>_<comm>_<pid>_<signal>.core[.zst|.gz|.xz|.lz4]
//! <prefix>/_host/<node>/<crash-time>___<comm>_<pid>_<signal>.core…  outside any pod (container `_`)
//! <prefix>/_pod-uid/<pod-uid>/…                                      in a pod whose name is unknown
//! <prefix>/_ecs/<cluster>/<task-family>/<crash-time>_<container>_<comm>_<pid>_<signal>.core…
//!                                                                   in an Amazon ECS task
//! <prefix>/_ecs-task/<task-id>/…                                     in an ECS task whose family is unknown
//! <prefix>/_unattested/<node>/…                                     no kernel event vouches for it
//! <prefix>/_unknown/<node>/…                                        the crash's cgroup is gone
//! ```
//!
//! `crash-time` is UTC
//! `YYYYMMDDTHHMMSSZ`; a crash without a dump ends in `.crash`; the record sits beside the object
//! as [`record_key`]. Every part is sanitized ([`sanitize_part`]): nothing the crashing process
//! controls (its name, its pod's name) can add a `/`, a `..` or a hidden name to a key.

use std::time::{Duration, SystemTime};

use super::{Metadata, Tags};
use crate::{identity::Workload, pattern::Compression, record::Record};

/// Tag names. `find` filters on these.
pub mod tag {
    /// Pod namespace.
    pub const NAMESPACE: &str = "namespace";
    /// Pod name.
    pub const POD: &str = "pod";
    /// Pod UID.
    pub const POD_UID: &str = "pod-uid";
    /// Container name.
    pub const CONTAINER: &str = "container";
    /// Node name.
    pub const NODE: &str = "node";
    /// Process name (the kernel's process comm, else the crashing thread's).
    pub const COMM: &str = "comm";
    /// Signal name, e.g. `SIGSEGV`.
    pub const SIGNAL: &str = "signal";
    /// Crash time, RFC 3339 UTC with seconds, e.g. `2026-11-26T08:26:27Z`.
    pub const CRASH_TIME: &str = "crash-time";
    /// `true` when a kernel crash event vouches for the dump.
    pub const ATTESTED: &str = "attested";
    /// Cluster name, when configured.
    pub const CLUSTER: &str = "cluster";
    /// Amazon ECS cluster of the task (instead of the pod's namespace).
    pub const ECS_CLUSTER: &str = "ecs-cluster";
    /// ECS task definition family (instead of the pod's name).
    pub const TASK_FAMILY: &str = "task-family";
    /// ECS task id: the last part of the task ARN (instead of the pod's UID).
    pub const TASK_ID: &str = "task-id";
}

/// S3 allows at most this many tags per object; [`tags`] never makes more.
pub const MAX_TAGS: usize = 10;
/// Longest tag value S3 accepts, in characters.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// S3's limit on user metadata: keys and values together, in bytes. [`metadata`] stays under it.
pub const MAX_METADATA_LEN: usize = 2048;

/// First key segment of processes outside any pod.
pub const HOST_SEGMENT: &str = "_host";
/// First key segment of dumps no kernel crash event vouches for.
pub const UNATTESTED_SEGMENT: &str = "_unattested";
/// First key segment of crashes whose cgroup could not be known (gone, and nothing tied to it).
pub const UNKNOWN_SEGMENT: &str = "_unknown";
/// First key segment of pods whose UID is known but whose name could not be resolved.
pub const POD_UID_SEGMENT: &str = "_pod-uid";
/// First key segment of Amazon ECS tasks: `_ecs/<cluster>/<task-family>/`.
pub const ECS_SEGMENT: &str = "_ecs";
/// First key segment of ECS tasks whose family could not be resolved: `_ecs-task/<task-id>/`.
pub const ECS_TASK_SEGMENT: &str = "_ecs-task";
/// Key part for a value that is not known.
pub const UNKNOWN: &str = "unknown";
/// Container part of the key for processes outside any pod.
const NO_CONTAINER: &str = "_";
/// Longest key part, in bytes.
const MAX_PART_LEN: usize = 64;
/// Longest comm part: the kernel's own limit (`TASK_COMM_LEN - 1`).
const MAX_COMM_LEN: usize = 15;
/// The last second humantime (and RFC 3339) can print: 9999-12-31T23:59:59Z.
const MAX_SECS: u64 = 253_402_300_799;

/// What is stored under a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The dump (`.core`), with the compression of the bytes as stored.
    Dump(Option<Compression>),
    /// Only the record (`.crash`): a crash without a dump, or a dump that was not kept.
    RecordOnly,
}

/// The key of a record's object: see the module docs. `stored` says whether the dump itself is
/// stored (`.core`, plus `.zst`, `.gz`, … for the compression of the bytes as stored) or only
/// the record (`.crash`). An empty `prefix` adds no segment; a non-empty one must be a valid
/// key prefix (`Dest` parsing checks that).
pub fn object_key(prefix: &str, record: &Record, stored: Stored) -> String {
    let identity = &record.identity;
    let part = |v: Option<&str>| sanitize_part(v, MAX_PART_LEN);
    let node = || part(Some(&record.node));
    // The workload's own folder, and its container, when its names are known.
    let named = match &identity.workload {
        Workload::Kubernetes(pod) if pod.pod.is_some() => Some((
            (part(pod.namespace.as_deref()), part(pod.pod.as_deref())),
            part(pod.container.as_deref()),
        )),
        Workload::Ecs(task) if task.family.is_some() => Some((
            (
                format!("{ECS_SEGMENT}/{}", part(task.cluster.as_deref())),
                part(task.family.as_deref()),
            ),
            part(task.container.as_deref()),
        )),
        _ => None,
    };
    let container = named
        .as_ref()
        .map_or_else(|| NO_CONTAINER.to_owned(), |(_, c)| c.clone());
    let (group, owner) = if !record.attestation.attested {
        (UNATTESTED_SEGMENT.to_owned(), node())
    } else if identity.unresolved.is_some() {
        (UNKNOWN_SEGMENT.to_owned(), node())
    } else if let Some((folder, _)) = named {
        folder
    } else {
        match &identity.workload {
            Workload::Kubernetes(pod) if pod.pod_uid.is_some() => {
                (POD_UID_SEGMENT.to_owned(), part(pod.pod_uid.as_deref()))
            }
            Workload::Ecs(task) => (ECS_TASK_SEGMENT.to_owned(), part(Some(&task.task_id))),
            _ => (HOST_SEGMENT.to_owned(), node()),
        }
    };
    let time = key_time(record.crash_time());
    let comm = sanitize_part(comm(record), MAX_COMM_LEN);
    let pid = record
        .pid()
        .map_or_else(|| UNKNOWN.to_owned(), |p| p.to_string());
    let signal = record.signal().map_or_else(
        || UNKNOWN.to_owned(),
        |s| sanitize_part(Some(&s.to_string()), MAX_PART_LEN),
    );
    let (kind, suffix) = match stored {
        Stored::Dump(compression) => ("core", compression.map_or("", Compression::suffix)),
        Stored::RecordOnly => ("crash", ""),
    };

    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    format!("{prefix}{group}/{owner}/{time}_{container}_{comm}_{pid}_{signal}.{kind}{suffix}")
}

/// The folder of stored module files, beside the namespaces (no namespace name can start
/// with `_`).
pub const MODULES_SEGMENT: &str = "_modules";

/// Key of a stored module file: `<prefix>/_modules/<build-id>/<file name>`, one per build-id
/// (the same build is the same bytes, whichever pod or node ran it). `None` for a build-id
/// that is not plain hex.
pub fn module_key(prefix: &str, build_id: &str, name: &str) -> Option<String> {
    let hex = |s: &str| {
        (16..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(build_id) {
        return None;
    }
    let prefix = prefix.trim_matches('/');
    let name = sanitize_part(Some(name), MAX_PART_LEN);
    Some(if prefix.is_empty() {
        format!("{MODULES_SEGMENT}/{build_id}/{name}")
    } else {
        format!("{prefix}/{MODULES_SEGMENT}/{build_id}/{name}")
    })
}

/// Whether a key is a stored module's.
pub fn is_module_key(prefix: &str, key: &str) -> bool {
    let prefix = prefix.trim_matches('/');
    let rest = if prefix.is_empty() {
        Some(key)
    } else {
        key.strip_prefix(prefix).and_then(|k| k.strip_prefix('/'))
    };
    rest.is_some_and(|r| r.starts_with(&format!("{MODULES_SEGMENT}/")))
}

/// Key of the JSON record stored beside a dump (or crash) object.
pub fn record_key(dump_key: &str) -> String {
    format!("{dump_key}.json")
}

/// Name of a compression as metadata and `info` show it: `gzip`, `zstd`, `xz`, `lz4` or `none`.
pub fn compression_name(compression: Option<Compression>) -> &'static str {
    match compression {
        None => "none",
        Some(Compression::Gzip) => "gzip",
        Some(Compression::Zstd) => "zstd",
        Some(Compression::Xz) => "xz",
        Some(Compression::Lz4) => "lz4",
    }
}

/// A value as a key part: only `[A-Za-z0-9._-]` kept (anything else, including each non-ASCII
/// character, becomes `_`), no leading `.`, at most `max` bytes; missing or empty becomes
/// [`UNKNOWN`].
pub fn sanitize_part(value: Option<&str>, max: usize) -> String {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return UNKNOWN.to_owned();
    };
    let keep = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut part: String = value
        .chars()
        .map(|c| if keep(c) { c } else { '_' })
        .take(max)
        .collect();
    // A leading '.' would make a hidden name, or `.`/`..`.
    if part.starts_with('.') {
        part.replace_range(..1, "_");
    }
    part
}

/// A namespace, pod or signal as it appears in keys (what `find` narrows the listing by).
pub fn key_part(value: &str) -> String {
    sanitize_part(Some(value), MAX_PART_LEN)
}

/// The object's tags (at most [`MAX_TAGS`]): the workload's identity (a pod's namespace, name,
/// UID and container; an ECS task's cluster, family, id and container), then node, comm,
/// signal, crash time, attestation and cluster. Values that are not known are left out rather
/// than tagged `unknown`, so a filter never matches a guess.
pub fn tags(record: &Record) -> Tags {
    let identity = &record.identity;
    let workload: [(&str, Option<String>); 4] = match &identity.workload {
        Workload::Kubernetes(pod) => [
            (tag::NAMESPACE, pod.namespace.clone()),
            (tag::POD, pod.pod.clone()),
            (tag::POD_UID, pod.pod_uid.clone()),
            (tag::CONTAINER, pod.container.clone()),
        ],
        Workload::Ecs(task) => [
            (tag::ECS_CLUSTER, task.cluster.clone()),
            (tag::TASK_FAMILY, task.family.clone()),
            (tag::TASK_ID, Some(task.task_id.clone())),
            (tag::CONTAINER, task.container.clone()),
        ],
        Workload::Host(_) => [
            (tag::NAMESPACE, None),
            (tag::POD, None),
            (tag::POD_UID, None),
            (tag::CONTAINER, None),
        ],
    };
    let known = [
        (tag::NODE, Some(record.node.clone())),
        (tag::COMM, comm(record).map(str::to_owned)),
        (tag::SIGNAL, record.signal().map(|s| s.to_string())),
        (tag::CRASH_TIME, Some(tag_time(record.crash_time()))),
        (tag::ATTESTED, Some(record.attestation.attested.to_string())),
        (tag::CLUSTER, record.cluster.clone()),
    ];
    workload
        .into_iter()
        .chain(known)
        .filter_map(|(name, value)| Some((name.to_owned(), sanitize_tag_value(&value?))))
        .collect()
}

/// A string as an S3 tag value: ASCII letters, digits, space and `+ - = . _ : / @` kept (S3
/// also allows other Unicode letters; ASCII keeps every S3-compatible store happy), each other
/// character replaced by `_`, at most [`MAX_TAG_VALUE_LEN`] characters, and `_` if empty.
///
/// Idempotent: `sanitize_tag_value(&sanitize_tag_value(x)) == sanitize_tag_value(x)`. `find`
/// applies it to the user's filter too, so a value that had to be changed is still findable by
/// the form find produces (`find --comm 'my app*'` matches the tag `my app_`).
pub fn sanitize_tag_value(value: &str) -> String {
    let keep = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, ' ' | '+' | '-' | '=' | '.' | '_' | ':' | '/' | '@')
    };
    let value: String = value
        .chars()
        .map(|c| if keep(c) { c } else { '_' })
        .take(MAX_TAG_VALUE_LEN)
        .collect();
    if value.is_empty() {
        "_".to_owned()
    } else {
        value
    }
}

/// Each metadata key with the most bytes its value may take. The ECS task's fields come last;
/// the command line ([`ELASTIC`]) takes what the others leave, up to its cap, so that the sum,
/// keys included, stays under [`MAX_METADATA_LEN`] whatever the record holds (a test checks
/// it).
const METADATA_FIELDS: [(&str, usize); 19] = [
    ("exe", 256),
    ("cmdline", 512),
    ("host-pid", 10),
    ("tid", 10),
    ("thread-comm", 16),
    ("uid", 10),
    ("gid", 10),
    ("container-id", 64),
    ("image", 256),
    ("cgroup-path", 256),
    ("si-code", 11),
    ("kernel-release", 64),
    ("agent-version", 64),
    ("original-size", 20),
    ("compression", 16),
    ("attestation", 256),
    ("task-arn", 256),
    ("task-revision", 10),
    ("image-digest", 80),
];

/// The field that gives way when the others fill the 2 KiB: the longest, and one the record
/// beside the object has in full.
const ELASTIC: &str = "cmdline";

/// The object's user metadata: facts `info` shows that nobody searches by. `original_size` is
/// the dump's size before the store's compression, `compression` what was applied (see
/// [`compression_name`]). Values are made header-safe ([`header_safe`]) and cut to fit S3's
/// 2 KiB; the record beside the object ([`record_key`]) has them in full. Unknown values are
/// left out.
pub fn metadata(record: &Record, original_size: u64, compression: &str) -> Metadata {
    let crash = record.crash.as_ref();
    let fields = record.dump.as_ref().map(|d| &d.fields);
    let identity = &record.identity;
    let number = |n: Option<u32>| n.map(|n| n.to_string());

    let value = |key: &str| -> Option<String> {
        match key {
            "exe" => record.exe().map(str::to_owned),
            "cmdline" => record
                .cmdline()
                .map(|c| c.to_string())
                .filter(|c| !c.is_empty()),
            "host-pid" => number(crash.map(|c| c.host_pid).or_else(|| fields?.host_pid)),
            "tid" => number(
                crash
                    .map(|c| c.tid.unwrap_or(c.host_tid))
                    .or_else(|| fields.and_then(|f| f.tid.or(f.host_tid))),
            ),
            "thread-comm" => record.comm().map(str::to_owned),
            "uid" => number(crash.map(|c| c.uid).or_else(|| fields?.uid)),
            "gid" => number(crash.map(|c| c.gid).or_else(|| fields?.gid)),
            "container-id" => identity.container_id.clone(),
            "image" => identity.image().map(str::to_owned),
            "cgroup-path" => identity.cgroup_path.clone(),
            "si-code" => crash.and_then(|c| c.si_code).map(|c| c.to_string()),
            "kernel-release" => Some(record.agent.kernel.clone()).filter(|k| !k.is_empty()),
            "agent-version" => Some(record.agent.version.clone()),
            "original-size" => Some(original_size.to_string()),
            "compression" => Some(compression.to_owned()),
            "attestation" => Some(record.attestation.reason.clone()),
            "task-arn" => identity.ecs()?.task_arn.clone(),
            "task-revision" => identity.ecs()?.revision.clone(),
            "image-digest" => identity.ecs()?.image_id.clone(),
            _ => None,
        }
    };
    let mut metadata: Metadata = METADATA_FIELDS
        .iter()
        .filter(|(key, _)| *key != ELASTIC)
        .filter_map(|&(key, max)| Some((key.to_owned(), header_safe(&value(key)?, max))))
        .collect();
    let used: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if let Some(v) = value(ELASTIC) {
        let room = MAX_METADATA_LEN.saturating_sub(1 + used + ELASTIC.len());
        metadata.insert(ELASTIC.to_owned(), header_safe(&v, room.min(cap(ELASTIC))));
    }
    metadata
}

/// The cap of a metadata field.
fn cap(key: &str) -> usize {
    METADATA_FIELDS
        .iter()
        .find_map(|&(k, max)| (k == key).then_some(max))
        .unwrap_or(0)
}

/// A value as S3 user metadata (an HTTP header): printable ASCII kept, anything else becomes
/// `?`, at most `max` bytes.
pub fn header_safe(value: &str, max: usize) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// The name `comm` stands for in keys and tags: the process's (what users know it by), else
/// the crashing thread's.
fn comm(record: &Record) -> Option<&str> {
    record
        .crash
        .as_ref()
        .and_then(|c| c.process_comm.as_deref())
        .or_else(|| record.comm())
}

/// A time humantime can print: before 1970 reads as 1970, after 9999 as the end of 9999 (a
/// dump file's name or mtime can claim any time).
fn printable(t: SystemTime) -> SystemTime {
    let max = SystemTime::UNIX_EPOCH + Duration::from_secs(MAX_SECS);
    t.clamp(SystemTime::UNIX_EPOCH, max)
}

/// `2026-11-26T08:26:27Z`.
fn tag_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(printable(t)).to_string()
}

/// `20261126T082627Z`.
fn key_time(t: SystemTime) -> String {
    tag_time(t)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        crash::{Crash, Hook, Signal},
        identity::{EcsTask, HostUnit, Identity, KubePod, Workload},
        pattern::NameFields,
        record::{AgentInfo, Attestation, DumpFile, ProcessInfo, SCHEMA},
    };

    /// 2026-11-26T08:26:27Z.
    const T: u64 = 1_795_681_587;

    fn crash() -> Crash {
        Crash {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(T),
            boot_ns: 1,
            host_pid: 14232,
            host_tid: 14240,
            pid: Some(7),
            tid: Some(9),
            pidns: Some(4026532000),
            pidns_level: Some(1),
            uid: 1000,
            gid: 1000,
            signal: Signal(11),
            si_code: Some(1),
            cgroup_id: 77,
            comm: "worker-3".into(),
            process_comm: Some("server".into()),
            exe_name: Some("server".into()),
            exe_name_truncated: false,
            cmdline: Some(vec!["/usr/bin/server".into(), "--port=8080".into()]),
            cmdline_truncated: false,
            hook: Hook::TpBtf,
        }
    }

    fn dump() -> DumpFile {
        DumpFile {
            name: "core.14232.14240.11.1795681587.worker-3".into(),
            size: 4096,
            owner_uid: 0,
            dev: 1,
            ino: 2,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(T + 1),
            compression: None,
            fields: NameFields::default(),
            original_size: None,
        }
    }

    /// A pod crash, attested, with a dump.
    fn record() -> Record {
        Record {
            schema: SCHEMA,
            id: "r1".into(),
            node: "node-1".into(),
            cluster: None,
            crash: Some(crash()),
            attestation: Attestation {
                attested: true,
                reason: "joined on host pid 14232".into(),
            },
            dump: Some(dump()),
            process: Some(ProcessInfo {
                exe: Some("/usr/bin/server".into()),
                cmdline: vec!["/usr/bin/server".into(), "--port=8080".into()],
                cgroup: None,
                status: Vec::new(),
            }),
            identity: Identity {
                cgroup_path: Some("/kubepods.slice/x.scope".into()),
                container_id: Some("ab".repeat(32)),
                workload: Workload::Kubernetes(KubePod {
                    pod_uid: Some("0b6a3b9c-1111-2222-3333-444455556666".into()),
                    namespace: Some("prod".into()),
                    pod: Some("web-7d9f".into()),
                    container: Some("app".into()),
                    image: Some("registry.example/web:1.2".into()),
                    ..KubePod::default()
                }),
                ..Identity::default()
            },
            agent: AgentInfo {
                version: "0.1.0".into(),
                kernel: "6.12.0".into(),
            },
            stored: None,
            intake: Default::default(),
            receive_id: None,
            kernel: None,
            report: None,
        }
    }

    fn host(mut r: Record) -> Record {
        r.identity = Identity {
            cgroup_path: Some("/system.slice/sshd.service".into()),
            workload: Workload::Host(HostUnit {
                systemd_unit: Some("sshd.service".into()),
            }),
            ..Identity::default()
        };
        r
    }

    /// The record's pod, to change it.
    fn pod(r: &mut Record) -> &mut KubePod {
        match &mut r.identity.workload {
            Workload::Kubernetes(pod) => pod,
            other => panic!("not a pod: {other:?}"),
        }
    }

    /// A crash in an ECS task (the v2 layout), named by the introspection API.
    fn ecs(mut r: Record) -> Record {
        r.identity = Identity {
            cgroup_path: Some(format!(
                "/ecstasks.slice/ecstasks-{TASK}.slice/docker-{}.scope",
                "ab".repeat(32)
            )),
            container_id: Some("ab".repeat(32)),
            workload: Workload::Ecs(EcsTask {
                task_id: TASK.into(),
                cluster: Some("prod-eu".into()),
                task_arn: Some(format!(
                    "arn:aws:ecs:eu-west-1:012345678910:task/prod-eu/{TASK}"
                )),
                family: Some("checkout-api".into()),
                revision: Some("42".into()),
                container: Some("app".into()),
                image: Some("012345678910.dkr.ecr.eu-west-1.amazonaws.com/checkout:3.1".into()),
                image_id: Some(format!("sha256:{}", "c".repeat(64))),
            }),
            source: Some("ecs-introspection".into()),
            ..Identity::default()
        };
        r
    }

    const TASK: &str = "488fc5b8b77f4fb7984bdc4aba948f9f";

    #[test]
    fn pod_crash_key() {
        assert_eq!(
            object_key("dumps", &record(), Stored::Dump(Some(Compression::Zstd))),
            "dumps/prod/web-7d9f/20261126T082627Z_app_server_7_SIGSEGV.core.zst"
        );
        assert_eq!(
            object_key("a/b/", &record(), Stored::Dump(None)),
            "a/b/prod/web-7d9f/20261126T082627Z_app_server_7_SIGSEGV.core"
        );
    }

    #[test]
    fn empty_prefix_adds_no_segment() {
        let key = object_key("", &record(), Stored::Dump(Some(Compression::Gzip)));
        assert_eq!(
            key,
            "prod/web-7d9f/20261126T082627Z_app_server_7_SIGSEGV.core.gz"
        );
        assert_eq!(record_key(&key), format!("{key}.json"));
    }

    #[test]
    fn host_crash_key() {
        assert_eq!(
            object_key("p", &host(record()), Stored::Dump(None)),
            "p/_host/node-1/20261126T082627Z___server_7_SIGSEGV.core"
        );
    }

    #[test]
    fn unattested_dump_key() {
        let mut r = record();
        r.attestation = Attestation {
            attested: false,
            reason: "no crash event for host pid 14232".into(),
        };
        assert_eq!(
            object_key("p", &r, Stored::Dump(None)),
            "p/_unattested/node-1/20261126T082627Z_app_server_7_SIGSEGV.core"
        );
        // Without a kernel event, the name's fields are all there is.
        r.crash = None;
        r.identity = Identity::default();
        r.dump.as_mut().unwrap().fields = NameFields {
            comm: Some("cat".into()),
            host_pid: Some(300),
            signal: Some(6),
            time: Some(T),
            ..NameFields::default()
        };
        assert_eq!(
            object_key("p", &r, Stored::Dump(Some(Compression::Lz4))),
            "p/_unattested/node-1/20261126T082627Z___cat_300_SIGABRT.core.lz4"
        );
    }

    #[test]
    fn pod_without_a_resolved_name_is_filed_by_uid() {
        let mut r = record();
        pod(&mut r).pod = None;
        pod(&mut r).namespace = None;
        pod(&mut r).pod_uid = Some("2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6f".into());
        assert_eq!(
            object_key("p", &r, Stored::Dump(None)),
            "p/_pod-uid/2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6f/20261126T082627Z___server_7_SIGSEGV.core"
        );
    }

    #[test]
    fn crash_without_dump_key() {
        let mut r = record();
        r.dump = None;
        assert_eq!(
            object_key("p", &r, Stored::RecordOnly),
            "p/prod/web-7d9f/20261126T082627Z_app_server_7_SIGSEGV.crash"
        );
    }

    #[test]
    fn missing_parts_are_unknown() {
        let mut r = record();
        r.crash = None;
        r.dump.as_mut().unwrap().fields = NameFields::default();
        pod(&mut r).container = None;
        pod(&mut r).namespace = Some(String::new());
        // No kernel time, no %t: the file's mtime.
        assert_eq!(
            object_key("", &r, Stored::Dump(None)),
            "unknown/web-7d9f/20261126T082628Z_unknown_unknown_unknown_unknown.core"
        );
    }

    #[test]
    fn hostile_parts_cannot_escape_or_hide() {
        let mut r = record();
        r.crash.as_mut().unwrap().process_comm = Some("my app/../*".into());
        pod(&mut r).namespace = Some("..".into());
        pod(&mut r).pod = Some(format!("p\u{e9}d/{}", "x".repeat(300)));
        pod(&mut r).container = Some(".hidden".into());
        r.node = "\u{1F600}".into();
        let key = object_key("", &r, Stored::Dump(None));
        assert_eq!(
            key,
            format!(
                "_./p_d_{}/20261126T082627Z__hidden_my_app_..___7_SIGSEGV.core",
                "x".repeat(60)
            )
        );
        assert!(super::super::validate_key(&key).is_ok());
        for component in key.split('/') {
            assert!(
                !component.starts_with('.') && component.len() <= 255,
                "{component}"
            );
        }

        let long = host(r);
        assert_eq!(
            object_key("", &long, Stored::Dump(None)),
            "_host/_/20261126T082627Z___my_app_..___7_SIGSEGV.core"
        );
    }

    #[test]
    fn key_times_are_clamped_to_printable() {
        let mut r = record();
        r.crash.as_mut().unwrap().time = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert!(object_key("", &r, Stored::Dump(None)).contains("/19700101T000000Z_"));
        r.crash.as_mut().unwrap().time = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert!(object_key("", &r, Stored::Dump(None)).contains("/99991231T235959Z_"));
        assert_eq!(tags(&r)[tag::CRASH_TIME], "9999-12-31T23:59:59Z");
    }

    #[test]
    fn pod_crash_tags() {
        let mut r = record();
        r.cluster = Some("eu-1".into());
        let want: BTreeMap<String, String> = [
            ("namespace", "prod"),
            ("pod", "web-7d9f"),
            ("pod-uid", "0b6a3b9c-1111-2222-3333-444455556666"),
            ("container", "app"),
            ("node", "node-1"),
            ("comm", "server"),
            ("signal", "SIGSEGV"),
            ("crash-time", "2026-11-26T08:26:27Z"),
            ("attested", "true"),
            ("cluster", "eu-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(tags(&r), want);
    }

    #[test]
    fn host_crash_has_no_pod_tags() {
        let t = tags(&host(record()));
        for pod_tag in [tag::NAMESPACE, tag::POD, tag::POD_UID, tag::CONTAINER] {
            assert!(!t.contains_key(pod_tag), "{pod_tag}: {t:?}");
        }
        assert_eq!(t[tag::NODE], "node-1");
        assert_eq!(t[tag::ATTESTED], "true");
    }

    #[test]
    fn tag_count_never_exceeds_ten() {
        let mut variants = vec![record(), host(record()), ecs(record())];
        let mut ecs_full = ecs(record());
        ecs_full.cluster = Some("c".into());
        variants.push(ecs_full);
        let mut full = record();
        full.cluster = Some("c".into());
        pod(&mut full).labels = (0..50).map(|i| (format!("l{i}"), "v".into())).collect();
        variants.push(full.clone());
        let mut unattested = full.clone();
        unattested.attestation.attested = false;
        variants.push(unattested);
        let mut bare = full;
        bare.crash = None;
        bare.dump = None;
        variants.push(bare);
        for r in &variants {
            let t = tags(r);
            assert!(t.len() <= MAX_TAGS, "{t:?}");
            for (k, v) in &t {
                assert!(k.len() <= 128 && v.chars().count() <= MAX_TAG_VALUE_LEN);
                assert_eq!(&sanitize_tag_value(v), v);
            }
        }
    }

    #[test]
    fn tag_values_are_sanitized() {
        assert_eq!(sanitize_tag_value("my app*"), "my app_");
        assert_eq!(
            sanitize_tag_value("a+b-c=d.e_f:g/h@i J"),
            "a+b-c=d.e_f:g/h@i J"
        );
        assert_eq!(sanitize_tag_value("caf\u{e9}\n\"x\""), "caf___x_");
        assert_eq!(sanitize_tag_value(""), "_");
        assert_eq!(sanitize_tag_value(&"\u{e9}".repeat(300)), "_".repeat(256));
    }

    #[test]
    fn tag_sanitizer_is_idempotent() {
        // Deterministic pseudo-random strings over an alphabet with every kind of character.
        let alphabet: Vec<char> = "aZ09 +-=._:/@*?\\\"'\n\t\0\u{e9}\u{1F600}%#&~,;!()[]{}<>|"
            .chars()
            .collect();
        let mut rng = crate::testdata::Xorshift::new(crate::testdata::Xorshift::SEED);
        for _ in 0..5000 {
            let len = rng.below(300);
            let s: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let once = sanitize_tag_value(&s);
            assert_eq!(sanitize_tag_value(&once), once, "{s:?}");
            assert!(!once.is_empty() && once.chars().count() <= MAX_TAG_VALUE_LEN);
            let part = sanitize_part(Some(&s), MAX_PART_LEN);
            assert_eq!(sanitize_part(Some(&part), MAX_PART_LEN), part, "{s:?}");
        }
    }

    #[test]
    fn pod_crash_metadata() {
        let m = metadata(&record(), 1 << 30, "zstd");
        let get = |k: &str| m.get(k).map(String::as_str);
        assert_eq!(get("exe"), Some("/usr/bin/server"));
        assert_eq!(get("cmdline"), Some("/usr/bin/server --port=8080"));
        assert_eq!(get("host-pid"), Some("14232"));
        assert_eq!(get("tid"), Some("9"));
        assert_eq!(get("thread-comm"), Some("worker-3"));
        assert_eq!((get("uid"), get("gid")), (Some("1000"), Some("1000")));
        assert_eq!(get("container-id").map(str::len), Some(64));
        assert_eq!(get("image"), Some("registry.example/web:1.2"));
        assert_eq!(get("cgroup-path"), Some("/kubepods.slice/x.scope"));
        assert_eq!(get("si-code"), Some("1"));
        assert_eq!(get("kernel-release"), Some("6.12.0"));
        assert_eq!(get("agent-version"), Some("0.1.0"));
        assert_eq!(get("original-size"), Some("1073741824"));
        assert_eq!(get("compression"), Some("zstd"));
        assert_eq!(get("attestation"), Some("joined on host pid 14232"));
        // Everything but the ECS task's fields.
        assert_eq!(m.len(), METADATA_FIELDS.len() - ECS_METADATA.len());
    }

    /// Metadata only ECS tasks have.
    const ECS_METADATA: [&str; 3] = ["task-arn", "task-revision", "image-digest"];

    #[test]
    fn ecs_task_crash_key_tags_and_metadata() {
        let mut r = ecs(record());
        r.cluster = Some("eu-1".into());
        assert_eq!(
            object_key("dumps", &r, Stored::Dump(Some(Compression::Zstd))),
            "dumps/_ecs/prod-eu/checkout-api/20261126T082627Z_app_server_7_SIGSEGV.core.zst"
        );
        let want: BTreeMap<String, String> = [
            ("ecs-cluster", "prod-eu"),
            ("task-family", "checkout-api"),
            ("task-id", TASK),
            ("container", "app"),
            ("node", "node-1"),
            ("comm", "server"),
            ("signal", "SIGSEGV"),
            ("crash-time", "2026-11-26T08:26:27Z"),
            ("attested", "true"),
            ("cluster", "eu-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(tags(&r), want);
        let m = metadata(&r, 1, "zstd");
        assert_eq!(
            m["task-arn"],
            format!("arn:aws:ecs:eu-west-1:012345678910:task/prod-eu/{TASK}")
        );
        assert_eq!(m["task-revision"], "42");
        assert_eq!(m["image-digest"], format!("sha256:{}", "c".repeat(64)));
        assert_eq!(
            m["image"],
            "012345678910.dkr.ecr.eu-west-1.amazonaws.com/checkout:3.1"
        );
        assert_eq!(m.len(), METADATA_FIELDS.len());

        // Named from the cgroup alone (the introspection API did not answer): filed by task id.
        let Workload::Ecs(task) = &mut r.identity.workload else {
            unreachable!()
        };
        *task = EcsTask {
            task_id: TASK.into(),
            ..EcsTask::default()
        };
        assert_eq!(
            object_key("", &r, Stored::RecordOnly),
            format!("_ecs-task/{TASK}/20261126T082627Z___server_7_SIGSEGV.crash")
        );
        let t = tags(&r);
        assert_eq!(t[tag::TASK_ID], TASK);
        for absent in [
            tag::ECS_CLUSTER,
            tag::TASK_FAMILY,
            tag::CONTAINER,
            tag::NAMESPACE,
        ] {
            assert!(!t.contains_key(absent), "{absent}: {t:?}");
        }
        // A family without a cluster (an old ARN, no agent metadata): the cluster is unknown.
        let Workload::Ecs(task) = &mut r.identity.workload else {
            unreachable!()
        };
        task.family = Some("../batch".into());
        assert_eq!(
            object_key("", &r, Stored::Dump(None)),
            "_ecs/unknown/_._batch/20261126T082627Z_unknown_server_7_SIGSEGV.core"
        );
    }

    #[test]
    fn metadata_is_header_safe_and_under_two_kib() {
        let huge = format!("\u{e9}\r\n{}", "v".repeat(10_000));
        let mut r = record();
        r.process = Some(ProcessInfo {
            exe: Some(huge.clone()),
            cmdline: vec![huge.clone(); 20],
            ..ProcessInfo::default()
        });
        r.identity.container_id = Some(huge.clone());
        pod(&mut r).image = Some(huge.clone());
        r.identity.cgroup_path = Some(huge.clone());
        r.agent = AgentInfo {
            version: huge.clone(),
            kernel: huge.clone(),
        };
        r.attestation.reason = huge.clone();
        r.crash.as_mut().unwrap().comm = huge.clone();
        r.crash.as_mut().unwrap().si_code = Some(i32::MIN);
        r.crash.as_mut().unwrap().exe_name = Some(huge.clone());
        r.crash.as_mut().unwrap().cmdline = Some(vec![huge.clone(); 20]);
        let m = metadata(&r, u64::MAX, &huge);
        assert_eq!(m.len(), METADATA_FIELDS.len() - ECS_METADATA.len());
        let total: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(total < MAX_METADATA_LEN, "{total} bytes");
        for v in m.values() {
            assert!(
                v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
                "{v:?}"
            );
        }
        assert!(m["cmdline"].starts_with("???vvv"));
        assert_eq!(m["cmdline"].len(), 512);
        assert_eq!(m["attestation"].len(), 256);
        assert_eq!(m["si-code"], "-2147483648");
        assert_eq!(m["original-size"], u64::MAX.to_string());

        // An ECS task's crash with every field at its cap: the command line gives way.
        let mut e = ecs(r.clone());
        let Workload::Ecs(task) = &mut e.identity.workload else {
            unreachable!()
        };
        task.task_arn = Some(huge.clone());
        task.revision = Some(huge.clone());
        task.image_id = Some(huge.clone());
        task.image = Some(huge.clone());
        e.identity.cgroup_path = Some(huge.clone());
        e.identity.container_id = Some(huge.clone());
        let m = metadata(&e, u64::MAX, &huge);
        assert_eq!(m.len(), METADATA_FIELDS.len());
        let total: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(total < MAX_METADATA_LEN, "{total} bytes");
        assert_eq!(
            total,
            MAX_METADATA_LEN - 1,
            "the command line takes what is left"
        );
        assert!(m["cmdline"].starts_with("???vvv"));

        // The bound holds for the caps themselves, whatever a record holds, and still leaves
        // the command line a useful start.
        let others: usize = METADATA_FIELDS
            .iter()
            .filter(|(k, _)| *k != ELASTIC)
            .map(|(k, max)| k.len() + max)
            .sum();
        let least = MAX_METADATA_LEN - 1 - others - ELASTIC.len();
        assert!(
            least >= 128,
            "the command line keeps at least {least} bytes"
        );
    }

    #[test]
    fn exe_and_cmdline_metadata_prefer_what_the_kernel_saw() {
        let exe_and_cmdline = |r: &Record| {
            let m = metadata(r, 1, "none");
            (m.get("exe").cloned(), m.get("cmdline").cloned())
        };
        let proc_path = |exe: &str| {
            Some(ProcessInfo {
                exe: Some(exe.into()),
                cmdline: vec![exe.into(), "--other".into()],
                ..ProcessInfo::default()
            })
        };
        let kernel = (
            Some("server".to_owned()),
            Some("/usr/bin/server --port=8080".to_owned()),
        );

        // /proc gone: the kernel's name and command line.
        let mut r = record();
        r.process = None;
        assert_eq!(exe_and_cmdline(&r), kernel);
        // /proc names the same file: its full path is kept; the command line stays the
        // kernel's, read at the signal.
        r.process = proc_path("/usr/bin/server");
        assert_eq!(
            exe_and_cmdline(&r),
            (Some("/usr/bin/server".into()), kernel.1.clone())
        );
        r.process = proc_path("/usr/bin/server (deleted)");
        assert_eq!(
            exe_and_cmdline(&r).0.as_deref(),
            Some("/usr/bin/server (deleted)")
        );
        // /proc names another file (the pid was reused): not believed.
        r.process = proc_path("/usr/sbin/sshd");
        assert_eq!(exe_and_cmdline(&r), kernel);

        // A cut command line: /proc's when it continues it, else the cut one, marked.
        let c = r.crash.as_mut().unwrap();
        c.cmdline = Some(vec!["/usr/bin/server".into(), "--po".into()]);
        c.cmdline_truncated = true;
        assert_eq!(
            exe_and_cmdline(&r).1.as_deref(),
            Some("/usr/bin/server --po ..."),
            "/proc's is another process's"
        );
        r.process.as_mut().unwrap().cmdline =
            vec!["/usr/bin/server".into(), "--port=8080".into(), "-v".into()];
        assert_eq!(
            exe_and_cmdline(&r).1.as_deref(),
            Some("/usr/bin/server --port=8080 -v")
        );
        // A cut exe name: /proc's path if its name starts so.
        let c = r.crash.as_mut().unwrap();
        c.exe_name = Some("ser".into());
        c.exe_name_truncated = true;
        r.process.as_mut().unwrap().exe = Some("/opt/server".into());
        assert_eq!(exe_and_cmdline(&r).0.as_deref(), Some("/opt/server"));

        // An older record, or a kernel without the offsets: /proc's, as before.
        let mut r = record();
        let c = r.crash.as_mut().unwrap();
        (c.exe_name, c.cmdline) = (None, None);
        r.process = proc_path("/bin/web");
        assert_eq!(
            exe_and_cmdline(&r),
            (Some("/bin/web".into()), Some("/bin/web --other".into()))
        );
    }

    #[test]
    fn metadata_leaves_out_what_is_unknown() {
        let mut r = host(record());
        r.crash = None;
        r.process = None;
        r.dump.as_mut().unwrap().fields = NameFields::default();
        let m = metadata(&r, 10, compression_name(None));
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "agent-version",
                "attestation",
                "cgroup-path",
                "compression",
                "kernel-release",
                "original-size"
            ]
        );
        assert_eq!(m["compression"], "none");
    }

    #[test]
    fn compression_names_match_the_serde_names() {
        for c in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Xz,
            Compression::Lz4,
        ] {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                compression_name(Some(c)),
                "{c:?}"
            );
        }
    }
}
