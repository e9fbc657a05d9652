//! The `lookalike` command as a user runs it: index a folder, query, stats, delete, compact, and
//! the errors a user sees. Needs the imported model (scripts/test.sh imports it).

use std::sync::Arc;

use lookalike::index::segment::BuildParams;
use lookalike::index::Index;
use lookalike::ingest::{Ingester, Outcome};
use lookalike::preprocess::Limits;
use lookalike::store::{ObjectStore, S3Store};
use testkit::cli::{failed, ok};
use testkit::lookalike;
use testkit::moto::{unique_bucket, MotoServer};

#[test]
fn index_query_stats_delete_compact() {
    if testkit::encoder().is_none() {
        return;
    }
    let dir = testkit::tempdir();
    let photos = dir.path().join("photos");
    for (cat, name) in [
        ("animals", "chelsea.jpg"),
        ("drinks", "coffee.jpg"),
        ("vehicles", "rocket.jpg"),
    ] {
        std::fs::create_dir_all(photos.join(cat)).unwrap();
        std::fs::copy(testkit::fixture(name), photos.join(cat).join(name)).unwrap();
    }
    std::fs::write(photos.join("animals/broken.jpg"), b"not a jpeg").unwrap();
    std::fs::write(photos.join("notes.txt"), b"not an image name").unwrap();
    std::fs::write(
        dir.path().join("meta.csv"),
        "key,title\nanimals/chelsea.jpg,Chelsea\n",
    )
    .unwrap();

    let out = ok(lookalike!(
        dir.path(),
        &["index", "photos", "--metadata", "meta.csv"],
    ));
    assert!(out.contains("indexed 3 images"), "{out}");
    assert!(
        out.contains("animals/broken.jpg"),
        "the undecodable file is listed: {out}"
    );
    assert!(out.contains("ignored 1 files"), "{out}");

    let out = ok(lookalike!(
        dir.path(),
        &["query", "photos/animals/chelsea.jpg", "-k", "2", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"][0]["key"], "animals/chelsea.jpg");
    assert_eq!(v["results"][0]["category"], "animals");
    assert_eq!(v["results"][0]["metadata"]["title"], "Chelsea");
    assert_eq!(v["results"].as_array().unwrap().len(), 2);

    let out = ok(lookalike!(
        dir.path(),
        &[
            "query",
            "photos/drinks/coffee.jpg",
            "--category",
            "vehicles",
        ],
    ));
    assert!(
        out.contains("vehicles/rocket.jpg") && !out.contains("drinks/coffee.jpg"),
        "{out}"
    );
    let out = ok(lookalike!(
        dir.path(),
        &["query", "--key", "drinks/coffee.jpg", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    // A metadata filter (compact or JSON) and a page.
    for filter in ["title=Chelsea", r#"{"title": {"$exists": true}}"#] {
        let out = ok(lookalike!(
            dir.path(),
            &[
                "query",
                "--key",
                "drinks/coffee.jpg",
                "--filter",
                filter,
                "--json"
            ],
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["results"].as_array().unwrap().len(), 1, "{filter}: {v}");
        assert_eq!(v["results"][0]["key"], "animals/chelsea.jpg");
    }
    let out = ok(lookalike!(
        dir.path(),
        &[
            "query",
            "--key",
            "drinks/coffee.jpg",
            "-k",
            "1",
            "--offset",
            "1",
            "--json"
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["next_offset"], 2);

    let v: serde_json::Value =
        serde_json::from_str(&ok(lookalike!(dir.path(), &["stats", "--json"]))).unwrap();
    assert_eq!(v["items"], 3);
    assert_eq!(v["segments"], 1);
    assert_eq!(v["version"], 1);

    // Indexing again changes nothing.
    let out = ok(lookalike!(dir.path(), &["index", "photos"]));
    assert!(
        out.contains("indexed 0 images (3 already indexed)"),
        "{out}"
    );

    ok(lookalike!(dir.path(), &["delete", "vehicles/rocket.jpg"]));
    let v: serde_json::Value =
        serde_json::from_str(&ok(lookalike!(dir.path(), &["stats", "--json"]))).unwrap();
    assert_eq!(v["items"], 2);
    let out = ok(lookalike!(dir.path(), &["compact", "--all"]));
    assert!(out.contains("merged 1 segments"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(lookalike!(dir.path(), &["stats", "--json"]))).unwrap();
    assert_eq!(v["items"], 2);
    assert_eq!(v["stored_items"], 2);
    assert_eq!(v["deletions"], 0);

    // status: from the manifest alone; the broken photo's rejection record is counted.
    let v: serde_json::Value =
        serde_json::from_str(&ok(lookalike!(dir.path(), &["status", "--json"]))).unwrap();
    assert_eq!(v["index"]["exists"], true, "{v}");
    assert_eq!(v["index"]["segments"], 1, "{v}");
    assert_eq!(v["index"]["items_stored"], 2, "{v}");
    assert!(v["index"]["last_commit_age_secs"].as_f64().unwrap() < 600.0);
    let out = ok(lookalike!(dir.path(), &["status"]));
    assert!(out.contains("1 segments, 2 items stored"), "{out}");
}

/// `backfill`, `status` and `redrive` as an operator runs them, against moto's S3 and SQS.
#[test]
fn backfill_status_and_redrive_from_the_command_line() {
    let Some(moto) = MotoServer::shared() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bucket = unique_bucket("cli-backfill");
    let (queue, dlq) = rt.block_on(async {
        moto.create_bucket(&bucket).await;
        let images = S3Store::new(moto.client(), &bucket, "");
        for key in [
            "photos/a.jpg",
            "photos/b c.jpg",
            "photos/sub/d.jpg",
            "other/e.jpg",
        ] {
            images
                .put(key, testkit::synthetic_jpeg(key.len() as u64).into())
                .await
                .unwrap();
        }
        let dlq = moto.create_queue(&format!("{bucket}-dlq"), 30, None).await;
        let queue = moto
            .create_queue(&format!("{bucket}-q"), 30, Some((&dlq, 3)))
            .await;
        (queue, dlq)
    });
    let env = moto.env_vars();
    let dir = testkit::tempdir();
    let source = format!("s3://{bucket}/photos");
    let out = ok(lookalike!(
        dir.path(),
        &["backfill", &source, "--dry-run"],
        &env
    ));
    assert!(
        out.contains("3 objects listed") && out.contains("3 would enqueue"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(lookalike!(
        dir.path(),
        &["backfill", &source, "--queue", &queue, "--json"],
        &env
    )))
    .unwrap();
    assert_eq!(v["enqueued"], 3, "{v}");
    assert_eq!(v["resume_after"], "photos/sub/d.jpg", "{v}");

    // A message in the dead-letter queue, as a failing ingest would leave it.
    rt.block_on(async {
        let q = lookalike::queue::Queue::new(moto.sqs_client(), &dlq);
        assert!(q.send_batch(&["{}".to_string()]).await.is_empty());
    });
    let index = format!("s3://{bucket}/index");
    let v: serde_json::Value = serde_json::from_str(&ok(lookalike!(
        dir.path(),
        &["status", "--index", &index, "--queue", &queue, "--dlq", &dlq, "--json"],
        &env
    )))
    .unwrap();
    assert_eq!(v["index"]["exists"], false, "{v}");
    assert_eq!(v["queue"]["visible"], 3, "{v}");
    assert_eq!(v["dlq"]["visible"], 1, "{v}");
    let out = ok(lookalike!(
        dir.path(),
        &["redrive", "--dlq", &dlq, "--queue", &queue],
        &env
    ));
    assert!(out.contains("moved 1 messages"), "{out}");
    let out = ok(lookalike!(
        dir.path(),
        &["status", "--index", &index, "--queue", &queue, "--dlq", &dlq],
        &env
    ));
    assert!(out.contains("nothing committed yet"), "{out}");
    assert!(out.contains(": 4 visible"), "{out}");
    assert!(out.contains(": 0 visible"), "{out}");
}

#[test]
fn clear_errors() {
    let dir = testkit::tempdir();
    let e = failed(lookalike!(
        dir.path(),
        &["backfill", "photos/", "--dry-run"]
    ));
    assert!(e.contains("is not an s3://bucket/prefix location"), "{e}");
    let e = failed(lookalike!(dir.path(), &["backfill", "s3://b/photos"]));
    assert!(e.contains("--queue"), "{e}");
    let e = failed(lookalike!(dir.path(), &["index", "no-such-folder"]));
    assert!(e.contains("no-such-folder is not a folder"), "{e}");
    let e = failed(lookalike!(
        dir.path(),
        &["query", "x.jpg", "--model", "nowhere"],
    ));
    assert!(
        e.contains("cannot read x.jpg") || e.contains("no model in nowhere"),
        "{e}"
    );
    std::fs::write(dir.path().join("q.jpg"), b"junk").unwrap();
    let e = failed(lookalike!(
        dir.path(),
        &["query", "q.jpg", "--model", "nowhere"],
    ));
    assert!(
        e.contains("no model in nowhere") && e.contains("lookalike model import"),
        "{e}"
    );
    let e = failed(lookalike!(dir.path(), &["query", "q.jpg", "-k", "0"]));
    assert!(e.contains("k must be between 1 and 100"), "{e}");
    let e = failed(lookalike!(
        dir.path(),
        &["query", "q.jpg", "--filter", "a=1 OR"]
    ));
    assert!(
        e.contains("bad --filter") && e.contains("the filter ends"),
        "{e}"
    );
    let e = failed(lookalike!(
        dir.path(),
        &["query", "q.jpg", "--offset", "499"]
    ));
    assert!(e.contains("offset + k at most 500"), "{e}");
    let e = failed(lookalike!(
        dir.path(),
        &["query", "q.jpg", "--min-score", "2"]
    ));
    assert!(
        e.contains("min_score must be a number between -1 and 1"),
        "{e}"
    );
    let e = failed(lookalike!(dir.path(), &["query", "--key", "nope.jpg"]));
    assert!(e.contains("nope.jpg"), "{e}");
    if testkit::encoder().is_some() {
        let e = failed(lookalike!(dir.path(), &["query", "q.jpg"]));
        assert!(e.contains("cannot use the query image"), "{e}");
    }
}

/// `lookalike index s3://bucket/catalog` keys every item by its bucket-relative key, as the
/// ingest function does (a CSV's keys stay relative to the prefix): the same objects ingested
/// the function's way afterwards are all duplicates, so a backfill makes no second copy.
#[test]
fn an_s3_prefix_is_keyed_as_the_ingest_function_keys_it() {
    let Some(encoder) = testkit::encoder() else {
        return;
    };
    let Some(moto) = MotoServer::shared() else {
        return;
    };
    let bucket = unique_bucket("cli-keys");
    let client = moto.client();
    testkit::block_on(async {
        moto.create_bucket(&bucket).await;
        for (key, name) in [
            ("catalog/cats/chelsea.jpg", "chelsea.jpg"),
            ("catalog/drinks/coffee.jpg", "coffee.jpg"),
            ("elsewhere/rocket.jpg", "rocket.jpg"),
        ] {
            let bytes = std::fs::read(testkit::fixture(name)).unwrap();
            testkit::lambda::put_object(&client, &bucket, key, bytes, &[]).await;
        }
    });
    let dir = testkit::tempdir();
    std::fs::write(
        dir.path().join("meta.csv"),
        "key,title\ncats/chelsea.jpg,Chelsea\n",
    )
    .unwrap();
    let env: Vec<(&str, String)> = moto.env_vars();
    let out = ok(lookalike!(
        dir.path(),
        &[
            "index",
            &format!("s3://{bucket}/catalog"),
            "--index",
            &format!("s3://{bucket}/index"),
            "--metadata",
            "meta.csv",
        ],
        &env,
    ));
    assert!(out.contains("indexed 2 images"), "{out}");

    testkit::block_on(async {
        let cache = testkit::tempdir();
        let index_store = Arc::new(S3Store::new(client.clone(), bucket.clone(), "index"));
        let index = Arc::new(Index::open(index_store, cache.path(), None).await.unwrap());
        let snap = index.snapshot();
        let chelsea = snap
            .record("catalog/cats/chelsea.jpg")
            .unwrap()
            .expect("bucket-relative key");
        assert_eq!(chelsea.source, format!("s3://{bucket}"));
        assert_eq!(chelsea.category, "cats");
        assert_eq!(chelsea.metadata["title"], "Chelsea");
        assert!(snap.record("cats/chelsea.jpg").unwrap().is_none());
        assert_eq!(snap.live_items(), 2);

        // The ingest function's view: a store at the bucket root, keys as S3 events carry them.
        let source = Arc::new(S3Store::new(client.clone(), bucket.clone(), ""));
        let objects = source.list("catalog/").await.unwrap();
        let ingester = Ingester {
            index: index.clone(),
            encoder,
            source,
            limits: Limits::default(),
            metadata: None,
            build: BuildParams::default(),
        };
        let report = ingester.ingest(objects, Vec::new(), None).await.unwrap();
        assert_eq!(
            report.count(|o| matches!(o, Outcome::Duplicate)),
            2,
            "{report:?}"
        );
        assert_eq!(index.refresh().await.unwrap().live_items(), 2);
    });
}

/// `lookalike duplicates` over a folder of three photos and four near-duplicates of each:
/// three groups, each one photo's family whole, with the pairs that joined them.
#[test]
fn duplicates_groups_each_photo_with_its_variants() {
    if testkit::encoder().is_none() {
        return;
    }
    let dir = testkit::tempdir();
    let photos = dir.path().join("photos");
    for name in ["chelsea", "coffee", "rocket"] {
        let bytes = std::fs::read(testkit::fixture(&format!("{name}.jpg"))).unwrap();
        let family = photos.join(name);
        std::fs::create_dir_all(&family).unwrap();
        for (kind, v) in testkit::variants::variants(&bytes) {
            std::fs::write(family.join(format!("{kind}.jpg")), v).unwrap();
        }
        std::fs::write(family.join("original.jpg"), bytes).unwrap();
    }
    let out = ok(lookalike!(dir.path(), &["index", "photos"]));
    assert!(out.contains("indexed 15 images"), "{out}");

    let out = ok(lookalike!(
        dir.path(),
        &["duplicates", "--min-score", "0.8", "--json"]
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"], 15);
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{out}");
    for g in groups {
        let keys: Vec<&str> = g["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let family = keys[0].split('/').next().unwrap();
        assert_eq!(keys.len(), 5, "{keys:?}");
        assert!(keys.iter().all(|k| k.starts_with(&format!("{family}/"))));
        let pairs = g["pairs"].as_array().unwrap();
        assert!(pairs.len() >= 4, "five items need four pairs to join");
        assert!(pairs
            .iter()
            .all(|p| p["score"].as_f64().unwrap() >= 0.8 && p["a"].as_str() < p["b"].as_str()));
    }
    assert_eq!(v["grouped_items"], 15);

    // The text form names the groups and their keys; a threshold above every pair finds none.
    let out = ok(lookalike!(
        dir.path(),
        &["duplicates", "--min-score", "0.8"]
    ));
    assert!(out.starts_with("3 groups of near-duplicates"), "{out}");
    assert!(out.contains("rocket/mirrored.jpg"), "{out}");
    let out = ok(lookalike!(dir.path(), &["duplicates", "--min-score", "1"]));
    assert!(out.starts_with("0 groups"), "{out}");

    // One item's near-duplicates from `query`: its four variants, nothing else.
    let out = ok(lookalike!(
        dir.path(),
        &[
            "query",
            "--key",
            "coffee/original.jpg",
            "-k",
            "100",
            "--min-score",
            "0.8",
            "--json"
        ]
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let found: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(found.len(), 4, "{out}");
    assert!(found.iter().all(|k| k.starts_with("coffee/")), "{out}");
    assert_eq!(v["truncated"], false);

    let e = failed(lookalike!(
        dir.path(),
        &["duplicates", "--min-score", "1.5"]
    ));
    assert!(
        e.contains("min_score must be a number between -1 and 1"),
        "{e}"
    );
    let e = failed(lookalike!(dir.path(), &["duplicates", "--neighbours", "0"]));
    assert!(e.contains("--neighbours must be between 1 and 100"), "{e}");
}
