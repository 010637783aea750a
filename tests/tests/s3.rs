//! The S3 store against real S3 servers on 127.0.0.1: moto, started by each test (see
//! `coredump_tests::moto`), and Ceph's radosgw, shared by the tests of this file (see
//! `coredump_tests::radosgw`). A client can work against one server and fail against another,
//! so the round trips run against both ([`Server`]). First the store itself: small and
//! multipart uploads (plain and zstd) read back byte for byte, tags and metadata read back
//! exactly, errors that name their cause, and the server going down in the middle of a
//! multipart upload. Then the agent binary: it refuses to start without a usable bucket and
//! keeps the dump, rides out an outage, stores a real crash with the pod identity tags, and
//! `find`, `get` and `info` read what it stored.
//!
//! Without moto_server or radosgw these tests skip (and fail under CI=true); the crash test
//! needs root.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use coredump_agent::store::s3::sdk;
use coredump_agent::store::{
    Body, BodyReader, ChecksumMode, ConnectOptions, Metadata, S3Store, Store, StoreError, Tags,
    Zstd, compress, layout,
};
use coredump_agent::testdata::{core_like, random};
use coredump_tests::{
    Agent, Crasher, CrasherOpts, TempDir, agent_path,
    moto::{BUCKET, Moto, free_port},
    node,
    radosgw::Radosgw,
    require_root,
};
use serde_json::Value;

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn pairs(list: &[(&str, &str)]) -> Tags {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The store's own checksum of `bytes` (what a receipt reports).
async fn sha256(bytes: &[u8]) -> String {
    let mut reader = BodyReader::open(Body::Bytes(bytes)).await.unwrap();
    while reader.next_chunk().await.unwrap().is_some() {}
    reader.finish().unwrap().sha256
}

async fn read_object(store: &impl Store, key: &str) -> Vec<u8> {
    let mut reader = store.open(key).await.unwrap();
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut out)
        .await
        .unwrap();
    out
}

fn unzstd(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    compress::decoder(bytes)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// An error and its causes, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Upload records the store keeps under `<state>/uploads/`.
fn records(state: &Path) -> usize {
    std::fs::read_dir(state.join("uploads")).map_or(0, Iterator::count)
}

fn keys(objects: &[coredump_agent::store::ObjectInfo]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

/// An S3 server the round trips run against.
trait Server {
    /// A store on `bucket` with test-sized parts (5 MiB).
    fn store_on(&self, bucket: &str, options: ConnectOptions) -> S3Store;
    /// A plain client, for what the store does not do (list uploads in progress); moto's
    /// reaches it directly, so it works while the relay is stopped.
    fn sdk_client(&self) -> sdk::Client;
}

impl Server for Moto {
    fn store_on(&self, bucket: &str, options: ConnectOptions) -> S3Store {
        self.store(bucket, options)
    }
    fn sdk_client(&self) -> sdk::Client {
        self.direct_client()
    }
}

impl Server for Radosgw {
    fn store_on(&self, bucket: &str, options: ConnectOptions) -> S3Store {
        self.store(bucket, options)
    }
    fn sdk_client(&self) -> sdk::Client {
        self.client()
    }
}

/// Multipart uploads `server` has in progress in `bucket`.
async fn uploads_in(server: &impl Server, bucket: &str) -> usize {
    server
        .sdk_client()
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

#[tokio::test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn small_objects_round_trip_with_tags_and_metadata() {
    if let Some(moto) = Moto::launch("small_objects_round_trip_with_tags_and_metadata") {
        small_objects_round_trip(&moto, BUCKET).await;
    }
}

async fn small_objects_round_trip(server: &impl Server, bucket: &str) {
    let store = server.store_on(bucket, ConnectOptions::default());
    store.check().await.unwrap();
    store.ping().await.unwrap();
    // The check leaves nothing behind: no object, no upload in progress.
    assert!(store.list("").await.unwrap().is_empty());
    assert_eq!(uploads_in(server, bucket).await, 0);

    let key = "p/prod/web-1/a.core";
    let tags = pairs(&[("namespace", "prod"), ("pod", "web-1"), ("comm", "my app")]);
    let metadata = pairs(&[("exe", "/usr/bin/web --x=1"), ("original-size", "5")]);
    let receipt = store
        .put(key, Body::Bytes(b"hello"), &tags, &metadata)
        .await
        .unwrap();
    assert_eq!(
        (receipt.key.as_str(), receipt.size, receipt.source_size),
        (key, 5, 5)
    );
    assert_eq!(receipt.sha256, sha256(b"hello").await);
    assert_eq!(store.tags(key).await.unwrap(), tags);
    let (info, stored_metadata) = store.head(key).await.unwrap();
    assert_eq!((info.key.as_str(), info.size), (key, 5));
    assert_eq!(stored_metadata, metadata);
    assert_eq!(read_object(&store, key).await, b"hello");

    // zstd on the way up: the object holds the compressed bytes the receipt describes.
    let data = core_like(3 * MIB + 12345);
    let plain = Body::Bytes(&data);
    let zkey = "p/prod/web-1/b.core.zst";
    let body = Body::Zstd {
        body: &plain,
        settings: Zstd::default(),
    };
    let receipt = store.put(zkey, body, &tags, &metadata).await.unwrap();
    assert_eq!(receipt.source_size, data.len() as u64);
    assert!(receipt.size < data.len() as u64 / 2, "{receipt:?}");
    let stored = read_object(&store, zkey).await;
    assert_eq!(stored.len() as u64, receipt.size);
    assert_eq!(sha256(&stored).await, receipt.sha256);
    assert!(unzstd(&stored) == data, "decompressed bytes differ");

    // Listing is by plain prefix, sorted.
    assert_eq!(keys(&store.list("").await.unwrap()), [key, zkey]);
    assert_eq!(keys(&store.list("p/prod/web-1/b").await.unwrap()), [zkey]);
    assert!(store.list("q").await.unwrap().is_empty());

    store.delete(key).await.unwrap();
    store.delete(key).await.unwrap();
    for missing in [
        store.head(key).await.map(drop),
        store.tags(key).await.map(drop),
        store.open(key).await.map(drop),
    ] {
        assert!(
            matches!(missing, Err(StoreError::NotFound { .. })),
            "{missing:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn multipart_uploads_round_trip_in_both_checksum_modes() {
    if let Some(moto) = Moto::launch("multipart_uploads_round_trip_in_both_checksum_modes") {
        multipart_round_trip(&moto, BUCKET).await;
    }
}

async fn multipart_round_trip(server: &impl Server, bucket: &str) {
    let tmp = TempDir::new("s3-multipart");
    let data = core_like(18 * MIB + 4321);
    let file = tmp.join("core.1");
    std::fs::write(&file, &data).unwrap();
    let tags = pairs(&[("pod", "web-1"), ("signal", "SIGSEGV")]);
    let metadata = pairs(&[("original-size", "18878753"), ("compression", "none")]);

    for mode in [ChecksumMode::WhenSupported, ChecksumMode::WhenRequired] {
        let state = tmp.join(&format!("{mode:?}"));
        let store = server.store_on(
            bucket,
            ConnectOptions {
                s3_checksum: mode,
                state_dir: Some(state.clone()),
                ..ConnectOptions::default()
            },
        );
        let key = format!("mp/{mode:?}/plain.core");
        let receipt = store
            .put(&key, Body::File(&file), &tags, &metadata)
            .await
            .unwrap();
        assert_eq!(receipt.size, data.len() as u64, "{mode:?}");
        // 5 MiB parts: an S3 multipart ETag ends in the number of parts.
        let head = store
            .client()
            .head_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        assert!(
            head.e_tag().unwrap_or_default().ends_with("-4\""),
            "{mode:?}: {:?}",
            head.e_tag()
        );
        let stored = read_object(&store, &key).await;
        assert!(stored == data, "{mode:?}: stored bytes differ");
        assert_eq!(sha256(&stored).await, receipt.sha256);
        assert_eq!(store.tags(&key).await.unwrap(), tags, "{mode:?}");
        assert_eq!(store.head(&key).await.unwrap().1, metadata, "{mode:?}");

        let zkey = format!("mp/{mode:?}/z.core.zst");
        let plain = Body::File(&file);
        let body = Body::Zstd {
            body: &plain,
            settings: Zstd::level(3),
        };
        let receipt = store.put(&zkey, body, &tags, &metadata).await.unwrap();
        assert_eq!(receipt.source_size, data.len() as u64);
        let stored = read_object(&store, &zkey).await;
        assert_eq!(sha256(&stored).await, receipt.sha256);
        assert!(
            unzstd(&stored) == data,
            "{mode:?}: decompressed bytes differ"
        );

        assert_eq!(uploads_in(server, bucket).await, 0, "{mode:?}");
        assert_eq!(records(&state), 0, "{mode:?}: upload records left");
    }
}

/// The store completes the upload, but its answer cannot be read (moto 5.2.0-5.2.1 named the
/// reply's root element wrongly; a proxy can garble it; S3 can cut a connection it held open
/// while assembling): the put is confirmed by the object itself, not failed and uploaded again.
#[tokio::test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn an_unreadable_answer_to_complete_multipart_upload_is_confirmed_by_the_object() {
    let test = "an_unreadable_answer_to_complete_multipart_upload_is_confirmed_by_the_object";
    let Some(moto) = Moto::launch(test) else {
        return;
    };
    let tmp = TempDir::new("s3-garbled");
    let data = core_like(12 * MIB + 7);
    let file = tmp.join("core.2");
    std::fs::write(&file, &data).unwrap();
    let state = tmp.join("state");
    let store = moto.store(
        BUCKET,
        ConnectOptions {
            state_dir: Some(state.clone()),
            ..ConnectOptions::default()
        },
    );
    let tags = pairs(&[("pod", "web-2")]);
    moto.garble_answers(
        "<CompleteMultipartUploadResult",
        "<CompleteMultipartUploadResulX",
    );
    let receipt = store
        .put("garbled/core.2", Body::File(&file), &tags, &Tags::new())
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(receipt.size, data.len() as u64);
    // Uploaded once: the object is the 3-part upload, nothing is left in progress.
    let head = moto
        .direct_client()
        .head_object()
        .bucket(BUCKET)
        .key("garbled/core.2")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap_or_default().ends_with("-3\""),
        "{head:?}"
    );
    assert!(read_object(&store, "garbled/core.2").await == data);
    assert_eq!(store.tags("garbled/core.2").await.unwrap(), tags);
    assert_eq!(uploads_in(&moto, BUCKET).await, 0);
    assert_eq!(records(&state), 0, "upload records left");
}

/// radosgw drops the tags given at CreateMultipartUpload, then answers GetObjectTagging with 200
/// and an empty body. That answer means "no tags" (and they are set again), not a failed
/// upload retried every 300 s with the dump kept on the node forever.
#[tokio::test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn a_tagging_answer_without_a_tag_set_means_no_tags() {
    let Some(moto) = Moto::launch("a_tagging_answer_without_a_tag_set_means_no_tags") else {
        return;
    };
    let tmp = TempDir::new("s3-notags");
    let data = core_like(12 * MIB);
    let file = tmp.join("core.3");
    std::fs::write(&file, &data).unwrap();
    let store = moto.store(BUCKET, ConnectOptions::default());
    let tags = pairs(&[("pod", "web-4"), ("signal", "SIGABRT")]);
    moto.garble_answers("<Tagging", "<TaggXng");
    store
        .put("notags/core.3", Body::File(&file), &tags, &Tags::new())
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    moto.stop_garbling();
    let out = moto
        .direct_client()
        .get_object_tagging()
        .bucket(BUCKET)
        .key("notags/core.3")
        .send()
        .await
        .unwrap();
    let stored: Tags = out
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    assert_eq!(stored, tags);
}

/// A node never replaces an object: new keys are written with `If-None-Match: *`. A retry of a
/// put that did complete (its answer lost) finds the same bytes there and counts as stored; a
/// different object under the key is left as it is, and the put fails.
#[tokio::test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn an_existing_object_is_never_replaced() {
    if let Some(moto) = Moto::launch("an_existing_object_is_never_replaced") {
        never_replaces(&moto, BUCKET).await;
    }
}

async fn never_replaces(server: &impl Server, bucket: &str) {
    let tmp = TempDir::new("s3-ifnone");
    let store = server.store_on(bucket, ConnectOptions::default());
    let tags = pairs(&[("pod", "web-3")]);
    let (small, other) = (core_like(64 << 10), core_like(64 << 10 | 1));
    let large = core_like(11 * MIB);
    let file = tmp.join("large.core");
    std::fs::write(&file, &large).unwrap();
    for (key, body, different) in [
        (
            "ifnone/small.core",
            Body::Bytes(&small),
            Body::Bytes(&other),
        ),
        ("ifnone/large.core", Body::File(&file), Body::Bytes(&other)),
    ] {
        let first = store.put(key, body, &tags, &Tags::new()).await.unwrap();
        let again = store
            .put(key, body, &tags, &Tags::new())
            .await
            .unwrap_or_else(|e| panic!("{key}: the same bytes again: {}", chain(&e)));
        assert_eq!(first.sha256, again.sha256);
        let err = store
            .put(key, different, &tags, &Tags::new())
            .await
            .expect_err("other bytes under the same key");
        assert!(
            chain(&err).contains("does not replace objects"),
            "{}",
            chain(&err)
        );
        assert_eq!(
            sha256(&read_object(&store, key).await).await,
            first.sha256,
            "{key} kept"
        );
    }
    assert_eq!(uploads_in(server, bucket).await, 0);
}

#[tokio::test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn tag_values_with_forbidden_characters_are_sanitized_and_findable() {
    if let Some(moto) =
        Moto::launch("tag_values_with_forbidden_characters_are_sanitized_and_findable")
    {
        sanitized_tags_round_trip(&moto, BUCKET).await;
    }
}

async fn sanitized_tags_round_trip(server: &impl Server, bucket: &str) {
    let store = server.store_on(bucket, ConnectOptions::default());
    let raw = [
        ("comm", "my app*"),
        ("pod", "w\u{e9}b\n1\"x<y>&z"),
        ("container", "a/b:c@d e+f=g.h_i-j"),
        ("image", "%41%zz?#[]{}|\\^~`'"),
    ];
    let tags: Tags = raw
        .iter()
        .map(|(k, v)| ((*k).to_owned(), layout::sanitize_tag_value(v)))
        .collect();
    assert_eq!(
        tags["container"], "a/b:c@d e+f=g.h_i-j",
        "allowed characters stay"
    );
    for (i, key) in ["ns/a/1.core", "ns/a/2.core"].into_iter().enumerate() {
        let mut t = tags.clone();
        if i == 1 {
            t.insert("comm".into(), "other".into());
        }
        store
            .put(key, Body::Bytes(b"x"), &t, &Metadata::new())
            .await
            .unwrap();
    }
    assert_eq!(store.tags("ns/a/1.core").await.unwrap(), tags);

    // Find by what the user types: the filter is sanitized the same way as the tag.
    let wanted = layout::sanitize_tag_value("my app*");
    let mut found = Vec::new();
    for object in store.list("ns/").await.unwrap() {
        if store.tags(&object.key).await.unwrap().get("comm") == Some(&wanted) {
            found.push(object.key);
        }
    }
    assert_eq!(found, ["ns/a/1.core"]);
}

#[tokio::test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn errors_name_their_cause() {
    let Some(moto) = Moto::launch("errors_name_their_cause") else {
        return;
    };
    let store = moto.store(BUCKET, ConnectOptions::default());
    store.check().await.unwrap();

    // No such bucket.
    let missing = moto.store("no-such-bucket", ConnectOptions::default());
    let err = missing.check().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::BucketNotFound { bucket, .. } if bucket == "no-such-bucket"),
        "{}",
        chain(&err)
    );
    assert!(chain(&err).contains("does not exist"), "{}", chain(&err));
    assert!(!err.is_transient());
    let err = missing.ping().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::BucketNotFound { bucket, .. } if bucket == "no-such-bucket"),
        "{}",
        chain(&err)
    );
    let err = missing
        .put("k", Body::Bytes(b"x"), &Tags::new(), &Metadata::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::BucketNotFound { .. }),
        "{}",
        chain(&err)
    );

    // Nobody listening.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let options = ConnectOptions {
        s3_endpoint: Some(endpoint.clone()),
        s3_path_style: true,
        ..ConnectOptions::default()
    };
    let down = S3Store::with_config(Moto::sdk_config(), BUCKET, "", &options).unwrap();
    let err = down.check().await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unreachable { .. }),
        "{}",
        chain(&err)
    );
    assert!(err.is_transient());
    let text = chain(&err);
    assert!(
        text.contains("cannot reach") && text.contains(&endpoint),
        "{text}"
    );
    assert!(text.to_lowercase().contains("connection refused"), "{text}");

    // Credentials the server does not know.
    let Some(strict) = Moto::launch_with_auth("errors_name_their_cause") else {
        return;
    };
    let err = strict
        .store(BUCKET, ConnectOptions::default())
        .check()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AccessDenied { .. }),
        "{}",
        chain(&err)
    );
    assert!(
        chain(&err).contains("InvalidAccessKeyId"),
        "{}",
        chain(&err)
    );
    assert!(!err.is_transient());
}

#[tokio::test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn server_down_mid_multipart_then_back_uploads_once_and_leaves_no_orphan() {
    let test = "server_down_mid_multipart_then_back_uploads_once_and_leaves_no_orphan";
    let Some(moto) = Moto::launch(test) else {
        return;
    };
    let tmp = TempDir::new("s3-outage");
    let state = tmp.join("state");
    let options = ConnectOptions {
        state_dir: Some(state.clone()),
        ..ConnectOptions::default()
    };
    let store = moto.store(BUCKET, options.clone());
    let data = random(18 * MIB);
    let file = tmp.join("core.2");
    std::fs::write(&file, &data).unwrap();
    let (key, tags, metadata) = ("ns/pod/big.core", pairs(&[("pod", "pod")]), Metadata::new());

    // Down in the middle of the second part.
    moto.stop_after(8 * MIB as u64);
    let err = store
        .put(key, Body::File(&file), &tags, &metadata)
        .await
        .unwrap_err();
    assert!(moto.stopped());
    assert!(err.is_transient(), "{}", chain(&err));
    // The half-done upload is on the server; its abort failed while the server was down, so
    // it stays recorded.
    assert_eq!(uploads_in(&moto, BUCKET).await, 1);
    assert_eq!(records(&state), 1);
    assert!(store.list("").await.unwrap_err().is_transient());

    // Back up. A new process (a restart) aborts what the old one left…
    moto.start();
    let restarted = moto.store(BUCKET, options);
    assert_eq!(restarted.recover_uploads().await.unwrap(), 1);
    assert_eq!(uploads_in(&moto, BUCKET).await, 0);
    assert_eq!(records(&state), 0);
    // …and the retried put stores the dump once, completely.
    let receipt = restarted
        .put(key, Body::File(&file), &tags, &metadata)
        .await
        .unwrap();
    assert_eq!(receipt.size, data.len() as u64);
    assert_eq!(keys(&restarted.list("").await.unwrap()), [key]);
    assert!(
        read_object(&restarted, key).await == data,
        "stored bytes differ"
    );
    assert_eq!(restarted.tags(key).await.unwrap(), tags);
    assert_eq!(uploads_in(&moto, BUCKET).await, 0);
    assert_eq!(records(&state), 0);
}

/// A dump dir holding one dump named as `core.%P.%I.%s.%t.%e` would name it, a state dir, and
/// the agent's arguments for them (no probe: these tests are about the store).
struct Node {
    tmp: TempDir,
    dumps: PathBuf,
    state: PathBuf,
    dump: PathBuf,
}

impl Node {
    fn new(tag: &str, data: &[u8]) -> Self {
        let tmp = TempDir::new(tag);
        let dumps = tmp.join("dumps");
        std::fs::create_dir_all(&dumps).unwrap();
        let dump = dumps.join("core.4242.4242.11.1795681587.fake");
        // Written beside, then renamed in: the agent only ever sees the whole file.
        let temp = tmp.join("dump.tmp");
        std::fs::write(&temp, data).unwrap();
        std::fs::rename(&temp, &dump).unwrap();
        let state = tmp.join("state");
        Self {
            tmp,
            dumps,
            state,
            dump,
        }
    }

    fn args(&self, dest: &str, endpoint: &str) -> Vec<String> {
        [
            "run",
            "--intake",
            "file",
            "--dump-dir",
            self.dumps.to_str().unwrap(),
            "--state-dir",
            self.state.to_str().unwrap(),
            "--core-pattern",
            &format!("{}/core.%P.%I.%s.%t.%e", self.dumps.display()),
            "--no-probe",
            "--node-name",
            "test-node",
            "--min-free-disk",
            "0",
            "--dest",
            dest,
            "--s3-endpoint",
            endpoint,
            "--s3-path-style",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }
}

/// Waits until a log line satisfies `pred`; panics with the log on timeout.
fn wait_for_line(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = agent.logs().into_iter().find(&pred) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the agent log within {WAIT:?}:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn message_is(line: &Value, message: &str) -> bool {
    line["message"] == message
}

#[test]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
fn agent_refuses_to_start_without_a_usable_bucket_and_keeps_the_dump() {
    let test = "agent_refuses_to_start_without_a_usable_bucket_and_keeps_the_dump";
    let (Some(moto), Some(strict)) = (Moto::launch(test), Moto::launch_with_auth(test)) else {
        return;
    };
    let closed = format!("http://127.0.0.1:{}", free_port());
    let no_credentials = vec![
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    let cases = [
        (
            "no such bucket",
            moto.endpoint(),
            "s3://no-such-bucket/p",
            moto.env(),
            "does not exist",
        ),
        (
            "wrong credentials",
            strict.endpoint(),
            "s3://dumps/p",
            strict.env(),
            "InvalidAccessKeyId",
        ),
        (
            "no credentials",
            moto.endpoint(),
            "s3://dumps/p",
            no_credentials,
            "no credentials",
        ),
        (
            "endpoint down",
            closed.clone(),
            "s3://dumps/p",
            moto.env(),
            "cannot reach",
        ),
    ];
    for (case, endpoint, dest, env, cause) in cases {
        let node = Node::new("s3-refuse", b"not really a core");
        // A clean environment: no AWS profile or credentials of the machine's own.
        let out = Command::new(agent_path())
            .args(node.args(dest, &endpoint))
            .env_clear()
            .envs(env)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{case}: the agent started:\n{stderr}"
        );
        assert!(
            stderr.contains(cause),
            "{case}: {cause:?} not said:\n{stderr}"
        );
        assert!(stderr.contains("is writable"), "{case}:\n{stderr}");
        assert_eq!(
            std::fs::read(&node.dump).unwrap(),
            b"not really a core",
            "{case}: the dump was touched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the pinned test tools: cargo xtask test installs and runs them"]
async fn agent_keeps_the_dump_through_an_outage_then_uploads_it_once() {
    let test = "agent_keeps_the_dump_through_an_outage_then_uploads_it_once";
    let Some(moto) = Moto::launch(test) else {
        return;
    };
    let data = random(20 * MIB);
    let node = Node::new("s3-agent-outage", &data);
    // Down in the middle of the second 8 MiB part.
    moto.stop_after(10 * MIB as u64);
    let env: Vec<(&str, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = node.args("s3://dumps/pre/fix", &moto.endpoint());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with_env(&args, node.tmp.join("agent.log"), &env);

    let failed = wait_for_line(&agent, "a failed upload", |l| {
        message_is(l, "store failed; the dump stays on disk")
    });
    assert_eq!(failed["transient"], true, "{failed}");
    assert!(moto.stopped());
    assert!(
        node.dump.exists(),
        "the dump was deleted before it was stored"
    );
    assert_eq!(uploads_in(&moto, BUCKET).await, 1);

    moto.start();
    let stored = wait_for_line(&agent, "the upload", |l| {
        message_is(l, "stored") && l["bytes"] != 0
    });
    let key = stored["key"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with("pre/fix/_unattested/test-node/")
            && key.ends_with("_fake_4242_SIGSEGV.core.zst"),
        "{key}"
    );
    let deadline = Instant::now() + WAIT;
    while node.dump.exists() {
        assert!(Instant::now() < deadline, "the stored dump was not deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.terminate();

    let store = moto.store(BUCKET, ConnectOptions::default());
    let listed = store.list("pre/").await.unwrap();
    assert_eq!(keys(&listed), [key.clone(), format!("{key}.json")]);
    assert!(
        unzstd(&read_object(&store, &key).await) == data,
        "stored bytes differ"
    );
    let metadata = store.head(&key).await.unwrap().1;
    assert_eq!(metadata["compression"], "zstd");
    assert_eq!(metadata["original-size"], data.len().to_string());
    assert_eq!(store.tags(&key).await.unwrap()["attested"], "false");
    assert_eq!(
        uploads_in(&moto, BUCKET).await,
        0,
        "an orphan upload is left"
    );
    assert_eq!(records(&node.state), 0, "upload records are left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn a_real_crash_ends_in_the_bucket_with_its_tags_and_metadata() {
    let test = "a_real_crash_ends_in_the_bucket_with_its_tags_and_metadata";
    if !require_root(test) {
        return;
    }
    let Some(moto) = Moto::launch(test) else {
        return;
    };
    let node = node::Node::new("s3-crash", "dumps", "{dumps}/core.%P.%I.%s.%t.%e");
    let dumps = &node.dumps;
    let env: Vec<(&str, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let endpoint = moto.endpoint();
    let agent = node.start_with_env(
        "file",
        &[
            "--dest",
            "s3://dumps/crashes",
            "--s3-endpoint",
            &endpoint,
            "--s3-path-style",
            "--event-wait",
            "5s",
        ],
        &env,
    );

    let crasher = Crasher::spawn_with(
        "segv",
        None,
        &CrasherOpts {
            core_limit: u64::MAX,
            ..CrasherOpts::default()
        },
    );
    let pid = crasher.host_pid;
    crasher.go();
    let stored = wait_for_line(&agent, "the dump's upload", |l| {
        message_is(l, "stored") && l["key"].as_str().is_some_and(|k| k.ends_with(".core.zst"))
    });
    let key = stored["key"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + WAIT;
    while std::fs::read_dir(dumps)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("core."))
    {
        assert!(Instant::now() < deadline, "the stored dump was not deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.terminate();

    assert!(
        key.starts_with("crashes/_host/test-node/")
            && key.ends_with(&format!("___crasher_{pid}_SIGSEGV.core.zst")),
        "{key}"
    );
    let store = moto.store(BUCKET, ConnectOptions::default());
    let listed = store.list("crashes/").await.unwrap();
    let (modules, dumps): (Vec<&str>, Vec<&str>) = keys(&listed)
        .into_iter()
        .partition(|k| k.starts_with("crashes/_modules/"));
    assert_eq!(dumps, [key.clone(), format!("{key}.json")]);
    // With the file intake, the crasher's module files are read while it exits, when the
    // agent gets there first: each one stored is named in the record.
    let record: Value =
        serde_json::from_slice(&read_object(&store, &format!("{key}.json")).await).unwrap();
    let named: Vec<&str> = record["report"]["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["key"].as_str())
        .collect();
    for module in &modules {
        assert!(named.contains(module), "{module}: {record:#}");
    }
    let tags = store.tags(&key).await.unwrap();
    for (name, value) in [
        ("node", "test-node"),
        ("comm", "crasher"),
        ("signal", "SIGSEGV"),
        ("attested", "true"),
    ] {
        assert_eq!(tags.get(name).map(String::as_str), Some(value), "{tags:?}");
    }
    assert!(tags.contains_key("crash-time"), "{tags:?}");
    let (info, metadata) = store.head(&key).await.unwrap();
    assert_eq!(metadata["compression"], "zstd");
    assert_eq!(metadata["host-pid"], pid.to_string());
    let core = unzstd(&read_object(&store, &key).await);
    assert_eq!(metadata["original-size"], core.len().to_string());
    assert!(core.starts_with(b"\x7fELF"), "not a core file");
    assert!(
        info.size < core.len() as u64,
        "{} vs {}",
        info.size,
        core.len()
    );
    // The record beside it names the same crash.
    let record: Value =
        serde_json::from_slice(&read_object(&store, &format!("{key}.json")).await).unwrap();
    assert_eq!(record["crash"]["host_pid"], pid);
    assert_eq!(store.tags(&format!("{key}.json")).await.unwrap(), tags);
    assert_eq!(uploads_in(&moto, BUCKET).await, 0);
}

/// The round trips above, against Ceph's radosgw (shared by this file's tests, a bucket each).
macro_rules! on_radosgw {
    ($($test:ident => $scenario:ident),* $(,)?) => {$(
        #[tokio::test]
        #[ignore = "needs Ceph's radosgw: cargo xtask test installs and runs it"]
        async fn $test() {
            let test = stringify!($test);
            if let Some(rgw) = Radosgw::shared(test) {
                $scenario(&*rgw, &rgw.bucket(test).await).await;
            }
        }
    )*};
}

on_radosgw! {
    radosgw_small_objects_round_trip_with_tags_and_metadata => small_objects_round_trip,
    radosgw_multipart_uploads_round_trip_in_both_checksum_modes => multipart_round_trip,
    radosgw_an_existing_object_is_never_replaced => never_replaces,
    radosgw_tag_values_are_sanitized_and_findable => sanitized_tags_round_trip,
}

/// The agent stores a dump in radosgw (a multipart upload, whose tags radosgw drops and the
/// agent sets again), and `find`, `info` and `get` read it back through the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ceph's radosgw: cargo xtask test installs and runs it"]
async fn radosgw_the_agent_stores_and_find_info_get_read_it_back() {
    let test = "radosgw_the_agent_stores_and_find_info_get_read_it_back";
    let Some(rgw) = Radosgw::shared(test) else {
        return;
    };
    let bucket = rgw.bucket(test).await;
    let dest = format!("s3://{bucket}/pre");
    let data = random(12 * MIB);
    let node = Node::new("s3-rgw-agent", &data);
    let env = rgw.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = node.args(&dest, rgw.endpoint());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with_env(&args, node.tmp.join("agent.log"), &env);
    let stored = wait_for_line(&agent, "the upload", |l| {
        message_is(l, "stored") && l["key"].as_str().is_some_and(|k| k.ends_with(".core.zst"))
    });
    let key = stored["key"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + WAIT;
    while node.dump.exists() {
        assert!(Instant::now() < deadline, "the stored dump was not deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.terminate();

    let cli = |args: &[&str]| {
        let out = Command::new(agent_path())
            .args(args)
            .args([
                "--dest",
                &dest,
                "--s3-endpoint",
                rgw.endpoint(),
                "--s3-path-style",
            ])
            .env_clear()
            .envs(env.iter().copied())
            .env("COREDUMP_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let found: Vec<Value> = cli(&["find", "--signal", "SIGSEGV", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["key"], key.as_str(), "{found:?}");
    assert_eq!(found[0]["tags"]["attested"], "false", "{found:?}");
    let info: Value = serde_json::from_str(&cli(&["info", &key, "--json"])).unwrap();
    assert_eq!(
        info["metadata"]["original-size"],
        data.len().to_string(),
        "{info:#}"
    );
    assert_eq!(info["record"]["stored"]["key"], key.as_str(), "{info:#}");
    let out = node.tmp.join("got.core");
    cli(&["get", &key, "-o", out.to_str().unwrap(), "--quiet"]);
    assert!(std::fs::read(&out).unwrap() == data, "get's bytes differ");
    let store = rgw.store(&bucket, ConnectOptions::default());
    assert_eq!(store.tags(&key).await.unwrap()["node"], "test-node");
    assert_eq!(uploads_in(&*rgw, &bucket).await, 0);
}
