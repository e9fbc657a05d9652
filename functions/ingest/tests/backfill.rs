//! Backfill on the fleet, against real S3 and SQS APIs (moto): `lookalike::backfill` lists a
//! prefix and sends notification-shaped messages to the ingest queue; pollers in this test play
//! the event source mapping (receive up to 10, invoke the real ingest handler, delete what
//! succeeded, leave the reported failures to come back after the visibility timeout; moto's
//! redrive policy moves a message to the dead-letter queue after its receive limit). Then
//! `status` and `redrive`. Skipped with a message when moto or the model is missing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use lookalike::backfill::{backfill, BackfillOptions, BackfillReport};
use lookalike::queue::Queue;
use lookalike::status::{index_status, queue_status};
use lookalike::store::S3Store;
use serde_json::json;
use testkit::lambda::{s3_event, s3_record, TestBucket};
use testkit::moto::MotoServer;

#[path = "common/poller.rs"]
mod poller;
use poller::drain;

const IMAGES: usize = 300;
const VISIBILITY_SECS: u32 = 2;
const MAX_RECEIVES: u32 = 2;
/// The visibility timeout of the pollers that index (the poison message's poller uses
/// [`VISIBILITY_SECS`], so that it comes back quickly).
const LONG: Duration = Duration::from_secs(60);

fn options(page_size: usize) -> BackfillOptions {
    BackfillOptions {
        prefix: "photos/".into(),
        page_size,
        ..BackfillOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_backfilled_through_the_queue_is_indexed_once() {
    let Some(env) = TestBucket::new("backfill").await else {
        return;
    };
    let moto = MotoServer::shared().unwrap();
    let name = env.bucket.clone();
    let dlq_url = moto.create_queue(&format!("{name}-dlq"), 30, None).await;
    let queue_url = moto
        .create_queue(
            &format!("{name}-ingest"),
            VISIBILITY_SECS,
            Some((&dlq_url, MAX_RECEIVES)),
        )
        .await;
    let sqs = moto.sqs_client();
    let queue = Queue::new(sqs.clone(), &queue_url);
    let dlq = Queue::new(sqs.clone(), &dlq_url);

    // The bucket: 300 images under photos/ (a key with a space and a plus among them), a
    // folder marker, and an object elsewhere that is not to be sent.
    let mut keys = Vec::new();
    for i in 0..IMAGES {
        let key = match i {
            7 => "photos/c0/a photo+plus.jpg".to_string(),
            _ => format!("photos/c{}/{i:03}.jpg", i % 3),
        };
        env.put(&key, testkit::synthetic_jpeg(i as u64)).await;
        keys.push(key);
    }
    env.put("photos/", Vec::new()).await;
    env.put("elsewhere/x.jpg", testkit::synthetic_jpeg(999))
        .await;
    let root = S3Store::new(env.client.clone(), &env.bucket, "");
    let never = AtomicBool::new(false);

    // A dry run counts and sends nothing.
    let dry = backfill(
        &root,
        Some(&queue),
        &BackfillOptions {
            dry_run: true,
            ..options(1000)
        },
        &|_| {},
        &never,
    )
    .await;
    assert_eq!((dry.listed, dry.enqueued, dry.skipped), (301, 300, 1));
    assert_eq!(queue.counts().await.unwrap().visible, 0);

    // Interrupted after two pages of 50, then resumed from the key it printed.
    let stop = AtomicBool::new(false);
    let pages = AtomicUsize::new(0);
    let first = backfill(
        &root,
        Some(&queue),
        &options(50),
        &|_: &BackfillReport| {
            if pages.fetch_add(1, Ordering::Relaxed) == 1 {
                stop.store(true, Ordering::Relaxed);
            }
        },
        &stop,
    )
    .await;
    assert!(first.interrupted);
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    let resume = first.resume_after.clone().expect("a resume point");
    // The folder marker sorts first: 99 objects and the marker make the first 100 keys.
    assert_eq!(first.enqueued, 99, "{first:?}");
    let rest = backfill(
        &root,
        Some(&queue),
        &BackfillOptions {
            start_after: Some(resume),
            ..options(50)
        },
        &|_| {},
        &never,
    )
    .await;
    assert!(!rest.interrupted && rest.failed.is_empty(), "{rest:?}");
    assert_eq!(first.enqueued + rest.enqueued, IMAGES as u64);
    assert_eq!(
        rest.resume_after.as_deref(),
        keys.iter().max().map(|k| k.as_str())
    );

    // Three pollers at once: every image indexed exactly once.
    let tally = drain(&env, &queue, 3, LONG).await;
    assert_eq!(tally.indexed.load(Ordering::Relaxed), IMAGES);
    let snapshot = env.snapshot().await;
    assert_eq!(snapshot.live_items(), IMAGES as u64);
    assert!(snapshot
        .record("photos/c0/a photo+plus.jpg")
        .unwrap()
        .is_some());
    assert!(snapshot.record("elsewhere/x.jpg").unwrap().is_none());

    // Backfilled again, and one image notified by S3 as well: duplicates, no second item.
    let again = backfill(&root, Some(&queue), &options(1000), &|_| {}, &never).await;
    assert_eq!(again.enqueued, IMAGES as u64);
    let meta = lookalike::store::ObjectStore::head(&root, &keys[3])
        .await
        .unwrap()
        .unwrap();
    let mut record = s3_record(true, &env.bucket, &keys[3]);
    record["s3"]["object"]["eTag"] = json!(meta.etag);
    record["s3"]["object"]["size"] = json!(meta.size);
    let notified = s3_event(vec![record]);
    let fail = queue.send_batch(&[notified.to_string()]).await;
    assert!(fail.is_empty(), "{fail:?}");
    let tally = drain(&env, &queue, 3, LONG).await;
    assert_eq!(tally.indexed.load(Ordering::Relaxed), 0);
    assert_eq!(tally.duplicates.load(Ordering::Relaxed), IMAGES + 1);
    assert_eq!(env.snapshot().await.live_items(), IMAGES as u64);

    // A poison message: reported failed on every receive, then in the dead-letter queue.
    let fail = queue
        .send_batch(&["this is not an event".to_string()])
        .await;
    assert!(fail.is_empty(), "{fail:?}");
    let tally = drain(&env, &queue, 1, Duration::from_secs(VISIBILITY_SECS.into())).await;
    assert_eq!(
        tally.failed_messages.load(Ordering::Relaxed),
        MAX_RECEIVES as usize
    );
    let dead = dlq.counts().await.unwrap();
    assert_eq!(dead.visible, 1, "{dead:?}");

    // status: the index from its manifest alone, and both queues.
    let status = index_status(&env.index_store, 5).await.unwrap();
    assert!(status.exists);
    assert_eq!(status.items_stored, IMAGES as u64);
    assert!(status.last_commit_age_secs.is_some_and(|s| s < 600.0));
    assert_eq!(queue_status(&dlq).await.unwrap().counts.visible, 1);
    assert_eq!(queue_status(&queue).await.unwrap().counts.visible, 0);

    // redrive: back to the ingest queue, out of the dead-letter queue.
    let moved = lookalike::queue::redrive(&dlq, &queue, u64::MAX)
        .await
        .unwrap();
    assert_eq!(moved.moved, 1, "{moved:?}");
    assert_eq!(dlq.counts().await.unwrap().visible, 0);
    let back = queue
        .receive(10, Duration::from_secs(1), Duration::from_secs(30))
        .await
        .unwrap();
    let bodies: HashMap<_, _> = back.iter().map(|m| (m.body.as_str(), ())).collect();
    assert!(bodies.contains_key("this is not an event"), "{back:?}");
}
