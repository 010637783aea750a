//! `upload FILE --dest s3://bucket/prefix`: uploads one file with the agent's own store, the
//! way the deliver stage does (streaming multipart, checksums, zstd unless `--compress none`),
//! and prints the receipt as one JSON line. `cargo xtask bench upload` measures the agent with
//! it; on a node, it tries a bucket and its settings without waiting for a crash.
//!
//! Credentials and region come from the AWS SDK's usual places, as for `coredump-agent run`.

use std::{path::PathBuf, process::ExitCode, time::Instant};

use clap::Parser;
use coredump_agent::store::{
    self, Body, ChecksumMode, ConnectOptions, Dest, Metadata, Store as _, Tags, Zstd,
    s3::SignPayload,
};

/// Uploads a file with coredump-agent's store.
#[derive(Debug, Parser)]
struct Args {
    /// The file.
    file: PathBuf,
    /// `s3://bucket/prefix` or a folder; the key is `<prefix>/<file name>[.zst]`.
    #[arg(long)]
    dest: String,
    /// S3 endpoint URL, for S3-compatible stores.
    #[arg(long, env = "COREDUMP_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// Path-style bucket addressing.
    #[arg(long)]
    s3_path_style: bool,
    /// Upload checksums.
    #[arg(long, value_enum, default_value_t = ChecksumMode::WhenSupported)]
    s3_checksum: ChecksumMode,
    /// Hash payloads into request signatures.
    #[arg(long, value_enum, default_value_t = SignPayload::Auto)]
    s3_sign_payload: SignPayload,
    /// zstd level; 0 uploads the file as it is.
    #[arg(long, default_value_t = store::compress::DEFAULT_LEVEL)]
    level: i32,
}

fn main() -> ExitCode {
    // Progress of long uploads at info, like the agent; RUST_LOG changes that.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // The agent's own runtime shape: two worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tokio-rt")
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(upload(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn upload(args: Args) -> anyhow::Result<()> {
    let dest: Dest = args.dest.parse()?;
    let options = ConnectOptions {
        s3_endpoint: args.s3_endpoint,
        s3_path_style: args.s3_path_style,
        s3_checksum: args.s3_checksum,
        s3_sign_payload: args.s3_sign_payload,
        ..ConnectOptions::default()
    };
    let store = store::connect(&dest, &options).await?;
    let name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let zstd = (args.level > 0).then(|| Zstd::level(args.level));
    let suffix = if zstd.is_some() { ".zst" } else { "" };
    let key = match dest.key_prefix() {
        "" => format!("{name}{suffix}"),
        prefix => format!("{prefix}/{name}{suffix}"),
    };
    let file = Body::File(&args.file);
    let body = match zstd {
        Some(settings) => Body::Zstd {
            body: &file,
            settings,
        },
        None => file,
    };
    let started = Instant::now();
    let receipt = store
        .put(&key, body, &Tags::new(), &Metadata::new())
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "key": receipt.key,
            "size": receipt.size,
            "source_size": receipt.source_size,
            "sha256": receipt.sha256,
            "seconds": seconds,
            "mib_per_s": receipt.source_size as f64 / (1 << 20) as f64 / seconds,
            "transfer": receipt.transfer,
            "cpu_s_by_thread": cpu_by_thread(),
        })
    );
    Ok(())
}

/// CPU seconds (user + system) of this process's live threads, by thread name: where the
/// time went (tokio's threads are `tokio-rt`, zstd's workers `zstd`).
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state …`: comm may hold spaces, the fields after it do not.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let cpu = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime: fields 14 and 15 of the line, the 12th and 13th after the comm.
        *by_name
            .entry(stat[open + 1..close].to_owned())
            .or_insert(0.0) += (cpu(11) + cpu(12)) / ticks;
    }
    by_name
}
