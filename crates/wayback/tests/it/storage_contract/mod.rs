//! The object-storage contract, run against every backend: a local directory, the real
//! S3-compatible server `s3s-fs` that `scripts/test` starts (`WAYBACK_TEST_S3_*`), and the fault
//! injector around each. One generic suite, [`contract`], so the backends cannot drift apart.
//!
//! The S3 tests skip with `SKIPPED:` when the variables are missing, and fail instead when
//! `WAYBACK_TEST_DRIVEN` says the test script is in charge. Tests that stop or inspect a server
//! start their own s3s-fs on a free port (`own_s3`), never the shared one.
//!
//! Throughput ceiling (ignored by default; run it in release mode against s3s-fs):
//! `cargo test --release -p wayback --test it -- --ignored storage_contract::throughput --nocapture`

mod faults;
mod own_s3;
mod support;

use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use wayback::storage::{ObjectStore, Op, StorageError, StorageSettings};

use support::{local_store, pseudo_random, s3_env, s3_settings, ChunkedReader, FailingReader};

// ---------------------------------------------------------------------------------------------
// The contract

/// Everything every backend must do alike. Leaves the store empty.
async fn contract(store: &ObjectStore) {
    store.check().await.expect("check");
    round_trip_and_absence(store).await;
    head_and_overwrite(store).await;
    listing(store).await;
    ranges(store).await;
    streaming(store).await;
    deletion(store).await;
    key_rules(store).await;
    let left = store.list("").await.expect("final list");
    assert!(
        left.is_empty(),
        "the contract leaves nothing behind: {left:?}"
    );
}

async fn round_trip_and_absence(store: &ObjectStore) {
    let data = pseudo_random(70_001, 1);
    store
        .put("rt/a/b/object.bin", data.clone())
        .await
        .expect("put");
    assert_eq!(
        store.get("rt/a/b/object.bin").await.expect("get").as_ref(),
        Some(&data)
    );
    store
        .put("rt/empty", Bytes::new())
        .await
        .expect("put empty");
    assert_eq!(
        store.get("rt/empty").await.expect("get empty"),
        Some(Bytes::new())
    );

    assert_eq!(store.get("rt/absent").await.expect("get absent"), None);
    assert_eq!(
        store
            .get("rt/a/b/object.bin/below")
            .await
            .expect("below an object"),
        None
    );
    assert!(store
        .get_stream("rt/absent")
        .await
        .expect("stream absent")
        .is_none());
    assert_eq!(
        store
            .get_range("rt/absent", 0..1)
            .await
            .expect("range absent"),
        None
    );
    assert_eq!(store.head("rt/absent").await.expect("head absent"), None);
    store
        .delete_many(&["rt/a/b/object.bin".into(), "rt/empty".into()])
        .await
        .expect("clean");
}

async fn head_and_overwrite(store: &ObjectStore) {
    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    store
        .put("ow/key", Bytes::from_static(b"first version"))
        .await
        .expect("put 1");
    store
        .put("ow/key", Bytes::from_static(b"second"))
        .await
        .expect("put 2 replaces");
    assert_eq!(
        store.get("ow/key").await.unwrap().unwrap(),
        Bytes::from_static(b"second")
    );
    let meta = store.head("ow/key").await.expect("head").expect("present");
    assert_eq!((meta.key.as_str(), meta.size), ("ow/key", 6));
    let modified = meta.last_modified.expect("a last-modified time");
    assert!(modified > before && modified < chrono::Utc::now() + chrono::Duration::minutes(5));
    store.delete("ow/key").await.expect("clean");
}

async fn listing(store: &ObjectStore) {
    let keys = [
        "ls/a/1",
        "ls/a/2",
        "ls/a-dash",
        "ls/ab",
        "ls/b/1",
        "ls/b/2/deep",
        "lsx",
    ];
    for key in keys {
        store
            .put(key, Bytes::from(key.as_bytes().to_vec()))
            .await
            .expect("put");
    }
    let names =
        |v: Vec<wayback::storage::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    // Plain string prefixes, S3-style: "ls/a" also matches "ls/a-dash" and "ls/ab".
    assert_eq!(
        names(store.list("ls/a").await.unwrap()),
        ["ls/a-dash", "ls/a/1", "ls/a/2", "ls/ab"]
    );
    assert_eq!(
        names(store.list("ls/a/").await.unwrap()),
        ["ls/a/1", "ls/a/2"]
    );
    assert_eq!(names(store.list("ls/b/2/").await.unwrap()), ["ls/b/2/deep"]);
    assert!(store.list("ls/zzz").await.unwrap().is_empty());
    assert!(store.list("nothing/here/").await.unwrap().is_empty());
    let all = store.list("").await.unwrap();
    let mut sorted = keys.map(String::from).to_vec();
    sorted.sort();
    assert_eq!(
        all.iter().map(|m| m.key.clone()).collect::<Vec<_>>(),
        sorted,
        "more than one page"
    );
    assert!(all.iter().all(|m| m.size == m.key.len() as u64));
    store.delete_many(&sorted).await.expect("clean");
}

async fn ranges(store: &ObjectStore) {
    let data = pseudo_random(1000, 2);
    store.put("range/obj", data.clone()).await.unwrap();
    assert_eq!(
        store.get_range("range/obj", 10..20).await.unwrap().unwrap(),
        data.slice(10..20)
    );
    assert_eq!(
        store
            .get_range("range/obj", 990..1000)
            .await
            .unwrap()
            .unwrap(),
        data.slice(990..)
    );
    let beyond = store
        .get_range("range/obj", 990..1001)
        .await
        .expect_err("beyond the end");
    assert!(beyond.is_permanent(), "{beyond}");
    store.delete("range/obj").await.unwrap();
}

async fn streaming(store: &ObjectStore) {
    // ~40 MiB in odd-sized reads: several parts on S3, uploaded concurrently.
    let data = pseudo_random(40 * 1024 * 1024 + 12_345, 3);
    let info = store
        .put_stream("stream/big", ChunkedReader::new(data.clone(), 1_000_003))
        .await
        .expect("put_stream");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.crc32, crc32fast::hash(&data));
    assert_eq!(
        store.head("stream/big").await.unwrap().unwrap().size,
        data.len() as u64
    );
    let mut back = Vec::new();
    let mut reader = store
        .get_stream("stream/big")
        .await
        .expect("get_stream")
        .expect("present");
    reader.read_to_end(&mut back).await.expect("read back");
    assert_eq!(
        Sha256::digest(&back),
        Sha256::digest(&data),
        "same bytes back"
    );

    // Below one part (a single PutObject) and exactly two parts of 5 MiB.
    for (key, len) in [
        ("stream/small", 4096usize),
        ("stream/two-parts", 10 * 1024 * 1024),
    ] {
        let data = pseudo_random(len, 4);
        let info = store.put_stream(key, &data[..]).await.expect("put_stream");
        assert_eq!(info.size, len as u64);
        assert_eq!(store.get(key).await.unwrap().unwrap(), data);
    }

    // A reader that fails half-way stores nothing.
    let err = store
        .put_stream(
            "stream/broken",
            FailingReader::new(pseudo_random(12 * 1024 * 1024, 5)),
        )
        .await
        .expect_err("a failing reader fails the upload");
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(store.get("stream/broken").await.unwrap(), None);
    store
        .delete_many(&[
            "stream/big".into(),
            "stream/small".into(),
            "stream/two-parts".into(),
        ])
        .await
        .unwrap();
}

async fn deletion(store: &ObjectStore) {
    store
        .put("del/one", Bytes::from_static(b"1"))
        .await
        .unwrap();
    store.delete("del/one").await.expect("delete");
    assert_eq!(store.get("del/one").await.unwrap(), None);
    store
        .delete("del/one")
        .await
        .expect("deleting an absent object is fine");
    let keys: Vec<String> = (0..7).map(|i| format!("del/many/{i}")).collect();
    for key in &keys {
        store.put(key, Bytes::from_static(b"x")).await.unwrap();
    }
    let mut with_absent = keys.clone();
    with_absent.push("del/many/absent".into());
    store.delete_many(&with_absent).await.expect("delete_many");
    assert!(store.list("del/").await.unwrap().is_empty());
    store.delete_many(&[]).await.expect("nothing to delete");
}

async fn key_rules(store: &ObjectStore) {
    for bad in ["/abs", "a//b", "../escape", "a/./b", "trailing/", ""] {
        let err = store
            .put(bad, Bytes::from_static(b"x"))
            .await
            .expect_err(bad);
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{bad}: {err}"
        );
        assert!(err.is_permanent());
        assert!(store.get(bad).await.is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// The suite against each backend

#[tokio::test]
async fn contract_local_directory() {
    let (_dir, store) = local_store();
    contract(&store).await;
}

#[tokio::test]
async fn contract_s3() {
    let Some(env) = s3_env() else { return };
    let store = ObjectStore::open(&s3_settings(&env)).expect("open");
    contract(&store).await;
}

#[tokio::test]
async fn contract_through_an_idle_fault_injector() {
    let (_dir, local) = local_store();
    let (store, faults) = ObjectStore::faulty(local);
    contract(&store).await;
    assert!(faults.calls(Op::Put) > 10);
    assert_eq!(faults.injected(Op::Put), 0);
}

// ---------------------------------------------------------------------------------------------
// Throughput ceiling (ignored: run in release mode, see the module docs)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run in release mode with --ignored"]
async fn throughput_256_mib_put_stream_and_get_stream() {
    let Some(env) = s3_env() else { return };
    let settings = StorageSettings {
        part_size_mib: 16,
        list_page_size: 1000,
        ..s3_settings(&env)
    };
    let store = ObjectStore::open(&settings).unwrap();
    let (_dir, local) = local_store();
    let data = pseudo_random(256 * 1024 * 1024, 9);
    for (name, store) in [("s3s-fs", &store), ("local dir", &local)] {
        let started = Instant::now();
        let info = store
            .put_stream("bench/256mib", ChunkedReader::new(data.clone(), 1 << 20))
            .await
            .unwrap();
        let put = started.elapsed();
        let started = Instant::now();
        let mut reader = store.get_stream("bench/256mib").await.unwrap().unwrap();
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        let get = started.elapsed();
        assert_eq!((total, hasher.finalize()), (info.size, info.crc32));
        let mib = info.size as f64 / (1024.0 * 1024.0);
        eprintln!(
            "{name}: put_stream {mib:.0} MiB in {put:.2?} = {:.0} MiB/s; get_stream in {get:.2?} = {:.0} MiB/s",
            mib / put.as_secs_f64(),
            mib / get.as_secs_f64()
        );
        store.delete("bench/256mib").await.unwrap();
    }
}
