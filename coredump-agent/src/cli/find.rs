//! `coredump-agent find`: list the dumps of a pod or an ECS task (or any tag filter, build-id
//! or crash signature), newest first; or each distinct crash once (`--group-by signature`).

use std::{collections::BTreeSet, io::Write as _, process::ExitCode, time::SystemTime};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    EXIT_ERROR, EXIT_NOT_FOUND,
    args::{FindArgs, GroupBy},
    printable,
};
use crate::{
    lookup::{self, Hit, Kind, Query},
    store::{Store as _, layout::tag},
};

/// One distinct crash: the hits that share a signature.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct Group {
    /// The signature (`None`: dumps whose record has no report, or no signature).
    signature: Option<String>,
    /// How many crashes.
    count: usize,
    /// The first crash.
    #[serde(with = "crate::crash::rfc3339")]
    first: SystemTime,
    /// The latest crash.
    #[serde(with = "crate::crash::rfc3339")]
    last: SystemTime,
    /// `namespace/pod` of each pod it crashed in, sorted.
    pods: BTreeSet<String>,
    /// What crashed, from the latest report.
    summary: Option<String>,
    /// The latest crash's key (for `info` and `debug`).
    latest_key: String,
}

/// `namespace/pod` from a hit's tags.
fn pod_of(hit: &Hit) -> Option<String> {
    match (hit.tags.get(tag::NAMESPACE), hit.tags.get(tag::POD)) {
        (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
        _ => None,
    }
}

/// The hits (newest first) grouped by signature, the group with the latest crash first.
fn group_by_signature(hits: &[Hit]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for hit in hits {
        let report = hit.report.as_ref();
        let signature = report.and_then(|r| r.signature.clone());
        let pod = pod_of(hit);
        match groups.iter_mut().find(|g| g.signature == signature) {
            Some(g) => {
                g.count += 1;
                g.first = g.first.min(hit.crash_time);
                g.pods.extend(pod);
            }
            None => groups.push(Group {
                signature,
                count: 1,
                first: hit.crash_time,
                last: hit.crash_time,
                pods: pod.into_iter().collect(),
                summary: report.and_then(|r| r.summary.clone()),
                latest_key: hit.key.clone(),
            }),
        }
    }
    groups
}

/// Prints rows as an aligned table; the last column is not padded.
fn aligned(out: &mut impl std::io::Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i + 1 == columns {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        writeln!(out, "{}", line.join("  "))?;
    }
    Ok(())
}

/// Prints groups as a table.
fn group_table(out: &mut impl std::io::Write, groups: &[Group]) -> std::io::Result<()> {
    const SHOWN_PODS: usize = 3;
    let header = ["SIGNATURE", "COUNT", "FIRST", "LAST", "PODS", "CRASHED"].map(String::from);
    let rows: Vec<Vec<String>> = std::iter::once(header.to_vec())
        .chain(groups.iter().map(|g| {
            let mut pods: Vec<String> = g.pods.iter().take(SHOWN_PODS).cloned().collect();
            if g.pods.len() > SHOWN_PODS {
                pods.push(format!("+{} more", g.pods.len() - SHOWN_PODS));
            }
            vec![
                g.signature.clone().unwrap_or_else(|| "-".into()),
                g.count.to_string(),
                humantime::format_rfc3339_seconds(g.first).to_string(),
                humantime::format_rfc3339_seconds(g.last).to_string(),
                if pods.is_empty() {
                    "-".into()
                } else {
                    pods.join(",")
                },
                g.summary.clone().unwrap_or_else(|| "(no report)".into()),
            ]
            .into_iter()
            .map(|cell| printable(&cell).into_owned())
            .collect()
        }))
        .collect();
    aligned(out, &rows)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn row(hit: &Hit) -> [String; 8] {
    let t = |k: &str| hit.tags.get(k).cloned().unwrap_or_else(|| "-".into());
    let pair = |a: &str, b: &str| Some(format!("{}/{}", hit.tags.get(a)?, hit.tags.get(b)?));
    // A pod's namespace/name, else an ECS task's cluster/family, else its id.
    let workload = pair(tag::NAMESPACE, tag::POD)
        .or_else(|| pair(tag::ECS_CLUSTER, tag::TASK_FAMILY))
        .or_else(|| hit.tags.get(tag::TASK_ID).map(|id| format!("task {id}")))
        .unwrap_or_else(|| "-".into());
    let size = match hit.kind {
        Kind::Dump => human_size(hit.size),
        Kind::Crash => "no dump".into(),
    };
    [
        humantime::format_rfc3339_seconds(hit.crash_time).to_string(),
        workload,
        t(tag::CONTAINER),
        t(tag::NODE),
        t(tag::COMM),
        t(tag::SIGNAL),
        size,
        hit.key.clone(),
    ]
}

/// Prints rows as an aligned table.
fn table(out: &mut impl std::io::Write, hits: &[Hit]) -> std::io::Result<()> {
    let header = [
        "TIME",
        "WORKLOAD",
        "CONTAINER",
        "NODE",
        "COMM",
        "SIGNAL",
        "SIZE",
        "KEY",
    ]
    .map(String::from);
    let rows: Vec<Vec<String>> = std::iter::once(header)
        .chain(hits.iter().map(row))
        .map(Vec::from)
        .collect();
    aligned(out, &rows)
}

/// Runs the search and prints it.
pub async fn execute(args: FindArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open(None).await?;
    let query = Query {
        namespace: args.namespace,
        pod: args.pod,
        pod_uid: args.pod_uid,
        ecs_cluster: args.ecs_cluster,
        task_family: args.task_family,
        task_id: args.task_id,
        container: args.container,
        node: args.node,
        comm: args.comm,
        signal: args.signal,
        cluster: args.cluster,
        tags: args.tag,
        since: args.since,
        until: args.until,
        // Grouped: the limit counts groups, not dumps.
        limit: args.limit.filter(|_| args.group_by.is_none()),
        build_id: args.build_id,
        signature: args.signature,
        read_records: args.group_by.is_some(),
    };
    let prefix = args.store.dest()?.key_prefix().to_owned();
    let outcome = lookup::find(&store, &prefix, &query)
        .await
        .with_context(|| format!("searching {}", store.describe()))?;
    tracing::debug!(
        listed = outcome.listed,
        tag_reads = outcome.tag_reads,
        record_reads = outcome.record_reads,
        hits = outcome.hits.len(),
        "search done"
    );
    let mut out = std::io::stdout().lock();
    if let Some(GroupBy::Signature) = args.group_by {
        let mut groups = group_by_signature(&outcome.hits);
        if let Some(limit) = args.limit {
            groups.truncate(limit);
        }
        if args.json {
            for g in &groups {
                serde_json::to_writer(&mut out, g)?;
                out.write_all(b"\n")?;
            }
        } else if !groups.is_empty() {
            group_table(&mut out, &groups)?;
        }
    } else if args.json {
        for hit in &outcome.hits {
            serde_json::to_writer(&mut out, hit)?;
            out.write_all(b"\n")?;
        }
    } else if !outcome.hits.is_empty() {
        table(&mut out, &outcome.hits)?;
    }
    out.flush()?;
    for (key, err) in &outcome.unreadable {
        eprintln!("warning: could not read the tags of {key}: {err}");
    }
    for (key, err) in &outcome.unreadable_records {
        eprintln!("warning: could not read the record of {key}: {err}");
    }
    let unreadable = !outcome.unreadable.is_empty() || !outcome.unreadable_records.is_empty();
    Ok(if !outcome.hits.is_empty() {
        ExitCode::SUCCESS
    } else if unreadable {
        ExitCode::from(EXIT_ERROR)
    } else {
        if !args.json {
            eprintln!("no dumps match");
        }
        ExitCode::from(EXIT_NOT_FOUND)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_column_names_a_pod_or_an_ecs_task() {
        let hit = |tags: &[(&str, &str)]| Hit {
            key: "k".into(),
            size: 1,
            last_modified: std::time::SystemTime::UNIX_EPOCH,
            kind: Kind::Dump,
            crash_time: std::time::SystemTime::UNIX_EPOCH,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            report: None,
        };
        let workload = |tags: &[(&str, &str)]| row(&hit(tags))[1].clone();
        assert_eq!(
            workload(&[("namespace", "shop"), ("pod", "web-1")]),
            "shop/web-1"
        );
        assert_eq!(
            workload(&[
                ("ecs-cluster", "prod"),
                ("task-family", "web"),
                ("task-id", "t1")
            ]),
            "prod/web"
        );
        assert_eq!(workload(&[("task-id", "t1")]), "task t1");
        assert_eq!(workload(&[("node", "n")]), "-");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn groups_count_each_crash_once_latest_first() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let hit = |key: &str, t: u64, pod: &str, sig: Option<&str>| Hit {
            key: key.into(),
            size: 1,
            last_modified: at(t),
            kind: Kind::Dump,
            crash_time: at(t),
            tags: [(tag::NAMESPACE, "shop"), (tag::POD, pod)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            report: sig.map(|s| lookup::HitReport {
                signature: Some(s.into()),
                summary: Some(format!("SIGSEGV in {s}")),
                ..lookup::HitReport::default()
            }),
        };
        // Newest first, as the search returns them.
        let hits = [
            hit("c", 30, "web-2", Some("aaaa")),
            hit("b", 20, "web-1", Some("bbbb")),
            hit("a", 10, "web-1", Some("aaaa")),
            hit("z", 5, "web-3", None),
        ];
        let groups = group_by_signature(&hits);
        let counts: Vec<(Option<&str>, usize)> = groups
            .iter()
            .map(|g| (g.signature.as_deref(), g.count))
            .collect();
        assert_eq!(counts, [(Some("aaaa"), 2), (Some("bbbb"), 1), (None, 1)]);
        let a = &groups[0];
        assert_eq!((a.first, a.last), (at(10), at(30)));
        assert_eq!(a.latest_key, "c");
        assert_eq!(
            a.pods.iter().map(String::as_str).collect::<Vec<_>>(),
            ["shop/web-1", "shop/web-2"]
        );
        let mut out = Vec::new();
        group_table(&mut out, &groups).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("SIGNATURE  COUNT"), "{text}");
        assert!(text.contains("(no report)"), "{text}");
    }
}
