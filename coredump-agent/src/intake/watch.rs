//! watch: reports names in the dump directory that may hold a finished dump.
//!
//! Pipeline: dump dir → `watch` → correlate. inotify reports `IN_CLOSE_WRITE` (the kernel or a
//! pipe helper finished writing), `IN_MOVED_TO` (a helper renamed a finished temp file into
//! place) and `IN_CREATE` (a file linked in from `O_TMPFILE`, as systemd-coredump does, or a
//! file that has just started being written). The watcher only names candidates; `intake`
//! decides whether a file is finished. On start, and after the inotify queue overflowed, the
//! directory is listed: the files already there are the backlog, so nothing is lost.

use std::{ffi::OsString, io, path::PathBuf};

use futures::StreamExt as _;
use inotify::{EventMask, Inotify, WatchMask};

use super::DumpEvent;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What happened to a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The name appeared; it may still be being written.
    Created,
    /// A writer closed it, or it was renamed into place: likely finished.
    Finished,
    /// Found by listing the directory (start-up, or after an overflow).
    Listed,
}

/// One candidate name in the dump directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    /// The file name (no directory part). Not necessarily UTF-8.
    pub name: OsString,
    /// What happened.
    pub change: Change,
}

/// Why watching failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify could not be set up on the directory.
    #[error("watching {dir} with inotify")]
    Init {
        /// The dump directory.
        dir: PathBuf,
        /// The cause (e.g. `max_user_watches` reached, directory missing).
        #[source]
        source: io::Error,
    },
    /// Listing the directory failed.
    #[error("listing {dir}")]
    List {
        /// The dump directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading inotify events failed.
    #[error("reading inotify events for {dir}")]
    Read {
        /// The dump directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An inotify watch on the dump directory, set up before the first listing so that no file
/// can slip between the two. Without one (the user's inotify instances or watches are used up,
/// perhaps by a container on purpose), the directory is listed every [`RESCAN`] instead.
pub struct Watcher {
    dir: PathBuf,
    inotify: Option<Inotify>,
}

/// How often the dump directory is listed when no inotify watch could be had.
pub const RESCAN: std::time::Duration = std::time::Duration::from_secs(2);

impl Watcher {
    /// Starts watching `dir` (which must exist).
    pub fn new(dir: PathBuf) -> Result<Self, WatchError> {
        let init = |source| WatchError::Init {
            dir: dir.clone(),
            source,
        };
        let watched = Inotify::init().and_then(|inotify| {
            inotify.watches().add(
                &dir,
                WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::CREATE
                    | WatchMask::ONLYDIR
                    | WatchMask::EXCL_UNLINK,
            )?;
            Ok(inotify)
        });
        let inotify = match watched {
            Ok(inotify) => Some(inotify),
            // Limits (fs.inotify.max_user_instances / max_user_watches), not a broken setup.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::ENOMEM)
                ) =>
            {
                tracing::warn!(dir = %dir.display(), error = %e, every = ?RESCAN, "no inotify watch to be had: listing the dump directory on a timer instead");
                None
            }
            Err(e) => return Err(init(e)),
        };
        Ok(Self { dir, inotify })
    }
}

/// Sends every name in the directory as [`Change::Listed`], one at a time as they are read:
/// a directory a container filled with a million names costs no memory here. Sub-directories
/// are skipped (`dir` rejects anything else that is not a regular file). False if cancelled.
async fn list(
    dir: &PathBuf,
    tx: &mpsc::Sender<DumpEvent>,
    cancel: &CancellationToken,
) -> Result<bool, WatchError> {
    let err = |source| WatchError::List {
        dir: dir.clone(),
        source,
    };
    let mut listed = 0usize;
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let ev = FileEvent {
            name: entry.file_name(),
            change: Change::Listed,
        };
        if !send(tx, ev, cancel).await {
            return Ok(false);
        }
        listed += 1;
    }
    tracing::debug!(dir = %dir.display(), listed, "listed the dump directory");
    Ok(true)
}

/// inotify read buffer: room for ~250 events of maximal name length per read.
const BUFFER: usize = 64 * 1024;

/// Sends unless cancelled first: a consumer that stopped reading must not block shutdown.
async fn send(tx: &mpsc::Sender<DumpEvent>, ev: FileEvent, cancel: &CancellationToken) -> bool {
    tokio::select! {
        r = tx.send(DumpEvent::File(ev)) => r.is_ok(),
        () = cancel.cancelled() => false,
    }
}

/// Lists the backlog, then reports changes until cancelled or the receiver is gone.
pub async fn run(
    watcher: Watcher,
    tx: mpsc::Sender<DumpEvent>,
    cancel: CancellationToken,
) -> Result<(), WatchError> {
    tracing::info!(dir = %watcher.dir.display(), "watching the dump directory");
    if !list(&watcher.dir, &tx, &cancel).await? {
        return Ok(());
    }
    let Watcher { dir, inotify } = watcher;
    let Some(inotify) = inotify else {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(RESCAN) => {}
            }
            if !list(&dir, &tx, &cancel).await? {
                return Ok(());
            }
        }
    };
    let mut events = inotify
        .into_event_stream(vec![0u8; BUFFER])
        .map_err(|source| WatchError::Init {
            dir: dir.clone(),
            source,
        })?;
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            ev = events.next() => ev,
        };
        let Some(event) = event else { return Ok(()) };
        let event = event.map_err(|source| WatchError::Read {
            dir: dir.clone(),
            source,
        })?;
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            // The same inotify instance goes on: listing needs none of its own.
            tracing::warn!(dir = %dir.display(), "inotify queue overflowed: listing the directory again");
            if !list(&dir, &tx, &cancel).await? {
                return Ok(());
            }
        } else if let Some(name) = event.name {
            if event.mask.contains(EventMask::ISDIR) {
                continue;
            }
            let change = if event
                .mask
                .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
            {
                Change::Finished
            } else {
                Change::Created
            };
            if !send(&tx, FileEvent { name, change }, &cancel).await {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    async fn next(rx: &mut mpsc::Receiver<DumpEvent>) -> FileEvent {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event")
            .expect("open channel")
        {
            DumpEvent::File(ev) => ev,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn backlog_then_changes() {
        let dir = tempdir("changes");
        std::fs::write(dir.join("old"), b"1").unwrap();
        std::fs::create_dir(dir.join("subdir")).unwrap();
        let watcher = Watcher::new(dir.clone()).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(watcher, tx, cancel.clone()));
        assert_eq!(
            next(&mut rx).await,
            FileEvent {
                name: "old".into(),
                change: Change::Listed
            }
        );
        std::fs::write(dir.join("new"), b"2").unwrap();
        assert_eq!(next(&mut rx).await.change, Change::Created);
        assert_eq!(
            next(&mut rx).await,
            FileEvent {
                name: "new".into(),
                change: Change::Finished
            }
        );
        std::fs::write(dir.join("elsewhere"), b"3").unwrap();
        assert_eq!(next(&mut rx).await.change, Change::Created);
        assert_eq!(next(&mut rx).await.change, Change::Finished);
        std::fs::rename(dir.join("elsewhere"), dir.join("renamed")).unwrap();
        assert_eq!(
            next(&mut rx).await,
            FileEvent {
                name: "renamed".into(),
                change: Change::Finished
            }
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(rx.recv().await.is_none(), "closed after cancel");
    }

    #[tokio::test]
    async fn overflow_relists_and_loses_nothing() {
        let dir = tempdir("overflow");
        let watcher = Watcher::new(dir.clone()).unwrap();
        // A channel of one: the watcher blocks on its second event, so nothing reads the
        // inotify queue while far more files appear than the kernel keeps
        // (fs.inotify.max_queued_events; each file makes two events).
        let (tx, mut rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(watcher, tx, cancel.clone()));
        std::fs::write(dir.join("first"), b"x").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let queued: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16384);
        let files = queued / 2 + 100;
        for i in 0..files {
            std::fs::write(dir.join(format!("core.{i}")), b"x").unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        let mut listed = 0;
        while seen.len() < files + 1 {
            let ev = next(&mut rx).await;
            listed += usize::from(ev.change == Change::Listed);
            seen.insert(ev.name);
        }
        assert!(
            listed > 0,
            "the overflow made the watcher list the directory"
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
