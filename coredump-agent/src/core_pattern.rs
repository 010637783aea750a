//! The kernel's core dump settings: reads the live `kernel.core_pattern`, and with
//! `--install-core-pattern`, `--core-pipe-limit` and `--suid-dumpable` sets them for the
//! agent, restoring each previous value on shutdown.
//!
//! Every setting the agent manages is backed up in the state dir before it is written, even
//! when it already holds the wanted value, so a restore always has something to put back.
//! Install is idempotent across restarts: a start that finds the agent's own value already in
//! place (the last run was killed) keeps the existing backup instead of backing up itself.
//! Restore only writes a setting that still holds the agent's value: an operator's change
//! since then wins.

use std::{
    io,
    path::{Path, PathBuf},
};

/// The host's sysctl tree, where the files below live.
pub const PROC_SYS: &str = "/proc/sys";
/// The kernel ignores patterns longer than this (`CORENAME_MAX_SIZE` - 1).
pub const MAX_LEN: usize = 127;
/// File template the agent installs: host pid and tid first (exact join), comm last (it may
/// contain dots and dashes).
pub const TEMPLATE: &str = "core.%P.%I.%s.%t.%e";
/// The kernel's coredump socket, in the agent's run directory.
pub const KERNEL_SOCKET: &str = "coredump-agent.sock";

/// A core dump sysctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `kernel.core_pattern`: where dumps go.
    CorePattern,
    /// `kernel.core_uses_pid`: whether `.%p` is appended to patterns without `%p` (read only).
    CoreUsesPid,
    /// `kernel.core_pipe_limit`: how many pipe helpers may run at once; non-zero also makes
    /// the kernel keep `/proc/<pid>` until the helper finishes.
    CorePipeLimit,
    /// `fs.suid_dumpable`: whether processes that changed credentials (setuid programs,
    /// daemons that drop privileges) dump at all; 2 writes their dumps readable by root only.
    SuidDumpable,
    /// `kernel.core_modes`: the kinds of core_pattern this kernel takes (`file pipe socket`;
    /// Linux 6.16+, read only).
    CoreModes,
}

impl Setting {
    /// The sysctl's name, as `sysctl -w` takes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::CorePattern => "kernel.core_pattern",
            Self::CoreUsesPid => "kernel.core_uses_pid",
            Self::CorePipeLimit => "kernel.core_pipe_limit",
            Self::SuidDumpable => "fs.suid_dumpable",
            Self::CoreModes => "kernel.core_modes",
        }
    }

    /// The file under `/proc/sys`.
    const fn file(self) -> &'static str {
        match self {
            Self::CorePattern => "kernel/core_pattern",
            Self::CoreUsesPid => "kernel/core_uses_pid",
            Self::CorePipeLimit => "kernel/core_pipe_limit",
            Self::SuidDumpable => "fs/suid_dumpable",
            Self::CoreModes => "kernel/core_modes",
        }
    }

    /// Where the previous value is kept while the agent's is in place. Plain text, so an
    /// operator can restore by hand: `sysctl -w kernel.core_pattern="$(cat <state>/core_pattern.backup)"`.
    pub fn backup(self, state_dir: &Path) -> PathBuf {
        self.state_file(state_dir, "backup")
    }

    /// Where the value the agent set is kept, so that `restore` knows it whatever flags it is
    /// run with (the intake chosen at start, a default core_pipe_limit).
    pub fn installed(self, state_dir: &Path) -> PathBuf {
        self.state_file(state_dir, "installed")
    }

    fn state_file(self, state_dir: &Path, ext: &str) -> PathBuf {
        let file = self.file();
        let base = file.rsplit('/').next().unwrap_or(file);
        state_dir.join(format!("{base}.{ext}"))
    }
}

/// The settings the agent can manage, in the order they are installed (restored in reverse:
/// `fs.suid_dumpable=2` is only safe with an absolute pattern, which core_pattern gives).
pub const MANAGED: [Setting; 3] = [
    Setting::CorePattern,
    Setting::CorePipeLimit,
    Setting::SuidDumpable,
];

/// Why a setting could not be read or managed.
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

/// The host's sysctl files (a seam for tests: any directory laid out like `/proc/sys`).
#[derive(Debug, Clone)]
pub struct Sysctl {
    root: PathBuf,
    /// A mount namespace of the host (`/proc/1/ns/mnt`), to write socket patterns from.
    host_mount_ns: Option<PathBuf>,
}

impl Default for Sysctl {
    fn default() -> Self {
        Self::under(Path::new(PROC_SYS))
    }
}

fn read_file(path: &Path) -> Result<String, CorePatternError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches('\n').to_owned())
        .map_err(|source| CorePatternError::Io {
            op: "reading",
            path: path.to_owned(),
            source,
        })
}

fn write_file(path: &Path, value: &str) -> Result<(), CorePatternError> {
    std::fs::write(path, value).map_err(|source| CorePatternError::Io {
        op: "writing",
        path: path.to_owned(),
        source,
    })
}

impl Sysctl {
    /// The files under `root`: `/proc/sys`, or the host's, mounted into a container elsewhere.
    pub fn under(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            host_mount_ns: None,
        }
    }

    /// Writes socket patterns from the mount namespace at `ns` when they cannot be written
    /// from here: the kernel takes an `@` pattern only from a process in its initial mount
    /// namespace, which a containerized agent is not in.
    pub fn with_host_mount_ns(mut self, ns: Option<PathBuf>) -> Self {
        self.host_mount_ns = ns;
        self
    }

    /// A setting's file.
    pub fn path(&self, setting: Setting) -> PathBuf {
        self.root.join(setting.file())
    }

    /// A setting's live value, without the trailing newline. The read-only ones
    /// (`core_uses_pid`, `core_modes`) come from this process's own `/proc/sys` when the tree
    /// does not hold them: a DaemonSet may mount only the host files the agent writes, and
    /// these are not namespaced, so a container's read-only view shows the host's values.
    pub fn read(&self, setting: Setting) -> Result<String, CorePatternError> {
        let path = self.path(setting);
        let read_only = matches!(setting, Setting::CoreUsesPid | Setting::CoreModes);
        if read_only && !path.exists() && self.root != Path::new(PROC_SYS) {
            return read_file(&Path::new(PROC_SYS).join(setting.file()));
        }
        read_file(&path)
    }

    /// Writes a setting, and reads it back: the kernel may refuse a value silently (some
    /// 6.17 kernels validated core_pattern when it was read, not written).
    pub fn write(&self, setting: Setting, value: &str) -> Result<(), CorePatternError> {
        let path = self.path(setting);
        match write_file(&path, value) {
            Err(CorePatternError::Io { source, .. })
                if setting == Setting::CorePattern
                    && value.starts_with('@')
                    && source.raw_os_error() == Some(libc::EINVAL)
                    && self.host_mount_ns.is_some() =>
            {
                let ns = self.host_mount_ns.as_deref().unwrap_or(Path::new("/"));
                tracing::info!(ns = %ns.display(), "the kernel takes socket patterns only from its initial mount namespace: writing from there");
                write_from_mount_ns(ns, setting, value)?;
            }
            r => r?,
        }
        let back = self.read(setting)?;
        if back != value {
            return Err(CorePatternError::Io {
                op: "checking what the kernel kept in",
                path,
                source: io::Error::other(format!("wrote {value:?}, read back {back:?}")),
            });
        }
        Ok(())
    }

    /// The live pattern.
    pub fn pattern(&self) -> Result<String, CorePatternError> {
        self.read(Setting::CorePattern)
    }

    /// The live `core_uses_pid` (false when unreadable).
    pub fn uses_pid(&self) -> bool {
        self.read(Setting::CoreUsesPid)
            .is_ok_and(|v| v.trim() == "1")
    }
}

/// Writes `value` to `/proc/sys/<setting>` from the mount namespace at `ns`, in a child process
/// (`coredump-agent write-sysctl`): a multithreaded process cannot change its mount namespace.
fn write_from_mount_ns(ns: &Path, setting: Setting, value: &str) -> Result<(), CorePatternError> {
    let fail = |source| CorePatternError::Io {
        op: "writing, from the host's mount namespace,",
        path: Path::new(PROC_SYS).join(setting.file()),
        source,
    };
    let out = std::process::Command::new("/proc/self/exe")
        .arg("write-sysctl")
        .arg(ns)
        .arg(setting.file())
        .arg(value)
        .output()
        .map_err(fail)?;
    if !out.status.success() {
        return Err(fail(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )));
    }
    Ok(())
}

/// `coredump-agent write-sysctl NS FILE VALUE`: enters the mount namespace `NS` and writes
/// `VALUE` to `/proc/sys/FILE` there. Runs single-threaded, before any runtime starts.
pub fn write_sysctl_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let run = || -> io::Result<()> {
        let [ns, file, value] = args else {
            return Err(io::Error::other("usage: write-sysctl NS FILE VALUE"));
        };
        let file = file.to_string_lossy();
        if !MANAGED.iter().any(|s| s.file() == file) {
            return Err(io::Error::other(format!(
                "{file} is not a setting the agent manages"
            )));
        }
        let ns = std::fs::File::open(ns)?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Mount),
        )?;
        std::fs::write(Path::new(PROC_SYS).join(&*file), value.as_encoded_bytes())
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write-sysctl: {e}");
            std::process::ExitCode::FAILURE
        }
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

/// Whether `value` is a value the agent installs for `setting`, whatever its configuration
/// was then: a core_pattern ending in the agent's template (a restart may have moved the dump
/// dir; the backup from before the agent's first install must survive that).
fn is_agents(setting: Setting, value: &str, ours: &str) -> bool {
    value == ours
        || (setting == Setting::CorePattern
            && (value.ends_with(&format!("/{TEMPLATE}"))
                || value.ends_with(&format!("/{KERNEL_SOCKET}")) && value.starts_with('@')
                || crate::intake::pipe::is_helper_pattern(value)))
}

/// One setting the agent put in place.
#[derive(Debug)]
struct Managed {
    setting: Setting,
    backup: PathBuf,
    /// Where `ours` is recorded.
    installed: PathBuf,
    ours: String,
}

/// Settings put in place; [`Installed::restore`] puts the previous values back.
#[derive(Debug)]
pub struct Installed {
    sysctl: Sysctl,
    managed: Vec<Managed>,
}

/// Sets each `(setting, value)`, in order, backing up the previous values in `state_dir`. On
/// an error the settings already set are restored before it is returned.
pub fn install(
    sysctl: Sysctl,
    wanted: &[(Setting, String)],
    state_dir: &Path,
) -> Result<Installed, CorePatternError> {
    let mut installed = Installed {
        sysctl,
        managed: Vec::with_capacity(wanted.len()),
    };
    for (setting, ours) in wanted {
        match installed.install_one(*setting, ours, state_dir) {
            Ok(managed) => installed.managed.push(managed),
            Err(e) => {
                if let Err(undo) = installed.restore() {
                    tracing::error!(error = %format!("{:#}", anyhow::Error::new(undo)), "could not undo the settings already installed");
                }
                return Err(e);
            }
        }
    }
    Ok(installed)
}

impl Installed {
    /// What was installed: each setting and the agent's value.
    pub fn settings(&self) -> Vec<(Setting, String)> {
        self.managed
            .iter()
            .map(|m| (m.setting, m.ours.clone()))
            .collect()
    }

    fn install_one(
        &self,
        setting: Setting,
        ours: &str,
        state_dir: &Path,
    ) -> Result<Managed, CorePatternError> {
        let name = setting.name();
        let backup = setting.backup(state_dir);
        let current = self.sysctl.read(setting)?;
        if backup.exists() && is_agents(setting, &current, ours) {
            tracing::info!(sysctl = name, backup = %backup.display(), "already the agent's (the previous run did not restore it): keeping the existing backup");
        } else {
            crate::state::write_atomic(&backup, current.as_bytes()).map_err(|source| {
                CorePatternError::Io {
                    op: "backing up to",
                    path: backup.clone(),
                    source,
                }
            })?;
            tracing::info!(sysctl = name, previous = %current, backup = %backup.display(), "backed up");
        }
        if current != ours {
            self.sysctl.write(setting, ours)?;
        }
        let marker = setting.installed(state_dir);
        crate::state::write_atomic(&marker, ours.as_bytes()).map_err(|source| {
            CorePatternError::Io {
                op: "recording the installed value in",
                path: marker,
                source,
            }
        })?;
        tracing::info!(sysctl = name, value = %ours, "installed");
        Ok(Managed {
            setting,
            backup,
            installed: setting.installed(state_dir),
            ours: ours.to_owned(),
        })
    }

    /// Restores every backed-up value, in reverse order, and removes the backups. Goes on
    /// after a failure, and returns the first.
    pub fn restore(mut self) -> Result<(), CorePatternError> {
        let mut first = None;
        while let Some(m) = self.managed.pop() {
            if let Err(e) = self.restore_one(&m) {
                tracing::error!(
                    sysctl = m.setting.name(),
                    error = &e as &dyn std::error::Error,
                    "could not restore"
                );
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn restore_one(&self, m: &Managed) -> Result<(), CorePatternError> {
        let name = m.setting.name();
        let current = self.sysctl.read(m.setting)?;
        let ours = is_agents(m.setting, &current, &m.ours);
        let previous = match read_file(&m.backup) {
            Ok(previous) => previous,
            // `coredump-agent restore` (the preStop hook) got there first; or the value before
            // the agent was its own, so nothing shows the difference.
            Err(CorePatternError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                if ours {
                    tracing::warn!(sysctl = name, value = %current, backup = %m.backup.display(), "backup gone, the agent's value is in place: left as is");
                } else {
                    tracing::info!(sysctl = name, value = %current, "already restored");
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if ours {
            if previous != current {
                self.sysctl.write(m.setting, &previous)?;
            }
            tracing::info!(sysctl = name, value = %previous, "restored");
        } else {
            tracing::warn!(sysctl = name, current = %current, "changed by someone else since the agent set it: left as is");
        }
        std::fs::remove_file(&m.backup).map_err(|source| CorePatternError::Io {
            op: "removing",
            path: m.backup.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(&m.installed);
        Ok(())
    }
}

/// Restores, from the backups in `state_dir`, the settings the agent installed (recorded at
/// install) or `wanted` lists (what the agent sets with the same flags), where they still hold
/// the agent's values; removes those backups. For a second process (the preStop hook) while
/// the agent may still run. Returns how many backups there were.
pub fn restore_backups(
    sysctl: Sysctl,
    wanted: &[(Setting, String)],
    state_dir: &Path,
) -> Result<usize, CorePatternError> {
    let managed: Vec<Managed> = MANAGED
        .iter()
        .filter_map(|&setting| {
            let installed = setting.installed(state_dir);
            let ours = read_file(&installed).ok().or_else(|| {
                wanted
                    .iter()
                    .find(|(s, _)| *s == setting)
                    .map(|(_, v)| v.clone())
            })?;
            Some(Managed {
                setting,
                backup: setting.backup(state_dir),
                installed,
                ours,
            })
        })
        .filter(|m| m.backup.exists())
        .collect();
    let found = managed.len();
    Installed { sysctl, managed }.restore()?;
    Ok(found)
}

/// A backup left by a run that was killed, for a setting this run does not manage: its
/// previous value was never put back.
#[derive(Debug, PartialEq, Eq)]
pub struct StaleBackup {
    /// The setting.
    pub setting: Setting,
    /// The backup file.
    pub backup: PathBuf,
    /// The value it holds (what the setting was before the agent changed it).
    pub previous: String,
}

impl StaleBackup {
    /// How to put the previous value back by hand.
    pub fn fix(&self) -> String {
        format!(
            "sysctl -w {}={:?} && rm {}; or run once more with the flag that set it, and stop the agent gracefully",
            self.setting.name(),
            self.previous,
            self.backup.display()
        )
    }
}

/// Backups in `state_dir` of settings `wanted` (what [`install`] is given) leaves out. A run
/// reports them and never acts on them: the live value may since have been set on purpose
/// (e.g. by the node's own configuration). `restore` puts them back.
pub fn stale_backups(state_dir: &Path, wanted: &[(Setting, String)]) -> Vec<StaleBackup> {
    MANAGED
        .iter()
        .filter(|s| !wanted.iter().any(|(w, _)| w == *s))
        .filter_map(|&setting| {
            let backup = setting.backup(state_dir);
            let previous = read_file(&backup).ok()?;
            Some(StaleBackup {
                setting,
                backup,
                previous,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc/sys` look-alike with `initial` as the pattern, plus a state dir.
    fn fixture(tag: &str, initial: &str) -> (Sysctl, PathBuf) {
        let d = std::env::temp_dir().join(format!("corepattern-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for sub in ["kernel", "fs", "state"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("kernel/core_pattern"), format!("{initial}\n")).unwrap();
        std::fs::write(d.join("kernel/core_uses_pid"), "0\n").unwrap();
        std::fs::write(d.join("kernel/core_pipe_limit"), "0\n").unwrap();
        std::fs::write(d.join("fs/suid_dumpable"), "0\n").unwrap();
        (Sysctl::under(&d), d.join("state"))
    }

    fn all(dump_dir: &str) -> Vec<(Setting, String)> {
        vec![
            (
                Setting::CorePattern,
                agent_pattern(Path::new(dump_dir)).unwrap(),
            ),
            (Setting::CorePipeLimit, "16".into()),
            (Setting::SuidDumpable, "2".into()),
        ]
    }

    fn live(sysctl: &Sysctl) -> [String; 3] {
        MANAGED.map(|s| sysctl.read(s).unwrap())
    }

    #[test]
    fn install_then_restore() {
        let (sysctl, state) = fixture("restore", "|/usr/lib/systemd/systemd-coredump %P");
        let installed = install(sysctl.clone(), &all("/var/dumps"), &state).unwrap();
        assert_eq!(live(&sysctl), ["/var/dumps/core.%P.%I.%s.%t.%e", "16", "2"]);
        assert_eq!(
            std::fs::read_to_string(state.join("suid_dumpable.backup")).unwrap(),
            "0"
        );
        installed.restore().unwrap();
        assert_eq!(
            live(&sysctl),
            ["|/usr/lib/systemd/systemd-coredump %P", "0", "0"]
        );
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "no backup left"
        );
    }

    #[test]
    fn a_matching_value_is_backed_up_too() {
        let (sysctl, state) = fixture("matching", "core");
        std::fs::write(sysctl.path(Setting::SuidDumpable), "2\n").unwrap();
        let installed = install(sysctl.clone(), &all("/var/dumps")[2..], &state).unwrap();
        assert!(state.join("suid_dumpable.backup").exists());
        installed.restore().unwrap();
        assert_eq!(sysctl.read(Setting::SuidDumpable).unwrap(), "2");
    }

    #[test]
    fn restart_after_kill_keeps_the_original_backups() {
        let (sysctl, state) = fixture("kill", "core");
        let first = install(sysctl.clone(), &all("/var/dumps"), &state).unwrap();
        std::mem::forget(first); // killed: never restored
        let second = install(sysctl.clone(), &all("/var/dumps"), &state).unwrap();
        second.restore().unwrap();
        assert_eq!(live(&sysctl), ["core", "0", "0"]);
    }

    #[test]
    fn restart_with_a_new_dump_dir_after_kill_keeps_the_original_pattern() {
        let (sysctl, state) = fixture("moved", "core");
        std::mem::forget(install(sysctl.clone(), &all("/var/dumps"), &state).unwrap());
        let second = install(sysctl.clone(), &all("/srv/dumps"), &state).unwrap();
        assert_eq!(sysctl.pattern().unwrap(), "/srv/dumps/core.%P.%I.%s.%t.%e");
        second.restore().unwrap();
        assert_eq!(sysctl.pattern().unwrap(), "core");
    }

    #[test]
    fn operator_change_wins_over_restore() {
        let (sysctl, state) = fixture("operator", "core");
        let installed = install(sysctl.clone(), &all("/var/dumps"), &state).unwrap();
        std::fs::write(sysctl.path(Setting::CorePattern), "/elsewhere/core.%p").unwrap();
        installed.restore().unwrap();
        assert_eq!(live(&sysctl), ["/elsewhere/core.%p", "0", "0"]);
    }

    #[test]
    fn a_failed_install_undoes_what_it_set() {
        let (sysctl, state) = fixture("undo", "core");
        // suid_dumpable cannot be read: the install fails at its last step.
        std::fs::remove_file(sysctl.path(Setting::SuidDumpable)).unwrap();
        let err = install(sysctl.clone(), &all("/var/dumps"), &state).unwrap_err();
        assert!(err.to_string().contains("fs/suid_dumpable"), "{err}");
        assert_eq!(sysctl.pattern().unwrap(), "core");
        assert_eq!(sysctl.read(Setting::CorePipeLimit).unwrap(), "0");
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "no backup left"
        );
    }

    #[test]
    fn backups_of_unmanaged_settings_are_reported() {
        let (sysctl, state) = fixture("stale", "core");
        std::mem::forget(install(sysctl.clone(), &all("/var/dumps"), &state).unwrap());
        let stale = stale_backups(&state, &all("/var/dumps")[..1]);
        let names: Vec<_> = stale.iter().map(|s| s.setting.name()).collect();
        assert_eq!(names, ["kernel.core_pipe_limit", "fs.suid_dumpable"]);
        assert_eq!(stale[1].previous, "0");
        assert!(
            stale[1]
                .fix()
                .starts_with("sysctl -w fs.suid_dumpable=\"0\"")
        );
        assert!(stale_backups(&state, &all("/var/dumps")).is_empty());
    }

    #[test]
    fn a_second_process_restores_first_and_the_agent_then_finds_it_done() {
        let (sysctl, state) = fixture("prestop", "core");
        let installed = install(sysctl.clone(), &all("/var/dumps"), &state).unwrap();
        assert_eq!(
            restore_backups(sysctl.clone(), &all("/var/dumps"), &state).unwrap(),
            3
        );
        assert_eq!(live(&sysctl), ["core", "0", "0"]);
        installed.restore().unwrap();
        assert_eq!(live(&sysctl), ["core", "0", "0"]);
        assert_eq!(
            restore_backups(sysctl.clone(), &all("/var/dumps"), &state).unwrap(),
            0
        );
    }

    #[test]
    fn a_restore_without_a_backup_leaves_the_value() {
        // The host already had the agent's pattern: a preStop restore put it back, and the
        // agent's own restore then finds its value in place and no backup.
        let pattern = agent_pattern(Path::new("/var/dumps")).unwrap();
        let (sysctl, state) = fixture("same", &pattern);
        let installed = install(sysctl.clone(), &all("/var/dumps")[..1], &state).unwrap();
        assert_eq!(
            restore_backups(sysctl.clone(), &all("/var/dumps"), &state).unwrap(),
            1
        );
        installed.restore().unwrap();
        assert_eq!(sysctl.pattern().unwrap(), pattern);
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
