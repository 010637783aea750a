//! `cargo xtask bench report`: what the crash report costs next to storing the dump, same core,
//! same run, optimized builds.
//!
//! A C program linked against 50 shared libraries of its own (each with its build-id) fills
//! `--mib` MiB of heap like a real process (a quarter never touched, a quarter zeros, a quarter
//! random bytes, a quarter pointer-heavy words), then crashes five calls deep through five of
//! the libraries. The kernel writes its core to a file (core_pattern is changed, and put back
//! even on failure). Then, each in its own process:
//! - the report, with the core read where needed (the file intake, a restart), and with every
//!   byte of it fed through the scanner (the pipe and socket intakes, as the dump streams in);
//!   time, and the peak memory added (`VmHWM` after, less `VmRSS` before);
//! - the agent's own zstd compression and upload of the same core to s3s-fs on 127.0.0.1
//!   (the `upload` example, as `bench upload` runs it); time and peak RSS.
//!
//! The goal (issue 14): the report under 5% of the upload's time, and under 64 MiB added.

use std::{
    fmt::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{
    intake::KernelState,
    median,
    servers::{BUCKET, S3Server},
    upload::timed,
};
use crate::{cargo, status};

const MIB: f64 = (1u64 << 20) as f64;
const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
/// Shared libraries of the crashing program.
const LIBRARIES: usize = 50;
/// Calls (one per library) between `main` and the crash.
const DEPTH: usize = 5;
/// Measurements of each kind (the median is reported).
const ROUNDS: usize = 3;

/// One library: `modNN_step` calls the next step down, or crashes at the bottom.
fn library_source(i: usize) -> String {
    format!(
        r#"/* `steps` is the table of every library's step (C has no self-referring function type). */
typedef int (*step_fn)(const void *steps, volatile int *p, int depth);
/* Some data of its own, so that each library is a file worth mapping. */
const char mod{i:02}_table[16384] = "mod{i:02}";
__attribute__((noinline)) int mod{i:02}_step(const void *steps, volatile int *p, int depth) {{
    if (depth == 0) {{ *p = {i}; return mod{i:02}_table[{i}]; }}
    return ((step_fn const *)steps)[depth - 1](steps, p, depth - 1) + mod{i:02}_table[depth];
}}
"#
    )
}

/// The program: `bench-crash MIB` fills MIB MiB of heap, then crashes through the libraries.
fn program_source() -> String {
    let mut s = String::from(
        r#"#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int (*step_fn)(const void *steps, volatile int *p, int depth);
"#,
    );
    for i in 0..LIBRARIES {
        let _ = writeln!(
            s,
            "int mod{i:02}_step(const void *steps, volatile int *p, int depth);"
        );
    }
    s.push_str("static step_fn const steps[] = {\n");
    for i in 0..LIBRARIES {
        let _ = writeln!(s, "    mod{i:02}_step,");
    }
    let _ = write!(
        s,
        r#"}};
int main(int argc, char **argv) {{
    size_t mib = argc > 1 ? strtoull(argv[1], 0, 10) : 1024;
    size_t size = mib << 20;
    uint64_t *heap = malloc(size);
    if (!heap) return 2;
    uint64_t state = 0x9e3779b97f4a7c15ull;
    size_t words = size / 8, quarter = words / 4;
    /* The first quarter is never touched: not in the core (a hole). */
    memset(heap + quarter, 0, quarter * 8);
    for (size_t w = 2 * quarter; w < words; w++) {{
        state ^= state << 13; state ^= state >> 7; state ^= state << 17;
        heap[w] = w < 3 * quarter ? state
            : (state % 4 == 0 ? (0x00007f0000000000ull | ((state >> 20) & 0xfffffffff8ull))
               : state % 4 == 1 ? (state >> 40) & 0xffff : 0);
    }}
    printf("filled %zu MiB at %p\n", mib, (void *)heap);
    fflush(stdout);
    return steps[{top}](steps, NULL, {top});
}}
"#,
        top = DEPTH - 1
    );
    s
}

/// Builds the program and its libraries in `dir`; the program's path.
fn build_program(dir: &Path) -> anyhow::Result<PathBuf> {
    let program = dir.join("bench-crash");
    if program.exists() {
        return Ok(program);
    }
    for i in 0..LIBRARIES {
        let src = dir.join(format!("mod{i:02}.c"));
        std::fs::write(&src, library_source(i))?;
        status(
            Command::new("gcc")
                .args(["-O2", "-g", "-fPIC", "-shared", "-Wl,--build-id", "-o"])
                .arg(dir.join(format!("libmod{i:02}.so")))
                .arg(&src),
        )?;
    }
    let src = dir.join("bench-crash.c");
    std::fs::write(&src, program_source())?;
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-g", "-Wl,--build-id", "-Wl,-rpath,$ORIGIN", "-o"])
        .arg(&program)
        .arg(&src)
        .arg("-L")
        .arg(dir);
    for i in 0..LIBRARIES {
        gcc.arg(format!("-lmod{i:02}"));
    }
    status(&mut gcc)?;
    Ok(program)
}

/// Crashes `program` holding `mib` MiB with core_pattern writing into `dir`; the core's path.
fn crash(program: &Path, mib: u64, dir: &Path) -> anyhow::Result<PathBuf> {
    let kernel = KernelState::save()?;
    let pattern = format!("{}/core.%P", dir.display());
    if pattern.len() > 127 {
        bail!("core_pattern {pattern:?} is too long: move the target directory");
    }
    std::fs::write(CORE_PATTERN, &pattern)?;
    let child = Command::new("sh")
        .args(["-c", "ulimit -c unlimited && exec \"$0\" \"$@\""])
        .arg(program)
        .arg(mib.to_string())
        .stdout(Stdio::inherit())
        .spawn()
        .context("starting the crashing program")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    drop(kernel);
    if out.status.signal() != Some(libc::SIGSEGV) || !out.status.core_dumped() {
        bail!("the program did not dump core on SIGSEGV: {}", out.status);
    }
    let core = dir.join(format!("core.{pid}"));
    if !core.exists() {
        bail!("no core at {}", core.display());
    }
    Ok(core)
}

/// The medians of a measured kind.
struct Row {
    what: String,
    seconds: f64,
    /// Memory the work added (KiB): the report's own VmHWM − VmRSS, or the upload's peak RSS.
    added_kib: f64,
    peak_kib: f64,
}

/// Runs the benchmark with a process holding `mib` MiB.
pub fn run(root: &Path, mib: u64) -> anyhow::Result<()> {
    super::upload::ensure_apt_tools()?;
    status(cargo(root).args([
        "build",
        "--release",
        "--package",
        "coredump-agent",
        "--example",
        "upload",
        "--example",
        "bench_report",
    ]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let upload = target.join("release/examples/upload");
    let reporter = target.join("release/examples/bench_report");
    let dir = target.join("bench-report");
    std::fs::create_dir_all(&dir)?;
    let program = build_program(&dir)?;
    let cores = dir.join("cores");
    let _ = std::fs::remove_dir_all(&cores);
    std::fs::create_dir_all(&cores)?;
    let core = crash(&program, mib, &cores)?;
    let core_size = std::fs::metadata(&core)?.len();
    // Warm the page cache once, so no run pays for the first read.
    std::io::copy(&mut std::fs::File::open(&core)?, &mut std::io::sink())?;
    eprintln!(
        "xtask bench: core {} ({:.0} MiB)",
        core.display(),
        core_size as f64 / MIB
    );

    let mut rows = Vec::new();
    let mut example = None;
    for scan in ["file", "stream"] {
        let (mut seconds, mut added, mut peak, mut extra) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let mut cmd = Command::new(&reporter);
            cmd.arg(&core).args(["--scan", scan]).arg("--dir").arg(&dir);
            let out = std::cell::RefCell::new(String::new());
            let (_, peak_kib, _) = timed(&mut cmd, Stdio::piped(), |child| {
                use std::io::Read as _;
                let mut stdout = child.stdout.take().expect("piped");
                stdout.read_to_string(&mut out.borrow_mut())?;
                Ok(())
            })?;
            let line: serde_json::Value = serde_json::from_str(out.borrow().trim())
                .with_context(|| format!("bench_report printed {:?}", out.borrow()))?;
            let num = |k: &str| line[k].as_f64().unwrap_or(0.0);
            if line["modules_with_build_id"].as_u64().unwrap_or(0) < LIBRARIES as u64 {
                bail!("the report misses modules: {line}");
            }
            seconds.push(num("seconds"));
            added.push(num("added_kib"));
            peak.push(peak_kib as f64);
            extra.push(num("read_seconds"));
            example = Some(line);
        }
        let read = median(extra);
        rows.push(Row {
            what: match scan {
                "file" => "report, core read where needed (file intake, restart)".into(),
                _ => format!(
                    "report, every byte through the scanner (pipe/socket intake; the plain read alone: {read:.2} s)"
                ),
            },
            seconds: median(seconds),
            added_kib: median(added),
            peak_kib: median(peak),
        });
    }
    let example = example.expect("rounds ran");
    eprintln!("xtask bench: the report: {example}");

    let data = Path::new("/dev/shm").join(format!("coredump-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(data.join(BUCKET))?;
    let server = S3Server::s3s_fs_in(&data)?;
    let mut seconds = vec![];
    let mut peak = vec![];
    let mut stored = 0;
    for round in 0..ROUNDS {
        let prefix = format!("report-{round}");
        let mut cmd = Command::new(&upload);
        cmd.arg(&core)
            .args(["--dest", &format!("s3://{BUCKET}/{prefix}")])
            .args(["--s3-endpoint", &server.endpoint(), "--s3-path-style"])
            .envs(server.aws_env());
        let (s, rss, _) = timed(&mut cmd, Stdio::null(), |_| Ok(()))?;
        let name = core.file_name().unwrap().to_string_lossy();
        stored = stored_size(&data, &format!("{prefix}/{name}.zst"))?;
        seconds.push(s);
        peak.push(rss as f64);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&cores);
    let upload_row = Row {
        what: format!(
            "agent's zstd + upload to s3s-fs (stored {:.0} MiB)",
            stored as f64 / MIB
        ),
        seconds: median(seconds),
        added_kib: median(peak.clone()),
        peak_kib: median(peak),
    };

    println!(
        "\ncrash report of a {:.0} MiB core with {} mapped modules ({} libraries of its own, crashing {DEPTH} calls deep through them), against compressing and uploading the same core; medians of {ROUNDS}, optimized builds, 2 CPUs",
        core_size as f64 / MIB,
        example["modules"],
        LIBRARIES,
    );
    println!(
        "| work | seconds | share of the upload's time | memory added MiB (upload: its peak) | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in rows.iter().chain([&upload_row]) {
        println!(
            "| {} | {:.3} | {:.1}% | {:.1} | {:.1} |",
            r.what,
            r.seconds,
            100.0 * r.seconds / upload_row.seconds,
            r.added_kib / 1024.0,
            r.peak_kib / 1024.0,
        );
    }
    println!(
        "report: {} frames, {} modules ({} with a build-id, {} files opened), complete: {}, {}",
        example["frames"],
        example["modules"],
        example["modules_with_build_id"],
        example["files_opened"],
        example["complete"],
        example["summary"].as_str().unwrap_or("no summary"),
    );
    let worst = rows.iter().fold((0.0f64, 0.0f64), |(s, m), r| {
        (s.max(r.seconds / upload_row.seconds), m.max(r.added_kib))
    });
    println!(
        "goal: under 5% of the time and 64 MiB added; worst here {:.1}% and {:.1} MiB: {}",
        100.0 * worst.0,
        worst.1 / 1024.0,
        if worst.0 < 0.05 && worst.1 < 64.0 * 1024.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

/// Size of an object as s3s-fs stored it (a file under its root), then removes it: the next
/// run needs the disk space.
fn stored_size(data: &Path, key: &str) -> anyhow::Result<u64> {
    let path = data.join(BUCKET).join(key);
    let size = std::fs::metadata(&path)
        .with_context(|| format!("the uploaded object {}", path.display()))?
        .len();
    std::fs::remove_file(&path)?;
    Ok(size)
}
