//! `cargo xtask bench …`: measurements that compare against a baseline taken in the same run.

mod delay;
mod flood;
mod intake;
mod report;
mod servers;
mod upload;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::{cargo, status};

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Per-signal overhead of the crash probe: no probe vs classic tracepoint vs tp_btf.
    Probe {
        /// Signals per measurement.
        #[arg(long, default_value_t = 2_000_000)]
        signals: u64,
        /// Measurements per configuration (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// S3 upload: the agent's store (plain and zstd) against boto3 (its own transfer manager and
    /// the CRT's), `aws s3 cp` and s5cmd, same file, same server, same run; throughput, peak
    /// RSS, CPU time, stored size, and the agent's own breakdown (part latency, parts in
    /// flight, CPU by thread). Each size runs on the bare server, then with latency added.
    Upload {
        /// File sizes, in GiB.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 8])]
        sizes: Vec<u64>,
        /// zstd level of the agent's compressed run.
        #[arg(long, default_value_t = 3)]
        level: i32,
        /// The S3 server, on 127.0.0.1: Ceph's radosgw (a real S3 implementation, from Debian),
        /// s3s-fs (files on disk), or moto (in memory: small sizes only).
        #[arg(long, value_enum, default_value_t = upload::ServerKind::Radosgw)]
        server: upload::ServerKind,
        /// Round-trip latency added to every request, in ms (through a delaying proxy), one
        /// pass each; 0 is the bare server.
        #[arg(long, value_delimiter = ',', default_values_t = [0, 20])]
        latency_ms: Vec<u64>,
    },
    /// One crash through each intake (file, pipe, socket) against the seed project's pigz pipe
    /// and boto3 upload: crash to stored, how long the process stays in the kernel, and the
    /// node's disk writes. Needs root; changes core_pattern and puts it back.
    Intake {
        /// Memory the crashing process holds (its core is about that size), in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
    },
    /// A crash flood: one cgroup crashes in a loop while five other pods crash once each; how
    /// many of the five are stored attested, events lost, the agent's peak RSS and CPU. Needs
    /// root; changes core_pattern and puts it back.
    Flood {
        /// Crashes of the flooding cgroup.
        #[arg(long, default_value_t = 1000)]
        crashes: u32,
        /// Over this many seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// The crash report's cost: building it for a core of `--mib` MiB with 50 mapped modules,
    /// against the agent's compression and upload of the same core (time, memory added).
    /// Needs root; changes core_pattern for one crash and puts it back.
    Report {
        /// Memory the crashing process fills (its core is about that size), in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
    },
    /// `find` at scale: a store of 10,000 dumps over 500 pods; one pod's dumps (narrowed by
    /// key prefix) and one signal over everything, each against reading every object's tags.
    Find {
        /// Dumps to seed.
        #[arg(long, default_value_t = 10_000)]
        dumps: u32,
        /// Pods they belong to.
        #[arg(long, default_value_t = 500)]
        pods: u32,
    },
}

pub fn run(root: &Path, which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Probe { signals, rounds } => probe(root, signals, rounds),
        Bench::Upload {
            sizes,
            level,
            server,
            latency_ms,
        } => upload::run(root, &sizes, level, server, &latency_ms),
        Bench::Intake { mib } => intake::run(root, mib),
        Bench::Flood { crashes, seconds } => flood::run(root, crashes, seconds),
        Bench::Report { mib } => report::run(root, mib),
        Bench::Find { dumps, pods } => status(cargo(root).args([
            "run",
            "--release",
            "--package",
            "coredump-agent",
            "--example",
            "bench_find",
            "--",
            "--dumps",
            &dumps.to_string(),
            "--pods",
            &pods.to_string(),
        ])),
    }
}

/// Starts `coredump-agent probe --hook <hook>` and waits until it has attached.
fn start_probe(agent: &Path, hook: &str) -> anyhow::Result<Child> {
    let mut child = Command::new(agent)
        .args(["probe", "--hook", hook])
        .env("COREDUMP_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    let stderr = child.stderr.take().expect("piped");
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if line.contains("crash probe attached") {
            return Ok(child);
        }
    }
    let st = child.wait()?;
    bail!("`coredump-agent probe --hook {hook}` exited before attaching: {st}");
}

fn signal_loop(crasher: &Path, signals: u64) -> anyhow::Result<f64> {
    let out = Command::new(crasher)
        .args(["signal-loop", &signals.to_string()])
        .output()
        .context("running the signal loop")?;
    if !out.status.success() {
        bail!(
            "signal loop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("signal loop printed {text:?}"))
}

/// Builds the optimized agent and the test crasher; their paths.
fn release_agent_and_crasher(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    status(cargo(root).args([
        "build",
        "--release",
        "--package",
        "coredump-agent",
        "--package",
        "coredump-tests",
        "--bin",
        "coredump-agent",
        "--bin",
        "crasher",
    ]))?;
    let release = root.join("target/release");
    Ok((release.join("coredump-agent"), release.join("crasher")))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn probe(root: &Path, signals: u64, rounds: usize) -> anyhow::Result<()> {
    let (agent, crasher) = release_agent_and_crasher(root)?;
    let object = std::fs::read_dir(root.join("target/release/build"))?
        .filter_map(Result::ok)
        .map(|e| e.path().join("out/coredump"))
        .find(|p| p.exists());

    let mut results = Vec::new();
    for hook in [None, Some("tracepoint"), Some("tp-btf")] {
        let mut probe = hook.map(|h| start_probe(&agent, h)).transpose()?;
        let mut samples = Vec::new();
        for _ in 0..rounds {
            samples.push(signal_loop(&crasher, signals)?);
        }
        if let Some(p) = probe.as_mut() {
            p.kill()?;
            p.wait()?;
        }
        results.push((hook.unwrap_or("no probe"), median(samples)));
    }
    let base = results[0].1;
    println!(
        "probe overhead: {signals} SIGUSR1 deliveries (handled, so filtered in the kernel), median of {rounds}"
    );
    println!(
        "{:<12} {:>14} {:>10} {:>12}",
        "hook", "ns/signal", "ratio", "+ns/signal"
    );
    for (name, ns) in &results {
        println!(
            "{name:<12} {ns:>14.1} {:>9.3}x {:>12.1}",
            ns / base,
            ns - base
        );
    }
    if let Some(object) = object {
        let size = std::fs::metadata(&object)?.len();
        println!("eBPF object: {} ({size} bytes)", object.display());
    }
    Ok(())
}
