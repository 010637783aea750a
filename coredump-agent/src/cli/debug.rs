//! `coredump-agent debug KEY`: the `coredumpctl debug` of the cluster. Downloads the core and
//! every module file stored for it (by build-id, see `report::upload`) into a temporary
//! sysroot laid out as the crashed process saw its files, checks each, and runs gdb (or lldb)
//! on them: `bt` works on a laptop that never saw the image.
//!
//! The files come from a bucket: each is checked before use (the core against the record's
//! checksum, each module against the build-id the core names), and the debugger is told not
//! to auto-load scripts from them (`set auto-load off`).

use std::{
    path::{Component, Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};

use super::{
    args::{DebugArgs, Debugger},
    get::{Expect, download},
    read_record,
};
use crate::{
    record::Record,
    report::{Module, files},
    store::{Store as _, layout},
};

/// Where a module goes in the sysroot: its path as the process saw it, when that is a plain
/// absolute path; else under `_modules/<build-id>/`.
fn sysroot_path(sysroot: &Path, module: &Module) -> PathBuf {
    let path = Path::new(&module.path);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        sysroot.join(path.strip_prefix("/").unwrap_or(path))
    } else {
        sysroot
            .join("_modules")
            .join(module.build_id.as_deref().unwrap_or("unknown"))
            .join(layout::sanitize_part(Some(module.name()), 64))
    }
}

/// A word as a POSIX shell reads it back.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The debugger's command line for `exe` and `core` with the files of `sysroot`.
pub fn command(
    debugger: Debugger,
    sysroot: &Path,
    search: &[PathBuf],
    exe: &Path,
    core: &Path,
    extra: &[String],
) -> Vec<String> {
    let dirs = search
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd: Vec<String> = match debugger {
        Debugger::Gdb => vec![
            "gdb".into(),
            "-q".into(),
            // Before the files are loaded: scripts from a bucket are not run, and libraries
            // are looked up in the sysroot.
            "-iex".into(),
            "set auto-load off".into(),
            "-iex".into(),
            format!("set sysroot {}", sysroot.display()),
            "-iex".into(),
            format!("set solib-search-path {dirs}"),
        ],
        Debugger::Lldb => vec![
            "lldb".into(),
            "-O".into(),
            format!(
                "settings set target.exec-search-paths {}",
                dirs.replace(':', " ")
            ),
            "-O".into(),
            format!(
                "settings set target.debug-file-search-paths {}",
                dirs.replace(':', " ")
            ),
        ],
    };
    cmd.extend(extra.iter().cloned());
    match debugger {
        Debugger::Gdb => {
            cmd.push(exe.display().to_string());
            cmd.push(core.display().to_string());
        }
        Debugger::Lldb => {
            cmd.push("--core".into());
            cmd.push(core.display().to_string());
            cmd.push(exe.display().to_string());
        }
    }
    cmd
}

/// A fresh private directory for one session.
fn session_dir(parent: Option<&Path>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = parent.join(format!("coredump-debug-{}-{stamp:08x}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Downloads the core and its modules, then runs (or prints) the debugger's command.
pub async fn execute(args: DebugArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open(None).await?;
    crate::store::validate_key(&args.key)?;
    let key = args.key.trim_end_matches(".json").to_owned();
    let record: Record = match read_record(&store, &layout::record_key(&key)).await? {
        Some(buf) => serde_json::from_slice(&buf)
            .with_context(|| format!("the record beside {key} cannot be read"))?,
        None => bail!("no record beside {key}: not a dump the agent stored"),
    };
    let Some(stored) = &record.stored else {
        bail!("{key}: its record says no dump was stored (a crash without a dump)");
    };
    let Some(report) = &record.report else {
        bail!(
            "{key} has no crash report (stored by an older agent, or with --report off): use get"
        );
    };
    let dir = session_dir(args.dir.as_deref())?;
    let result = prepare(&store, &key, &record, stored, report, &dir, &args).await;
    let cmd = match result {
        Ok(cmd) => cmd,
        Err(e) => {
            if !args.keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(e);
        }
    };
    if args.print_command {
        let line: Vec<String> = cmd.iter().map(|w| shell_quote(w)).collect();
        println!("{}", line.join(" "));
        eprintln!("the files are in {} (remove it when done)", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    // Ctrl-C belongs to the debugger (it interrupts the inferior there): caught here, so this
    // process waits for it and cleans up, instead of dying and leaving the files behind.
    let ctrl_c = tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    let program = cmd.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program[0])
            .args(&program[1..])
            .status()
    })
    .await
    .context("the debugger's task")?
    .with_context(|| format!("running {} (is it installed?)", cmd[0]));
    ctrl_c.abort();
    if args.keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let status = status?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_ERROR)
    })
}

/// The core and the modules in `dir`; the debugger's command line.
async fn prepare(
    store: &crate::store::AnyStore,
    key: &str,
    record: &Record,
    stored: &crate::record::StoredDump,
    report: &crate::report::Report,
    dir: &Path,
    args: &DebugArgs,
) -> anyhow::Result<Vec<String>> {
    let quiet = args.print_command;
    let core = dir.join("core");
    let (info, _) = store
        .head(key)
        .await
        .with_context(|| format!("looking up {key}"))?;
    let original = record
        .dump
        .as_ref()
        .map(|d| d.original_size.unwrap_or(d.size));
    download(
        store,
        key,
        &core,
        Expect {
            size: info.size,
            sha256: Some(stored.sha256.clone()),
            cap: original.unwrap_or(args.max_size),
            decompress: key.ends_with(".zst") || key.ends_with(".gz"),
        },
        false,
    )
    .await?;
    let sysroot = dir.join("sysroot");
    let mut search: Vec<PathBuf> = Vec::new();
    let mut exe = None;
    let mut missing = Vec::new();
    for m in &report.modules {
        let Some(module_key) = &m.key else {
            missing.push(format!(
                "{} ({})",
                m.path,
                m.note.as_deref().unwrap_or("not stored")
            ));
            continue;
        };
        let path = sysroot_path(&sysroot, m);
        if path.exists() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let (info, _) = store
            .head(module_key)
            .await
            .with_context(|| format!("looking up {module_key}"))?;
        download(
            store,
            module_key,
            &path,
            Expect {
                size: info.size,
                sha256: None,
                cap: info.size,
                decompress: false,
            },
            false,
        )
        .await?;
        // The store is anyone's: the file must be the build the core names.
        let found = std::fs::File::open(&path)
            .and_then(|f| files::facts(&f))
            .map(|f| f.build_id)
            .unwrap_or(None);
        if found.is_none() || found != m.build_id {
            let _ = std::fs::remove_file(&path);
            bail!(
                "{module_key} has build-id {}, not {} as the core says: refused",
                found.as_deref().unwrap_or("none"),
                m.build_id.as_deref().unwrap_or("none")
            );
        }
        if let Some(parent) = path.parent()
            && !search.iter().any(|d| d == parent)
        {
            search.push(parent.to_owned());
        }
        if m.main {
            exe = Some(path);
        }
    }
    if !missing.is_empty() && !quiet {
        eprintln!(
            "not stored, the debugger goes without: {}",
            missing.join("; ")
        );
    }
    let Some(exe) = exe else {
        bail!(
            "the executable of {key} was not stored ({}): the debugger cannot read its symbols",
            report
                .main()
                .and_then(|m| m.note.clone())
                .unwrap_or_else(|| "no executable in the report".into())
        );
    };
    Ok(command(
        args.debugger,
        &sysroot,
        &search,
        &exe,
        &core,
        &args.debugger_args,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_land_where_the_process_saw_them_and_nowhere_else() {
        let root = Path::new("/s");
        let m = |path: &str| Module {
            path: path.into(),
            build_id: Some("ab".repeat(20)),
            ..Module::default()
        };
        assert_eq!(
            sysroot_path(root, &m("/usr/lib/libc.so.6")),
            Path::new("/s/usr/lib/libc.so.6")
        );
        for odd in ["/usr/../../etc/passwd", "relative/lib.so", "/lib/.."] {
            let p = sysroot_path(root, &m(odd));
            assert!(p.starts_with("/s/_modules/"), "{odd}: {p:?}");
        }
    }

    #[test]
    fn the_command_loads_everything_from_the_sysroot_and_quotes_for_a_shell() {
        let cmd = command(
            Debugger::Gdb,
            Path::new("/t/sysroot"),
            &[PathBuf::from("/t/sysroot/usr/lib")],
            Path::new("/t/sysroot/app/server"),
            Path::new("/t/core"),
            &["-batch".into(), "-ex".into(), "bt".into()],
        );
        let line: Vec<String> = cmd.iter().map(|w| shell_quote(w)).collect();
        assert_eq!(
            line.join(" "),
            "gdb -q -iex 'set auto-load off' -iex 'set sysroot /t/sysroot' -iex 'set solib-search-path /t/sysroot/usr/lib' -batch -ex bt /t/sysroot/app/server /t/core"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
