//! `coredump-agent run`: wires the pipeline together and runs it until SIGINT/SIGTERM.
//!
//! ```text
//! probe ──Crash──► enrich ──CrashFacts──┐
//!                                        ├─► correlate ──Job──► report ──Job──► spool ──Job──► deliver ──► store
//! socket | pipe | watch ──DumpEvent─────┘
//! ```
//! Every arrow is a bounded channel. Sources (probe, the intake) stop on the shutdown signal;
//! each later stage stops when its input closes, after finishing what it holds, so a shutdown
//! drains instead of dropping work. Whatever is not stored by then stays spooled.

use std::{
    collections::HashSet,
    path::Path,
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context as _, bail};
use tokio::{net::UnixListener, sync::mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::args::{EcsMode, KubeMode, NodeArgs, RunArgs};
use crate::{
    core_pattern::{self, Installed, Sysctl},
    correlate::{self, FileIntake},
    deliver,
    enrich::{self, Enricher, ProcFs},
    health::{self, Health},
    identity::{
        PodResolver, Sources, WorkloadSource,
        cgroup::{CgroupResolver, cgroup2_mount},
        ecs::{EcsSource, introspection::Introspection},
        kube,
        kubelet::KubeletLogs,
    },
    intake::{
        DumpEvent, Intake,
        dir::{Dir, KEPT_DIR, QUARANTINE_DIR},
        helper, pipe,
        received::{Limits, ReceiveDir},
        reception::Reception,
        socket::{self, Protocol},
        watch::{self, Watcher},
    },
    job::Claims,
    notify::{Notify, events::PodEvents},
    pattern::CorePattern,
    policy::Policy,
    probe::{self, Probe},
    spool::{self, CrashJournal, DumpDirs, Spool},
    store::{self, AnyStore, Dest, Store as _},
};

/// Crash events buffered between the probe, enrich and correlate.
const CRASH_CAPACITY: usize = 256;
/// Dump events buffered between the intake and correlate.
const DUMP_CAPACITY: usize = 1024;
/// Jobs buffered between stages (each holds an open file).
const JOB_CAPACITY: usize = 64;

/// The node name: `--node-name`/`$NODE_NAME`, else the kernel's hostname.
pub fn node_name(arg: Option<String>) -> String {
    arg.filter(|n| !n.is_empty()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown-node".into())
    })
}

/// Creates the dump directory if missing: mode 1733, like a drop box, so crashing processes
/// of any user can write their dump but cannot list or remove anyone else's.
fn ensure_dump_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    const DROP_BOX: u32 = 0o1733;
    if let Ok(meta) = std::fs::metadata(dir) {
        // A directory made for us with default permissions (a hostPath `DirectoryOrCreate`
        // is 0755) would keep non-root processes from writing their dumps.
        if meta.is_dir()
            && meta.uid() == crate::sys::euid()
            && meta.permissions().mode() & 0o7777 == 0o755
        {
            tracing::info!(dir = %dir.display(), "making the dump directory writable for every user (mode 1733)");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DROP_BOX))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("creating the dump directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DROP_BOX))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// Which core_pattern the names come from, and a warning if it does not write into `dump_dir`.
fn core_pattern(node: &NodeArgs, sysctl: &Sysctl) -> anyhow::Result<CorePattern> {
    let raw = node
        .dump_name_pattern()
        .context("reading the live core_pattern")?;
    let pattern = CorePattern::parse(&raw, sysctl.uses_pid())
        .with_context(|| format!("core_pattern {raw:?}"))?;
    if pattern.dir() != node.dump_dir {
        tracing::warn!(
            pattern_dir = %pattern.dir().display(),
            dump_dir = %node.dump_dir.display(),
            "core_pattern writes elsewhere than --dump-dir: watching --dump-dir (fine if it is the same directory mounted elsewhere)"
        );
    }
    if !pattern.has_host_pid() {
        tracing::warn!(
            template = pattern.file_template(),
            "core_pattern has no %P: dumps from pid namespaces may not be attestable (add %P)"
        );
    }
    Ok(pattern)
}

/// The cgroup2 hierarchy crash cgroup ids are resolved in: `--cgroup-root`, else the mount.
fn cgroup_resolver(node: &NodeArgs) -> anyhow::Result<Option<Arc<CgroupResolver>>> {
    if let Some(root) = &node.cgroup_root
        && !root.is_dir()
    {
        bail!("--cgroup-root {}: not a directory", root.display());
    }
    let root = node.cgroup_root.clone().or_else(cgroup2_mount);
    if root.is_none() {
        tracing::warn!(
            "no cgroup2 mount found: crashes are placed from /proc/<pid>/cgroup only (see --cgroup-root)"
        );
    }
    Ok(root.map(|root| Arc::new(CgroupResolver::new(root))))
}

/// What `--kube` and the environment give for the Kubernetes API.
pub(super) enum KubeAccess {
    /// `--kube off`.
    Off,
    /// Neither KUBECONFIG nor an in-cluster service account.
    NotConfigured,
    /// A configuration that cannot be used.
    Unusable(kube::KubeError),
    /// A client (not yet used: reachability is not known).
    Client(::kube::Client),
}

impl KubeAccess {
    /// The client `--kube` asks for, if the environment configures one.
    pub(super) async fn from_args(mode: KubeMode) -> Self {
        match mode {
            KubeMode::Off => Self::Off,
            KubeMode::Auto | KubeMode::On => match kube::client_from_env().await {
                Ok(Some(client)) => Self::Client(client),
                Ok(None) => Self::NotConfigured,
                Err(e) => Self::Unusable(e),
            },
        }
    }
}

/// What names pods: the API (per `--kube`, its watch started on `tracker`) and the kubelet's
/// log files.
async fn pod_resolver(
    node_args: &NodeArgs,
    node: &str,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> anyhow::Result<(PodResolver, Option<PodEvents>)> {
    let required = node_args.kube == KubeMode::On;
    let client = match KubeAccess::from_args(node_args.kube).await {
        KubeAccess::Off => None,
        KubeAccess::Client(client) => Some(client),
        KubeAccess::NotConfigured if required => bail!(
            "--kube on: no Kubernetes API configuration (neither KUBECONFIG nor an in-cluster service account)"
        ),
        KubeAccess::NotConfigured => {
            tracing::info!(
                "no Kubernetes API configuration (KUBECONFIG, in-cluster service account): naming pods from the kubelet's log files only"
            );
            None
        }
        KubeAccess::Unusable(e) if required => {
            return Err(anyhow::Error::new(e).context("--kube on"));
        }
        KubeAccess::Unusable(e) => {
            tracing::warn!(
                error = %format!("{:#}", anyhow::Error::new(e)),
                "Kubernetes API unusable: naming pods from the kubelet's log files only"
            );
            None
        }
    };
    let events = client
        .clone()
        .map(|client| PodEvents::new(client, node.to_owned()));
    let api = client.map(|client| {
        tracing::info!(node, "watching this node's pods");
        kube::spawn_watch(client, node, tracker, cancel)
    });
    let kubelet = KubeletLogs::new(&node_args.pod_log_root, &node_args.container_log_root);
    Ok((PodResolver::new(api, Some(kubelet)), events))
}

/// What names ECS tasks, per `--ecs`: the introspection API's task list, read once now and
/// then refreshed on `tracker`. `None` when off, or when `auto` finds no ECS agent answering.
pub(super) async fn ecs_source(
    node_args: &NodeArgs,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> anyhow::Result<Option<EcsSource>> {
    if node_args.ecs == EcsMode::Off {
        return Ok(None);
    }
    let api = Introspection::new(&node_args.ecs_agent_uri)
        .with_context(|| format!("--ecs-agent-uri {}", node_args.ecs_agent_uri))?;
    let source = EcsSource::new(api);
    match source.refresh().await {
        Ok(tasks) => tracing::info!(
            api = %source.uri(),
            cluster = source.cluster().as_deref().unwrap_or(""),
            tasks,
            "ECS task cache synced"
        ),
        Err(e) if node_args.ecs == EcsMode::Auto => {
            tracing::debug!(api = %source.uri(), error = %crate::error_chain(&e), "no ECS agent answers: not naming ECS tasks (--ecs auto)");
            return Ok(None);
        }
        Err(e) => tracing::warn!(
            api = %source.uri(),
            error = %crate::error_chain(&e),
            "the ECS agent's introspection API does not answer (--ecs on): crashes in tasks are named from their cgroup only until it does"
        ),
    }
    source.spawn_refresh(node_args.ecs_refresh, tracker, cancel);
    Ok(Some(source))
}

/// The intake in place: its listeners and the kernel settings it installed.
struct Chosen {
    intake: Intake,
    kernel: Option<(UnixListener, Protocol)>,
    helper: Option<UnixListener>,
    installed: Option<Installed>,
}

/// Installs the first intake that works, in `--intake` order: binds its socket first (so the
/// kernel finds it at the first crash), then sets the kernel's settings.
fn install_intake(args: &RunArgs, sysctl: &Sysctl) -> anyhow::Result<Chosen> {
    let node = &args.node;
    let state = args.store.state_dir();
    let candidates = node.intake_candidates();
    if candidates.is_empty() {
        bail!(
            "no intake of --intake {:?} works on this kernel (socket core patterns need Linux 6.16+)",
            node.intake
        );
    }
    let mut failures = Vec::new();
    for candidate in candidates {
        let attempt = || -> anyhow::Result<Chosen> {
            match candidate.intake {
                Intake::Socket => {
                    let path = node.kernel_socket();
                    let listener = socket::bind(&path)
                        .with_context(|| format!("binding {}", path.display()))?;
                    // `@@` (Linux 6.17+) lets the agent refuse and hold; plain `@` is 6.16.
                    let mut last = None;
                    for protocol in [Protocol::Request, Protocol::Plain] {
                        let wanted =
                            node.managed_sysctls(Intake::Socket, Some(protocol.pattern(&path)))?;
                        match core_pattern::install(sysctl.clone(), &wanted, state) {
                            Ok(installed) => {
                                return Ok(Chosen {
                                    intake: Intake::Socket,
                                    kernel: Some((listener, protocol)),
                                    helper: None,
                                    installed: Some(installed),
                                });
                            }
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(anyhow::Error::new(last.expect("tried"))
                        .context("installing the socket core_pattern"))
                }
                Intake::Pipe => {
                    let path = node.helper_socket();
                    let listener = socket::bind(&path)
                        .with_context(|| format!("binding {}", path.display()))?;
                    let config = helper::config(path, node.receive_dir.clone(), &limits(args));
                    let installed_helper =
                        pipe::install(state, &config).context("installing the pipe helper")?;
                    let wanted =
                        node.managed_sysctls(Intake::Pipe, Some(pipe::pattern(&installed_helper)))?;
                    let installed = core_pattern::install(sysctl.clone(), &wanted, state)
                        .context("installing the pipe core_pattern")?;
                    Ok(Chosen {
                        intake: Intake::Pipe,
                        kernel: None,
                        helper: Some(listener),
                        installed: Some(installed),
                    })
                }
                Intake::File => {
                    let wanted = node.managed_sysctls(Intake::File, None)?;
                    let installed = if wanted.is_empty() {
                        None
                    } else {
                        Some(core_pattern::install(sysctl.clone(), &wanted, state)?)
                    };
                    Ok(Chosen {
                        intake: Intake::File,
                        kernel: None,
                        helper: None,
                        installed,
                    })
                }
            }
        };
        match attempt() {
            Ok(chosen) => {
                tracing::info!(intake = chosen.intake.name(), why = %candidate.why, "intake");
                return Ok(chosen);
            }
            Err(e) => {
                tracing::warn!(intake = candidate.intake.name(), error = %format!("{e:#}"), "intake not available: trying the next");
                failures.push(format!("{}: {e:#}", candidate.intake.name()));
            }
        }
    }
    bail!("no intake could be installed: {}", failures.join("; "))
}

/// What a receive may use, from the flags.
fn limits(args: &RunArgs) -> Limits {
    Limits {
        max_size: args.max_dump_size,
        min_free_disk: args.node.min_free_disk,
        compress: args.zstd(),
    }
}

/// Runs the agent until a shutdown signal.
pub async fn execute(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Its memory holds credentials; and with socket intake, the agent's own crash would be
    // handed to itself.
    if let Err(e) = crate::sys::set_not_dumpable() {
        tracing::warn!(error = %e, "could not make the agent non-dumpable");
    }
    let node = node_name(args.node.node_name.clone());
    std::fs::create_dir_all(args.store.state_dir()).with_context(|| {
        format!(
            "creating the state directory {}",
            args.store.state_dir().display()
        )
    })?;
    let _lock =
        crate::state::lock(args.store.state_dir()).context("locking the state directory")?;

    // The store first: if it is unreachable, say so before touching anything else.
    let dest = args.store.dest()?;
    let options = args.store.connect_options(Some(node.clone()));
    let store = store::connect(&dest, &options)
        .await
        .context("connecting to the store")?;
    store
        .check()
        .await
        .with_context(|| format!("checking that {} is writable", store.describe()))?;
    if let AnyStore::S3(s3) = &store {
        // Multipart uploads a crash or shutdown cut short would otherwise be billed forever.
        match s3.recover_uploads().await {
            Ok(0) => {}
            Ok(aborted) => tracing::info!(aborted, "aborted unfinished multipart uploads"),
            Err(e) => {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::new(e)), "could not look for unfinished multipart uploads")
            }
        }
    }
    let store = Arc::new(store);

    let sysctl = args.node.sysctl();
    let chosen = install_intake(&args, &sysctl)?;
    let intake = chosen.intake;
    let installed = chosen.installed.is_some();
    let wanted = match &chosen.installed {
        Some(i) => i.settings(),
        None => Vec::new(),
    };
    for stale in core_pattern::stale_backups(args.store.state_dir(), &wanted) {
        tracing::warn!(sysctl = stale.setting.name(), previous = %stale.previous, backup = %stale.backup.display(), fix = %stale.fix(), "a run that was killed set this and never restored it; this run does not manage it, so it is left as is");
    }
    let Chosen {
        kernel,
        helper,
        installed: installed_settings,
        ..
    } = chosen;
    let result = run_pipeline(&args, node, dest, store, &sysctl, intake, kernel, helper).await;
    if let Some(settings) = installed_settings
        && let Err(e) = settings.restore()
    {
        tracing::error!(error = %format!("{:#}", anyhow::Error::new(e)), "could not restore the kernel's core dump settings");
    }
    if installed && intake == Intake::Pipe {
        remove_helper(&args.node, args.store.state_dir());
    }
    result
}

/// Removes the installed pipe helper, unless core_pattern still runs it (a restore that
/// could not put the previous pattern back): a pattern naming a missing helper loses dumps.
pub fn remove_helper(node: &NodeArgs, state_dir: &Path) {
    let still = node
        .sysctl()
        .pattern()
        .is_ok_and(|p| pipe::is_helper_pattern(&p));
    if still {
        tracing::warn!("core_pattern still runs the pipe helper: left installed");
        return;
    }
    match pipe::uninstall(state_dir) {
        Ok(true) => tracing::info!("removed the pipe helper"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "could not remove the pipe helper"),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the pieces start-up assembled, each used once"
)]
async fn run_pipeline(
    args: &RunArgs,
    node: String,
    dest: Dest,
    store: Arc<store::AnyStore>,
    sysctl: &Sysctl,
    intake: Intake,
    kernel: Option<(UnixListener, Protocol)>,
    helper: Option<UnixListener>,
) -> anyhow::Result<ExitCode> {
    let state = args.store.state_dir();
    let policy = Policy::new(
        args.max_dumps_per_hour,
        args.node.min_free_disk,
        args.max_dump_size,
        args.require_attestation,
    );
    // Where dumps are: the receive directory (socket, pipe: and what a pipe helper wrote
    // while no agent ran), the dump directory (file).
    let receive = if intake.received() || args.node.receive_dir.exists() {
        Some(Arc::new(
            ReceiveDir::open(&args.node.receive_dir).with_context(|| {
                format!(
                    "opening the receive directory {}",
                    args.node.receive_dir.display()
                )
            })?,
        ))
    } else {
        None
    };
    let file = if intake == Intake::File {
        ensure_dump_dir(&args.node.dump_dir)?;
        let pattern = core_pattern(&args.node, sysctl)?;
        Some(FileIntake {
            dir: Arc::new(Dir::open(&args.node.dump_dir).with_context(|| {
                format!(
                    "opening the dump directory {}",
                    args.node.dump_dir.display()
                )
            })?),
            pattern,
            quarantine: Arc::new(Dir::private(state, QUARANTINE_DIR)?),
        })
    } else {
        None
    };
    let dirs = DumpDirs {
        file: file.as_ref().map(|f| f.dir.clone()),
        received: receive
            .as_ref()
            .map(|r| Arc::new(Dir::open(r.path()).expect("just opened"))),
    };
    let kept = if args.keep_local {
        Some(DumpDirs {
            file: file
                .as_ref()
                .map(|_| Dir::private(state, KEPT_DIR))
                .transpose()?
                .map(Arc::new),
            received: receive
                .as_ref()
                .map(|r| Dir::private(r.path(), KEPT_DIR))
                .transpose()?
                .map(Arc::new),
        })
    } else {
        None
    };
    let spool = Spool::open(state)?;
    let journal = CrashJournal::open(state)?;
    let claims = Claims::default();
    let resumed = spool.recover(&dirs, &claims, Some(&journal))?;
    let spooled: HashSet<String> = spool.receive_ids(&resumed);
    let received_backlog = match &receive {
        Some(r) => r.recover(&claims, &spooled)?,
        None => Vec::new(),
    };

    let probe = if args.no_probe {
        tracing::warn!("kernel probe disabled (--no-probe): dumps are stored without attestation");
        None
    } else {
        match Probe::load(args.node.hook) {
            Ok(p) => Some(p),
            Err(e) if args.require_attestation => {
                return Err(anyhow::Error::new(e)
                    .context("loading the crash probe (required by --require-attestation)"));
            }
            Err(e) => {
                tracing::error!(error = %format!("{:#}", anyhow::Error::new(e)), "kernel probe unavailable: running in degraded mode, dumps are stored without attestation");
                None
            }
        }
    };

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let health = Arc::new(Health::default());
    // The store passed its check in `execute`.
    health.store_ok.store(true, Ordering::Relaxed);
    health
        .probe_attached
        .store(probe.is_some(), Ordering::Relaxed);
    if let Ok(mut s) = health.spool.lock() {
        *s = Some(spool.clone());
    }
    crate::metrics::METRICS.set_max_namespaces(args.metrics_max_namespaces);
    crate::metrics::METRICS.set_build(crate::metrics::BuildLabels {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: crate::record::AgentInfo::current().kernel,
        hook: probe
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.hook().to_string()),
        intake: intake.name().to_owned(),
    });
    if let Some(addr) = args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (--listen)"))?;
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        tracker.spawn(health::serve(listener, health.clone(), cancel.clone()));
        tracker.spawn(health::watch_store(
            store.clone(),
            health.clone(),
            args.store_check_interval,
            cancel.clone(),
        ));
    }
    // Before any stage runs: `--kube on` without a configuration must stop the start here.
    let (pods, events) = pod_resolver(&args.node, &node, &tracker, cancel.clone()).await?;
    // In the order identity::sources documents: Kubernetes, then ECS.
    let mut sources: Vec<Arc<dyn WorkloadSource>> = vec![Arc::new(pods)];
    if let Some(ecs) = ecs_source(&args.node, &tracker, cancel.clone()).await? {
        sources.push(Arc::new(ecs));
    }
    let sources = Sources::new(sources);
    tracing::info!(sources = ?sources.names(), "workload sources");
    let enricher = Enricher {
        proc: ProcFs::default(),
        cgroups: cgroup_resolver(&args.node)?,
        sources,
        open_modules: intake == Intake::File && args.report.enabled(),
    };
    let (crash_tx, crash_rx) = mpsc::channel(CRASH_CAPACITY);
    let (facts_tx, facts_rx) = mpsc::channel(CRASH_CAPACITY);
    let (dump_tx, dump_rx) = mpsc::channel(DUMP_CAPACITY);
    let (job_tx, job_rx) = mpsc::channel(JOB_CAPACITY);
    let (reported_tx, reported_rx) = mpsc::channel(JOB_CAPACITY);
    let (spooled_tx, spooled_rx) = mpsc::channel(JOB_CAPACITY);

    // Consumers first, so nothing the sources produce waits on a stage that is not there.
    tracker.spawn(deliver::run(
        deliver::Config {
            prefix: dest.key_prefix().to_owned(),
            dirs: dirs.clone(),
            kept,
            receive: receive.clone(),
            concurrency: args.uploads,
            shutdown_grace: args.shutdown_grace,
            uri_base: match &dest {
                Dest::S3 { bucket, .. } => format!("s3://{bucket}/"),
                Dest::Local(root) => format!("file://{}/", root.display()),
            },
            notify: Notify { events },
            compress: args.zstd(),
            modules: args.report.modules(),
        },
        store.clone(),
        spool.clone(),
        claims.clone(),
        spooled_rx,
        cancel.clone(),
    ));
    for job in resumed {
        spooled_tx.send(job).await.context("deliver stage")?;
    }
    let spool_task = tracker.spawn(spool::run(
        spool.clone(),
        Some(journal.clone()),
        reported_rx,
        spooled_tx,
    ));
    tracker.spawn(crate::report::stage::run(
        args.report.config(state),
        job_rx,
        reported_tx,
    ));
    let correlate_task = tracker.spawn(correlate::run(
        correlate::Config {
            node,
            cluster: args.cluster_name.clone(),
            event_wait: args.event_wait,
            dump_wait: args.dump_wait,
            probe_running: probe.is_some(),
            file: file.clone(),
            policy: policy.clone(),
        },
        Some(journal.clone()),
        claims,
        facts_rx,
        dump_rx,
        job_tx,
    ));
    tracker.spawn(enrich::run(
        enricher.clone(),
        Some(journal),
        crash_rx,
        facts_tx,
    ));
    for received in received_backlog {
        dump_tx
            .send(DumpEvent::Received(Box::new(received)))
            .await
            .context("correlate stage")?;
    }
    let probe_task = match probe {
        Some(p) => Some(tracker.spawn(probe::run(p, crash_tx, cancel.clone()))),
        None => {
            drop(crash_tx); // no crash events: correlate must not wait for any
            None
        }
    };
    let reception = receive.as_ref().map(|dir| {
        Arc::new(Reception {
            dir: dir.clone(),
            enricher: enricher.clone(),
            policy: policy.clone(),
            limits: limits(args),
            scan: args
                .report
                .enabled()
                .then(crate::report::scan::Limits::default),
        })
    });
    let intake_task = match (intake, kernel, helper, reception) {
        (Intake::Socket, Some((listener, protocol)), _, Some(reception)) => {
            let cfg = socket::Config {
                path: args.node.kernel_socket(),
                protocol,
                concurrent: args.receives,
            };
            let token = cancel.child_token();
            tracker.spawn(async move {
                socket::run(cfg, listener, reception, dump_tx, token).await;
                Ok(())
            })
        }
        (Intake::Pipe, _, Some(listener), Some(reception)) => {
            let concurrent = args.receives;
            let token = cancel.child_token();
            tracker.spawn(async move {
                pipe::run(listener, concurrent, reception, dump_tx, token).await;
                Ok(())
            })
        }
        _ => {
            let watcher = Watcher::new(args.node.dump_dir.clone())?;
            let token = cancel.clone();
            tracker.spawn(async move {
                watch::run(watcher, dump_tx, token)
                    .await
                    .map_err(anyhow::Error::new)
            })
        }
    };
    tracker.close();
    health.running.store(true, Ordering::Relaxed);
    tracing::info!(dest = %store.describe(), intake = intake.name(), "agent running");

    let mut failed = false;
    tokio::select! {
        () = super::shutdown_signal() => {}
        r = intake_task => {
            tracing::error!(result = ?r.map(|r| r.map_err(|e| format!("{e:#}"))), "the intake stopped");
            failed = true;
        }
    }
    cancel.cancel();
    if let Some(t) = probe_task {
        match t.await {
            Ok(Ok(stats)) => crate::metrics::METRICS.lost_total(stats.dropped),
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "probe"),
            Err(e) => tracing::error!(error = %e, "probe task"),
        }
    }
    let deadline = args.shutdown_grace + std::time::Duration::from_secs(5);
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "shutdown deadline passed: leaving the rest spooled"
        );
    }
    if let Ok(Ok(Err(e))) = tokio::time::timeout(std::time::Duration::ZERO, correlate_task).await {
        tracing::error!(error = %e, "correlate");
    }
    if let Ok(Ok(Err(e))) = tokio::time::timeout(std::time::Duration::ZERO, spool_task).await {
        tracing::error!(error = %e, "spool");
    }
    tracing::info!("agent stopped");
    if failed {
        bail!("a pipeline stage failed");
    }
    Ok(ExitCode::SUCCESS)
}
