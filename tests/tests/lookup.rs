//! `find`, `get` and `info` against a seeded local store, through the real command line.
//!
//! The store is seeded with the agent's own layout (keys, tags, metadata, records), so what is
//! searched is exactly what `run` stores.

use std::{
    process::{Command, Output},
    time::Duration,
};

use coredump_agent::store::local::LocalStore;
use coredump_tests::{
    TempDir, agent_path,
    seed::{crash, record, seed},
};

fn cli(store: &std::path::Path, args: &[&str]) -> Output {
    Command::new(agent_path())
        .args(args)
        .args(["--dest", store.to_str().unwrap()])
        .env("COREDUMP_LOG", "warn")
        .output()
        .expect("run the agent cli")
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn keys(o: &Output) -> Vec<String> {
    lines(o)
        .iter()
        .map(|v| v["key"].as_str().unwrap().to_owned())
        .collect()
}

/// The keys a search printed, compared with the expected ones.
fn assert_keys(o: &Output, expected: &[&String]) {
    let expected: Vec<&str> = expected.iter().map(|k| k.as_str()).collect();
    assert_eq!(keys(o), expected, "{}", String::from_utf8_lossy(&o.stderr));
}

struct Seeded {
    tmp: TempDir,
    web_old: String,
    web_new: String,
    api_abort: String,
    host_crash: String,
    odd: String,
    core: Vec<u8>,
}

async fn seeded() -> Seeded {
    let tmp = TempDir::new("lookup");
    let store = LocalStore::new(tmp.join("store")).unwrap();
    let core: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let h = Duration::from_secs(3600);
    let web_old = seed(
        &store,
        &record(
            Some(("shop", "web-1", "app")),
            crash(10, "server", 11, 50 * h),
        ),
        Some(&core),
    )
    .await;
    let web_new = seed(
        &store,
        &record(Some(("shop", "web-1", "app")), crash(11, "server", 11, h)),
        Some(&core),
    )
    .await;
    let api_abort = seed(
        &store,
        &record(Some(("shop", "api-2", "api")), crash(12, "api", 6, 2 * h)),
        Some(b"abort core"),
    )
    .await;
    let host_crash = seed(&store, &record(None, crash(13, "cron", 6, 3 * h)), None).await;
    // A comm with characters S3 tags forbid: sanitized, still findable by its real spelling.
    let odd = seed(
        &store,
        &record(
            Some(("batch", "job-9", "worker")),
            crash(14, "my app*", 11, 4 * h),
        ),
        Some(b"odd"),
    )
    .await;
    Seeded {
        tmp,
        web_old,
        web_new,
        api_abort,
        host_crash,
        odd,
        core,
    }
}

#[tokio::test]
async fn find_filters_combine_and_sort_newest_first() {
    let s = seeded().await;
    let store = s.tmp.join("store");
    let o = cli(
        &store,
        &["find", "--namespace", "shop", "--pod", "web-1", "--json"],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_keys(&o, &[&s.web_new, &s.web_old]); // newest first
    let first = &lines(&o)[0];
    assert_eq!(first["tags"]["pod"], "web-1");
    assert_eq!(first["tags"]["cluster"], "eu-1");
    assert!(first["size"].as_u64().unwrap() > 0);
    assert!(first["last_modified"].is_string());

    let o = cli(&store, &["find", "--signal", "SIGABRT", "--json"]);
    assert_keys(&o, &[&s.api_abort, &s.host_crash]);
    assert_eq!(lines(&o)[1]["kind"], "crash", "a crash without a dump");
    assert!(
        lines(&o)[1]["tags"].get("pod").is_none(),
        "host processes have no pod tags"
    );

    let o = cli(
        &store,
        &["find", "--signal", "6", "--namespace", "shop", "--json"],
    );
    assert_keys(&o, &[&s.api_abort]);
    let o = cli(
        &store,
        &["find", "--container", "app", "--since", "10h", "--json"],
    );
    assert_keys(&o, &[&s.web_new]);
    let o = cli(&store, &["find", "--until", "2d", "--json"]);
    assert_keys(&o, &[&s.web_old]);
    let o = cli(&store, &["find", "--comm", "my app*", "--json"]);
    // Sanitized values are found by their real spelling.
    assert_keys(&o, &[&s.odd]);
    let o = cli(
        &store,
        &["find", "--tag", "node=node-a", "--limit", "2", "--json"],
    );
    assert_keys(&o, &[&s.web_new, &s.api_abort]);
    let o = cli(
        &store,
        &[
            "find",
            "--pod-uid",
            "uid-api-2",
            "--cluster",
            "eu-1",
            "--json",
        ],
    );
    assert_keys(&o, &[&s.api_abort]);

    // The table for people.
    let o = cli(&store, &["find", "--namespace", "shop"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("TIME"), "{out}");
    assert!(
        out.contains("shop/web-1") && out.contains("SIGSEGV") && out.contains(&s.web_new),
        "{out}"
    );

    // Nothing matched: exit 1. Usage error: exit 2.
    let o = cli(&store, &["find", "--namespace", "nope", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let o = cli(&store, &["find", "--signal", "SIGNOPE"]);
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn get_round_trips_and_never_leaves_partial_files() {
    let s = seeded().await;
    let store = s.tmp.join("store");
    let out = s.tmp.join("out.core");
    let o = cli(&store, &["get", &s.web_new, "-o", out.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        s.core,
        "decompressed, byte for byte"
    );
    let raw = s.tmp.join("raw.zst");
    let o = cli(
        &store,
        &["get", &s.web_new, "--raw", "-o", raw.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        zstd::decode_all(&std::fs::read(&raw).unwrap()[..]).unwrap(),
        s.core
    );

    // A missing key: clear error, exit 2, no file left.
    let missing = s.tmp.join("missing.core");
    let o = cli(
        &store,
        &[
            "get",
            "shop/web-1/nope.core.zst",
            "-o",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.core.zst"));
    assert!(!missing.exists());

    // A corrupted object: the checksum catches it, and nothing is left behind.
    let data = store.join(&s.web_old);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let bad = s.tmp.join("bad.core");
    let o = cli(&store, &["get", &s.web_old, "-o", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(!bad.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&s.tmp.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn info_shows_tags_metadata_and_record() {
    let s = seeded().await;
    let store = s.tmp.join("store");
    let o = cli(&store, &["info", &s.web_new, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tags"]["namespace"], "shop");
    assert_eq!(v["record"]["crash"]["host_pid"], 11);
    assert_eq!(v["record"]["stored"]["key"], s.web_new.as_str());
    let o = cli(&store, &["info", &s.web_new]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("attested:    true") && text.contains("pod:"),
        "{text}"
    );
    let o = cli(&store, &["info", "shop/none.core"]);
    assert_eq!(o.status.code(), Some(1));
}

#[tokio::test]
async fn an_object_whose_tags_were_removed_out_of_band_is_reported() {
    let s = seeded().await;
    let store = s.tmp.join("store");
    // Destroy the tags of one object behind the agent's back.
    std::fs::write(
        store.join(".meta").join(format!("{}.json", s.api_abort)),
        b"{garbage",
    )
    .unwrap();
    let o = cli(&store, &["find", "--namespace", "shop", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    assert_keys(&o, &[&s.web_new, &s.web_old]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&s.api_abort) && err.contains("could not read the tags"),
        "{err}"
    );
    // Only that object matched: it is reported, and the exit code says something went wrong.
    let o = cli(
        &store,
        &[
            "find",
            "--signal",
            "SIGABRT",
            "--namespace",
            "shop",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
