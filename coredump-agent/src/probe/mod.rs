//! probe: loads the eBPF crash probe, attaches it, and streams [`Crash`]es from its ring buffer.
//!
//! First stage of the pipeline: kernel → `probe` → correlate. It owns everything aya.
//!
//! # Minimum kernel version
//! 5.8 (BPF ring buffer). The BTF tracepoint hook needs 5.5+ and `/sys/kernel/btf/vmlinux`;
//! without BTF the classic tracepoint is used and namespace pids are not reported.

pub mod btf;
mod log;
pub mod tracefs;

use std::{io, path::Path, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use coredump_common::{
    CrashEvent, KernelOffsets, OFFSETS_ARGS, OFFSETS_BTF_ARGS, OFFSETS_EXE, OFFSETS_TASK, names,
    stats,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    crash::{Crash, Hook},
    sys,
};

/// The eBPF object built by `build.rs` (aya-build).
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/coredump"));

/// Why the probe could not be used. Each message names the cause and the fix; the agent can
/// then run without kernel attestation (`--require-attestation` turns that into an error).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not allowed to load BPF programs.
    #[error(
        "not permitted to load BPF programs (euid {euid}): run as root, or grant CAP_BPF, \
         CAP_PERFMON and CAP_DAC_READ_SEARCH"
    )]
    NotPermitted {
        /// Effective uid.
        euid: u32,
        /// The failing step.
        #[source]
        source: Box<ProbeError>,
    },
    /// Kernel lockdown forbids what the probe needs.
    #[error("kernel lockdown is `{mode}`: it forbids BPF reads of kernel memory")]
    Lockdown {
        /// The active lockdown mode.
        mode: String,
    },
    /// The object could not be loaded (maps, relocations).
    #[error("loading the eBPF object")]
    Object(#[from] aya::EbpfError),
    /// A program could not be verified, loaded or attached.
    #[error("loading or attaching {hook}")]
    Program {
        /// The hook.
        hook: Hook,
        /// The cause (the verifier log, for a rejection).
        #[source]
        source: ProgramError,
    },
    /// Neither hook could be attached.
    #[error("no usable kernel hook (tp_btf failed: {btf:#}); the classic tracepoint failed too")]
    NoHook {
        /// Why the BTF tracepoint failed.
        btf: Box<ProbeError>,
        /// Why the classic tracepoint failed.
        #[source]
        classic: Box<ProbeError>,
    },
    /// Kernel BTF is needed for this hook.
    #[error("kernel BTF unavailable")]
    Btf(#[from] btf::BtfError),
    /// tracefs could not be found or mounted, or its format file read.
    #[error("tracefs")]
    Tracefs(#[source] io::Error),
    /// A map is missing or has the wrong type.
    #[error("probe map `{name}`")]
    Map {
        /// Map name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// Reading the ring buffer failed.
    #[error("reading the crash ring buffer")]
    Read(#[source] io::Error),
}

/// Which hook to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// The BTF tracepoint, falling back to the classic tracepoint.
    #[default]
    Auto,
    /// Only the BTF tracepoint.
    TpBtf,
    /// Only the classic tracepoint.
    Tracepoint,
}

/// Counters kept by the probe in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProbeStats {
    /// Core-dumping deliveries seen.
    pub seen: u64,
    /// Events written to the ring buffer.
    pub events: u64,
    /// Events lost because the ring buffer was full.
    pub dropped: u64,
}

/// A loaded and attached probe. Dropping it detaches.
pub struct Probe {
    ebpf: Ebpf,
    hook: Hook,
    ring: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    /// The ring buffer's fill, when its positions could be mapped.
    fill: Option<sys::RingFill>,
    /// The probe's own log records (aya-log), when its map could be read.
    log: Option<log::ProbeLogger>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("hook", &self.hook)
            .finish_non_exhaustive()
    }
}

/// Offsets from the running kernel's BTF; missing pieces degrade, they do not fail the load.
fn kernel_offsets(offsets: &mut KernelOffsets) -> Result<(), btf::BtfError> {
    let btf = btf::Btf::from_file(Path::new(btf::VMLINUX))?;
    let task = (|| -> Result<(), btf::BtfError> {
        offsets.task_thread_pid = btf.member_offset("task_struct", &["thread_pid"])?;
        offsets.task_group_leader = btf.member_offset("task_struct", &["group_leader"])?;
        offsets.task_comm = btf.member_offset("task_struct", &["comm"])?;
        offsets.pid_level = btf.member_offset("pid", &["level"])?;
        offsets.pid_numbers = btf.member_offset("pid", &["numbers"])?;
        offsets.upid_size = btf.struct_size("upid")?;
        offsets.upid_nr = btf.member_offset("upid", &["nr"])?;
        offsets.upid_ns = btf.member_offset("upid", &["ns"])?;
        offsets.pidns_inum = btf.member_offset("pid_namespace", &["ns", "inum"])?;
        Ok(())
    })();
    match task {
        Ok(()) => offsets.valid |= OFFSETS_TASK,
        Err(e) => tracing::warn!(error = %e, "namespace pids will not be reported"),
    }
    let args = (|| -> Result<(), btf::BtfError> {
        offsets.task_mm = btf.member_offset("task_struct", &["mm"])?;
        offsets.mm_arg_start = btf.member_offset("mm_struct", &["arg_start"])?;
        offsets.mm_arg_end = btf.member_offset("mm_struct", &["arg_end"])?;
        Ok(())
    })();
    match args {
        Ok(()) => offsets.valid |= OFFSETS_ARGS,
        Err(e) => tracing::warn!(error = %e, "the kernel will not report command lines"),
    }
    let exe = (|| -> Result<(), btf::BtfError> {
        offsets.task_mm = btf.member_offset("task_struct", &["mm"])?;
        offsets.mm_exe_file = btf.member_offset("mm_struct", &["exe_file"])?;
        offsets.file_dentry = btf.member_offset("file", &["f_path", "dentry"])?;
        offsets.dentry_name = btf.member_offset("dentry", &["d_name", "name"])?;
        offsets.dentry_name_len = btf.member_offset("dentry", &["d_name", "len"])?;
        Ok(())
    })();
    match exe {
        Ok(()) => offsets.valid |= OFFSETS_EXE,
        Err(e) => tracing::warn!(error = %e, "the kernel will not report executable names"),
    }
    offsets.siginfo_code = btf.member_offset("kernel_siginfo", &["si_code"])?;
    offsets.ksigaction_handler = btf.member_offset("k_sigaction", &["sa", "sa_handler"])?;
    offsets.valid |= OFFSETS_BTF_ARGS;
    Ok(())
}

fn tracepoint_offsets(offsets: &mut KernelOffsets) -> Result<(), ProbeError> {
    let tracefs = tracefs::find_or_mount().map_err(ProbeError::Tracefs)?;
    let fields = tracefs::tracepoint_offsets(&tracefs, "signal", "signal_deliver")
        .map_err(ProbeError::Tracefs)?;
    let field = |name: &str| {
        fields.get(name).copied().ok_or_else(|| {
            ProbeError::Tracefs(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("signal_deliver format has no `{name}` field"),
            ))
        })
    };
    offsets.tp_sig = field("sig")?;
    offsets.tp_code = field("code")?;
    offsets.tp_sa_handler = field("sa_handler")?;
    Ok(())
}

fn attach(ebpf: &mut Ebpf, hook: Hook) -> Result<(), ProbeError> {
    let err = |source| ProbeError::Program { hook, source };
    match hook {
        Hook::TpBtf => {
            let btf = aya::Btf::from_sys_fs().map_err(|e| err(ProgramError::Btf(e)))?;
            let prog: &mut BtfTracePoint = program(ebpf, names::PROG_TP_BTF, hook)?;
            prog.load("signal_deliver", &btf).map_err(err)?;
            prog.attach().map_err(err)?;
        }
        Hook::Tracepoint => {
            let prog: &mut TracePoint = program(ebpf, names::PROG_TRACEPOINT, hook)?;
            prog.load().map_err(err)?;
            prog.attach("signal", "signal_deliver").map_err(err)?;
        }
    }
    Ok(())
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str, hook: Hook) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(ProbeError::Program {
        hook,
        source: ProgramError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    prog.try_into()
        .map_err(|source| ProbeError::Program { hook, source })
}

/// Names the most likely root cause of a failed load.
fn diagnose(err: ProbeError) -> ProbeError {
    if let Ok(lockdown) = std::fs::read_to_string("/sys/kernel/security/lockdown")
        && let Some(mode) = lockdown
            .split_whitespace()
            .find(|m| m.starts_with('['))
            .map(|m| m.trim_matches(['[', ']']).to_owned())
        && mode != "none"
    {
        return ProbeError::Lockdown { mode };
    }
    let euid = sys::euid();
    if euid != 0 {
        return ProbeError::NotPermitted {
            euid,
            source: Box::new(err),
        };
    }
    err
}

impl Probe {
    /// Loads the probe and attaches it with the chosen hook.
    pub fn load(choice: HookChoice) -> Result<Self, ProbeError> {
        Self::try_load(choice).map_err(diagnose)
    }

    fn try_load(choice: HookChoice) -> Result<Self, ProbeError> {
        if let Err(e) = sys::raise_memlock_rlimit() {
            tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK");
        }
        let mut offsets = KernelOffsets::default();
        let btf_offsets = kernel_offsets(&mut offsets);
        if let Err(e) = &btf_offsets {
            tracing::warn!(error = %e, "no kernel BTF: the BTF hook and namespace pids are unavailable");
        }
        let wants_classic = choice != HookChoice::TpBtf;
        let classic_offsets = if wants_classic {
            tracepoint_offsets(&mut offsets)
        } else {
            Ok(())
        };

        let mut ebpf = EbpfLoader::new()
            .override_global(names::OFFSETS, &offsets, true)
            .load(PROBE_OBJECT)?;

        let try_hook = |ebpf: &mut Ebpf, hook: Hook| -> Result<Hook, ProbeError> {
            match hook {
                Hook::TpBtf => btf_offsets.as_ref().map_err(|e| {
                    ProbeError::Btf(btf::BtfError::Malformed(
                        if matches!(e, btf::BtfError::Read { .. }) {
                            "no /sys/kernel/btf/vmlinux"
                        } else {
                            "kernel BTF lacks the signal_deliver argument types"
                        },
                    ))
                })?,
                Hook::Tracepoint => classic_offsets
                    .as_ref()
                    .map_err(|e| ProbeError::Tracefs(io::Error::other(e.to_string())))?,
            };
            attach(ebpf, hook).map(|()| hook)
        };
        let hook = match choice {
            HookChoice::TpBtf => try_hook(&mut ebpf, Hook::TpBtf)?,
            HookChoice::Tracepoint => try_hook(&mut ebpf, Hook::Tracepoint)?,
            HookChoice::Auto => match try_hook(&mut ebpf, Hook::TpBtf) {
                Ok(hook) => hook,
                Err(btf) => {
                    tracing::warn!(error = %format!("{btf:#}"), "BTF tracepoint unavailable; using the classic tracepoint");
                    try_hook(&mut ebpf, Hook::Tracepoint).map_err(|classic| ProbeError::NoHook {
                        btf: Box::new(btf),
                        classic: Box::new(classic),
                    })?
                }
            },
        };

        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::Map {
                name,
                source: aya::maps::MapError::InvalidName {
                    name: name.to_owned(),
                },
            })
        };
        let events = map(&mut ebpf, names::EVENTS)?;
        let capacity = match &events {
            aya::maps::Map::RingBuf(data) => data.info().ok().map(|i| u64::from(i.max_entries())),
            _ => None,
        };
        let ring = RingBuf::try_from(events).map_err(|source| ProbeError::Map {
            name: names::EVENTS,
            source,
        })?;
        // Its fill, for the metrics; the probe works without it.
        let fill = capacity.and_then(|capacity| {
            use std::os::fd::AsFd as _;
            sys::RingFill::new(ring.as_fd(), capacity)
                .inspect_err(|e| tracing::warn!(error = %e, "mapping the ring buffer's positions: no fill metric"))
                .ok()
        });
        let stats = PerCpuArray::try_from(map(&mut ebpf, names::STATS)?).map_err(|source| {
            ProbeError::Map {
                name: names::STATS,
                source,
            }
        })?;
        // The probe works without its log.
        let log = log::init(&mut ebpf)
            .inspect_err(|e| tracing::warn!(error = %e, "reading the probe's log: its rare trouble will not be logged"))
            .ok();
        tracing::info!(
            %hook,
            ns_pids = offsets.valid & OFFSETS_TASK != 0,
            cmdline = offsets.valid & OFFSETS_ARGS != 0,
            exe_name = offsets.valid & OFFSETS_EXE != 0,
            "crash probe attached"
        );
        Ok(Self {
            ebpf,
            hook,
            ring,
            stats,
            fill,
            log,
        })
    }

    /// The attached hook.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn stats(&self) -> ProbeStats {
        let sum = |index: u32| {
            self.stats
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        ProbeStats {
            seen: sum(stats::SEEN),
            events: sum(stats::EVENTS),
            dropped: sum(stats::DROPPED),
        }
    }
}

/// How often lost events are checked for while the ring is quiet.
const STATS_INTERVAL: Duration = Duration::from_secs(10);

/// How often crash events over a cgroup's budget are summed up in the log.
const THROTTLE_SUMMARY: Duration = Duration::from_secs(10);

/// Reads crashes until `cancel` fires or the receiver goes away, then detaches.
///
/// The channel applies backpressure to the reader, which leaves events in the kernel ring
/// buffer; only when that is full does the kernel drop (and count) events, which are logged.
pub async fn run(
    probe: Probe,
    tx: mpsc::Sender<Crash>,
    cancel: CancellationToken,
) -> Result<ProbeStats, ProbeError> {
    let Probe {
        ebpf,
        hook,
        ring,
        stats,
        fill,
        log,
    } = probe;
    if let Some(fill) = fill {
        crate::metrics::METRICS.set_ring_fill(fill);
    }
    let stats_probe = StatsReader { stats };
    let mut ring = sys::async_ring(ring).map_err(ProbeError::Read)?;
    let log_stop = cancel.child_token();
    let log_task = log.map(|log| tokio::spawn(log::forward(log, log_stop.clone())));
    let mut reported_drops = 0;
    let mut batch = Vec::new();
    // Taken before anything else: a cgroup in a crash loop spends its own budget only.
    let mut budget = crate::policy::CrashBudget::default();
    let mut throttled: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut last_summary = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tx.closed() => break,
            ready = ring.readable_mut() => {
                let mut guard = ready.map_err(ProbeError::Read)?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    match CrashEvent::from_bytes(&item) {
                        Some(ev) => batch.push(ev),
                        None => tracing::warn!(len = item.len(), "short ring buffer record"),
                    }
                }
                guard.clear_ready();
            }
            () = tokio::time::sleep(STATS_INTERVAL) => {}
        }
        for ev in batch.drain(..) {
            if !budget.admit(ev.cgroup_id, tokio::time::Instant::now()) {
                crate::metrics::METRICS.crash_events_throttled.inc();
                *throttled.entry(ev.cgroup_id).or_default() += 1;
                continue;
            }
            let time = sys::boot_to_system_time(Duration::from_nanos(ev.boot_ns));
            let crash = Crash::from_event(&ev, hook, time);
            let sent = tokio::select! {
                r = tx.send(crash) => r.is_ok(),
                () = cancel.cancelled() => false,
            };
            if !sent {
                break;
            }
        }
        if !throttled.is_empty() && last_summary.elapsed() >= THROTTLE_SUMMARY {
            for (cgroup_id, events) in throttled.drain() {
                tracing::warn!(
                    cgroup_id,
                    events,
                    "a cgroup crashing in a loop: crash events over its budget were not taken in"
                );
            }
            last_summary = tokio::time::Instant::now();
        }
        let dropped = stats_probe.sum(stats::DROPPED);
        crate::metrics::METRICS.lost_total(dropped);
        if dropped > reported_drops {
            tracing::error!(
                lost = dropped - reported_drops,
                total_lost = dropped,
                "crash events lost: the ring buffer was full"
            );
            reported_drops = dropped;
        }
    }
    let final_stats = stats_probe.snapshot();
    log_stop.cancel();
    if let Some(task) = log_task {
        let _ = task.await;
    }
    drop(ebpf);
    tracing::info!(
        seen = final_stats.seen,
        events = final_stats.events,
        dropped = final_stats.dropped,
        "crash probe detached"
    );
    Ok(final_stats)
}

/// The stats map, once the probe has been taken apart by [`run`].
struct StatsReader {
    stats: PerCpuArray<MapData, u64>,
}

impl StatsReader {
    fn sum(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    fn snapshot(&self) -> ProbeStats {
        ProbeStats {
            seen: self.sum(stats::SEEN),
            events: self.sum(stats::EVENTS),
            dropped: self.sum(stats::DROPPED),
        }
    }
}
