//! Operating the deployed pipeline: `lookalike backfill` (an existing prefix of a bucket,
//! through the ingest queue), `lookalike status` (index, rejections, queues) and
//! `lookalike redrive` (dead-letter queue back to the ingest queue).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lookalike::backfill::{backfill, BackfillOptions, BackfillReport};
use lookalike::queue::Queue;
use lookalike::status::{index_status, queue_status};
use lookalike::store::{self, parse_s3_location, S3Store};

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The images to index: `s3://bucket/prefix` (the prefix the ingest function watches, or
    /// part of it).
    pub source: String,
    /// The ingest queue's URL (the stack's `IngestQueueUrl` output).
    #[arg(long, env = "LOOKALIKE_QUEUE", required_unless_present = "dry_run")]
    pub queue: Option<String>,
    /// Start after this key (bucket-relative): the key a previous, interrupted run printed.
    #[arg(long)]
    pub start_after: Option<String>,
    /// List and count only; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Objects per message, 1 to 10 (1 is what S3 itself sends).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10))]
    pub per_message: u64,
    /// `SendMessageBatch` calls in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub in_flight: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn backfill_run(args: BackfillArgs) -> anyhow::Result<()> {
    let (bucket, prefix) = parse_s3_location(&args.source)
        .filter(|(b, _)| !b.is_empty())
        .with_context(|| format!("{} is not an s3://bucket/prefix location", args.source))?;
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    let store = S3Store::from_env(bucket, "").await?;
    let queue = match (&args.queue, args.dry_run) {
        (Some(url), false) => Some(Queue::from_env(url).await),
        _ => None,
    };
    let options = BackfillOptions {
        prefix,
        start_after: args.start_after.clone(),
        per_message: args.per_message as usize,
        in_flight: args.in_flight as usize,
        dry_run: args.dry_run,
        ..BackfillOptions::default()
    };

    // Ctrl-C: finish the page in flight, then stop and say where to resume.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing the messages in flight…");
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let verb = if args.dry_run {
        "would enqueue"
    } else {
        "enqueued"
    };
    let show = |r: &BackfillReport| {
        bar.set_message(format!(
            "{} listed · {} {verb} · {} failed · at {}",
            r.listed,
            r.enqueued,
            r.failed.len(),
            r.resume_after.as_deref().unwrap_or("-")
        ));
    };
    let report = backfill(&store, queue.as_ref(), &options, &show, &stop).await;
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} objects listed under s3://{}/{}, {} {verb} in {} messages ({} folder markers skipped), {} failed, {:.1} s",
            report.listed,
            report.bucket,
            options.prefix,
            report.enqueued,
            report.messages,
            report.skipped,
            report.failed.len(),
            report.seconds
        );
        for f in report.failed.iter().take(20) {
            println!("  not enqueued: {} ({})", f.key, f.reason);
        }
        if report.failed.len() > 20 {
            println!(
                "  … and {} more (--json lists them all)",
                report.failed.len() - 20
            );
        }
    }
    let resume = || match &report.resume_after {
        Some(k) => format!("resume with --start-after {}", shell_quote(k)),
        None => "nothing was enqueued; run it again".to_string(),
    };
    if let Some(e) = &report.error {
        anyhow::bail!("listing failed: {e}; {}", resume());
    }
    if report.interrupted {
        anyhow::bail!("interrupted; {}", resume());
    }
    if !report.failed.is_empty() {
        anyhow::bail!(
            "{} objects could not be enqueued; {} (the objects after them are enqueued already: \
             enqueuing twice is harmless)",
            report.failed.len(),
            resume()
        );
    }
    Ok(())
}

/// `key` quoted for a POSIX shell when it needs it.
fn shell_quote(key: &str) -> String {
    if key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        key.to_string()
    } else {
        format!("'{}'", key.replace('\'', "'\\''"))
    }
}

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The dead-letter queue's URL (the stack's `IngestDeadLetterQueueUrl` output).
    #[arg(long)]
    pub dlq: String,
    /// The ingest queue's URL, where the messages go back to.
    #[arg(long, env = "LOOKALIKE_QUEUE")]
    pub queue: String,
    /// Move at most this many messages.
    #[arg(long)]
    pub max: Option<u64>,
}

pub async fn redrive(args: RedriveArgs) -> anyhow::Result<()> {
    let client = lookalike::queue::client_from_env().await;
    let dlq = Queue::new(client.clone(), &args.dlq);
    let queue = Queue::new(client, &args.queue);
    let r = lookalike::queue::redrive(&dlq, &queue, args.max.unwrap_or(u64::MAX)).await?;
    println!(
        "moved {} messages from {} to {}",
        r.moved,
        dlq.url(),
        queue.url()
    );
    if let Some(why) = r.not_sent.first() {
        anyhow::bail!(
            "{} messages could not be sent back and stay in the dead-letter queue: {why}",
            r.not_sent.len()
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Index location: a folder or s3://bucket/prefix.
    #[arg(long = "index", env = "LOOKALIKE_INDEX", default_value = super::common::DEFAULT_INDEX)]
    pub index: String,
    /// The ingest queue's URL, to show its message counts.
    #[arg(long, env = "LOOKALIKE_QUEUE")]
    pub queue: Option<String>,
    /// The dead-letter queue's URL, to show its message counts.
    #[arg(long)]
    pub dlq: Option<String>,
    /// How many of the latest rejections to show.
    #[arg(long, default_value_t = 5)]
    pub rejections: usize,
    /// Print it as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let index_store = store::open(&args.index).await?;
    let index = index_status(&index_store, args.rejections).await?;
    // (the JSON field, the label) of each queue given.
    let given = [
        (("queue", "queue"), &args.queue),
        (("dlq", "dead-letter queue"), &args.dlq),
    ];
    let mut queues = Vec::new();
    if given.iter().any(|(_, url)| url.is_some()) {
        let client = lookalike::queue::client_from_env().await;
        for (names, url) in given {
            if let Some(url) = url {
                let q = Queue::new(client.clone(), url);
                queues.push((names, queue_status(&q).await?));
            }
        }
    }
    if args.json {
        let mut v = serde_json::json!({ "index": index });
        for ((field, _), q) in &queues {
            v[*field] = serde_json::to_value(q)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if index.exists {
        let age = index
            .last_commit_age_secs
            .map_or("unknown".to_string(), human_age);
        println!(
            "index {}: version {}, last commit {age} ago, {} segments, {} items stored, {} deleted keys, {:.1} MB, model {}",
            index.index,
            index.version,
            index.segments,
            index.items_stored,
            index.deleted_keys,
            index.bytes as f64 / 1e6,
            index.model
        );
    } else {
        println!("index {}: nothing committed yet", index.index);
    }
    println!("rejected objects: {}", index.rejected);
    for r in &index.latest_rejections {
        println!("  {} ({}): {}", r.key, r.etag, r.reason);
    }
    for ((_, name), q) in &queues {
        println!(
            "{name} {}: {} visible, {} in flight, {} delayed",
            q.url, q.counts.visible, q.counts.in_flight, q.counts.delayed
        );
    }
    Ok(())
}

fn human_age(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86_400.0),
    }
}
