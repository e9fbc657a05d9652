//! Backfill on a fleet of ingest pollers, end to end on this machine: images put in a moto
//! bucket, `lookalike::backfill` sends them to a moto SQS queue, and 1, 2 or 4 pollers (the
//! event source mapping's part, `tests/common/poller.rs`) run the real ingest handler with the
//! real encoder until the queue is empty. Images/s, invocations, and the compare-and-swap
//! attempts the commits needed. Writes `target/bench/fleet.json` and a BENCHMARKS.md section.
//!
//! `cargo bench -p lookalike-ingest --bench fleet`. All pollers share this machine's 2 cores,
//! as Lambda invocations would not: the figures show the overhead of the fleet path (queue,
//! commits per batch), not what N Lambdas do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lookalike::backfill::{backfill, BackfillOptions};
use lookalike::queue::Queue;
use lookalike::store::S3Store;
use serde::Serialize;
use testkit::bench::{dataset_images, publish};
use testkit::lambda::TestBucket;
use testkit::moto::MotoServer;

#[path = "../tests/common/poller.rs"]
mod poller;

const IMAGES: usize = 200;

#[derive(Debug, Serialize)]
struct Run {
    pollers: usize,
    images: usize,
    seconds: f64,
    images_per_sec: f64,
    invocations: usize,
    indexed: usize,
    /// Seconds summed over invocations: fetch, encode, segment write, manifest commit, whole.
    stage_secs: [f64; 5],
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let photos: Vec<Vec<u8>> = {
        let found = dataset_images();
        if found.is_empty() {
            println!("../shared/datasets/clothing-small is missing: using generated images");
            (0..IMAGES as u64).map(testkit::synthetic_jpeg).collect()
        } else {
            found
                .iter()
                .take(IMAGES)
                .map(|(_, p)| std::fs::read(p).unwrap())
                .collect()
        }
    };
    let mut runs = Vec::new();
    for pollers in [1, 2, 4] {
        let Some(run) = rt.block_on(async {
            let env = TestBucket::new(&format!("fleet{pollers}")).await?;
            let moto = MotoServer::shared()?;
            for (i, bytes) in photos.iter().enumerate() {
                env.put(&format!("photos/c{}/{i:04}.jpg", i % 5), bytes.clone())
                    .await;
            }
            let url = moto
                .create_queue(&format!("{}-q", env.bucket), 30, None)
                .await;
            let queue = Queue::new(moto.sqs_client(), &url);
            let root = S3Store::new(env.client.clone(), &env.bucket, "");
            let start = Instant::now();
            let sent = backfill(
                &root,
                Some(&queue),
                &BackfillOptions {
                    prefix: "photos/".into(),
                    ..BackfillOptions::default()
                },
                &|_| {},
                &AtomicBool::new(false),
            )
            .await;
            assert_eq!(sent.enqueued, photos.len() as u64);
            let tally = poller::drain(&env, &queue, pollers, Duration::from_secs(120)).await;
            let seconds = start.elapsed().as_secs_f64();
            assert_eq!(env.snapshot().await.live_items(), photos.len() as u64);
            Some(Run {
                pollers,
                images: photos.len(),
                seconds,
                images_per_sec: photos.len() as f64 / seconds,
                invocations: tally.invocations.load(Ordering::Relaxed),
                indexed: tally.indexed.load(Ordering::Relaxed),
                stage_secs: tally.stage_secs(),
            })
        }) else {
            return;
        };
        println!(
            "{} pollers: {} images in {:.1} s = {:.1} images/s, {} invocations",
            run.pollers, run.images, run.seconds, run.images_per_sec, run.invocations
        );
        runs.push(run);
    }
    let mut body = String::from(
        "Backfill then drain, from the first message sent to the last item committed, on moto, this 2-core machine (all pollers share its cores).\n\n\
         | pollers | images | seconds | images/s | invocations | indexed | fetch s | encode s | segment write s | manifest commit s | handler s |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &runs {
        body.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            r.pollers,
            r.images,
            r.seconds,
            r.images_per_sec,
            r.invocations,
            r.indexed,
            r.stage_secs[0],
            r.stage_secs[1],
            r.stage_secs[2],
            r.stage_secs[3],
            r.stage_secs[4]
        ));
    }
    body.push_str(
        "\nStage times are summed over the invocations (concurrent ones overlap); \"handler\" is each \
         invocation's whole time, summed, and includes the index refresh that brings in the \
         other pollers' segments. Not shown: Lambda (each invocation there has its own cores), \
         real S3 and SQS.\n",
    );
    publish(
        "fleet",
        "Backfill through the queue: images/s with 1, 2 and 4 pollers",
        "cargo bench -p lookalike-ingest --bench fleet",
        &runs,
        &body,
    );
}
