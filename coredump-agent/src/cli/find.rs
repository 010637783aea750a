//! `coredump-agent find`: list the dumps of a pod (or any tag filter), newest first.

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
    let pod = match (hit.tags.get(tag::NAMESPACE), hit.tags.get(tag::POD)) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => "-".into(),
    };
    let size = match hit.kind {
        Kind::Dump => human_size(hit.size),
        Kind::Crash => "no dump".into(),
    };
    [
        humantime::format_rfc3339_seconds(hit.crash_time).to_string(),
        pod,
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
        "NAMESPACE/POD",
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
    fn sizes_are_human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
