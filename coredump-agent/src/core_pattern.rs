//! core_pattern: reads the live `kernel.core_pattern`, and with `--install-core-pattern`
//! points it at the agent's dump directory, restoring the previous value on shutdown.
//!
//! Install is idempotent across restarts: the previous value is backed up in the state dir
//! before it is replaced, and a start that finds the agent's own pattern already installed
//! (the last run was killed) keeps the existing backup instead of backing up itself.

use std::{
    io,
    path::{Path, PathBuf},
};

/// The live pattern.
pub const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
/// Whether the kernel appends `.%p` to file patterns without `%p`.
pub const CORE_USES_PID: &str = "/proc/sys/kernel/core_uses_pid";
/// The kernel ignores patterns longer than this (`CORENAME_MAX_SIZE` - 1).
pub const MAX_LEN: usize = 127;
/// File template the agent installs: host pid and tid first (exact join), comm last (it may
/// contain dots and dashes).
pub const TEMPLATE: &str = "core.%P.%I.%s.%t.%e";

/// Why core_pattern could not be read or managed.
#[derive(Debug, thiserror::Error)]
pub enum CorePatternError {
    /// Reading or writing a file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The pattern would be longer than the kernel accepts.
    #[error(
        "core pattern {pattern:?} is {len} bytes; the kernel takes at most {MAX_LEN}: use a shorter --dump-dir"
    )]
    TooLong {
        /// The pattern.
        pattern: String,
        /// Its length.
        len: usize,
    },
}

/// The files this module reads and writes (a seam for tests).
#[derive(Debug, Clone)]
pub struct Sysctl {
    /// `core_pattern` file.
    pub core_pattern: PathBuf,
    /// `core_uses_pid` file.
    pub core_uses_pid: PathBuf,
}

impl Default for Sysctl {
    fn default() -> Self {
        Self {
            core_pattern: CORE_PATTERN.into(),
            core_uses_pid: CORE_USES_PID.into(),
        }
    }
}

fn read(path: &Path) -> Result<String, CorePatternError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches('\n').to_owned())
        .map_err(|source| CorePatternError::Io {
            op: "reading",
            path: path.to_owned(),
            source,
        })
}

fn write(path: &Path, value: &str) -> Result<(), CorePatternError> {
    std::fs::write(path, value).map_err(|source| CorePatternError::Io {
        op: "writing",
        path: path.to_owned(),
        source,
    })
}

impl Sysctl {
    /// The files in a directory laid out like `/proc/sys/kernel` (the host's, mounted into a
    /// container elsewhere).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            core_pattern: dir.join("core_pattern"),
            core_uses_pid: dir.join("core_uses_pid"),
        }
    }

    /// The live pattern.
    pub fn pattern(&self) -> Result<String, CorePatternError> {
        read(&self.core_pattern)
    }

    /// The live `core_uses_pid` (false when unreadable).
    pub fn uses_pid(&self) -> bool {
        read(&self.core_uses_pid).is_ok_and(|v| v.trim() == "1")
    }
}

/// The pattern the agent installs for a dump directory.
pub fn agent_pattern(dump_dir: &Path) -> Result<String, CorePatternError> {
    let pattern = format!("{}/{TEMPLATE}", dump_dir.display());
    if pattern.len() > MAX_LEN {
        return Err(CorePatternError::TooLong {
            len: pattern.len(),
            pattern,
        });
    }
    Ok(pattern)
}

/// An installed pattern; [`Installed::restore`] puts the previous one back.
#[derive(Debug)]
pub struct Installed {
    sysctl: Sysctl,
    backup: PathBuf,
    ours: String,
}

/// Points core_pattern at `dump_dir`, backing up the previous value in `state_dir`.
pub fn install(
    sysctl: Sysctl,
    dump_dir: &Path,
    state_dir: &Path,
) -> Result<Installed, CorePatternError> {
    let ours = agent_pattern(dump_dir)?;
    let backup = state_dir.join("core_pattern.backup");
    let current = sysctl.pattern()?;
    if current == ours && backup.exists() {
        tracing::info!(backup = %backup.display(), "core_pattern already ours (previous run did not restore): keeping the existing backup");
    } else {
        crate::spool::write_atomic(&backup, current.as_bytes()).map_err(|source| {
            CorePatternError::Io {
                op: "backing up core_pattern to",
                path: backup.clone(),
                source,
            }
        })?;
        tracing::info!(previous = %current, backup = %backup.display(), "backed up core_pattern");
    }
    if current != ours {
        write(&sysctl.core_pattern, &ours)?;
    }
    tracing::info!(pattern = %ours, "core_pattern installed");
    Ok(Installed {
        sysctl,
        backup,
        ours,
    })
}

impl Installed {
    /// The pattern installed.
    pub fn pattern(&self) -> &str {
        &self.ours
    }

    /// Restores the backed-up pattern (only if ours is still in place: an operator's change
    /// since then wins) and removes the backup.
    pub fn restore(self) -> Result<(), CorePatternError> {
        let previous = read(&self.backup)?;
        let current = self.sysctl.pattern()?;
        if current == self.ours {
            write(&self.sysctl.core_pattern, &previous)?;
            tracing::info!(pattern = %previous, "core_pattern restored");
        } else {
            tracing::warn!(current = %current, "core_pattern was changed by someone else: left as is");
        }
        std::fs::remove_file(&self.backup).map_err(|source| CorePatternError::Io {
            op: "removing",
            path: self.backup.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(tag: &str, initial: &str) -> (Sysctl, PathBuf) {
        let d = std::env::temp_dir().join(format!("corepattern-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("core_pattern"), format!("{initial}\n")).unwrap();
        std::fs::write(d.join("core_uses_pid"), "0\n").unwrap();
        let sysctl = Sysctl {
            core_pattern: d.join("core_pattern"),
            core_uses_pid: d.join("core_uses_pid"),
        };
        (sysctl, d)
    }

    #[test]
    fn install_then_restore() {
        let (sysctl, d) = fixture("restore", "|/usr/lib/systemd/systemd-coredump %P");
        let installed = install(sysctl.clone(), Path::new("/var/dumps"), &d).unwrap();
        assert_eq!(sysctl.pattern().unwrap(), "/var/dumps/core.%P.%I.%s.%t.%e");
        installed.restore().unwrap();
        assert_eq!(
            sysctl.pattern().unwrap(),
            "|/usr/lib/systemd/systemd-coredump %P"
        );
        assert!(!d.join("core_pattern.backup").exists());
    }

    #[test]
    fn restart_after_kill_keeps_the_original_backup() {
        let (sysctl, d) = fixture("kill", "core");
        let first = install(sysctl.clone(), Path::new("/var/dumps"), &d).unwrap();
        std::mem::forget(first); // killed: never restored
        let second = install(sysctl.clone(), Path::new("/var/dumps"), &d).unwrap();
        second.restore().unwrap();
        assert_eq!(sysctl.pattern().unwrap(), "core");
    }

    #[test]
    fn operator_change_wins_over_restore() {
        let (sysctl, d) = fixture("operator", "core");
        let installed = install(sysctl.clone(), Path::new("/var/dumps"), &d).unwrap();
        std::fs::write(&sysctl.core_pattern, "/elsewhere/core.%p").unwrap();
        installed.restore().unwrap();
        assert_eq!(sysctl.pattern().unwrap(), "/elsewhere/core.%p");
    }

    #[test]
    fn too_long_is_refused() {
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        assert!(matches!(
            agent_pattern(&long),
            Err(CorePatternError::TooLong { .. })
        ));
    }
}
