//! Ingest and query from image bytes, through the real encoder, on the local store and on S3
//! (moto). Skipped with a message when the model has not been imported (scripts/test.sh does it).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use lookalike::catalog::MetadataTable;
use lookalike::index::segment::BuildParams;
use lookalike::index::Index;
use lookalike::ingest::{Ingester, Outcome};
use lookalike::model::encoder::Encoder;
use lookalike::preprocess::Limits;
use lookalike::query;
use lookalike::store::{DynStore, LocalStore, ObjectMeta};
use testkit::synthetic_jpeg;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn put_all(store: &DynStore, objects: &[(String, Vec<u8>)]) -> Vec<ObjectMeta> {
    let mut metas = Vec::new();
    for (key, bytes) in objects {
        store.put(key, Bytes::from(bytes.clone())).await.unwrap();
        metas.push(store.head(key).await.unwrap().unwrap());
    }
    metas
}

struct Setup {
    ingester: Ingester,
    source: DynStore,
}

/// Source and index both local, then both on S3.
async fn setups(encoder: &Arc<Encoder>) -> Vec<(&'static str, Setup)> {
    let mut out = Vec::new();
    let mut pairs: Vec<(&'static str, DynStore, DynStore)> = Vec::new();
    let d = tempfile::tempdir().unwrap().keep();
    pairs.push((
        "local",
        Arc::new(LocalStore::new(d.join("images")).unwrap()),
        Arc::new(LocalStore::new(d.join("index")).unwrap()),
    ));
    if let (Some(images), Some(index)) = (
        testkit::s3_store("images").await,
        testkit::s3_store("index").await,
    ) {
        pairs.push(("s3", images, index));
    }
    for (name, source, index_store) in pairs {
        let cache = tempfile::tempdir().unwrap().keep();
        let index = Arc::new(Index::open(index_store, &cache, None).await.unwrap());
        let ingester = Ingester {
            index,
            encoder: encoder.clone(),
            source: source.clone(),
            limits: Limits::default(),
            metadata: None,
            build: BuildParams::default(),
        };
        out.push((name, Setup { ingester, source }));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn photos_round_trip_with_metadata_duplicates_and_rejections() {
    let Some(encoder) = testkit::encoder() else {
        return;
    };
    for (name, mut s) in setups(&encoder).await {
        let mut objects = vec![
            ("animals/chelsea.jpg".to_string(), fixture("chelsea.jpg")),
            ("drinks/coffee.jpg".to_string(), fixture("coffee.jpg")),
            ("vehicles/rocket.jpg".to_string(), fixture("rocket.jpg")),
            (
                "broken/not-an-image.jpg".to_string(),
                b"this is not a JPEG".to_vec(),
            ),
        ];
        objects.extend((0..6).map(|i| (format!("patterns/{i}.jpg"), synthetic_jpeg(i))));
        let metas = put_all(&s.source, &objects).await;
        s.ingester.metadata = Some(Arc::new(
            MetadataTable::from_csv_str("key,title\nanimals/chelsea.jpg,Chelsea the cat\n")
                .unwrap(),
        ));

        let report = s
            .ingester
            .ingest(metas.clone(), vec![], None)
            .await
            .unwrap();
        assert_eq!(report.indexed(), 9, "{name}: {:?}", report.items);
        let rejected = report.rejected();
        assert_eq!(rejected.len(), 1, "{name}");
        assert_eq!(rejected[0].key, "broken/not-an-image.jpg");
        let Outcome::Rejected { reason } = &rejected[0].outcome else {
            unreachable!()
        };
        assert!(!reason.is_empty());
        assert_eq!(report.version, Some(1));

        // Query by image: the cat finds itself first, with its category and CSV metadata.
        let snap = s.ingester.index.snapshot();
        assert_eq!(snap.live_items(), 9);
        let r = query::by_image(
            &snap,
            &encoder,
            &fixture("chelsea.jpg"),
            &Limits::default(),
            &query::SearchOptions::top(3),
        )
        .unwrap();
        assert_eq!(r.results[0].key, "animals/chelsea.jpg", "{name}");
        assert!(r.results[0].score > 0.99);
        assert_eq!(r.results[0].category, "animals");
        assert_eq!(r.results[0].metadata["title"], "Chelsea the cat");
        assert_eq!(r.index_version, 1);
        // Category filter and query by key.
        let r = query::by_image(
            &snap,
            &encoder,
            &fixture("chelsea.jpg"),
            &Limits::default(),
            &query::SearchOptions::top(10).in_category(Some("patterns")),
        )
        .unwrap();
        assert_eq!(r.results.len(), 6);
        assert!(r.results.iter().all(|h| h.category == "patterns"));
        let r = query::by_key(&snap, "drinks/coffee.jpg", &query::SearchOptions::top(5)).unwrap();
        assert_eq!(r.results.len(), 5);
        assert!(r.results.iter().all(|h| h.key != "drinks/coffee.jpg"));
        assert!(matches!(
            query::by_key(&snap, "nope.jpg", &query::SearchOptions::top(5)),
            Err(query::QueryError::UnknownKey(_))
        ));
        assert!(matches!(
            query::by_key(&snap, "drinks/coffee.jpg", &query::SearchOptions::top(0)),
            Err(query::QueryError::BadK(0))
        ));
        assert!(matches!(
            query::by_key(&snap, "drinks/coffee.jpg", &query::SearchOptions::top(101)),
            Err(query::QueryError::BadK(101))
        ));

        // The same (key, etag) again: duplicates, no new commit.
        let again = s.ingester.ingest(metas, vec![], None).await.unwrap();
        assert_eq!(
            again.count(|o| matches!(o, Outcome::Duplicate)),
            9,
            "{name}"
        );
        assert_eq!(again.indexed(), 0);
        assert_eq!(s.ingester.index.snapshot().live_items(), 9);

        // Overwrite a key with other bytes (new etag): one item, the new vector.
        let metas = put_all(
            &s.source,
            &[("drinks/coffee.jpg".to_string(), fixture("rocket.jpg"))],
        )
        .await;
        // A deletion is applied once the object is gone from the source (the index follows it).
        s.source.delete("patterns/0.jpg").await.unwrap();
        let over = s
            .ingester
            .ingest(metas, vec!["patterns/0.jpg".into()], None)
            .await
            .unwrap();
        assert_eq!(over.indexed(), 1);
        let snap = s.ingester.index.snapshot();
        assert_eq!(
            snap.live_items(),
            8,
            "{name}: overwrite keeps one, delete removes one"
        );
        let r = query::by_image(
            &snap,
            &encoder,
            &fixture("rocket.jpg"),
            &Limits::default(),
            &query::SearchOptions::top(2),
        )
        .unwrap();
        let keys: HashSet<_> = r.results.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(
            keys,
            HashSet::from(["drinks/coffee.jpg", "vehicles/rocket.jpg"]),
            "{name}"
        );
        let r = query::by_image(
            &snap,
            &encoder,
            &fixture("coffee.jpg"),
            &Limits::default(),
            &query::SearchOptions::top(8),
        )
        .unwrap();
        assert!(r.results.iter().all(|h| h.key != "patterns/0.jpg"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_ingests_of_25_images_make_exactly_200_items() {
    let Some(encoder) = testkit::encoder() else {
        return;
    };
    for (name, s) in setups(&encoder).await {
        let objects: Vec<(String, Vec<u8>)> = (0..200)
            .map(|i| (format!("w{}/{i}.jpg", i % 8), synthetic_jpeg(1000 + i)))
            .collect();
        let metas = put_all(&s.source, &objects).await;
        let ingester = Arc::new(s.ingester);
        let mut tasks = Vec::new();
        for w in 0..8 {
            let batch: Vec<ObjectMeta> = metas.iter().skip(w * 25).take(25).cloned().collect();
            let ingester = ingester.clone();
            tasks.push(tokio::spawn(async move {
                ingester.ingest(batch, vec![], None).await.unwrap()
            }));
        }
        let mut indexed = 0;
        for t in tasks {
            indexed += t.await.unwrap().indexed();
        }
        assert_eq!(indexed, 200, "{name}");
        let snap = ingester.index.refresh().await.unwrap();
        assert_eq!(snap.live_items(), 200, "{name}: exactly 200, none lost");
        assert_eq!(snap.manifest.total_items(), 200, "{name}: none twice");
        assert_eq!(snap.segment_count(), 8);
    }
}
