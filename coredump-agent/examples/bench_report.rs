//! `bench_report CORE`: builds the crash report of one core file the way the agent does, and
//! prints what it took as one JSON line. `cargo xtask bench report` runs it beside the agent's
//! upload of the same core.
//!
//! `--scan file`: the core is read where the scanner needs it (the file intake, and a dump
//! whose evidence a restart lost). `--scan stream`: every byte of the core goes through the
//! scanner, as in the pipe and socket intakes while the dump streams in; the plain read of
//! the same bytes is timed first, so the scanner's own share can be told apart.
//!
//! The module files are opened as the intakes open them, through `<proc>/<pid>/root` (here a
//! directory whose `1/root` links to `/`: the crashed process is gone, its files are not),
//! each checked against the build-id the core names.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use clap::{Parser, ValueEnum};
use coredump_agent::report::{self, files, scan};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scan {
    /// Read where needed.
    File,
    /// Every byte through the scanner.
    Stream,
}

/// Builds one core's report and says what it cost.
#[derive(Debug, Parser)]
struct Args {
    /// The core file.
    core: PathBuf,
    /// How the core is scanned.
    #[arg(long, value_enum, default_value_t = Scan::File)]
    scan: Scan,
    /// A directory for the proc root stand-in and the report's scratch files.
    #[arg(long)]
    dir: PathBuf,
}

/// `VmRSS` or `VmHWM` of this process, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Reads all of `path` in the intakes' 1 MiB buffers, handing each to `each`.
fn stream(path: &Path, mut each: impl FnMut(u64, &[u8])) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(offset);
        }
        each(offset, &buf[..n]);
        offset += n as u64;
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    let proc = args.dir.join("proc");
    let root = proc.join("1/root");
    if std::fs::symlink_metadata(&root).is_err() {
        std::fs::create_dir_all(root.parent().unwrap())?;
        std::os::unix::fs::symlink("/", &root)?;
    }
    let scratch = args.dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let cfg = report::Config {
        scratch,
        ..report::Config::default()
    };
    // The plain read alone, for the stream: what the intake pays without a report. Timed
    // before and after the report (the better of the two: the machine is shared).
    let read = || -> std::io::Result<f64> {
        let started = Instant::now();
        stream(&args.core, |_, _| {})?;
        Ok(started.elapsed().as_secs_f64())
    };
    let read_before = match args.scan {
        Scan::Stream => Some(read()?),
        Scan::File => None,
    };
    let rss_before = status_kib("VmRSS");
    let started = Instant::now();
    let core = match args.scan {
        Scan::File => {
            use std::os::unix::fs::FileExt as _;
            let file = std::fs::File::open(&args.core)
                .with_context(|| format!("opening {}", args.core.display()))?;
            scan::scan_at(cfg.limits, |at, buf| file.read_at(buf, at))
        }
        Scan::Stream => {
            let mut scanner = scan::Scanner::new(cfg.limits);
            stream(&args.core, |offset, data| scanner.feed(offset, data))?;
            scanner.finish()
        }
    };
    let scanned = started.elapsed().as_secs_f64();
    // As the intakes do (reception.rs): every mapping of a file's offset 0.
    let mut wanted: Vec<files::Wanted> = core
        .notes
        .files
        .iter()
        .filter(|f| f.offset == 0)
        .map(|f| files::Wanted {
            start: f.start,
            end: f.end,
            path: f.path.clone(),
        })
        .collect();
    wanted.dedup_by_key(|w| w.start);
    let opened = files::open(&proc, 1, &wanted);
    let built = report::build(&core, &opened, &cfg);
    let seconds = started.elapsed().as_secs_f64();
    let hwm = status_kib("VmHWM");
    let read_seconds = match read_before {
        Some(before) => Some(before.min(read()?)),
        None => None,
    };
    let with_build_id = built
        .modules
        .iter()
        .filter(|m| m.build_id.is_some())
        .count();
    Ok(serde_json::json!({
        "scan": format!("{:?}", args.scan).to_lowercase(),
        "seconds": seconds,
        "scan_seconds": scanned,
        "read_seconds": read_seconds,
        "rss_before_kib": rss_before,
        "hwm_kib": hwm,
        "added_kib": hwm.saturating_sub(rss_before),
        "frames": built.frames.len(),
        "modules": built.modules.len(),
        "modules_with_build_id": with_build_id,
        "files_opened": opened.len(),
        "complete": built.complete,
        "summary": built.summary,
        "problems": built.problems,
    }))
}
