//! tracefs: where it is (mounting it if needed) and the record layout of a tracepoint.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

/// Where tracefs is usually found, in order of preference.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Returns a mounted tracefs, mounting it on `/sys/kernel/tracing` when no candidate is mounted
/// (minimal hosts and containers often lack the mount; the classic tracepoint needs it).
pub fn find_or_mount() -> io::Result<PathBuf> {
    if let Some(found) = CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(found.to_owned());
    }
    let target = Path::new(CANDIDATES[0]);
    crate::sys::mount_tracefs(target).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "tracefs is not mounted and mounting it on {} failed: {e}",
                target.display()
            ),
        )
    })?;
    tracing::info!(path = %target.display(), "mounted tracefs");
    Ok(target.to_owned())
}

/// Parses a tracepoint `format` file into field name → byte offset.
pub fn field_offsets(format: &str) -> HashMap<String, u32> {
    format
        .lines()
        .filter_map(|line| {
            let line = line.trim().strip_prefix("field:")?;
            let (decl, rest) = line.split_once(';')?;
            let name = decl.split_whitespace().last()?.trim_start_matches('*');
            // Arrays look like `char comm[16]`.
            let name = name.split('[').next()?;
            let offset = rest.trim().strip_prefix("offset:")?.split(';').next()?;
            Some((name.to_owned(), offset.trim().parse().ok()?))
        })
        .collect()
}

/// Reads the field offsets of `category/name`.
pub fn tracepoint_offsets(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> io::Result<HashMap<String, u32>> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    Ok(field_offsets(&std::fs::read_to_string(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_deliver_format() {
        // Verbatim from Linux 6.18.
        let format = "name: signal_deliver
ID: 260
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int errno;\toffset:12;\tsize:4;\tsigned:1;
\tfield:int code;\toffset:16;\tsize:4;\tsigned:1;
\tfield:unsigned long sa_handler;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long sa_flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:char comm[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"sig=%d errno=%d code=%d sa_handler=%lx sa_flags=%lx\"";
        let f = field_offsets(format);
        assert_eq!(f["sig"], 8);
        assert_eq!(f["code"], 16);
        assert_eq!(f["sa_handler"], 24);
        assert_eq!(f["comm"], 40);
        assert_eq!(f["common_pid"], 4);
    }
}
