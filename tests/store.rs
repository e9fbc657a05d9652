//! One behavioural suite for both object stores (local directory and S3 through moto), plus the
//! compare-and-swap concurrency checks the index manifest relies on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lookalike::store::{DynStore, GetResult, LocalStore, ObjectStore, S3Store, StoreError};
use testkit::moto::{unique_bucket, MotoServer};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn get_found(store: &DynStore, key: &str) -> lookalike::store::Object {
    match store
        .get(key, None)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
    {
        GetResult::Found(o) => o,
        GetResult::NotModified => panic!("unconditional get of {key} said NotModified"),
    }
}

async fn keys(store: &DynStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

/// The behaviour every store must have.
async fn behaviour_suite(store: DynStore) {
    let dir = testkit::tempdir();

    // Missing objects.
    assert!(store.head("nope/missing.txt").await.unwrap().is_none());
    assert!(matches!(
        store.get("nope/missing.txt", None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .download_to("nope/missing.txt", &dir.path().join("x"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(keys(&store, "").await.is_empty());

    // put / head / get.
    let e1 = store.put("a/b/one.txt", b("hello")).await.unwrap();
    assert!(
        !e1.is_empty() && !e1.contains('"'),
        "etag without quotes: {e1}"
    );
    let head = store
        .head("a/b/one.txt")
        .await
        .unwrap()
        .expect("head after put");
    assert_eq!(
        (head.key.as_str(), head.size, head.etag.as_str()),
        ("a/b/one.txt", 5, e1.as_str())
    );
    let obj = get_found(&store, "a/b/one.txt").await;
    assert_eq!(obj.bytes, b("hello"));
    assert_eq!(obj.meta.etag, e1);
    assert_eq!(obj.meta.size, 5);

    // Conditional get.
    assert!(matches!(
        store.get("a/b/one.txt", Some(&e1)).await.unwrap(),
        GetResult::NotModified
    ));
    let quoted = format!("\"{e1}\"");
    assert!(matches!(
        store.get("a/b/one.txt", Some(&quoted)).await.unwrap(),
        GetResult::NotModified
    ));
    match store
        .get("a/b/one.txt", Some("0123456789abcdef"))
        .await
        .unwrap()
    {
        GetResult::Found(o) => assert_eq!(o.bytes, b("hello")),
        GetResult::NotModified => panic!("stale etag must not be NotModified"),
    }
    assert!(matches!(
        store.get("nope/missing.txt", Some(&e1)).await,
        Err(StoreError::NotFound(_))
    ));

    // Overwrite changes the etag; same content, same etag.
    let e2 = store.put("a/b/one.txt", b("hello, world")).await.unwrap();
    assert_ne!(e1, e2);
    assert_eq!(
        store.put("a/b/one.txt", b("hello, world")).await.unwrap(),
        e2
    );
    assert!(matches!(
        store.get("a/b/one.txt", Some(&e1)).await.unwrap(),
        GetResult::Found(_)
    ));

    // Empty objects.
    store.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(get_found(&store, "empty").await.bytes.len(), 0);
    assert_eq!(store.head("empty").await.unwrap().unwrap().size, 0);

    // list: recursive, sorted, string prefixes.
    for k in ["a/b/two.txt", "a/c.txt", "b.txt", "ab/x", "a-z"] {
        store.put(k, b(k)).await.unwrap();
    }
    assert_eq!(
        keys(&store, "").await,
        [
            "a-z",
            "a/b/one.txt",
            "a/b/two.txt",
            "a/c.txt",
            "ab/x",
            "b.txt",
            "empty"
        ]
    );
    assert_eq!(
        keys(&store, "a/").await,
        ["a/b/one.txt", "a/b/two.txt", "a/c.txt"]
    );
    assert_eq!(
        keys(&store, "a").await,
        ["a-z", "a/b/one.txt", "a/b/two.txt", "a/c.txt", "ab/x"]
    );
    assert_eq!(keys(&store, "a/b/t").await, ["a/b/two.txt"]);
    assert_eq!(keys(&store, "a/b/two.txt").await, ["a/b/two.txt"]);
    assert!(keys(&store, "zzz/").await.is_empty());
    assert!(keys(&store, "a/b/q").await.is_empty());
    let listed = store.list("a/b/").await.unwrap();
    assert_eq!(listed[0].etag, e2);
    assert_eq!(listed[0].size, 12);

    // delete (twice is fine).
    store.delete("a/b/two.txt").await.unwrap();
    store.delete("a/b/two.txt").await.unwrap();
    store.delete("never/existed").await.unwrap();
    assert!(store.head("a/b/two.txt").await.unwrap().is_none());
    assert_eq!(keys(&store, "a/b/").await, ["a/b/one.txt"]);

    // put_if_absent: exactly once.
    let ea = store
        .put_if_absent("seg/0001.lmdb", b("first"))
        .await
        .unwrap();
    assert!(matches!(
        store.put_if_absent("seg/0001.lmdb", b("second")).await,
        Err(StoreError::PreconditionFailed(_))
    ));
    let obj = get_found(&store, "seg/0001.lmdb").await;
    assert_eq!((obj.bytes, obj.meta.etag), (b("first"), ea.clone()));

    // put_if_match: right, stale and missing etags.
    let eb = store
        .put_if_match("seg/0001.lmdb", b("v2"), &ea)
        .await
        .unwrap();
    assert_ne!(ea, eb);
    assert!(matches!(
        store.put_if_match("seg/0001.lmdb", b("v3"), &ea).await,
        Err(StoreError::PreconditionFailed(_))
    ));
    assert_eq!(get_found(&store, "seg/0001.lmdb").await.bytes, b("v2"));
    let ec = store
        .put_if_match("seg/0001.lmdb", b("v3"), &format!("\"{eb}\""))
        .await
        .unwrap();
    assert_eq!(store.head("seg/0001.lmdb").await.unwrap().unwrap().etag, ec);
    assert!(matches!(
        store.put_if_match("seg/missing", b("x"), &ea).await,
        Err(StoreError::PreconditionFailed(_))
    ));
    assert!(store.head("seg/missing").await.unwrap().is_none());
    // Deleted objects can be created again with put_if_absent.
    store.delete("seg/0001.lmdb").await.unwrap();
    store
        .put_if_absent("seg/0001.lmdb", b("again"))
        .await
        .unwrap();

    // download_to: a body of several of the S3 store's 8 MiB write chunks and a remainder,
    // streamed to a file; an existing longer file is truncated.
    let big: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let eb = store
        .put("blobs/big.bin", Bytes::from(big.clone()))
        .await
        .unwrap();
    let dest = dir.path().join("big.bin");
    std::fs::write(&dest, vec![7u8; 25_000_000]).unwrap();
    let meta = store.download_to("blobs/big.bin", &dest).await.unwrap();
    assert_eq!(meta.size, big.len() as u64);
    assert_eq!(meta.etag, eb);
    assert_eq!(meta.key, "blobs/big.bin");
    assert!(
        std::fs::read(&dest).unwrap() == big,
        "downloaded bytes differ"
    );

    // Keys that are not plain relative paths are rejected by every operation.
    for bad in [
        "",
        "/abs/path",
        "../escape",
        "a/../../escape",
        "a/./b",
        "a//b",
        "trailing/",
        "back\\slash",
    ] {
        let invalid = |r: Result<(), StoreError>| {
            assert!(
                matches!(r, Err(StoreError::InvalidKey(..))),
                "key {bad:?} accepted: {r:?}"
            )
        };
        invalid(store.get(bad, None).await.map(drop));
        invalid(store.put(bad, b("x")).await.map(drop));
        invalid(store.put_if_absent(bad, b("x")).await.map(drop));
        invalid(store.put_if_match(bad, b("x"), "abc").await.map(drop));
        invalid(store.head(bad).await.map(drop));
        invalid(store.delete(bad).await);
        invalid(
            store
                .download_to(bad, &dir.path().join("bad"))
                .await
                .map(drop),
        );
    }

    // A capped read: at the cap it is the object; one byte over, TooLarge with the limit.
    store
        .put("cap/1000.bin", Bytes::from(vec![7u8; 1000]))
        .await
        .unwrap();
    let o = store.get_capped("cap/1000.bin", 1000).await.unwrap();
    assert_eq!(o.bytes.len(), 1000);
    assert!(!o.meta.etag.is_empty());
    match store.get_capped("cap/1000.bin", 999).await {
        Err(StoreError::TooLarge { key, limit, .. }) => {
            assert_eq!((key.as_str(), limit), ("cap/1000.bin", 999))
        }
        other => panic!("{:?}", other.map(|o| o.bytes.len())),
    }
    assert!(matches!(
        store.get_capped("cap/missing", 10).await,
        Err(StoreError::NotFound(_))
    ));
}

/// `tasks` x `per_task` increments of one counter object through read-etag + put_if_match retry
/// loops, spread over `stores` (which all see the same objects). Returns the number of lost races.
async fn counter_race(stores: Vec<DynStore>, key: &str, tasks: usize, per_task: usize) -> usize {
    stores[0].put(key, b("0")).await.unwrap();
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = Arc::clone(&stores[t % stores.len()]);
        let key = key.to_string();
        let conflicts = Arc::clone(&conflicts);
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                increment(&store, &key, &conflicts).await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let value: usize = std::str::from_utf8(&get_found(&stores[0], key).await.bytes)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        value,
        tasks * per_task,
        "lost updates on {}",
        stores[0].location()
    );
    let conflicts = conflicts.load(Ordering::Relaxed);
    println!(
        "{}: {} increments, {conflicts} lost races retried",
        stores[0].location(),
        tasks * per_task
    );
    conflicts
}

async fn increment(store: &DynStore, key: &str, conflicts: &AtomicUsize) {
    for _attempt in 0..10_000 {
        let obj = get_found(store, key).await;
        let n: usize = std::str::from_utf8(&obj.bytes).unwrap().parse().unwrap();
        match store
            .put_if_match(key, b(&(n + 1).to_string()), &obj.meta.etag)
            .await
        {
            Ok(_) => return,
            Err(StoreError::PreconditionFailed(_)) => {
                conflicts.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("put_if_match: {e}"),
        }
    }
    panic!("no progress after 10000 attempts");
}

/// Several writers race to create the same object: exactly one wins.
async fn create_race(store: DynStore, key: &str) {
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        let key = key.to_string();
        handles.push(tokio::spawn(async move {
            store.put_if_absent(&key, b(&format!("writer {i}"))).await
        }));
    }
    let mut won = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::PreconditionFailed(_)) => {}
            Err(e) => panic!("put_if_absent: {e}"),
        }
    }
    assert_eq!(won, 1, "exactly one put_if_absent must win");
}

// ---------------------------------------------------------------------------------------------
// Local store

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_behaviour() {
    let dir = testkit::tempdir();
    let store: DynStore = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
    behaviour_suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_specifics() {
    let dir = testkit::tempdir();
    let root = dir.path().join("nested/root");
    let store = LocalStore::new(&root).unwrap();
    assert!(root.is_dir(), "LocalStore::new creates the directory");
    assert_eq!(
        store.location(),
        std::fs::canonicalize(&root).unwrap().display().to_string()
    );

    // Reading leaves the folder untouched: the store's own directory appears on the first write.
    std::fs::write(root.join("found.txt"), b"already here").unwrap();
    assert_eq!(keys_of(&store, "").await, ["found.txt"]);
    assert!(store.head("found.txt").await.unwrap().is_some());
    store.delete("missing").await.unwrap();
    assert!(!root.join(".lookalike-store").exists());
    store.delete("found.txt").await.unwrap();

    // Objects are plain files; files written by others are objects; the etag is their sha256.
    store.put("cat/one.jpg", b("jpeg bytes")).await.unwrap();
    assert_eq!(
        std::fs::read(root.join("cat/one.jpg")).unwrap(),
        b"jpeg bytes"
    );
    std::fs::create_dir_all(root.join("cat/sub")).unwrap();
    std::fs::write(root.join("cat/sub/two.png"), b"png bytes").unwrap();
    let head = store.head("cat/sub/two.png").await.unwrap().unwrap();
    assert_eq!(head.etag, lookalike::digest::sha256_hex(b"png bytes"));
    // A directory is not an object.
    assert!(store.head("cat/sub").await.unwrap().is_none());
    assert!(matches!(
        store.get("cat/sub", None).await,
        Err(StoreError::NotFound(_))
    ));

    // The store's own files (lock, temp files) never show up, and cannot be addressed.
    assert_eq!(
        keys_of(&store, "").await,
        ["cat/one.jpg", "cat/sub/two.png"]
    );
    assert!(matches!(
        store.head(".lookalike-store/lock").await,
        Err(StoreError::InvalidKey(..))
    ));
    assert!(matches!(
        store.put(".lookalike-store/x", b("x")).await,
        Err(StoreError::InvalidKey(..))
    ));

    // Nothing escapes the root.
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    assert!(matches!(
        store.get("../../secret", None).await,
        Err(StoreError::InvalidKey(..))
    ));
    assert!(matches!(
        store.put("../../secret", b("x")).await,
        Err(StoreError::InvalidKey(..))
    ));
    assert!(matches!(
        store.delete("../../secret").await,
        Err(StoreError::InvalidKey(..))
    ));
    let abs = dir.path().join("secret").display().to_string();
    assert!(matches!(
        store.get(&abs, None).await,
        Err(StoreError::InvalidKey(..))
    ));
    assert!(matches!(
        store.list("../").await,
        Err(StoreError::InvalidKey(..))
    ));
    assert_eq!(
        std::fs::read(dir.path().join("secret")).unwrap(),
        b"outside"
    );

    // Deleting the last object of a folder removes the empty folder; the root stays.
    store.delete("cat/sub/two.png").await.unwrap();
    assert!(!root.join("cat/sub").exists());
    assert!(root.join("cat").exists());
    store.delete("cat/one.jpg").await.unwrap();
    assert!(!root.join("cat").exists());
    assert!(root.is_dir());

    // A second instance on the same root sees the same objects; no temp files are left behind.
    store.put("x/y", b("z")).await.unwrap();
    let again = LocalStore::new(&root).unwrap();
    assert_eq!(again.head("x/y").await.unwrap().unwrap().size, 1);
    assert_eq!(
        std::fs::read_dir(root.join(".lookalike-store/tmp"))
            .unwrap()
            .count(),
        0
    );

    // open() picks the local store for paths.
    let opened = lookalike::store::open(root.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        opened.head("x/y").await.unwrap().unwrap().etag,
        lookalike::digest::sha256_hex(b"z")
    );
    let opened = lookalike::store::open(&format!("file://{}", root.display()))
        .await
        .unwrap();
    assert!(opened.head("x/y").await.unwrap().is_some());
}

async fn keys_of(store: &LocalStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_compare_and_swap_tasks() {
    let dir = testkit::tempdir();
    let store: DynStore = Arc::new(LocalStore::new(dir.path()).unwrap());
    counter_race(vec![store.clone()], "manifest.json", 8, 25).await;
    create_race(store, "segments/one.lmdb").await;
}

/// Two OS threads, each with its own runtime and its own `LocalStore` on the same root.
#[test]
fn local_compare_and_swap_two_instances() {
    let dir = testkit::tempdir();
    let root = dir.path().to_path_buf();
    testkit::block_on(async {
        let store = LocalStore::new(&root).unwrap();
        store.put("counter", b("0")).await.unwrap();
    });
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || {
                testkit::block_on(async move {
                    let store: DynStore = Arc::new(LocalStore::new(&root).unwrap());
                    let conflicts = Arc::new(AtomicUsize::new(0));
                    let mut tasks = Vec::new();
                    for _ in 0..4 {
                        let (store, conflicts) = (store.clone(), conflicts.clone());
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..25 {
                                increment(&store, "counter", &conflicts).await;
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let value = testkit::block_on(async {
        let store: DynStore = Arc::new(LocalStore::new(&root).unwrap());
        get_found(&store, "counter").await.bytes
    });
    assert_eq!(value, b("200"));
}

const CHILD_ROOT_ENV: &str = "LOOKALIKE_TEST_STORE_CHILD_ROOT";

/// Two processes (this test binary re-run as `local_cas_child`) increment one counter.
#[test]
fn local_compare_and_swap_two_processes() {
    let dir = testkit::tempdir();
    testkit::block_on(async {
        LocalStore::new(dir.path())
            .unwrap()
            .put("counter", b("0"))
            .await
            .unwrap();
    });
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "local_cas_child",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ROOT_ENV, dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("child done"),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let value = testkit::block_on(async {
        let store: DynStore = Arc::new(LocalStore::new(dir.path()).unwrap());
        get_found(&store, "counter").await.bytes
    });
    assert_eq!(value, b("200"));
}

/// Helper for `local_compare_and_swap_two_processes`; does nothing when run normally.
#[test]
fn local_cas_child() {
    let Some(root) = std::env::var_os(CHILD_ROOT_ENV) else {
        return;
    };
    testkit::block_on(async move {
        let store: DynStore = Arc::new(LocalStore::new(Path::new(&root)).unwrap());
        let conflicts = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (store, conflicts) = (store.clone(), conflicts.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    increment(&store, "counter", &conflicts).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    println!("child done");
}

#[tokio::test]
async fn open_rejects_bad_locations() {
    assert!(matches!(
        lookalike::store::open("s3://").await,
        Err(StoreError::InvalidLocation(..))
    ));
    assert!(matches!(
        lookalike::store::open("s3:///prefix").await,
        Err(StoreError::InvalidLocation(..))
    ));
    assert!(matches!(
        lookalike::store::open("").await,
        Err(StoreError::InvalidLocation(..))
    ));
}

// ---------------------------------------------------------------------------------------------
// S3 store (moto)

/// A fresh bucket on the shared moto server and a store under `prefix` in it.
async fn s3_store(prefix: &str) -> Option<(&'static MotoServer, S3Store)> {
    let moto = MotoServer::shared()?;
    let bucket = unique_bucket("store");
    moto.create_bucket(&bucket).await;
    Some((moto, S3Store::new(moto.client(), bucket, prefix)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_behaviour_at_bucket_root() {
    let Some((_, store)) = s3_store("").await else {
        return;
    };
    assert_eq!(store.location(), format!("s3://{}", store.bucket()));
    behaviour_suite(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_behaviour_under_prefix() {
    let Some((_, store)) = s3_store("/index/v1/").await else {
        return;
    };
    assert_eq!(store.prefix(), "index/v1");
    assert_eq!(
        store.location(),
        format!("s3://{}/index/v1", store.bucket())
    );
    // Objects outside the prefix (and the folder marker of the prefix itself) are invisible.
    let raw = store.client().clone();
    for k in [
        "outside.txt",
        "index/v10/x",
        "index/v1/",
        "index/v1/odd//key",
    ] {
        raw.put_object()
            .bucket(store.bucket())
            .key(k)
            .body(b("x").into())
            .send()
            .await
            .unwrap();
    }
    let store: DynStore = Arc::new(store);
    assert!(store.list("").await.unwrap().is_empty());
    store.put("m.json", b("{}")).await.unwrap();
    assert_eq!(keys(&store, "").await, ["m.json"]);
    store.delete("m.json").await.unwrap();
    behaviour_suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_keys_live_under_the_prefix() {
    let Some((_, store)) = s3_store("idx").await else {
        return;
    };
    store.put("segments/a.lmdb", b("seg")).await.unwrap();
    let out = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key("idx/segments/a.lmdb")
        .send()
        .await;
    assert!(out.is_ok(), "object stored under the prefix");
    assert_eq!(store.s3_key("segments/a.lmdb"), "idx/segments/a.lmdb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_user_metadata() {
    let Some((_, store)) = s3_store("catalog").await else {
        return;
    };
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key("catalog/shoes/1.jpg")
        .body(b("jpeg").into())
        .metadata("title", "Red shoe")
        .metadata("sku", "123")
        .send()
        .await
        .unwrap();
    let want: BTreeMap<String, String> = [
        ("sku".to_string(), "123".to_string()),
        ("title".to_string(), "Red shoe".to_string()),
    ]
    .into();
    let head = store.head("shoes/1.jpg").await.unwrap().unwrap();
    assert_eq!(head.metadata, want);
    assert_eq!(head.size, 4);
    let store: DynStore = Arc::new(store);
    assert_eq!(get_found(&store, "shoes/1.jpg").await.meta.metadata, want);
    let dir = testkit::tempdir();
    let meta = store
        .download_to("shoes/1.jpg", &dir.path().join("1.jpg"))
        .await
        .unwrap();
    assert_eq!(meta.metadata, want);
    // Listing carries no user metadata (ListObjectsV2 does not return it).
    assert!(store.list("").await.unwrap()[0].metadata.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_compare_and_swap_tasks() {
    let Some((moto, store)) = s3_store("race").await else {
        return;
    };
    // Two stores with separate clients (separate connection pools), as two Lambdas would have.
    let other = S3Store::new(moto.client(), store.bucket(), store.prefix());
    let stores: Vec<DynStore> = vec![Arc::new(store), Arc::new(other)];
    counter_race(stores.clone(), "manifest.json", 8, 25).await;
    create_race(stores[0].clone(), "segments/one.lmdb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_a_backend_error() {
    let Some(moto) = MotoServer::shared() else {
        return;
    };
    let store = S3Store::new(moto.client(), unique_bucket("never-created"), "");
    match store.get("x", None).await {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("NoSuchBucket"), "{msg}"),
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(matches!(
        store.put("x", b("y")).await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(store.list("").await, Err(StoreError::Backend(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_endpoint_is_a_backend_error() {
    let store = S3Store::new(testkit::moto::unreachable_client(), "bucket", "");
    assert!(matches!(store.head("x").await, Err(StoreError::Backend(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_presigned_get_works() {
    let Some((moto, store)) = s3_store("imgs").await else {
        return;
    };
    store.put("cat/1.jpg", b("image bytes")).await.unwrap();
    let url = store
        .presign_get("cat/1.jpg", Duration::from_secs(300))
        .await
        .unwrap();
    let prefix = format!("{}/{}/imgs/cat/1.jpg?", moto.endpoint(), store.bucket());
    assert!(url.starts_with(&prefix), "{url}");
    assert!(
        url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=300"),
        "{url}"
    );
    let (status, body) = testkit::moto::http_get(moto.port(), &url[moto.endpoint().len()..]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"image bytes");
    assert!(matches!(
        store.presign_get("../x", Duration::from_secs(60)).await,
        Err(StoreError::InvalidKey(..))
    ));
}

const CHILD_S3_ENV: &str = "LOOKALIKE_TEST_S3_CHILD_LOCATION";

/// `store::open("s3://...")` / `S3Store::from_env` honour `AWS_ENDPOINT_URL` (path-style), run in a
/// child process so that no environment variable is set on this one.
#[test]
fn s3_from_env_honours_endpoint_url() {
    let Some(moto) = MotoServer::shared() else {
        return;
    };
    let bucket = unique_bucket("fromenv");
    testkit::block_on(moto.create_bucket(&bucket));
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "s3_from_env_child",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD_S3_ENV, format!("s3://{bucket}/some/prefix"))
    .env_remove("AWS_PROFILE")
    .env_remove("AWS_ENDPOINT_URL_S3")
    .env("AWS_CONFIG_FILE", "/dev/null")
    .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    for (k, v) in moto.env_vars() {
        cmd.env(k, v);
    }
    cmd.env_remove("AWS_REGION"); // the fallback region must do
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child done"),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got = testkit::block_on(async {
        moto.client()
            .get_object()
            .bucket(&bucket)
            .key("some/prefix/hello.txt")
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
    });
    assert_eq!(got, b("from the child"));
}

/// Helper for `s3_from_env_honours_endpoint_url`; does nothing when run normally.
#[test]
fn s3_from_env_child() {
    let Ok(location) = std::env::var(CHILD_S3_ENV) else {
        return;
    };
    testkit::block_on(async move {
        let store = lookalike::store::open(&location).await.unwrap();
        assert_eq!(store.location(), location);
        store
            .put_if_absent("hello.txt", b("from the child"))
            .await
            .unwrap();
        assert_eq!(store.list("").await.unwrap().len(), 1);
    });
    println!("child done");
}

/// Objects larger than the part size download in ranged parts, fetched concurrently and written
/// at their offsets; an empty object and one just over a part boundary come out whole too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_download_in_parts() {
    let Some((_, store)) = s3_store("parts").await else {
        return;
    };
    let store = store.with_part_size(100_000);
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [
        ("empty", 0usize),
        ("one", 1),
        ("edge", 100_001),
        ("many", 1_234_567),
    ] {
        let data: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let etag = store.put(name, Bytes::from(data.clone())).await.unwrap();
        let dest = dir.path().join(name);
        std::fs::write(&dest, vec![9u8; 2_000_000]).unwrap(); // an old, longer file
        let meta = store.download_to(name, &dest).await.unwrap();
        assert_eq!(meta.size, len as u64, "{name}");
        assert_eq!(meta.etag, etag, "{name}");
        assert!(
            std::fs::read(&dest).unwrap() == data,
            "{name}: bytes differ"
        );
    }
    // A missing object: an error, and no file left behind.
    let dest = dir.path().join("missing");
    assert!(matches!(
        store.download_to("nope", &dest).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!dest.exists());
}
