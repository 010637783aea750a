//! lookup: finds stored dumps by their tags (`coredump-agent find`), a coredumpctl for the
//! cluster.
//!
//! S3 has no query by tag, so a search narrows by key prefix first (`<prefix>/<namespace>/
//! <pod>/`, `<prefix>/_ecs/<cluster>/<task-family>/`), then by what the key itself says (crash
//! time, signal), and only then confirms the
//! remaining filters with one tag read per candidate, many in flight at once. A search for one
//! pod therefore costs requests in proportion to that pod's dumps, not to the bucket.
//!
//! What crashed (build-ids, the crash signature) does not fit in the tags (S3 allows ten, all
//! taken), so filtering or grouping by it reads the record beside each dump still left after
//! the prefix, the key and the tags: one more request per such dump, never per bucket.

use std::time::SystemTime;

use futures::StreamExt as _;
use serde::Serialize;

use crate::{
    crash::Signal,
    store::{
        ObjectInfo, Store, StoreError, Tags,
        layout::{self, tag},
    },
};

/// Tag reads in flight at once.
pub const TAG_CONCURRENCY: usize = 32;

/// What to look for. Every filter is an exact match on a tag; `None` matches anything.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Pod UID.
    pub pod_uid: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// Node name.
    pub node: Option<String>,
    /// Process name.
    pub comm: Option<String>,
    /// Signal.
    pub signal: Option<Signal>,
    /// Cluster name.
    pub cluster: Option<String>,
    /// Amazon ECS cluster.
    pub ecs_cluster: Option<String>,
    /// ECS task definition family.
    pub task_family: Option<String>,
    /// ECS task id.
    pub task_id: Option<String>,
    /// Any other tag, `key=value`.
    pub tags: Vec<(String, String)>,
    /// Crashes at or after.
    pub since: Option<SystemTime>,
    /// Crashes at or before.
    pub until: Option<SystemTime>,
    /// At most this many results (newest first).
    pub limit: Option<usize>,
    /// Build-id, or its first hex digits, of the executable or any module the process had
    /// mapped (read from the records).
    pub build_id: Option<String>,
    /// Crash signature, or its first hex digits (read from the records).
    pub signature: Option<String>,
    /// Read every hit's record (for its report), even without a filter on it.
    pub read_records: bool,
}

/// What kind of object a hit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A core dump (`.core`, maybe compressed).
    Dump,
    /// The record of a crash that left no stored dump (`.crash.json`).
    Crash,
}

/// One matching object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// Object key.
    pub key: String,
    /// Size in bytes as stored.
    pub size: u64,
    /// When it was stored.
    #[serde(with = "crate::crash::rfc3339")]
    pub last_modified: SystemTime,
    /// Dump or crash record.
    pub kind: Kind,
    /// Crash time, from the key.
    #[serde(with = "crate::crash::rfc3339")]
    pub crash_time: SystemTime,
    /// Every tag of the object.
    pub tags: Tags,
    /// What crashed, from the record, when the search read it (`None`: not read, or no
    /// report there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<HitReport>,
}

/// What a hit's record says crashed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HitReport {
    /// The crash signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// `SIGSEGV in f ← g ← main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The executable's build-id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Every module's build-id (the executable's included), for `--build-id`.
    #[serde(skip)]
    pub build_ids: Vec<String>,
}

/// The part of a record a search reads (the rest is skipped unparsed into types).
#[derive(serde::Deserialize)]
struct RecordView {
    #[serde(default)]
    report: Option<ReportView>,
}

#[derive(serde::Deserialize)]
struct ReportView {
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    modules: Vec<ModuleView>,
}

#[derive(serde::Deserialize)]
struct ModuleView {
    #[serde(default)]
    build_id: Option<String>,
    #[serde(default)]
    main: bool,
}

impl From<ReportView> for HitReport {
    fn from(r: ReportView) -> Self {
        let build_id = r
            .modules
            .iter()
            .find(|m| m.main)
            .and_then(|m| m.build_id.clone());
        Self {
            signature: r.signature,
            summary: r.summary,
            build_id,
            build_ids: r.modules.into_iter().filter_map(|m| m.build_id).collect(),
        }
    }
}

/// Most bytes of a record read (the same bound as `info`).
pub const MAX_RECORD: u64 = 1 << 20;

/// The report in the record of `hit`: `Ok(None)` when there is no record or no report.
async fn hit_report<S: Store>(store: &S, hit: &Hit) -> Result<Option<HitReport>, String> {
    use tokio::io::AsyncReadExt as _;
    let key = match hit.kind {
        Kind::Dump => layout::record_key(&hit.key),
        Kind::Crash => hit.key.clone(),
    };
    let reader = match store.open(&key).await {
        Ok(r) => r,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(format!("reading {key}: {e:#}")),
    };
    let mut buf = Vec::new();
    reader
        .take(MAX_RECORD + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    if buf.len() as u64 > MAX_RECORD {
        return Err(format!("{key} is larger than a record can be"));
    }
    let view: RecordView =
        serde_json::from_slice(&buf).map_err(|e| format!("{key} is not a record: {e}"))?;
    Ok(view.report.map(HitReport::from))
}

/// Whether `id` starts with the hex digits `prefix` (any case).
fn hex_prefix(id: &str, prefix: &str) -> bool {
    id.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The result of a search.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Matches, newest crash first.
    pub hits: Vec<Hit>,
    /// Objects whose tags could not be read: reported, never silently dropped.
    pub unreadable: Vec<(String, String)>,
    /// Dumps whose record could not be read (when the search reads records): reported too.
    pub unreadable_records: Vec<(String, String)>,
    /// Objects listed.
    pub listed: usize,
    /// Tag reads made.
    pub tag_reads: usize,
    /// Records read (for `build_id`, `signature`, `read_records`).
    pub record_reads: usize,
}

/// The parts of a key's file name: `<time>_<container>_<comm>_<pid>_<signal>.<kind>…`.
struct KeyName<'a> {
    time: Option<SystemTime>,
    signal: &'a str,
    kind: Kind,
}

/// Reads a key made by [`layout::object_key`]; `None` for anything else (records beside
/// dumps, foreign objects).
fn parse_key(key: &str) -> Option<KeyName<'_>> {
    let name = key.rsplit('/').next()?;
    let kind = if name.ends_with(".crash.json") {
        Kind::Crash
    } else if name.ends_with(".json") {
        return None;
    } else if name.contains(".core") {
        Kind::Dump
    } else {
        return None;
    };
    let stem = name.split('.').next()?;
    let signal = stem.rsplit('_').next()?;
    let t = stem.split('_').next()?;
    // Keys are a bucket's, so anyone's: slice only what is plain ASCII of the right length.
    let time = (t.len() == 16 && t.is_ascii()).then(|| {
        let rfc = format!(
            "{}-{}-{}T{}:{}:{}Z",
            &t[0..4],
            &t[4..6],
            &t[6..8],
            &t[9..11],
            &t[11..13],
            &t[13..15]
        );
        humantime::parse_rfc3339(&rfc).ok()
    });
    Some(KeyName {
        time: time.flatten(),
        signal,
        kind,
    })
}

impl Query {
    /// The narrowest key prefix that can hold every match.
    pub fn key_prefix(&self, prefix: &str) -> String {
        let mut p = prefix.trim_matches('/').to_owned();
        let mut push = |part: &str| {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(part);
        };
        if let Some(ns) = &self.namespace {
            push(&layout::key_part(ns));
            if let Some(pod) = &self.pod {
                push(&layout::key_part(pod));
            }
            p.push('/');
        } else if self.ecs_cluster.is_some() || self.task_family.is_some() {
            // Only tasks whose family is known are stored there, and only they can match.
            push(layout::ECS_SEGMENT);
            if let Some(cluster) = &self.ecs_cluster {
                push(&layout::key_part(cluster));
                if let Some(family) = &self.task_family {
                    push(&layout::key_part(family));
                }
            }
            p.push('/');
        } else if !p.is_empty() {
            p.push('/');
        }
        p
    }

    /// Tag filters in the sanitized form values are stored in (so a value that had to be
    /// changed on the way in is found by its original spelling too).
    fn tag_filters(&self) -> Vec<(String, String)> {
        let named = [
            (tag::NAMESPACE, &self.namespace),
            (tag::POD, &self.pod),
            (tag::POD_UID, &self.pod_uid),
            (tag::CONTAINER, &self.container),
            (tag::NODE, &self.node),
            (tag::COMM, &self.comm),
            (tag::CLUSTER, &self.cluster),
            (tag::ECS_CLUSTER, &self.ecs_cluster),
            (tag::TASK_FAMILY, &self.task_family),
            (tag::TASK_ID, &self.task_id),
        ];
        named
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v.clone()?)))
            .chain(self.signal.map(|s| (tag::SIGNAL.to_owned(), s.to_string())))
            .chain(self.tags.iter().cloned())
            .map(|(k, v)| (k, layout::sanitize_tag_value(&v)))
            .collect()
    }

    /// Whether the search reads the records of the hits.
    pub fn reads_records(&self) -> bool {
        self.read_records || self.build_id.is_some() || self.signature.is_some()
    }

    /// Whether a hit's report passes `build_id` and `signature`.
    fn report_admits(&self, report: Option<&HitReport>) -> bool {
        let build_id = self.build_id.as_deref().is_none_or(|want| {
            report.is_some_and(|r| r.build_ids.iter().any(|id| hex_prefix(id, want)))
        });
        let signature = self.signature.as_deref().is_none_or(|want| {
            report
                .and_then(|r| r.signature.as_deref())
                .is_some_and(|sig| hex_prefix(sig, want))
        });
        build_id && signature
    }

    /// Whether what the key says already rules the object out (no request needed).
    fn key_admits(&self, name: &KeyName<'_>) -> bool {
        let in_window = name
            .time
            .is_none_or(|t| self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u));
        let signal = self
            .signal
            .is_none_or(|s| name.signal == layout::key_part(&s.to_string()));
        in_window && signal
    }
}

/// Runs a search.
pub async fn find<S: Store>(store: &S, prefix: &str, q: &Query) -> Result<Outcome, StoreError> {
    let objects = store.list(&q.key_prefix(prefix)).await?;
    let listed = objects.len();
    let candidates: Vec<(ObjectInfo, Kind, SystemTime)> = objects
        .into_iter()
        .filter_map(|o| {
            let name = parse_key(&o.key)?;
            let (kind, time) = (name.kind, name.time.unwrap_or(o.last_modified));
            let admitted = q.key_admits(&name);
            admitted.then_some((o, kind, time))
        })
        .collect();
    let filters = q.tag_filters();
    let tag_reads = candidates.len();
    let results: Vec<_> = futures::stream::iter(candidates)
        .map(|(o, kind, time)| async move {
            let tags = store.tags(&o.key).await;
            (o, kind, time, tags)
        })
        .buffer_unordered(TAG_CONCURRENCY)
        .collect()
        .await;
    let mut outcome = Outcome {
        listed,
        tag_reads,
        ..Outcome::default()
    };
    for (o, kind, crash_time, tags) in results {
        match tags {
            Ok(tags) => {
                if filters.iter().all(|(k, v)| tags.get(k) == Some(v)) {
                    outcome.hits.push(Hit {
                        key: o.key,
                        size: o.size,
                        last_modified: o.last_modified,
                        kind,
                        crash_time,
                        tags,
                        report: None,
                    });
                }
            }
            Err(e) => outcome.unreadable.push((o.key, format!("{e:#}"))),
        }
    }
    if q.reads_records() {
        let hits = std::mem::take(&mut outcome.hits);
        outcome.record_reads = hits.len();
        let read: Vec<_> = futures::stream::iter(hits)
            .map(|hit| async move {
                let report = hit_report(store, &hit).await;
                (hit, report)
            })
            .buffer_unordered(TAG_CONCURRENCY)
            .collect()
            .await;
        for (mut hit, report) in read {
            match report {
                Ok(report) => {
                    if q.report_admits(report.as_ref()) {
                        hit.report = report;
                        outcome.hits.push(hit);
                    }
                }
                Err(e) => outcome.unreadable_records.push((hit.key, e)),
            }
        }
    }
    outcome
        .hits
        .sort_by(|a, b| b.crash_time.cmp(&a.crash_time).then(a.key.cmp(&b.key)));
    if let Some(limit) = q.limit {
        outcome.hits.truncate(limit);
    }
    Ok(outcome)
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-26T08:00:00Z`, or a date `2026-11-26`) or
/// an age like `2h`, `3d`, `30min` (that long before now).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    if s.len() == 10
        && let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s}T00:00:00Z"))
    {
        return Ok(t);
    }
    humantime::parse_duration(s)
        .map(|d| SystemTime::now() - d)
        .map_err(|_| format!("`{s}` is neither a time (2026-11-26T08:00:00Z) nor an age (2h, 3d)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_back() {
        let k = parse_key("p/ns/pod/20261126T082627Z_app_my_server_7_SIGSEGV.core.zst").unwrap();
        assert_eq!(k.signal, "SIGSEGV");
        assert_eq!(k.kind, Kind::Dump);
        assert_eq!(
            k.time,
            humantime::parse_rfc3339("2026-11-26T08:26:27Z").ok()
        );
        let c = parse_key("_host/n/20261126T082627Z___cat_9_SIGABRT.crash.json").unwrap();
        assert_eq!((c.kind, c.signal), (Kind::Crash, "SIGABRT"));
        assert!(parse_key("p/ns/pod/20261126T082627Z_app_x_7_SIGSEGV.core.zst.json").is_none());
        assert!(parse_key("random/object.txt").is_none());
    }

    #[test]
    fn reports_are_matched_by_hex_prefixes() {
        let report = HitReport {
            signature: Some("3f2a9c01d2e4f5a6".into()),
            build_ids: vec!["abcdef0123".into(), "5555aaaa".into()],
            ..HitReport::default()
        };
        let q = |build_id: Option<&str>, signature: Option<&str>| Query {
            build_id: build_id.map(str::to_owned),
            signature: signature.map(str::to_owned),
            ..Query::default()
        };
        assert!(q(None, None).report_admits(None));
        assert!(!q(None, None).reads_records());
        assert!(q(Some("abcd"), None).reads_records());
        assert!(q(Some("abcd"), None).report_admits(Some(&report)));
        assert!(q(Some("5555AAAA"), Some("3f2a")).report_admits(Some(&report)));
        assert!(!q(Some("bcde"), None).report_admits(Some(&report)));
        assert!(!q(None, Some("3f2b")).report_admits(Some(&report)));
        assert!(!q(None, Some("3f2a")).report_admits(None));
        // Longer than the id, or not ASCII there: no match, no panic.
        assert!(!hex_prefix("ab", "abcd"));
        assert!(!hex_prefix("é1234", "e123"));
    }

    #[test]
    fn prefix_narrows_by_namespace_and_pod() {
        let q = Query {
            namespace: Some("prod".into()),
            pod: Some("web-1".into()),
            ..Query::default()
        };
        assert_eq!(q.key_prefix("dumps/"), "dumps/prod/web-1/");
        assert_eq!(q.key_prefix(""), "prod/web-1/");
        let q = Query {
            pod: Some("web-1".into()),
            ..Query::default()
        };
        assert_eq!(
            q.key_prefix("dumps"),
            "dumps/",
            "no namespace: cannot narrow"
        );
        assert_eq!(Query::default().key_prefix(""), "");
    }

    #[test]
    fn prefix_narrows_by_ecs_cluster_and_family() {
        let q = Query {
            ecs_cluster: Some("prod eu".into()),
            task_family: Some("web".into()),
            ..Query::default()
        };
        assert_eq!(q.key_prefix("dumps"), "dumps/_ecs/prod_eu/web/");
        let q = Query {
            ecs_cluster: Some("prod".into()),
            ..Query::default()
        };
        assert_eq!(q.key_prefix(""), "_ecs/prod/");
        // A family in any cluster: every named task, none of the pods.
        let q = Query {
            task_family: Some("web".into()),
            ..Query::default()
        };
        assert_eq!(q.key_prefix("dumps"), "dumps/_ecs/");
        // A task id alone: its task may be filed by id (_ecs-task/) or by family.
        let q = Query {
            task_id: Some("488fc5b8b77f4fb7984bdc4aba948f9f".into()),
            ..Query::default()
        };
        assert_eq!(q.key_prefix("dumps"), "dumps/");
        let filters = q.tag_filters();
        assert_eq!(
            filters,
            [(
                "task-id".to_owned(),
                "488fc5b8b77f4fb7984bdc4aba948f9f".to_owned()
            )]
        );
    }

    #[test]
    fn times_parse_absolute_and_relative() {
        assert_eq!(
            parse_time("2026-11-26T08:00:00Z").unwrap(),
            humantime::parse_rfc3339("2026-11-26T08:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("2026-11-26").unwrap(),
            humantime::parse_rfc3339("2026-11-26T00:00:00Z").unwrap()
        );
        let two_h = parse_time("2h").unwrap();
        let age = SystemTime::now().duration_since(two_h).unwrap();
        assert!(age.as_secs().abs_diff(7200) < 5);
        assert!(parse_time("yesterday-ish").is_err());
    }
}
