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
//!
//! Both run in the crashing task's context, so `current->mm` is the crashing process's memory:
//! the start of its argument area (what `/proc/<pid>/cmdline` shows) is read from there, and
//! the executable's name from `mm->exe_file`, before the process (and its `/proc` entry) is gone.
//!
//! Rare trouble (a full ring buffer, a read that fails on a core-dumping delivery) is logged
//! through `aya-log`, which userspace forwards to `tracing`; nothing is logged on the common
//! path (a signal that does not dump core).

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use coredump_common::{
    ARGS_LEN, COMM_LEN, CrashEvent, EXE_NAME_LEN, FLAG_ARGS, FLAG_ARGS_FAULT, FLAG_ARGS_TRUNCATED,
    FLAG_BTF_HOOK, FLAG_EXE_NAME, FLAG_EXE_NAME_TRUNCATED, FLAG_NO_SI_CODE, FLAG_NS_PIDS,
    FLAG_PROCESS_COMM, KernelOffsets, OFFSETS_ARGS, OFFSETS_BTF_ARGS, OFFSETS_EXE, OFFSETS_TASK,
    is_core_signal, stats,
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
    task_mm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_exe_file: 0,
    file_dentry: 0,
    dentry_name: 0,
    dentry_name_len: 0,
    valid: 0,
    reserved: 0,
});

/// 1 MiB: about 1,500 events of 680 bytes (+ an 8-byte record header). Crashes are rare; this
/// absorbs a crash storm while the agent catches up, and drops beyond it are counted.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// `SIG_DFL` is handler value 0.
const SIG_DFL: u64 = 0;

/// One field of [`OFFSETS`], read on its own. `Global::load` reads the whole struct
/// (volatile, so it is never elided); before the filter, only what the filter needs is read.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: `Global` is `repr(transparent)` over an always initialised `KernelOffsets`;
        // a volatile read of one of its fields, like `Global::load` of all of them.
        unsafe {
            core::ptr::read_volatile(
                &raw const (*(&raw const OFFSETS).cast::<KernelOffsets>()).$field,
            )
        }
    };
}

#[tracepoint(category = "signal", name = "signal_deliver")]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    let (tp_sig, tp_sa_handler) = (offset!(tp_sig), offset!(tp_sa_handler));
    // SAFETY: the offsets come from this tracepoint's format file; `read_at` goes through
    // `bpf_probe_read_kernel`, which fails cleanly instead of faulting.
    let (Ok(sig), Ok(handler)) = (unsafe { ctx.read_at::<i32>(tp_sig as usize) }, unsafe {
        ctx.read_at::<u64>(tp_sa_handler as usize)
    }) else {
        return 0;
    };
    if handler != SIG_DFL || !is_core_signal(sig as u32) {
        return 0;
    }
    let off = OFFSETS.load();
    // SAFETY: as above.
    let code = unsafe { ctx.read_at::<i32>(off.tp_code as usize) }.ok();
    report(&ctx, &off, sig as u32, code, 0);
    0
}

#[btf_tracepoint(function = "signal_deliver")]
pub fn signal_deliver_btf(ctx: BtfTracePointContext) -> i32 {
    let sig = arg(&ctx, 0) as u32;
    // Filter on the signal first: most deliveries stop here, before any offset or pointer is
    // read.
    if !is_core_signal(sig) {
        return 0;
    }
    let off = OFFSETS.load();
    if off.valid & OFFSETS_BTF_ARGS == 0 {
        return 0;
    }
    // `ka` is NULL when a group exit forces SIGKILL, which the filter above already excluded;
    // a failed read still means "not a default-action delivery we can vouch for".
    let Some(handler) = read::<u64>(arg(&ctx, 2), off.ksigaction_handler) else {
        warn!(&ctx, "cannot read the handler of signal {}: no event", sig);
        return 0;
    };
    if handler != SIG_DFL {
        return 0;
    }
    let code = read::<i32>(arg(&ctx, 1), off.siginfo_code);
    report(&ctx, &off, sig, code, FLAG_BTF_HOOK);
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
///
/// The event (680 bytes) is larger than the BPF stack (512), so it is filled in place in the
/// ring buffer reservation, never built on the stack.
#[inline(always)]
fn report<C: EbpfContext>(
    ctx: &C,
    off: &KernelOffsets,
    signal: u32,
    si_code: Option<i32>,
    flags: u32,
) {
    count(stats::SEEN);
    let Some(mut entry) = EVENTS.reserve::<CrashEvent>(0) else {
        count(stats::DROPPED);
        warn!(
            ctx,
            "crash event ring buffer full: the crash of pid {} (signal {}) is lost",
            ctx.tgid(),
            signal
        );
        return;
    };
    let ptr = entry.as_mut_ptr();
    // SAFETY: the reservation is `size_of::<CrashEvent>()` writable bytes, 8-byte aligned, and
    // ours until submitted. Zeroing it first (inline stores, no stack) makes it a valid
    // `CrashEvent` to take a reference to, and leaves no stale bytes of an earlier event
    // past the lengths of `args` and `exe_name`.
    let ev = unsafe {
        core::ptr::write_bytes(ptr, 0, 1);
        &mut *ptr
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: plain helper calls with no arguments.
    ev.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: as above.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.host_tgid = (pid_tgid >> 32) as u32;
    ev.host_tid = pid_tgid as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.signal = signal;
    ev.si_code = si_code.unwrap_or(0);
    ev.flags = flags
        | if si_code.is_none() {
            FLAG_NO_SI_CODE
        } else {
            0
        };
    if let Ok(comm) = bpf_get_current_comm() {
        ev.thread_comm = comm;
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    if off.valid & OFFSETS_TASK != 0 {
        if !fill_task(off, task, ev) {
            warn!(
                ctx,
                "cannot read the pid namespace of pid {}: the event has host pids only",
                ev.host_tgid
            );
        }
    }
    if off.valid & (OFFSETS_ARGS | OFFSETS_EXE) != 0 {
        // NULL only for kernel threads, which are not sent core-dumping signals.
        let mm = read::<u64>(task, off.task_mm).unwrap_or(0);
        if off.valid & OFFSETS_ARGS != 0 {
            fill_args(off, mm, ev);
        }
        if off.valid & OFFSETS_EXE != 0 {
            fill_exe_name(off, mm, ev);
        }
    }
    entry.submit(0);
    count(stats::EVENTS);
}

/// Namespace pids and the process name, read from `current` with offsets from BTF; whether the
/// namespace pids could be read.
#[inline(always)]
fn fill_task(off: &KernelOffsets, task: u64, ev: &mut CrashEvent) -> bool {
    let leader = read::<u64>(task, off.task_group_leader).unwrap_or(0);
    let ns_pids = if let (Some(thread), Some(process)) = (ns_pid(off, task), ns_pid(off, leader)) {
        ev.ns_tid = thread.nr;
        ev.ns_tgid = process.nr;
        ev.pidns_level = thread.level;
        ev.pidns_inum = thread.ns_inum;
        ev.flags |= FLAG_NS_PIDS;
        true
    } else {
        false
    };
    if let Some(comm) = read::<[u8; COMM_LEN]>(leader, off.task_comm) {
        ev.process_comm = comm;
        ev.flags |= FLAG_PROCESS_COMM;
    }
    ns_pids
}

/// The first [`ARGS_LEN`] bytes of `mm->arg_start..arg_end`, the process's argv strings.
///
/// A user-memory read from a tracepoint cannot fault pages in: if part of the area is not
/// resident, the event says so ([`FLAG_ARGS_FAULT`]) and goes out without it.
#[inline(always)]
fn fill_args(off: &KernelOffsets, mm: u64, ev: &mut CrashEvent) {
    let (Some(start), Some(end)) = (
        read::<u64>(mm, off.mm_arg_start),
        read::<u64>(mm, off.mm_arg_end),
    ) else {
        return;
    };
    let total = end.saturating_sub(start);
    let len = if total > ARGS_LEN as u64 {
        ev.flags |= FLAG_ARGS_TRUNCATED;
        ARGS_LEN as u32
    } else {
        total as u32
    };
    if len == 0 {
        ev.flags |= FLAG_ARGS;
        return;
    }
    if read_user(ev, start, len) {
        ev.args_len = len;
        ev.flags |= FLAG_ARGS;
        return;
    }
    ev.flags |= FLAG_ARGS_FAULT;
    // The area's first page is the likeliest to be resident (the argv strings are written at
    // exec and sit right below the environment): keep what it holds rather than nothing.
    let in_page = (PAGE_4K - (start & (PAGE_4K - 1))) as u32;
    if in_page < len && read_user(ev, start, in_page) {
        ev.args_len = in_page;
        ev.flags |= FLAG_ARGS | FLAG_ARGS_TRUNCATED;
    }
}

/// The smallest page size: a 4 KiB boundary is a page boundary whatever the page size.
const PAGE_4K: u64 = 4096;

/// Reads `len` bytes of user memory at `src` into `ev.args`; whether it succeeded.
#[inline(always)]
fn read_user(ev: &mut CrashEvent, src: u64, len: u32) -> bool {
    // Clamp again where the size is used, so the verifier sees the bound on this register.
    let len = if len > ARGS_LEN as u32 {
        ARGS_LEN as u32
    } else {
        len
    };
    // SAFETY: at most `ARGS_LEN` bytes, the size of the destination in the reservation;
    // `bpf_probe_read_user` validates the source and fails instead of faulting.
    let ret = unsafe {
        generated::bpf_probe_read_user(ev.args.as_mut_ptr().cast(), len, src as *const _)
    };
    ret == 0
}

/// `mm->exe_file->f_path.dentry->d_name`: the executable's file name, without its directory
/// (`bpf_d_path` is not allowed from tracepoints).
#[inline(always)]
fn fill_exe_name(off: &KernelOffsets, mm: u64, ev: &mut CrashEvent) {
    let Some(file) = read::<u64>(mm, off.mm_exe_file) else {
        return;
    };
    let Some(dentry) = read::<u64>(file, off.file_dentry) else {
        return;
    };
    let (Some(name), Some(name_len)) = (
        read::<u64>(dentry, off.dentry_name),
        read::<u32>(dentry, off.dentry_name_len),
    ) else {
        return;
    };
    if name == 0 {
        return;
    }
    // SAFETY: the destination is `EXE_NAME_LEN` bytes of the reservation;
    // `bpf_probe_read_kernel_str` validates the source and always NUL-terminates.
    let ret = unsafe {
        generated::bpf_probe_read_kernel_str(
            ev.exe_name.as_mut_ptr().cast(),
            EXE_NAME_LEN as u32,
            name as *const _,
        )
    };
    if ret > 0 {
        // The count includes the NUL.
        ev.exe_name_len = ret as u32 - 1;
        ev.flags |= FLAG_EXE_NAME;
        if name_len as usize >= EXE_NAME_LEN {
            ev.flags |= FLAG_EXE_NAME_TRUNCATED;
        }
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
