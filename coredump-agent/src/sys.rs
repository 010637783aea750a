//! The agent's only `unsafe`: thin, safe wrappers around the few syscalls std does not offer.
//!
//! Each wrapper takes and returns owned, checked Rust values; callers never see a raw pointer.
#![expect(
    unsafe_code,
    reason = "syscall wrappers; every block states why it is sound"
)]

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

fn path_cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn clock(id: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// `CLOCK_BOOTTIME`: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_time() -> io::Result<Duration> {
    clock(libc::CLOCK_BOOTTIME)
}

/// Converts a `CLOCK_BOOTTIME` reading into wall-clock time, using the current offset
/// between the two clocks (so a suspend before the crash is accounted for).
pub fn boot_to_system_time(boot: Duration) -> SystemTime {
    let now = SystemTime::now();
    match boot_time() {
        Ok(boot_now) => now - boot_now.saturating_sub(boot),
        Err(_) => now,
    }
}

/// Seconds since the epoch for a wall-clock time (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Raises `RLIMIT_MEMLOCK` to infinity: kernels before 5.11 charge BPF maps against it.
pub fn raise_memlock_rlimit() -> io::Result<()> {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `rlim` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `mount -t tracefs tracefs <target>`.
pub fn mount_tracefs(target: &Path) -> io::Result<()> {
    let target = path_cstring(target)?;
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Size of a kernfs file handle: the cgroup id as a u64.
const KERNFS_HANDLE_BYTES: usize = 8;
/// `FILEID_KERNFS`, the handle type kernfs (and so cgroupfs) uses.
const FILEID_KERNFS: libc::c_int = 0xfe;

/// `open_by_handle_at(mount_fd, {kernfs handle: cgroup_id})`: opens the cgroup directory whose
/// inode number is `cgroup_id`, in O(1). Needs `CAP_DAC_READ_SEARCH`.
pub fn open_cgroup_by_id(mount_fd: BorrowedFd<'_>, cgroup_id: u64) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: libc::c_uint,
        handle_type: libc::c_int,
        f_handle: [u8; KERNFS_HANDLE_BYTES],
    }
    let mut handle = KernfsHandle {
        handle_bytes: KERNFS_HANDLE_BYTES as libc::c_uint,
        handle_type: FILEID_KERNFS,
        f_handle: cgroup_id.to_ne_bytes(),
    };
    // SAFETY: `handle` has the `struct file_handle` layout with `handle_bytes` bytes of
    // payload, and stays alive for the call; the returned fd is checked before being owned.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            (&raw mut handle).cast::<libc::c_void>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A BPF ring buffer reader that owns its map's descriptor for its whole life (`MapData`
/// holds an `OwnedFd`): the probe's events, and aya-log's records.
pub trait OwnsRingFd: std::os::fd::AsRawFd {}
impl OwnsRingFd for aya::maps::RingBuf<aya::maps::MapData> {}
impl<L: log::Log> OwnsRingFd for aya_log::EbpfLogger<L> {}

/// Registers a BPF ring buffer reader with tokio's reactor.
pub fn async_ring<T: OwnsRingFd>(ring: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T` owns its map's fd (`OwnsRingFd`), so the fd stays open and refers to the same
    // map for as long as the `AsyncFd` holds it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// How full a BPF ring buffer is, read from the kernel's own positions through a read-only
/// mapping of the map's first two pages: the consumer's position, then the producer's. The
/// kernel allows a read-only mapping of any part of a ring buffer map, beside the reader's own.
pub struct RingFill {
    pages: std::ptr::NonNull<libc::c_void>,
    page: usize,
    capacity: u64,
}

// SAFETY: the mapping is read-only, owned by this value alone, and only read with atomic loads.
unsafe impl Send for RingFill {}
// SAFETY: as above: shared references only ever load atomically.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the positions of the ring buffer map `map`, whose data area is `capacity` bytes.
    pub fn new(map: BorrowedFd<'_>, capacity: u64) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::last_os_error())?;
        // SAFETY: a new shared, read-only mapping that nothing else refers to; the result is
        // checked before use and unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = std::ptr::NonNull::new(ptr).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            pages,
            page,
            capacity,
        })
    }

    /// Bytes written by the kernel and not read yet.
    pub fn used(&self) -> u64 {
        let position = |offset: usize| {
            // SAFETY: `offset` is 0 or one page into the two-page mapping, so a page-aligned
            // u64 inside it, which the kernel updates atomically (smp_store_release).
            let atomic = unsafe {
                &*self
                    .pages
                    .as_ptr()
                    .cast::<u8>()
                    .add(offset)
                    .cast::<std::sync::atomic::AtomicU64>()
            };
            atomic.load(std::sync::atomic::Ordering::Acquire)
        };
        let consumer = position(0);
        let producer = position(self.page);
        producer.saturating_sub(consumer).min(self.capacity)
    }

    /// The ring buffer's data area, in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing refers to any more.
        unsafe { libc::munmap(self.pages.as_ptr(), 2 * self.page) };
    }
}

/// Whether any process has `file` open for writing, e.g. the kernel still writing a core.
///
/// A read lease is granted exactly when no one has the file open for writing, so trying to
/// take one (and dropping it at once) answers the question without racing on sizes or times.
/// `file` must be opened read-only; needs to own the file or `CAP_LEASE`.
pub fn is_open_for_write(file: &std::fs::File) -> io::Result<bool> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a valid fd we own; F_SETLEASE takes an int argument.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == 0 {
        // SAFETY: as above; releasing the lease we just took.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Ok(false);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EBUSY) => Ok(true),
        _ => Err(err),
    }
}

/// Renames `from` to `to` (both absolute) without replacing an existing `to`
/// (`renameat2(RENAME_NOREPLACE)`): never moves a symlink's target, never clobbers.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (path_cstring(from)?, path_cstring(to)?);
    // SAFETY: both paths are valid NUL-terminated strings alive for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_PEERPIDFD` (Linux 6.5+; missing from older libc headers).
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd of the process at the other end of a unix socket (`SO_PEERPIDFD`). For a
/// coredump socket connection that is the crashing process, held even if its pid is reused.
pub fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are valid for writes of the sizes given, for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(io::Error::other("the kernel gave no pidfd for the peer"));
    }
    // SAFETY: getsockopt(SO_PEERPIDFD) returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct pidfd_info` (`linux/pidfd.h`) up to `coredump_mask`: 72 bytes, as Linux 6.16+ fills.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawPidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
    coredump_mask: u32,
    spare: u32,
}

const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_CGROUPID: u64 = 1 << 2;
const PIDFD_INFO_COREDUMP: u64 = 1 << 4;
const PIDFD_COREDUMPED: u32 = 1 << 0;
/// `_IOWR(0xFF, 11, struct pidfd_info)` for the 72-byte struct.
const PIDFD_GET_INFO: libc::c_ulong = 0xC048_FF0B;

/// What the kernel says of a process through its pidfd (`PIDFD_GET_INFO`, Linux 6.13+; the
/// coredump flag 6.16+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidfdInfo {
    /// Its pid in our pid namespace, while it lives.
    pub pid: Option<u32>,
    /// Its cgroup v2 id.
    pub cgroup_id: Option<u64>,
    /// Whether it is dumping core, or has (the kernel set this before connecting to a
    /// coredump socket). `None` when the kernel cannot say.
    pub coredumped: Option<bool>,
}

/// `PIDFD_GET_INFO` on a pidfd.
pub fn pidfd_info(pidfd: BorrowedFd<'_>) -> io::Result<PidfdInfo> {
    let mut info = RawPidfdInfo {
        mask: PIDFD_INFO_PID | PIDFD_INFO_CGROUPID | PIDFD_INFO_COREDUMP,
        ..RawPidfdInfo::default()
    };
    // SAFETY: `info` is a writable `struct pidfd_info` of the size the request number encodes.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &raw mut info) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PidfdInfo {
        pid: (info.mask & PIDFD_INFO_PID != 0).then_some(info.pid),
        cgroup_id: (info.mask & PIDFD_INFO_CGROUPID != 0).then_some(info.cgroupid),
        coredumped: (info.mask & PIDFD_INFO_COREDUMP != 0)
            .then_some(info.coredump_mask & PIDFD_COREDUMPED != 0),
    })
}

/// Whether the process a pidfd holds is still alive (signal 0 through the pidfd): if so, its
/// pid still names it. Only `ESRCH` means gone: a process of another user answers `EPERM` to an
/// agent without `CAP_KILL`, and is alive all the same.
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks; the fd is valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether this process has `cap` (`linux/capability.h` number) in its effective set, from
/// `/proc/self/status`.
pub fn has_effective_cap(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|set| cap < 64 && set & (1 << cap) != 0)
}

/// `CAP_SYS_ADMIN` and `CAP_SYS_CHROOT` (`linux/capability.h`): what `setns` into a mount
/// namespace takes.
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_CHROOT: u32 = 18;

/// The inode of a namespace file (`/proc/<pid>/ns/mnt`): equal inodes, same namespace.
pub fn namespace_inode(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).map(|m| m.ino())
}

/// Makes this process not dumpable (`PR_SET_DUMPABLE 0`): its memory holds credentials, and a
/// crash of the agent must not send its core to itself. Also keeps other users' ptrace out.
pub fn set_not_dumpable() -> io::Result<()> {
    Ok(rustix::process::set_dumpable_behavior(
        rustix::process::DumpableBehavior::NotDumpable,
    )?)
}

/// Free bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let cpath = path_cstring(path)?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `cpath` is NUL-terminated and `st` writable, both alive for the call.
    if unsafe { libc::statvfs(cpath.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_converts_to_now() {
        let boot = boot_time().unwrap();
        let t = boot_to_system_time(boot);
        let drift = SystemTime::now().duration_since(t).unwrap();
        assert!(drift < Duration::from_secs(1), "{drift:?}");
    }

    /// A process of another user is alive even to an agent without `CAP_KILL` (the deployed
    /// agent's case), whose signal 0 gets `EPERM`; once reaped it is gone.
    #[test]
    fn another_users_process_is_alive_without_cap_kill() {
        use std::os::unix::process::CommandExt;
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        if root {
            cmd.uid(65534).gid(65534);
        }
        let mut child = cmd.spawn().unwrap();
        // SAFETY: pidfd_open takes a pid and flags; the fd it returns is ours to own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: a fresh fd from pidfd_open, owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) };
        // Capabilities are per thread: drop CAP_KILL from the effective set of a scratch thread.
        let alive = std::thread::scope(|s| {
            s.spawn(|| {
                if root {
                    drop_effective_cap(CAP_KILL);
                }
                pidfd_alive(std::os::fd::AsFd::as_fd(&pidfd))
            })
            .join()
            .unwrap()
        });
        assert!(alive, "EPERM is not ESRCH");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!pidfd_alive(std::os::fd::AsFd::as_fd(&pidfd)), "reaped");
    }

    /// `CAP_KILL` (`linux/capability.h`).
    const CAP_KILL: u32 = 5;

    /// Drops one capability from this thread's effective set (`capset`, version 3).
    fn drop_effective_cap(cap: u32) {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget/capset with a version-3 header and the two data words it expects.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()),
                0
            );
            data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
            assert_eq!(
                libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()),
                0
            );
        }
    }

    #[test]
    fn free_bytes_of_tmp() {
        assert!(free_bytes(Path::new("/tmp")).unwrap() > 0);
        assert!(free_bytes(Path::new("/no/such/dir")).is_err());
    }
}
