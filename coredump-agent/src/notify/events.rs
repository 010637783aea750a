//! notify::events: a Kubernetes Event on the crashed pod once its dump is stored, so
//! `kubectl describe pod` shows where the dump is (reason `CoreDumpStored`).
//!
//! Best effort: the dump is already stored when this runs, and a refused or failed Event only
//! costs a log line.

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};

use crate::record::Record;

/// The Event's reason.
pub const REASON: &str = "CoreDumpStored";

/// Posts Events about stored dumps.
#[derive(Clone)]
pub struct PodEvents {
    client: Client,
    node: String,
}

impl std::fmt::Debug for PodEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodEvents")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The Event for a stored dump; `None` when the crash was not in a named pod.
pub fn event(record: &Record, uri: &str, node: &str, now: Timestamp) -> Option<Event> {
    let id = record.identity.pod()?;
    let (namespace, pod) = (id.namespace.as_ref()?, id.pod.as_ref()?);
    let what = match (&record.crash, &id.container) {
        (Some(c), Some(container)) => format!("container {container} ({}, {})", c.comm, c.signal),
        (Some(c), None) => format!("{} ({})", c.comm, c.signal),
        (None, _) => "a process".to_owned(),
    };
    Some(Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{pod}.coredump-")),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.clone()),
            name: Some(pod.clone()),
            uid: id.pod_uid.clone(),
            field_path: id
                .container
                .as_ref()
                .map(|c| format!("spec.containers{{{c}}}")),
            ..ObjectReference::default()
        },
        reason: Some(REASON.into()),
        message: Some(message(record, &what, uri)),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("coredump-agent".into()),
            host: Some(node.to_owned()),
        }),
        reporting_component: Some("coredump-agent".into()),
        reporting_instance: Some(node.to_owned()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Event::default()
    })
}

/// Longest Event message.
const MAX_MESSAGE: usize = 1024;

/// What crashed (from the crash report), then where the dump is:
/// `SIGSEGV in f ← g ← main (server, build-id 3f2a…). Core dump of container app (…) stored at …`.
fn message(record: &Record, what: &str, uri: &str) -> String {
    let stored = format!("core dump of {what} stored at {uri}");
    let Some(report) = &record.report else {
        return stored;
    };
    let Some(summary) = &report.summary else {
        return stored;
    };
    let main = report.main();
    let exe = main
        .map(|m| m.name().to_owned())
        .or_else(|| record.comm().map(str::to_owned))
        .unwrap_or_default();
    let build = main
        .and_then(|m| m.build_id.as_deref())
        .map(|id| format!(", build-id {}…", &id[..id.len().min(8)]))
        .unwrap_or_default();
    let mut message = format!("{summary} ({exe}{build}). C{}", &stored[1..]);
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

impl PodEvents {
    /// Events posted with `client`, as `node`.
    pub fn new(client: Client, node: String) -> Self {
        Self { client, node }
    }

    /// Posts the Event for a stored dump (no-op outside pods); logs instead of failing.
    pub async fn dump_stored(&self, record: &Record, uri: &str) {
        let Some(ev) = event(record, uri, &self.node, Timestamp::now()) else {
            return;
        };
        let namespace = ev.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => tracing::debug!(namespace, reason = REASON, "event posted"),
            Err(e) => {
                tracing::warn!(namespace, error = %e, "could not post the CoreDumpStored event (needs events: create)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crash::{Crash, Hook, Signal},
        identity::{Identity, KubePod, Workload},
        record::{AgentInfo, Attestation, SCHEMA},
    };

    fn record(identity: Identity) -> Record {
        Record {
            schema: SCHEMA,
            id: "r".into(),
            node: "n1".into(),
            cluster: None,
            crash: Some(Crash {
                time: std::time::SystemTime::UNIX_EPOCH,
                boot_ns: 0,
                host_pid: 1,
                host_tid: 1,
                pid: None,
                tid: None,
                pidns: None,
                pidns_level: None,
                uid: 0,
                gid: 0,
                signal: Signal(11),
                si_code: None,
                cgroup_id: 1,
                comm: "server".into(),
                process_comm: None,
                exe_name: None,
                exe_name_truncated: false,
                cmdline: None,
                cmdline_truncated: false,
                hook: Hook::TpBtf,
            }),
            attestation: Attestation {
                attested: true,
                reason: String::new(),
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

    #[test]
    fn event_names_the_pod_and_the_uri() {
        let r = record(Identity {
            workload: Workload::Kubernetes(KubePod {
                namespace: Some("shop".into()),
                pod: Some("web-1".into()),
                pod_uid: Some("u-1".into()),
                container: Some("app".into()),
                ..KubePod::default()
            }),
            ..Identity::default()
        });
        let ev = event(
            &r,
            "s3://b/shop/web-1/x.core.zst",
            "n1",
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(ev.reason.as_deref(), Some(REASON));
        assert_eq!(ev.involved_object.name.as_deref(), Some("web-1"));
        assert_eq!(ev.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            ev.message.as_deref(),
            Some(
                "core dump of container app (server, SIGSEGV) stored at s3://b/shop/web-1/x.core.zst"
            )
        );
        // With a crash report: what crashed first.
        let mut with = r.clone();
        with.report = Some(crate::report::Report {
            summary: Some("SIGSEGV in apply_discount ← parse_line ← main".into()),
            modules: vec![crate::report::Module {
                path: "/app/order-svc".into(),
                build_id: Some("3f2a1b2c3d4e5f60718293a4b5c6d7e8f9012345".into()),
                main: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        let ev = event(&with, "s3://b/k", "n1", Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(
            ev.message.as_deref(),
            Some(
                "SIGSEGV in apply_discount ← parse_line ← main (order-svc, build-id 3f2a1b2c…). Core dump of container app (server, SIGSEGV) stored at s3://b/k"
            )
        );
        assert!(
            event(
                &record(Identity::default()),
                "u",
                "n1",
                Timestamp::UNIX_EPOCH
            )
            .is_none()
        );
    }
}
