//! Human-readable and JSON renderings shared by the subcommands, and of a failed command's error.

use lookalike::index::Snapshot;
use lookalike::query::SearchResponse;

pub fn print_results(response: &SearchResponse) {
    if response.results.is_empty() {
        println!("no results (the index is empty or nothing matches the filter)");
        return;
    }
    println!("{:>4}  {:>6}  {:<14}  key", "rank", "score", "category");
    for (i, r) in response.results.iter().enumerate() {
        let meta = if r.metadata.is_empty() {
            String::new()
        } else {
            format!("  {}", serde_json::Value::Object(r.metadata.clone()))
        };
        println!(
            "{:>4}  {:>6.3}  {:<14}  {}{}",
            i + 1,
            r.score,
            r.category,
            r.key,
            meta
        );
    }
    println!(
        "{} results in {:.1} ms (encode {:.1} ms, search {:.1} ms), index version {}",
        response.results.len(),
        response.took_ms,
        response.timings.encode_ms,
        response.timings.search_ms,
        response.index_version
    );
}

pub fn stats_json(snapshot: &Snapshot, location: &str) -> serde_json::Value {
    let m = &snapshot.manifest;
    serde_json::json!({
        "index": location,
        "items": snapshot.live_items(),
        "stored_items": m.total_items(),
        "segments": snapshot.segment_count(),
        "bytes": m.total_bytes(),
        "version": m.version,
        "model": m.model.id,
        "dims": m.model.dims,
        "distance": m.distance,
        "deletions": m.deleted.len(),
        "categories": snapshot.categories().into_iter().map(|(c, n)| (c, serde_json::Value::from(n))).collect::<serde_json::Map<_, _>>(),
    })
}

pub fn print_stats(snapshot: &Snapshot, location: &str) {
    let m = &snapshot.manifest;
    if snapshot.etag.is_none() {
        println!("index {location}: empty (no manifest yet)");
        return;
    }
    println!("index      {location}");
    println!("version    {}", m.version);
    println!(
        "model      {} ({}-d, {})",
        m.model.id, m.model.dims, m.distance
    );
    println!(
        "items      {} live ({} stored)",
        snapshot.live_items(),
        m.total_items()
    );
    println!(
        "segments   {} ({:.1} MiB)",
        snapshot.segment_count(),
        m.total_bytes() as f64 / (1 << 20) as f64
    );
    println!("deletions  {}", m.deleted.len());
    for (c, n) in snapshot.categories() {
        println!("  {:<14} {n}", if c.is_empty() { "(none)" } else { &c });
    }
}

/// A failed command's error on one line: each cause after the one before it, like anyhow's
/// `{:#}`, but without the causes a message already shows (the library's errors include their
/// source in their message).
pub fn error_report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.is_empty() {
            out = msg;
        } else if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}: {1}")]
    struct Read(&'static str, #[source] std::io::Error);

    #[test]
    fn a_cause_the_message_shows_is_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Read("a.json", io)).context("loading the model");
        assert_eq!(
            error_report(&e),
            "loading the model: reading a.json: disk on fire"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_report(&e), format!("{e:#}"));
    }
}
