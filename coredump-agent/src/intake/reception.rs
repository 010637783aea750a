//! intake::reception: what socket and pipe intake share once the kernel has named a crashed
//! process: check that it really is dumping, read it while it is pinned, decide whether its
//! dump is wanted before the kernel writes a byte, then receive the dump into the receive
//! directory.
//!
//! Blocking throughout (`/proc` of a dumping process, the stream, fsync): run on a blocking
//! thread. The pipe helper runs the same code when no agent is there to hand the dump to.

use std::{io::Read, os::unix::net::UnixStream, sync::Arc, time::Duration, time::SystemTime};

use tokio::{net::UnixListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    Intake,
    pinned::Pinned,
    received::{Header, Limits, ReceiveDir, Received},
};
use crate::{
    enrich::{self, Enricher},
    pattern::NameFields,
    policy::{Policy, Verdict},
};

/// Everything a reception needs; shared by every connection.
#[derive(Debug, Clone)]
pub struct Reception {
    /// Where dumps land.
    pub dir: Arc<ReceiveDir>,
    /// `/proc`, cgroups and pod names.
    pub enricher: Enricher,
    /// Rate limit and disk floor.
    pub policy: Policy,
    /// Size, disk and compression of a receive.
    pub limits: Limits,
    /// What the crash report's scan of the stream keeps; `None`: no report (`--report off`,
    /// and the pipe helper, which must stay small in the kernel's path).
    pub scan: Option<crate::report::scan::Limits>,
}

/// Why a connection is not a crash at all (nothing is recorded for it).
#[derive(Debug, thiserror::Error)]
pub enum NotACrash {
    /// The kernel does not say the process is dumping core: not a connection the kernel made
    /// for a crash, or a pid a helper was not given by the kernel.
    #[error("pid {0} is not dumping core")]
    NotDumping(u32),
}

/// A crash the kernel is about to hand over, read and judged.
#[derive(Debug)]
pub struct Admission {
    /// What is known of it (becomes the receive header).
    pub header: Header,
    /// `None` to take the dump; else why not (the crash is still recorded).
    pub refusal: Option<Refusal>,
}

/// Why a dump is refused before the kernel writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over the container's `--max-dumps-per-hour`.
    RateLimited,
    /// The receive directory's disk is below `--min-free-disk`.
    LowDisk,
    /// Too many dumps are waiting to be received already.
    Busy,
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Self::RateLimited => {
                "rate limit (--max-dumps-per-hour) reached for this container: the kernel was told not to write the dump"
            }
            Self::LowDisk => {
                "the receive directory's disk is below --min-free-disk: the kernel was told not to write the dump"
            }
            Self::Busy => {
                "too many dumps were waiting to be received: the kernel was told not to write this one"
            }
        }
    }
}

impl Reception {
    /// Reads and judges the crash of `pinned`, which the kernel named (`kernel`: what it said
    /// besides the pid).
    pub fn admit(
        &self,
        intake: Intake,
        pinned: &Pinned,
        mut kernel: NameFields,
    ) -> Result<Admission, NotACrash> {
        if !pinned.dumping(&self.enricher.proc) {
            return Err(NotACrash::NotDumping(pinned.host_pid));
        }
        let process = pinned.read(&self.enricher.proc);
        let identity = enrich::identity_of(
            pinned.host_pid,
            pinned.cgroup_id(),
            process.as_ref(),
            self.enricher.cgroups.as_deref(),
            &self.enricher.sources,
        );
        kernel.host_pid = Some(pinned.host_pid);
        // The time the kernel handed it over (a pipe helper's %t says the same).
        kernel.time = kernel
            .time
            .or_else(|| Some(crate::sys::unix_secs(SystemTime::now())));
        let status = |key: &str| {
            process
                .as_ref()?
                .status
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        kernel.comm = kernel.comm.or_else(|| status("Name"));
        // NSpid: the pid in each namespace, the process's own last.
        kernel.pid = kernel
            .pid
            .or_else(|| status("NSpid")?.split_whitespace().last()?.parse().ok());
        let real_id = |key: &str| status(key)?.split_whitespace().next()?.parse().ok();
        kernel.uid = kernel.uid.or_else(|| real_id("Uid"));
        kernel.gid = kernel.gid.or_else(|| real_id("Gid"));
        let refusal = if self.policy.low_disk(self.dir.path()) {
            Some(Refusal::LowDisk)
        } else if self.policy.judge(&identity) == Verdict::RateLimited {
            Some(Refusal::RateLimited)
        } else {
            None
        };
        Ok(Admission {
            header: Header {
                id: ReceiveDir::new_id(pinned.host_pid),
                intake,
                kernel,
                received_at: SystemTime::now(),
                process,
                identity,
                compression: None,
                original_size: None,
                complete: false,
                missing: None,
            },
            refusal,
        })
    }

    /// The crash of a refused dump, recorded without it.
    pub fn refused(header: Header, refusal: &Refusal) -> Received {
        Received {
            rate_limited: *refusal == Refusal::RateLimited,
            ..Received::without_dump(header, refusal.reason().to_owned())
        }
    }

    /// Receives the dump from the kernel's `stream` until its end. With `pinned`, the crashed
    /// process still held, the stream is scanned for the crash report on the way and the
    /// process's module files are opened before it is let go.
    pub fn receive(
        &self,
        header: Header,
        stream: &mut impl Read,
        pinned: Option<&Pinned>,
    ) -> Received {
        let host_pid = header.kernel.host_pid;
        let mut incoming = match self.dir.begin(header.clone(), self.limits) {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::error!(host_pid, dir = %self.dir.path().display(), error = %e, "cannot write into the receive directory: the dump is lost, the crash is recorded");
                let why = format!(
                    "the receive directory {} is not writable: {e}",
                    self.dir.path().display()
                );
                return Received::without_dump(header, why);
            }
        };
        let mut scanner = self
            .scan
            .filter(|_| pinned.is_some())
            .map(crate::report::scan::Scanner::new);
        match incoming.copy_from(stream, scanner.as_mut()) {
            Ok(()) => {
                let received = incoming.received();
                let mut done = incoming.finish().unwrap_or_else(|e| {
                    tracing::error!(host_pid, error = %e, "could not complete the received dump");
                    let why = format!("the dump ({received} bytes) could not be saved: {e}");
                    Received::without_dump(header, why)
                });
                if let (Some(scanner), Some(pinned), Some(_)) = (scanner, pinned, &done.dump) {
                    done.evidence = Some(self.evidence(scanner.finish(), pinned));
                }
                done
            }
            Err(cut) => {
                tracing::warn!(host_pid, received = incoming.received(), reason = %crate::error_chain(&cut), "dump cut short");
                incoming.abandon(&cut)
            }
        }
    }
}

impl Reception {
    /// The crash report's evidence: the scanned core, and the module files it names, opened
    /// while the process is still held (its `/proc/<pid>/map_files` exist only as long).
    fn evidence(
        &self,
        core: crate::report::scan::Core,
        pinned: &Pinned,
    ) -> crate::report::Evidence {
        let mut wanted: Vec<crate::report::files::Wanted> = core
            .notes
            .files
            .iter()
            .filter(|f| f.offset == 0)
            .map(|f| crate::report::files::Wanted {
                start: f.start,
                end: f.end,
                path: f.path.clone(),
            })
            .collect();
        wanted.dedup_by_key(|w| w.start);
        let files = if pinned.alive() {
            crate::report::files::open(self.enricher.proc.root(), pinned.host_pid, &wanted)
        } else {
            crate::report::files::ModuleFiles::default()
        };
        crate::report::Evidence {
            core: Some(core),
            files: Arc::new(files),
        }
    }
}

/// Dumps waiting for a receive slot; beyond, dumps are refused (their crashes recorded).
pub const MAX_WAITING: usize = 256;

/// The receive slots: at most `concurrent` dumps stream at once; the others wait in a queue
/// of at most [`MAX_WAITING`] (the kernel holds their processes meanwhile).
#[derive(Debug, Clone)]
pub struct Slots {
    semaphore: Arc<tokio::sync::Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    runtime: tokio::runtime::Handle,
}

/// A place in the queue for a receive slot.
#[derive(Debug)]
pub struct Ticket {
    slots: Slots,
}

impl Slots {
    /// Slots for `concurrent` receives, on the current runtime.
    pub fn new(concurrent: usize) -> Self {
        Self {
            semaphore: Arc::new(tokio::sync::Semaphore::new(concurrent.max(1))),
            waiting: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// A place in the queue, or `None` when [`MAX_WAITING`] dumps wait already: decided
    /// before the kernel is told to write, so that it can be told not to.
    pub fn enqueue(&self) -> Option<Ticket> {
        use std::sync::atomic::Ordering;
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Ticket {
            slots: self.clone(),
        })
    }
}

impl Ticket {
    /// Waits for a slot (blocking: call from a blocking thread). `None` if the runtime is
    /// shutting down.
    pub fn wait(self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = self.slots.semaphore.clone();
        self.slots.runtime.block_on(semaphore.acquire_owned()).ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.slots
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Accepts connections until cancelled, each handled by `handle(stream, slots)` on a blocking
/// thread of its own. The accept loop itself never waits: the kernel's connect does not
/// block, so a full backlog would be a lost dump. A handler decides first (cheap: `/proc`),
/// then queues for one of `concurrent` receive slots ([`Slots`]). On cancel, connections in
/// flight finish (the kernel is writing them).
pub async fn serve<H>(
    listener: UnixListener,
    concurrent: usize,
    handle: H,
    cancel: CancellationToken,
) where
    H: Fn(UnixStream, &Slots) + Clone + Send + 'static,
{
    let slots = Slots::new(concurrent);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted.and_then(|(s, _)| {
            let s = s.into_std()?;
            s.set_nonblocking(false)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (slots, handle) = (slots.clone(), handle.clone());
        connections.spawn_blocking(move || handle(stream, &slots));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
