//! Programs the crash report tests crash, built at test time from `tests/programs/`: the C
//! program with debug info and stripped (both dynamically linked), the Rust one with
//! `panic=abort`. And what the binutils say about them (build-id, symbol ranges), to check the
//! report against.
//!
//! gcc, gdb and the binutils are system tools: `cargo xtask setup` installs them from Debian.
//! A test that needs one prints `SKIPPED` without it, and fails under `CI=true`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::ci;

/// The sources.
fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("programs")
        .join(name)
}

/// Whether `test` can run: every program in `tools` answers `--version`. Skips (printing
/// why) outside CI, fails under it.
pub fn require(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not installed (run `cargo xtask setup`)",
        missing.join(", ")
    );
    assert!(!ci(), "{test}: {why}, and CI=true forbids skipping");
    eprintln!("SKIPPED {test}: {why}");
    false
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `deep.c` built into `dir/name` with gcc and `flags` (`-g`, `-s`, …), dynamically linked,
/// without optimizations (so each function is a frame).
pub fn c_program(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(name);
    run(Command::new("gcc")
        .args(["-O0", "-fno-omit-frame-pointer"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(source("deep.c")));
    out
}

/// `damage.c` (a core_pattern helper that writes the core with damaged notes) built into
/// `dir/name`.
pub fn damager(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    run(Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(source("damage.c")));
    out
}

/// `order.rs` built into `dir/name` with rustc, `-C panic=abort`, debug info.
pub fn rust_program(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    // The toolchain cargo runs the tests with.
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    run(Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "panic=abort",
            "-g",
            "-C",
            "opt-level=0",
        ])
        .arg("-o")
        .arg(&out)
        .arg(source("order.rs")));
    out
}

/// The GNU build-id of a binary, as `readelf -n` prints it.
pub fn build_id(binary: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(binary)
        .output()
        .expect("readelf");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID:"))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("no build-id in {}", binary.display()))
}

/// The address range of function `name` in a binary with symbols (`nm -S`).
pub fn symbol_range(binary: &Path, name: &str) -> std::ops::Range<u64> {
    let out = Command::new("nm")
        .arg("-S")
        .arg(binary)
        .output()
        .expect("nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts[..] {
                [addr, size, _, sym] if sym == name => {
                    let addr = u64::from_str_radix(addr, 16).ok()?;
                    Some(addr..addr + u64::from_str_radix(size, 16).ok()?)
                }
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("no {name} in nm -S {}", binary.display()))
}
