//! The tools the tests run (moto, kubectl, kubernetes-validate), at the versions pinned in
//! `xtask/tools/python.txt`, from the virtualenv `cargo xtask setup` installs them into
//! (`$COREDUMP_TOOLS_DIR`, else `target/tools`). Started by path, never from PATH: a machine's
//! own copy (the image ships an older moto) must never be the one a test uses.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::ci;

/// The pins, shared with `cargo xtask setup`.
const PINS: &str = include_str!("../../xtask/tools/python.txt");

/// The tools' virtualenv.
pub fn dir() -> PathBuf {
    std::env::var_os("COREDUMP_TOOLS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .expect("tests/ is in the workspace")
                    .join("target")
                    .join("tools")
            },
            PathBuf::from,
        )
}

/// A program of the virtualenv, e.g. `moto_server`.
pub fn program(name: &str) -> PathBuf {
    dir().join("bin").join(name)
}

/// The pinned version of a distribution (`moto`), from `xtask/tools/python.txt`.
pub fn pinned(dist: &str) -> &'static str {
    PINS.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter_map(|l| l.split_once("=="))
        .find(|(name, _)| name.split('[').next().unwrap_or(name).trim() == dist)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("{dist} is not pinned in xtask/tools/python.txt"))
}

/// The version of `dist` installed in the virtualenv, if any.
pub fn installed(dist: &str) -> Option<String> {
    let out = Command::new(program("python"))
        .args([
            "-c",
            "import sys, importlib.metadata as m; print(m.version(sys.argv[1]))",
            dist,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether `test` can run: every distribution in `dists` is installed at its pinned version.
/// Outside CI a missing or mismatched one skips the test with a message (the tests that need
/// them are `#[ignore]`d, so only an explicit run gets here); under CI it fails.
pub fn require(test: &str, dists: &[&str]) -> bool {
    let wrong: Vec<String> = dists
        .iter()
        .filter_map(|dist| {
            let want = pinned(dist);
            match installed(dist) {
                Some(v) if v == want => None,
                Some(v) => Some(format!("{dist} is {v}, pinned {want}")),
                None => Some(format!("{dist} {want} is not installed")),
            }
        })
        .collect();
    if wrong.is_empty() {
        return true;
    }
    let why = format!(
        "{} in {} (run `cargo xtask setup`)",
        wrong.join("; "),
        dir().display()
    );
    assert!(!ci(), "{test}: {why}, and CI=true forbids skipping");
    eprintln!("SKIPPED {test}: {why}");
    false
}
