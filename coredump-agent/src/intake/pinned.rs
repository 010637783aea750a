//! intake::pinned: the crashed process, held by a pidfd while the kernel waits for the agent.
//!
//! With socket and pipe intake the kernel keeps a dumping process in `do_coredump()` until the
//! agent lets it go (socket `COREDUMP_WAIT`, or the pipe helper still running with
//! `core_pipe_limit` set). Its `/proc/<pid>` is complete then: exe, cmdline, cgroup, maps. A
//! pidfd proves the pid still names that process when the reading is done, so a pid reused in
//! between can never lend its facts to another crash.
//!
//! Blocking: `/proc` reads of a dumping process may wait on its memory map. Call from a
//! blocking thread.

use std::os::fd::{AsFd as _, OwnedFd};

use crate::{enrich::ProcFs, record::ProcessInfo, sys};

/// A crashed process, pinned.
#[derive(Debug)]
pub struct Pinned {
    /// Its pid in the agent's pid namespace (the host's, as the DaemonSet runs).
    pub host_pid: u32,
    pidfd: OwnedFd,
    info: Option<sys::PidfdInfo>,
}

impl Pinned {
    /// The process at the other end of a coredump socket connection: the kernel made the
    /// connection on its behalf, so its credentials are the crashed process's.
    pub fn peer(socket: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Self> {
        let cred = rustix::net::sockopt::socket_peercred(socket)?;
        let pidfd = sys::peer_pidfd(socket)?;
        Ok(Self::with(cred.pid.as_raw_pid().unsigned_abs(), pidfd))
    }

    /// The process the kernel named by pid (the pipe helper's `%P`).
    pub fn pid(host_pid: u32) -> std::io::Result<Self> {
        let pid = i32::try_from(host_pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| std::io::Error::other(format!("{host_pid} is not a pid")))?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        Ok(Self::with(host_pid, pidfd))
    }

    fn with(host_pid: u32, pidfd: OwnedFd) -> Self {
        // PIDFD_GET_INFO is Linux 6.13+; without it the facts come from /proc alone.
        let info = sys::pidfd_info(pidfd.as_fd()).ok();
        Self {
            host_pid,
            pidfd,
            info,
        }
    }

    /// Whether the kernel says this process is dumping core: the pidfd's coredump flag
    /// (Linux 6.16+, socket intake), or `CoreDumping: 1` in its status. A process that merely connects to
    /// the agent's socket, or a pid a helper made up, is not.
    pub fn dumping(&self, proc: &ProcFs) -> bool {
        // The pidfd flag is set before the kernel connects to a coredump socket, not before it
        // runs a pipe helper: there, `/proc` says it.
        let flagged = self
            .info
            .is_some_and(|i| i.coredumped == Some(true) && i.pid == Some(self.host_pid));
        flagged || (proc.core_dumping(self.host_pid) && self.alive())
    }

    /// The kernel's cgroup id for it (`PIDFD_GET_INFO`), when the kernel gives it.
    pub fn cgroup_id(&self) -> Option<u64> {
        self.info.and_then(|i| i.cgroup_id)
    }

    /// What `/proc` says of it, if it is still this process once read.
    pub fn read(&self, proc: &ProcFs) -> Option<ProcessInfo> {
        let info = proc.process(self.host_pid)?;
        self.alive().then_some(info)
    }

    /// Whether the pinned process still exists (so its pid still names it).
    pub fn alive(&self) -> bool {
        sys::pidfd_alive(self.pidfd.as_fd())
    }
}
