//! Types shared by the kernel probe (`coredump-ebpf`) and the agent (`coredump-agent`).
//!
//! Everything here is `#[repr(C)]`, made of fixed-width integers with no implicit padding, so
//! both sides read the same bytes the same way. A `u32` flag word stands in for `bool`s, which
//! would have no stable layout across the BPF boundary.
#![no_std]
#![deny(missing_docs)]

/// Signals whose default action is to dump core (`man 7 signal`, "Core"), as a bit mask
/// indexed by signal number. Identical on x86_64 and aarch64.
pub const CORE_SIGNALS: u64 = (1 << 3) // SIGQUIT
    | (1 << 4) // SIGILL
    | (1 << 5) // SIGTRAP
    | (1 << 6) // SIGABRT
    | (1 << 7) // SIGBUS
    | (1 << 8) // SIGFPE
    | (1 << 11) // SIGSEGV
    | (1 << 24) // SIGXCPU
    | (1 << 25) // SIGXFSZ
    | (1 << 31); // SIGSYS

/// Whether the default action of `sig` is to terminate the process and dump core.
#[inline(always)]
pub const fn is_core_signal(sig: u32) -> bool {
    sig < 64 && CORE_SIGNALS & (1 << sig) != 0
}

/// Length of a kernel task name (`TASK_COMM_LEN`), NUL terminator included.
pub const COMM_LEN: usize = 16;

/// [`CrashEvent::flags`]: the namespace pid fields were read from the task.
pub const FLAG_NS_PIDS: u32 = 1 << 0;
/// [`CrashEvent::flags`]: [`CrashEvent::process_comm`] was read from the group leader.
pub const FLAG_PROCESS_COMM: u32 = 1 << 1;
/// [`CrashEvent::flags`]: emitted by the BTF tracepoint (`tp_btf`) rather than the classic one.
pub const FLAG_BTF_HOOK: u32 = 1 << 2;
/// [`CrashEvent::flags`]: `si_code` could not be read.
pub const FLAG_NO_SI_CODE: u32 = 1 << 3;
/// [`CrashEvent::flags`]: [`CrashEvent::args`] holds the first [`CrashEvent::args_len`] bytes
/// of the process's argument area (`mm->arg_start..arg_end`).
pub const FLAG_ARGS: u32 = 1 << 4;
/// [`CrashEvent::flags`]: the argument area was longer than [`ARGS_LEN`]; the rest was cut.
pub const FLAG_ARGS_TRUNCATED: u32 = 1 << 5;
/// [`CrashEvent::flags`]: the offsets were known but reading the argument area failed (for
/// example a page of it was not resident: the probe cannot fault pages in).
pub const FLAG_ARGS_FAULT: u32 = 1 << 6;
/// [`CrashEvent::flags`]: [`CrashEvent::exe_name`] holds the basename of the executable file.
pub const FLAG_EXE_NAME: u32 = 1 << 7;
/// [`CrashEvent::flags`]: the executable's name was longer than [`EXE_NAME_LEN`]` - 1` bytes
/// and was cut.
pub const FLAG_EXE_NAME_TRUNCATED: u32 = 1 << 8;

/// Bytes of the argument area (`/proc/<pid>/cmdline`) an event carries.
///
/// 512 holds the program and its options for nearly every command line (longer ones, a JVM's
/// class path say, are cut and marked). It is also what the S3 metadata keeps of a command
/// line, and keeps an event at 680 bytes, so the 1 MiB ring buffer holds about 1,500.
pub const ARGS_LEN: usize = 512;

/// Bytes for the executable's file name, NUL terminator included. A file name can be 255
/// bytes (`NAME_MAX`), but program names longer than 63 are rare; those are cut and marked.
pub const EXE_NAME_LEN: usize = 64;

/// One fatal, core-dumping signal delivery, as seen by the kernel at `signal_deliver` time:
/// the signal has its default action, so the kernel is about to attempt a core dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CrashEvent {
    /// `CLOCK_BOOTTIME` in nanoseconds (`bpf_ktime_get_boot_ns`).
    pub boot_ns: u64,
    /// cgroup v2 id of the crashing task: the inode number of its cgroup directory.
    pub cgroup_id: u64,
    /// Thread-group id (the "pid") in the initial pid namespace, as `%P` in `core_pattern`.
    pub host_tgid: u32,
    /// Thread id in the initial pid namespace, as `%I`.
    pub host_tid: u32,
    /// Thread-group id as seen in the task's own pid namespace, as `%p` (valid with [`FLAG_NS_PIDS`]).
    pub ns_tgid: u32,
    /// Thread id as seen in the task's own pid namespace, as `%i` (valid with [`FLAG_NS_PIDS`]).
    pub ns_tid: u32,
    /// Inode number of the task's pid namespace (valid with [`FLAG_NS_PIDS`]).
    pub pidns_inum: u32,
    /// Nesting level of the task's pid namespace; 0 is the host's (valid with [`FLAG_NS_PIDS`]).
    pub pidns_level: u32,
    /// Real uid in the initial user namespace.
    pub uid: u32,
    /// Real gid in the initial user namespace.
    pub gid: u32,
    /// Signal number.
    pub signal: u32,
    /// `si_code` of the signal (e.g. `SEGV_MAPERR`, or `SI_USER` for `kill`).
    pub si_code: i32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Reserved, zero; keeps the struct free of implicit padding.
    pub reserved: u32,
    /// Name of the crashing thread (`%e`), NUL padded.
    pub thread_comm: [u8; COMM_LEN],
    /// Name of the thread-group leader (the process), NUL padded (valid with [`FLAG_PROCESS_COMM`]).
    pub process_comm: [u8; COMM_LEN],
    /// Bytes of [`Self::args`] in use (valid with [`FLAG_ARGS`]).
    pub args_len: u32,
    /// Bytes of [`Self::exe_name`] in use, NUL excluded (valid with [`FLAG_EXE_NAME`]).
    pub exe_name_len: u32,
    /// The start of the process's argument area as its memory held it at the signal:
    /// NUL-separated, as `/proc/<pid>/cmdline`. Bytes past [`Self::args_len`] are zero.
    pub args: [u8; ARGS_LEN],
    /// Basename of the executable file (`mm->exe_file`'s dentry name), as the kernel has it:
    /// unlike the comm, the process cannot rename it. Bytes past [`Self::exe_name_len`] are
    /// zero.
    pub exe_name: [u8; EXE_NAME_LEN],
}

impl CrashEvent {
    /// Size in bytes of one event in the ring buffer.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// The argument area bytes the probe read; empty unless [`FLAG_ARGS`] is set.
    pub fn args(&self) -> &[u8] {
        if self.flags & FLAG_ARGS == 0 {
            return &[];
        }
        &self.args[..(self.args_len as usize).min(ARGS_LEN)]
    }

    /// The executable's name bytes the probe read; empty unless [`FLAG_EXE_NAME`] is set.
    pub fn exe_name(&self) -> &[u8] {
        if self.flags & FLAG_EXE_NAME == 0 {
            return &[];
        }
        &self.exe_name[..(self.exe_name_len as usize).min(EXE_NAME_LEN)]
    }

    /// Reads an event from a ring-buffer record; `None` if the record is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        // SAFETY: the length was checked above, `read_unaligned` has no alignment requirement,
        // and every bit pattern is a valid `CrashEvent` (integers and byte arrays only).
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

/// Kernel layout facts the probe needs, found by userspace at load time (from BTF and the
/// tracepoint's format file) and handed to the probe as a read-only global, so no offset is
/// compiled in for one kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KernelOffsets {
    /// Classic tracepoint record: offset of `sig`.
    pub tp_sig: u32,
    /// Classic tracepoint record: offset of `code`.
    pub tp_code: u32,
    /// Classic tracepoint record: offset of `sa_handler`.
    pub tp_sa_handler: u32,
    /// `struct kernel_siginfo`: offset of `si_code`.
    pub siginfo_code: u32,
    /// `struct k_sigaction`: offset of `sa.sa_handler`.
    pub ksigaction_handler: u32,
    /// `struct task_struct`: offset of `thread_pid`.
    pub task_thread_pid: u32,
    /// `struct task_struct`: offset of `group_leader`.
    pub task_group_leader: u32,
    /// `struct task_struct`: offset of `comm`.
    pub task_comm: u32,
    /// `struct pid`: offset of `level`.
    pub pid_level: u32,
    /// `struct pid`: offset of `numbers`.
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`.
    pub upid_size: u32,
    /// `struct upid`: offset of `nr`.
    pub upid_nr: u32,
    /// `struct upid`: offset of `ns`.
    pub upid_ns: u32,
    /// `struct pid_namespace`: offset of `ns.inum`.
    pub pidns_inum: u32,
    /// `struct task_struct`: offset of `mm`.
    pub task_mm: u32,
    /// `struct mm_struct`: offset of `arg_start`.
    pub mm_arg_start: u32,
    /// `struct mm_struct`: offset of `arg_end`.
    pub mm_arg_end: u32,
    /// `struct mm_struct`: offset of `exe_file`.
    pub mm_exe_file: u32,
    /// `struct file`: offset of `f_path.dentry`.
    pub file_dentry: u32,
    /// `struct dentry`: offset of `d_name.name`.
    pub dentry_name: u32,
    /// `struct dentry`: offset of `d_name.len`.
    pub dentry_name_len: u32,
    /// `OFFSETS_*` bits saying which groups of offsets are valid.
    pub valid: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// [`KernelOffsets::valid`]: the task / pid namespace offsets are known.
pub const OFFSETS_TASK: u32 = 1 << 0;
/// [`KernelOffsets::valid`]: the `tp_btf` argument offsets (siginfo, k_sigaction) are known.
pub const OFFSETS_BTF_ARGS: u32 = 1 << 1;
/// [`KernelOffsets::valid`]: the argument area offsets (`task_struct.mm`, `mm_struct.arg_*`)
/// are known.
pub const OFFSETS_ARGS: u32 = 1 << 2;
/// [`KernelOffsets::valid`]: the executable name offsets (`task_struct.mm`,
/// `mm_struct.exe_file`, `file.f_path.dentry`, `dentry.d_name`) are known.
pub const OFFSETS_EXE: u32 = 1 << 3;

/// Indexes into the probe's per-CPU `STATS` array.
pub mod stats {
    /// Events written to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Events lost because the ring buffer was full.
    pub const DROPPED: u32 = 1;
    /// Core-dumping deliveries seen (written or not).
    pub const SEEN: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// Names of the probe's maps and globals, shared so a rename breaks the build, not the load.
pub mod names {
    /// Ring buffer of [`CrashEvent`](crate::CrashEvent)s.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU counters, indexed by [`stats`](crate::stats).
    pub const STATS: &str = "STATS";
    /// The [`KernelOffsets`](crate::KernelOffsets) global.
    pub const OFFSETS: &str = "OFFSETS";
    /// Classic tracepoint program.
    pub const PROG_TRACEPOINT: &str = "signal_deliver";
    /// BTF tracepoint program.
    pub const PROG_TP_BTF: &str = "signal_deliver_btf";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, integer and byte-array fields only, no padding (checked below).
    unsafe impl aya::Pod for super::CrashEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
}

// No implicit padding: the sizes are the sums of the fields.
const _: () = assert!(CrashEvent::SIZE == 2 * 8 + 14 * 4 + 2 * COMM_LEN + ARGS_LEN + EXE_NAME_LEN);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 23 * 4);
// The ring buffer reserves 8-byte aligned records: keep the event a multiple of 8 so its size
// is what it costs.
const _: () = assert!(CrashEvent::SIZE.is_multiple_of(8));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_signals_match_man_7_signal() {
        let core: [u32; 10] = [3, 4, 5, 6, 7, 8, 11, 24, 25, 31];
        for sig in 0..70 {
            assert_eq!(is_core_signal(sig), core.contains(&sig), "signal {sig}");
        }
    }

    #[test]
    fn from_bytes_checks_length_and_round_trips() {
        let ev = CrashEvent {
            boot_ns: 1,
            cgroup_id: 2,
            host_tgid: 3,
            host_tid: 4,
            ns_tgid: 5,
            ns_tid: 6,
            pidns_inum: 7,
            pidns_level: 8,
            uid: 9,
            gid: 10,
            signal: 11,
            si_code: -6,
            flags: FLAG_NS_PIDS,
            reserved: 0,
            thread_comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            process_comm: *b"server\0\0\0\0\0\0\0\0\0\0",
            args_len: 3,
            exe_name_len: 6,
            args: [b'a'; ARGS_LEN],
            exe_name: [b'x'; EXE_NAME_LEN],
        };
        // SAFETY (test): viewing a Pod struct as bytes.
        let bytes =
            unsafe { core::slice::from_raw_parts((&raw const ev).cast::<u8>(), CrashEvent::SIZE) };
        assert_eq!(CrashEvent::from_bytes(bytes), Some(ev));
        assert_eq!(CrashEvent::from_bytes(&bytes[..CrashEvent::SIZE - 1]), None);
    }

    #[test]
    fn args_and_exe_name_follow_their_flags_and_lengths() {
        let mut ev = CrashEvent::from_bytes(&[0; CrashEvent::SIZE]).unwrap();
        ev.args[..8].copy_from_slice(b"ls\0-l\0\0x");
        ev.args_len = 7;
        ev.exe_name[..3].copy_from_slice(b"lsX");
        ev.exe_name_len = 2;
        assert_eq!((ev.args(), ev.exe_name()), (&[][..], &[][..]), "no flags");
        ev.flags = FLAG_ARGS | FLAG_EXE_NAME;
        assert_eq!(ev.args(), b"ls\0-l\0\0");
        assert_eq!(ev.exe_name(), b"ls");
        // A length past the buffer (never written by the probe) is clamped, not trusted.
        ev.args_len = u32::MAX;
        ev.exe_name_len = 1000;
        assert_eq!(
            (ev.args().len(), ev.exe_name().len()),
            (ARGS_LEN, EXE_NAME_LEN)
        );
    }
}
