//! `cargo xtask setup` on a machine whose own moto is older than the pinned one (as the
//! project's machine image is): setup must install the pinned moto into its own virtualenv
//! whatever comes first on PATH, and the S3 tests, run with that PATH, must pass.
//!
//! Slow (two virtualenvs from PyPI, then the S3 multipart tests): it runs beside the other
//! suites, and under CI=true it cannot be skipped.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The older moto the image ships, whose CompleteMultipartUpload answers the SDK cannot read.
const OLD_MOTO: &str = "5.2.1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_owned()
}

fn pinned_moto() -> String {
    include_str!("../tools/python.txt")
        .lines()
        .find_map(|l| l.strip_prefix("moto[server]=="))
        .expect("moto is pinned")
        .trim()
        .to_owned()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn moto_version(python: &Path) -> String {
    ok(Command::new(python).args([
        "-c",
        "import importlib.metadata as m; print(m.version('moto'))",
    ]))
    .trim()
    .to_owned()
}

#[test]
#[ignore = "installs Python tools from PyPI and runs the S3 tests: cargo xtask test runs it"]
fn setup_installs_and_the_s3_tests_use_the_pinned_moto_when_an_older_one_is_first_on_path() {
    let tmp = std::env::temp_dir().join(format!("xtask-setup-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let old = tmp.join("old-moto");
    ok(Command::new("python3").args(["-m", "venv"]).arg(&old));
    ok(Command::new(old.join("bin/python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("moto[server]=={OLD_MOTO}"),
    ]));
    let path = format!(
        "{}:{}",
        old.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The trap is set: the first moto_server on this PATH is the old one.
    let found = ok(Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .env("PATH", &path));
    assert_eq!(
        Path::new(found.trim()),
        old.join("bin/moto_server"),
        "the old moto must come first"
    );
    assert_eq!(moto_version(&old.join("bin/python")), OLD_MOTO);

    let tools = tmp.join("tools");
    let setup = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("setup")
        .env("PATH", &path)
        .env("COREDUMP_TOOLS_DIR", &tools)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&setup.stderr);
    assert!(setup.status.success(), "xtask setup failed:\n{log}");
    let pinned = pinned_moto();
    assert_ne!(pinned, OLD_MOTO);
    assert_eq!(moto_version(&tools.join("bin/python")), pinned, "{log}");
    assert!(
        log.contains(&format!(
            "moto {pinned} ({})",
            tools.join("bin/moto_server").display()
        )),
        "setup prints the moto the tests use:\n{log}"
    );
    // The old one is still first on PATH, and untouched.
    assert_eq!(moto_version(&old.join("bin/python")), OLD_MOTO);

    // The S3 tests with that PATH: the multipart ones are what moto 5.2.1 breaks.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ok(Command::new(cargo)
        .current_dir(workspace())
        .args([
            "test",
            "--workspace",
            "--exclude",
            "coredump-ebpf",
            "--test",
            "s3",
            "--",
            "--include-ignored",
            "multipart",
        ])
        .env("PATH", &path)
        .env("COREDUMP_TOOLS_DIR", &tools)
        .env("CI", "true"));
    std::fs::remove_dir_all(&tmp).unwrap();
}
