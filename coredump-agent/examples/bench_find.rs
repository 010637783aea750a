//! `cargo xtask bench find`: how `find` scales with the size of the store.
//!
//! Seeds a store with `--dumps` dumps spread over `--pods` pods (the agent's own layout: keys,
//! tags), then measures three searches, each against a baseline measured in the same run:
//! one pod's dumps (narrowed by key prefix) against the same filter given as plain tags (which
//! must read every object's tags), and one signal over the whole store.

use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use coredump_agent::{
    crash::{Crash, Hook, Signal},
    identity::{Identity, KubePod, Workload},
    lookup::{self, Query},
    record::{AgentInfo, Attestation, Record, SCHEMA},
    store::{
        Body, Metadata, Store as _,
        layout::{self, Stored},
        local::LocalStore,
    },
};
use futures::StreamExt as _;

#[derive(Debug, Parser)]
struct Args {
    /// Dumps to seed.
    #[arg(long, default_value_t = 10_000)]
    dumps: u32,
    /// Pods they belong to.
    #[arg(long, default_value_t = 500)]
    pods: u32,
    /// Folder for the store (default: a fresh temporary one).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn record(i: u32, pods: u32) -> Record {
    let pod = i % pods;
    let signal = if i.is_multiple_of(10) { 6 } else { 11 };
    Record {
        schema: SCHEMA,
        id: format!("bench-{i}"),
        node: format!("node-{}", pod % 20),
        cluster: None,
        crash: Some(Crash {
            time: SystemTime::now() - Duration::from_secs(u64::from(i) * 60),
            boot_ns: u64::from(i),
            host_pid: 1000 + i,
            host_tid: 1000 + i,
            pid: Some(7),
            tid: Some(7),
            pidns: None,
            pidns_level: Some(1),
            uid: 0,
            gid: 0,
            signal: Signal(signal),
            si_code: Some(1),
            cgroup_id: 1,
            comm: "server".into(),
            process_comm: Some("server".into()),
            exe_name: None,
            exe_name_truncated: false,
            cmdline: None,
            cmdline_truncated: false,
            hook: Hook::TpBtf,
        }),
        attestation: Attestation {
            attested: true,
            reason: "bench".into(),
        },
        dump: None,
        process: None,
        identity: Identity {
            workload: Workload::Kubernetes(KubePod {
                namespace: Some(format!("ns-{}", pod % 25)),
                pod: Some(format!("pod-{pod}")),
                pod_uid: Some(format!("uid-{pod}")),
                container: Some("app".into()),
                ..KubePod::default()
            }),
            ..Identity::default()
        },
        agent: AgentInfo::current(),
        stored: None,
        intake: Default::default(),
        receive_id: None,
        kernel: None,
        report: None,
    }
}

async fn measure(store: &LocalStore, name: &str, q: &Query) -> (Duration, lookup::Outcome) {
    let start = Instant::now();
    let outcome = lookup::find(store, "", q).await.expect("find");
    let t = start.elapsed();
    println!(
        "{name:<44} {:>8.1} ms  listed {:>6}  tag reads {:>6}  matches {:>5}",
        t.as_secs_f64() * 1000.0,
        outcome.listed,
        outcome.tag_reads,
        outcome.hits.len()
    );
    (t, outcome)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = args
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bench-find-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir);
    let store = LocalStore::new(&dir).expect("store");
    let seed_start = Instant::now();
    futures::stream::iter(0..args.dumps)
        .for_each_concurrent(16, |i| {
            let store = &store;
            async move {
                let r = record(i, args.pods);
                let key = layout::object_key("", &r, Stored::Dump(None));
                store
                    .put(
                        &key,
                        Body::Bytes(b"core"),
                        &layout::tags(&r),
                        &Metadata::new(),
                    )
                    .await
                    .expect("seed");
            }
        })
        .await;
    println!(
        "seeded {} dumps over {} pods in {:.1}s ({})",
        args.dumps,
        args.pods,
        seed_start.elapsed().as_secs_f64(),
        dir.display()
    );

    let one_pod = Query {
        namespace: Some("ns-17".into()),
        pod: Some("pod-42".into()),
        ..Query::default()
    };
    let as_tags = Query {
        tags: vec![
            ("namespace".into(), "ns-17".into()),
            ("pod".into(), "pod-42".into()),
        ],
        ..Query::default()
    };
    let (narrow, a) = measure(&store, "find --namespace ns-17 --pod pod-42", &one_pod).await;
    let (wide, b) = measure(
        &store,
        "baseline: same filter as tags (no prefix)",
        &as_tags,
    )
    .await;
    assert_eq!(a.hits, b.hits, "both searches find the same dumps");
    let (signal, c) = measure(
        &store,
        "find --signal SIGABRT (whole store)",
        &Query {
            signal: Some(Signal(6)),
            ..Query::default()
        },
    )
    .await;
    let (all_tags, _) = measure(
        &store,
        "baseline: read every object's tags",
        &Query {
            tags: vec![("signal".into(), "SIGABRT".into())],
            ..Query::default()
        },
    )
    .await;
    println!();
    println!(
        "one pod: {} requests (1 listing page + {} tag reads) vs {} for the baseline: {:.0}x fewer, {:.1}x faster",
        1 + a.tag_reads,
        a.tag_reads,
        b.listed.div_ceil(1000) + b.tag_reads,
        (b.listed.div_ceil(1000) + b.tag_reads) as f64 / (1 + a.tag_reads) as f64,
        wide.as_secs_f64() / narrow.as_secs_f64()
    );
    println!(
        "--signal over the whole store: {} listed (S3: {} pages), {} tag reads for {} matches: {:.1}x faster than reading every tag",
        c.listed,
        c.listed.div_ceil(1000),
        c.tag_reads,
        c.hits.len(),
        all_tags.as_secs_f64() / signal.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
