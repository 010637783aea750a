//! A local store seeded with the agent's own layout (keys, tags, metadata, records), for the
//! tests of `find`, `get` and `info`: what is searched is exactly what `run` stores.

use std::time::{Duration, SystemTime};

use coredump_agent::{
    crash::{Crash, Hook, Signal},
    identity::{Identity, KubePod, Workload},
    pattern::Compression,
    record::{AgentInfo, Attestation, Record, SCHEMA},
    store::{
        Body, Metadata, Store as _,
        layout::{self, Stored},
        local::LocalStore,
    },
};

/// A crash of `pid` running `comm`, `age` ago.
pub fn crash(pid: u32, comm: &str, signal: u32, age: Duration) -> Crash {
    Crash {
        time: SystemTime::now() - age,
        boot_ns: u64::from(pid),
        host_pid: pid,
        host_tid: pid,
        pid: Some(pid),
        tid: Some(pid),
        pidns: None,
        pidns_level: Some(0),
        uid: 0,
        gid: 0,
        signal: Signal(signal),
        si_code: Some(1),
        cgroup_id: 1,
        comm: comm.into(),
        process_comm: Some(comm.into()),
        exe_name: None,
        exe_name_truncated: false,
        cmdline: None,
        cmdline_truncated: false,
        hook: Hook::TpBtf,
    }
}

/// A record of `crash`, in `pod` (namespace, name, container) or on the host.
pub fn record(pod: Option<(&str, &str, &str)>, crash: Crash) -> Record {
    let identity = match pod {
        Some((ns, pod, container)) => Identity {
            workload: Workload::Kubernetes(KubePod {
                namespace: Some(ns.into()),
                pod: Some(pod.into()),
                pod_uid: Some(format!("uid-{pod}")),
                container: Some(container.into()),
                ..KubePod::default()
            }),
            ..Identity::default()
        },
        None => Identity::default(),
    };
    Record {
        schema: SCHEMA,
        id: format!("r{}", crash.host_pid),
        node: "node-a".into(),
        cluster: Some("eu-1".into()),
        crash: Some(crash),
        attestation: Attestation {
            attested: true,
            reason: "test".into(),
        },
        dump: None,
        process: None,
        identity,
        agent: AgentInfo::current(),
        stored: None,
        intake: Default::default(),
        receive_id: None,
        kernel: None,
        report: None,
    }
}

/// Stores a dump (`Some(bytes)`, zstd-compressed like the agent does) or a crash record.
pub async fn seed(store: &LocalStore, r: &Record, core: Option<&[u8]>) -> String {
    let tags = layout::tags(r);
    let meta = Metadata::new();
    match core {
        Some(bytes) => {
            let compressed = zstd::encode_all(bytes, 3).unwrap();
            let key = layout::object_key("", r, Stored::Dump(Some(Compression::Zstd)));
            let receipt = store
                .put(&key, Body::Bytes(&compressed), &tags, &meta)
                .await
                .unwrap();
            let mut with_receipt = r.clone();
            with_receipt.stored = Some(coredump_agent::record::StoredDump {
                key: key.clone(),
                size: receipt.size,
                sha256: receipt.sha256,
                compression: Some(Compression::Zstd),
            });
            let json = serde_json::to_vec(&with_receipt).unwrap();
            store
                .put(&layout::record_key(&key), Body::Bytes(&json), &tags, &meta)
                .await
                .unwrap();
            key
        }
        None => {
            let key = layout::record_key(&layout::object_key("", r, Stored::RecordOnly));
            let json = serde_json::to_vec(r).unwrap();
            store
                .put(&key, Body::Bytes(&json), &tags, &meta)
                .await
                .unwrap();
            key
        }
    }
}
