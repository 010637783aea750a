//! lookup: finds stored dumps by their tags (`coredump-agent find`), a coredumpctl for the
//! cluster.
//!
//! S3 has no query by tag, so a search narrows by key prefix first (`<prefix>/<namespace>/
//! <pod>/`, `<prefix>/_ecs/<cluster>/<task-family>/`), then by what the key itself says (crash
//! time, signal), and only then confirms the
//! remaining filters with one tag read per candidate, many in flight at once. A search for one
//! pod therefore costs requests in proportion to that pod's dumps, not to the bucket.

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
}

/// The result of a search.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Matches, newest crash first.
    pub hits: Vec<Hit>,
    /// Objects whose tags could not be read: reported, never silently dropped.
    pub unreadable: Vec<(String, String)>,
    /// Objects listed.
    pub listed: usize,
    /// Tag reads made.
    pub tag_reads: usize,
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
                    });
                }
            }
            Err(e) => outcome.unreadable.push((o.key, format!("{e:#}"))),
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
