//! `cargo xtask bench flood`: one cgroup crashes in a loop while five other "pods" crash once
//! each; how many of the five are stored attested, how many crash events the kernel lost, and
//! what the flood cost the agent (peak RSS, CPU). Optimized builds, the agent's default intake,
//! a local store. Changes core_pattern (the agent installs its own) and puts it back.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::intake::{Agent, KernelState};

/// A cgroup directory of its own, removed on drop.
struct Cgroup(PathBuf);

/// The cgroup v2 hierarchy (on hybrid hosts `/sys/fs/cgroup/unified`): the one the kernel's
/// cgroup ids, and so the agent's identities, are about.
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    mounts
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 mount")
}

impl Cgroup {
    fn create(name: &str) -> anyhow::Result<Self> {
        let path = cgroup2_root()?.join(name);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the cgroup {}", path.display()))?;
        Ok(Self(path))
    }

    fn add(&self, pid: u32) -> anyhow::Result<()> {
        Ok(std::fs::write(
            self.0.join("cgroup.procs"),
            pid.to_string(),
        )?)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A crasher in `mode`, started and waiting for its go, in `cgroup`.
/// The crasher's output after its ready line.
type Output = BufReader<std::process::ChildStdout>;

fn crasher(
    crasher: &Path,
    mode: &str,
    arg: Option<&str>,
    cgroup: &Cgroup,
) -> anyhow::Result<(Child, u32, Output)> {
    let mut child = Command::new(crasher)
        .arg(mode)
        .args(arg)
        .env("CRASHER_CORE_LIMIT", u64::MAX.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let pid: u32 = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("crasher said {line:?}"))?;
    cgroup.add(pid)?;
    Ok((child, pid, out))
}

fn go(child: &mut Child) -> anyhow::Result<()> {
    child.stdin.take().expect("piped").write_all(b"go\n")?;
    Ok(())
}

/// `VmHWM` (KiB) and user + system CPU seconds of a live process.
fn cost(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15, in clock ticks (100 a second on Linux).
    let ticks: u64 = fields[14 - 3].parse::<u64>()? + fields[15 - 3].parse::<u64>()?;
    Ok((hwm, ticks as f64 / 100.0))
}

/// Runs the benchmark: `crashes` crashes of one cgroup over `seconds`, five victims meanwhile.
pub fn run(root: &Path, crashes: u32, seconds: u32) -> anyhow::Result<()> {
    let (agent_bin, crasher_bin) = super::release_agent_and_crasher(root)?;
    let dir = root.join("target/bench-flood");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let p = |s: &str| dir.join(s).display().to_string();
    let args: Vec<String> = [
        "run",
        "--node-name",
        "bench",
        "--kube",
        "off",
        "--min-free-disk",
        "0",
        "--state-dir",
        &p("state"),
        "--receive-dir",
        &p("received"),
        "--run-dir",
        &p("run"),
        "--dump-dir",
        &p("dumps"),
        "--dest",
        &p("store"),
    ]
    .map(String::from)
    .into();
    let kernel = KernelState::save()?;
    let agent = Agent::start(&agent_bin, &args, &[], dir.join("agent.log"))?;
    let agent_pid = agent.child.id();
    let (hwm_before, cpu_before) = cost(agent_pid)?;
    let tag = std::process::id();
    let flood_cgroup = Cgroup::create(&format!("coredump-bench-flood-{tag}"))?;
    let (mut flood, _, mut flood_out) = crasher(
        &crasher_bin,
        "flood",
        Some(&format!("{crashes}:{}", crashes / seconds.max(1))),
        &flood_cgroup,
    )?;
    let started = Instant::now();
    go(&mut flood)?;
    // The victims crash in the middle of the flood.
    std::thread::sleep(Duration::from_secs(u64::from(seconds) / 2));
    let mut victims = Vec::new();
    for i in 0..5 {
        let cgroup = Cgroup::create(&format!("coredump-bench-victim-{tag}-{i}"))?;
        let (mut child, pid, _) = crasher(&crasher_bin, "segv", None, &cgroup)?;
        go(&mut child)?;
        child.wait()?;
        victims.push((cgroup, pid));
    }
    let mut count = String::new();
    flood_out.read_line(&mut count)?;
    flood.wait()?;
    let flood_secs = started.elapsed().as_secs_f64();
    let crashed: u32 = count.trim().parse().unwrap_or(0);
    // Stored, attested: the "stored" line of each victim's dump.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attested = 0;
    for (_, pid) in &victims {
        let suffix = format!("_{pid}_SIGSEGV.core.zst");
        let line = agent.wait_for(
            |l| l.contains("\"message\":\"stored\"") && l.contains(&suffix),
            deadline.saturating_duration_since(Instant::now()),
        );
        if line.is_ok_and(|l| l.contains("\"attested\":true")) {
            attested += 1;
        }
    }
    // Let the flood's records settle before measuring what it cost.
    std::thread::sleep(Duration::from_secs(5));
    let (hwm, cpu) = cost(agent_pid)?;
    let log = agent.log();
    let lost = log
        .lines()
        .filter(|l| l.contains("crash events lost"))
        .filter_map(|l| {
            let rest = l.split("\"total_lost\":").nth(1)?;
            rest.split([',', '}']).next()?.trim().parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0);
    let throttled: u64 = log
        .lines()
        .filter(|l| l.contains("over its budget"))
        .filter_map(|l| {
            let rest = l.split("\"events\":").nth(1)?;
            rest.split([',', '}']).next()?.trim().parse::<u64>().ok()
        })
        .sum();
    let intake = log
        .lines()
        .find(|l| l.contains("\"message\":\"intake\""))
        .and_then(|l| l.split("\"intake\":\"").nth(1))
        .and_then(|r| r.split('"').next())
        .unwrap_or("?")
        .to_owned();
    drop(agent);
    drop(kernel);
    drop(victims);
    drop(flood_cgroup);
    if crashed == 0 {
        bail!("the flood crashed nothing");
    }
    println!(
        "\nflood: {crashed} crashes of one cgroup in {flood_secs:.1} s, 5 other cgroups crash once each meanwhile; optimized agent, {intake} intake, local store, 2 CPUs"
    );
    println!(
        "| victims stored attested | crash events lost by the kernel | flood events over budget (not taken in) | agent peak RSS MiB (idle before) | agent CPU s during the flood |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {attested}/5 | {lost} | {throttled} | {:.1} ({:.1}) | {:.1} |",
        hwm as f64 / 1024.0,
        hwm_before as f64 / 1024.0,
        cpu - cpu_before
    );
    if attested < 5 {
        bail!("only {attested} of 5 victims were stored attested");
    }
    Ok(())
}
