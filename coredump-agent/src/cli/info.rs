//! `coredump-agent info`: everything known about one stored dump, without downloading it.

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;

use super::{EXIT_NOT_FOUND, args::InfoArgs, printable as p, read_record};
use crate::{
    identity::{EcsTask, HostUnit, Identity, KubePod, Workload},
    record::Record,
    report::{Frame, Report},
    store::{Store as _, StoreError, layout},
};

/// Frames `info` shows; the record holds them all.
const TOP_FRAMES: usize = 12;

/// The crash report: the signal line, the top frames, the executable's build-id.
fn write_report(out: &mut impl std::io::Write, r: &Report) -> std::io::Result<()> {
    writeln!(out, "report:")?;
    if let Some(s) = &r.signal {
        let mut line = p(&s.name).into_owned();
        if let Some(code) = &s.code_name {
            line.push_str(&format!(" ({code})"));
        }
        if let Some(addr) = s.addr {
            line.push_str(&format!(" at address {addr}"));
        }
        if let Some(pid) = s.sender_pid {
            line.push_str(&format!(" sent by pid {pid}"));
        }
        if let Some(tid) = r.thread {
            line.push_str(&format!(", thread {tid}"));
        }
        if let Some(pc) = r.pc {
            line.push_str(&format!(", pc {pc}"));
        }
        writeln!(out, "  signal:      {line}")?;
    }
    if let Some(summary) = &r.summary {
        writeln!(out, "  crashed:     {}", p(summary))?;
    }
    if let Some(sig) = &r.signature {
        writeln!(out, "  signature:   {}", p(sig))?;
    }
    if let Some(main) = r.main() {
        writeln!(
            out,
            "  executable:  {}  build-id {}",
            p(&main.path),
            main.build_id.as_deref().map_or("unknown".into(), p)
        )?;
    }
    if !r.frames.is_empty() {
        writeln!(out, "  backtrace:")?;
        for (i, f) in r.frames.iter().take(TOP_FRAMES).enumerate() {
            writeln!(out, "    {}", p(&frame_line(i, f)))?;
        }
        if r.frames.len() > TOP_FRAMES {
            writeln!(
                out,
                "    … {} more frames in the record (info --json)",
                r.frames.len() - TOP_FRAMES
            )?;
        }
    }
    let stored = r.modules.iter().filter(|m| m.key.is_some()).count();
    writeln!(
        out,
        "  modules:     {} mapped, {} with a checked file, {} stored",
        r.modules.len(),
        r.modules.iter().filter(|m| m.file.is_some()).count(),
        stored
    )?;
    if !r.complete {
        writeln!(out, "  partial:")?;
        for problem in &r.problems {
            writeln!(out, "    - {}", p(problem))?;
        }
    }
    Ok(())
}

/// `#0  0x…  function+0x10 (module+0x1139)  file:line`.
pub fn frame_line(i: usize, f: &Frame) -> String {
    let mut line = format!("#{i:<2} {:>18}  ", f.addr.to_string());
    match (&f.function, f.function_offset) {
        (Some(func), Some(off)) if !f.inlined => line.push_str(&format!("{func}+{off:#x}")),
        (Some(func), _) => line.push_str(func),
        (None, _) => line.push('?'),
    }
    if f.inlined {
        line.push_str(" (inlined)");
    }
    match (&f.module, f.offset) {
        (Some(m), Some(off)) => line.push_str(&format!(" ({m}+{off})")),
        (Some(m), None) => line.push_str(&format!(" ({m})")),
        (None, _) => {}
    }
    if let Some(file) = &f.file {
        let name = file.rsplit('/').next().unwrap_or(file);
        match f.line {
            Some(n) => line.push_str(&format!(" at {name}:{n}")),
            None => line.push_str(&format!(" at {name}")),
        }
    }
    line
}

/// Shows tags, metadata and the stored record of a key.
pub async fn execute(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open(None).await?;
    crate::store::validate_key(&args.key)?;
    let key = &args.key;
    let (object, metadata) = match store.head(key).await {
        Ok(v) => v,
        Err(StoreError::NotFound { .. }) => {
            eprintln!("{key}: no such object in {}", store.describe());
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
        Err(e) => return Err(e).with_context(|| format!("looking up {key}")),
    };
    let tags = store
        .tags(key)
        .await
        .with_context(|| format!("reading the tags of {key}"))?;
    // A crash without a dump is its own record; a dump has one beside it.
    let record_key = if key.ends_with(".json") {
        key.clone()
    } else {
        layout::record_key(key)
    };
    let record: Option<serde_json::Value> = read_record(&store, &record_key)
        .await?
        .and_then(|buf| serde_json::from_slice(&buf).ok());
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "key": key,
            "size": object.size,
            "last_modified": humantime::format_rfc3339_seconds(object.last_modified).to_string(),
            "tags": tags,
            "metadata": metadata,
            "record": record,
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "key:           {key}")?;
    writeln!(out, "size:          {} bytes", object.size)?;
    writeln!(
        out,
        "stored:        {}",
        humantime::format_rfc3339_seconds(object.last_modified)
    )?;
    writeln!(out, "tags:")?;
    for (k, v) in &tags {
        writeln!(out, "  {:<12} {}", p(k), p(v))?;
    }
    writeln!(out, "metadata:")?;
    for (k, v) in &metadata {
        writeln!(out, "  {:<15} {}", p(k), p(v))?;
    }
    let parsed = record
        .as_ref()
        .and_then(|v| serde_json::from_value::<Record>(v.clone()).ok());
    if let Some(r) = parsed {
        writeln!(out, "record:")?;
        writeln!(
            out,
            "  attested:    {} ({})",
            r.attestation.attested,
            p(&r.attestation.reason)
        )?;
        if let Some(c) = &r.crash {
            writeln!(
                out,
                "  crash:       {} pid {} (host {}) tid {} comm {:?} signal {} si_code {}",
                humantime::format_rfc3339_nanos(c.time),
                c.visible_pid(),
                c.host_pid,
                c.tid.unwrap_or(c.host_tid),
                c.comm,
                c.signal,
                c.si_code.map_or("?".into(), |s| s.to_string())
            )?;
            writeln!(out, "  uid/gid:     {}/{}", c.uid, c.gid)?;
        }
        for (label, v) in identity_lines(&r.identity) {
            writeln!(out, "  {:<12} {}", format!("{label}:"), p(&v))?;
        }
        if let Some(exe) = r.exe() {
            writeln!(out, "  exe:         {}", p(exe))?;
        }
        if let Some(cmdline) = r.cmdline().filter(|c| !c.args.is_empty()) {
            writeln!(out, "  cmdline:     {}", p(&cmdline.to_string()))?;
        }
        if let Some(d) = &r.dump {
            writeln!(
                out,
                "  dump file:   {} ({} bytes, owner uid {})",
                p(&d.name),
                d.size,
                d.owner_uid
            )?;
        }
        writeln!(
            out,
            "  node:        {}  agent {} on {}",
            p(&r.node),
            p(&r.agent.version),
            p(&r.agent.kernel)
        )?;
        if let Some(report) = &r.report {
            write_report(&mut out, report)?;
        }
    } else if record.is_none() {
        writeln!(out, "record:        none stored beside this object")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `info` shows of an identity, as (label, value), in order: the pod, ECS task or host
/// unit, then the container and cgroup, and what is missing.
fn identity_lines(id: &Identity) -> Vec<(&'static str, String)> {
    let workload: Vec<(&str, Option<String>)> = match &id.workload {
        Workload::Kubernetes(KubePod {
            pod_uid,
            namespace,
            pod,
            container,
            image,
            image_id,
            ..
        }) => vec![
            ("namespace", namespace.clone()),
            ("pod", pod.clone()),
            ("pod uid", pod_uid.clone()),
            ("container", container.clone()),
            ("image", image.clone()),
            ("image id", image_id.clone()),
        ],
        Workload::Ecs(EcsTask {
            task_id,
            cluster,
            task_arn,
            family,
            revision,
            container,
            image,
            image_id,
        }) => vec![
            ("ecs cluster", cluster.clone()),
            (
                "task",
                family
                    .as_ref()
                    .map(|f| format!("{f}:{}", revision.as_deref().unwrap_or("?"))),
            ),
            ("task id", Some(task_id.clone())),
            ("task arn", task_arn.clone()),
            ("container", container.clone()),
            ("image", image.clone()),
            ("image digest", image_id.clone()),
        ],
        Workload::Host(HostUnit { systemd_unit }) => vec![("unit", systemd_unit.clone())],
    };
    workload
        .into_iter()
        .chain([
            ("container id", id.container_id.clone()),
            ("cgroup", id.cgroup_path.clone()),
            ("missing", id.missing.clone()),
        ])
        .filter_map(|(label, v)| Some((label, v?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ecs_task_is_shown_as_family_revision_and_id() {
        let id = Identity {
            container_id: Some("ab".repeat(32)),
            workload: Workload::Ecs(EcsTask {
                task_id: "488fc5b8b77f4fb7984bdc4aba948f9f".into(),
                cluster: Some("prod".into()),
                family: Some("web".into()),
                revision: Some("8".into()),
                container: Some("app".into()),
                ..EcsTask::default()
            }),
            ..Identity::default()
        };
        let lines = identity_lines(&id);
        let labels: Vec<&str> = lines.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            labels,
            [
                "ecs cluster",
                "task",
                "task id",
                "container",
                "container id"
            ]
        );
        assert_eq!(lines[1].1, "web:8");
        // Named from the cgroup only: the id, and why the rest is missing.
        let id = Identity {
            workload: Workload::Ecs(EcsTask {
                task_id: "488fc5b8b77f4fb7984bdc4aba948f9f".into(),
                ..EcsTask::default()
            }),
            missing: Some("the ECS agent did not answer".into()),
            ..Identity::default()
        };
        assert_eq!(
            identity_lines(&id),
            [
                ("task id", "488fc5b8b77f4fb7984bdc4aba948f9f".to_owned()),
                ("missing", "the ECS agent did not answer".to_owned())
            ]
        );
    }
}
