//! `signal/signal_deliver`: the kernel is delivering a signal to the current task.
//!
//! When the signal's handler is `SIG_DFL` and its default action is "core", `get_signal()` goes
//! on to `do_coredump()` right after this tracepoint, in the context of the crashing thread.
//! So this is the one place where the kernel itself tells us *who* is about to dump core
//! (pid, namespace, cgroup, credentials), before any file exists and before the process is gone.
//!
//! Two hooks read the same delivery; userspace attaches one of them:
//! - `tp_btf/signal_deliver` (BTF tracepoint): raw arguments `(int sig, struct kernel_siginfo
//!   *info, struct k_sigaction *ka)`, no record formatting; cheaper, needs kernel BTF (5.5+).
//! - `tracepoint/signal/signal_deliver` (classic): the formatted record, offsets from its
//!   format file; works without BTF.

use aya_ebpf::{
    EbpfContext as _, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use coredump_common::{
    COMM_LEN, CrashEvent, FLAG_BTF_HOOK, FLAG_NO_SI_CODE, FLAG_NS_PIDS, FLAG_PROCESS_COMM,
    KernelOffsets, OFFSETS_BTF_ARGS, OFFSETS_TASK, is_core_signal, stats,
};

/// Set by userspace at load time (`EbpfLoader::override_global`); zero means "unknown".
#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    tp_sig: 0,
    tp_code: 0,
    tp_sa_handler: 0,
    siginfo_code: 0,
    ksigaction_handler: 0,
    task_thread_pid: 0,
    task_group_leader: 0,
    task_comm: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
    upid_ns: 0,
    pidns_inum: 0,
    valid: 0,
    reserved: 0,
});

/// 256 KiB: about 2,700 events. Crashes are rare; this absorbs a crash storm while the agent
/// catches up, and drops beyond it are counted.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// `SIG_DFL` is handler value 0.
const SIG_DFL: u64 = 0;

#[tracepoint(category = "signal", name = "signal_deliver")]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    let off = OFFSETS.load();
    // SAFETY: the offsets come from this tracepoint's format file; `read_at` goes through
    // `bpf_probe_read_kernel`, which fails cleanly instead of faulting.
    let (Ok(sig), Ok(handler)) = (unsafe { ctx.read_at::<i32>(off.tp_sig as usize) }, unsafe {
        ctx.read_at::<u64>(off.tp_sa_handler as usize)
    }) else {
        return 0;
    };
    if handler != SIG_DFL || !is_core_signal(sig as u32) {
        return 0;
    }
    // SAFETY: as above.
    let code = unsafe { ctx.read_at::<i32>(off.tp_code as usize) }.ok();
    report(&off, sig as u32, code, 0);
    0
}

#[btf_tracepoint(function = "signal_deliver")]
pub fn signal_deliver_btf(ctx: BtfTracePointContext) -> i32 {
    let off = OFFSETS.load();
    let sig = arg(&ctx, 0) as u32;
    // Filter on the signal first: most deliveries stop here, before any pointer is read.
    if !is_core_signal(sig) || off.valid & OFFSETS_BTF_ARGS == 0 {
        return 0;
    }
    // `ka` is NULL when a group exit forces SIGKILL, which the filter above already excluded;
    // a failed read still means "not a default-action delivery we can vouch for".
    let Some(handler) = read::<u64>(arg(&ctx, 2), off.ksigaction_handler) else {
        return 0;
    };
    if handler != SIG_DFL {
        return 0;
    }
    let code = read::<i32>(arg(&ctx, 1), off.siginfo_code);
    report(&off, sig, code, FLAG_BTF_HOOK);
    0
}

/// The `n`th raw argument of a BTF tracepoint, as a plain number.
///
/// Read through `bpf_probe_read_kernel` rather than `ctx.arg()`: the verifier types a direct
/// load as a BTF pointer, and then forbids adding the offsets (which it sees as variables).
#[inline(always)]
fn arg(ctx: &BtfTracePointContext, n: usize) -> u64 {
    // SAFETY: a tp_btf context is an array of u64 arguments; `signal_deliver` has three.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u64>().add(n)) }.unwrap_or(0)
}

/// Reads a `T` at `base + offset` in kernel memory; `None` for a NULL base or a failed read.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: `bpf_probe_read_kernel` validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and BPF programs do not migrate CPUs while running.
        unsafe { *counter += 1 };
    }
}

/// Gathers the crashing task's identity and writes one event.
#[inline(always)]
fn report(off: &KernelOffsets, signal: u32, si_code: Option<i32>, flags: u32) {
    count(stats::SEEN);
    let Some(mut entry) = EVENTS.reserve::<CrashEvent>(0) else {
        count(stats::DROPPED);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mut ev = CrashEvent {
        // SAFETY: plain helper calls with no arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        host_tgid: (pid_tgid >> 32) as u32,
        host_tid: pid_tgid as u32,
        ns_tgid: 0,
        ns_tid: 0,
        pidns_inum: 0,
        pidns_level: 0,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        signal,
        si_code: si_code.unwrap_or(0),
        flags: flags
            | if si_code.is_none() {
                FLAG_NO_SI_CODE
            } else {
                0
            },
        reserved: 0,
        thread_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        process_comm: [0; COMM_LEN],
    };
    if off.valid & OFFSETS_TASK != 0 {
        fill_task(off, &mut ev);
    }
    entry.write(ev);
    entry.submit(0);
    count(stats::EVENTS);
}

/// Namespace pids and the process name, read from `current` with offsets from BTF.
#[inline(always)]
fn fill_task(off: &KernelOffsets, ev: &mut CrashEvent) {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let leader = read::<u64>(task, off.task_group_leader).unwrap_or(0);
    if let (Some(thread), Some(process)) = (ns_pid(off, task), ns_pid(off, leader)) {
        ev.ns_tid = thread.nr;
        ev.ns_tgid = process.nr;
        ev.pidns_level = thread.level;
        ev.pidns_inum = thread.ns_inum;
        ev.flags |= FLAG_NS_PIDS;
    }
    if let Some(comm) = read::<[u8; COMM_LEN]>(leader, off.task_comm) {
        ev.process_comm = comm;
        ev.flags |= FLAG_PROCESS_COMM;
    }
}

struct NsPid {
    nr: u32,
    level: u32,
    ns_inum: u32,
}

/// `task->thread_pid->numbers[level]`: the task's id in its own (innermost) pid namespace.
#[inline(always)]
fn ns_pid(off: &KernelOffsets, task: u64) -> Option<NsPid> {
    let pid = read::<u64>(task, off.task_thread_pid)?;
    let level = read::<u32>(pid, off.pid_level)?;
    let upid = pid + u64::from(off.pid_numbers) + u64::from(level) * u64::from(off.upid_size);
    let nr = read::<i32>(upid, off.upid_nr)?;
    let ns = read::<u64>(upid, off.upid_ns)?;
    let ns_inum = read::<u32>(ns, off.pidns_inum).unwrap_or(0);
    Some(NsPid {
        nr: nr as u32,
        level,
        ns_inum,
    })
}
