//! `coredump-agent find`: list the dumps of a pod or an ECS task (or any tag filter), newest
//! first.

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;

use super::{EXIT_ERROR, EXIT_NOT_FOUND, args::FindArgs};
use crate::{
    lookup::{self, Hit, Kind, Query},
    store::{Store as _, layout::tag},
};

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
    let rows: Vec<[String; 8]> = std::iter::once(header)
        .chain(hits.iter().map(row))
        .collect();
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 7 {
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
        limit: args.limit,
    };
    let prefix = args.store.dest()?.key_prefix().to_owned();
    let outcome = lookup::find(&store, &prefix, &query)
        .await
        .with_context(|| format!("searching {}", store.describe()))?;
    tracing::debug!(
        listed = outcome.listed,
        tag_reads = outcome.tag_reads,
        hits = outcome.hits.len(),
        "search done"
    );
    let mut out = std::io::stdout().lock();
    if args.json {
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
    Ok(if !outcome.hits.is_empty() {
        ExitCode::SUCCESS
    } else if !outcome.unreadable.is_empty() {
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
}
