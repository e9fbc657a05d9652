//! Near-duplicate groups across a whole index: each live item's neighbours at or above a
//! similarity threshold, joined into groups (the connected components of those pairs), largest
//! first. The same search as `GET /items/{key}/duplicates`, once per item.

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::index::Snapshot;
use crate::query::{self, QueryError, SearchOptions};

/// Neighbours looked at per item unless told: a group is found whole as long as each of its
/// members is among the this-many nearest of another member.
pub const DEFAULT_NEIGHBOURS: usize = 20;

/// Two items that are near-duplicates of each other.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    /// One key (the smaller).
    pub a: String,
    /// The other.
    pub b: String,
    /// Their cosine similarity (as the index estimates it).
    pub score: f32,
}

/// Items joined by near-duplicate pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// The keys, sorted.
    pub keys: Vec<String>,
    /// The pairs at or above the threshold that joined them, best first.
    pub pairs: Vec<Pair>,
}

/// The groups of one index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The threshold.
    pub min_score: f32,
    /// Live items looked at.
    pub items: u64,
    /// The manifest version searched.
    pub index_version: u64,
    /// Groups of two or more, largest first.
    pub groups: Vec<Group>,
    /// Items in any group.
    pub grouped_items: usize,
    /// Wall-clock time.
    pub took_ms: f64,
}

/// The near-duplicate groups of `snapshot` at `min_score`, looking at each item's
/// `neighbours` nearest (1..=100). `progress` is told of every item done (from any thread).
pub fn groups(
    snapshot: &Snapshot,
    min_score: f32,
    neighbours: usize,
    progress: &(dyn Fn() + Sync),
) -> Result<Report, QueryError> {
    let start = Instant::now();
    let min_score = query::check_min_score(min_score as f64)?;
    let neighbours = query::check_k(neighbours as i64)?;
    let records = snapshot.live_records()?;
    let ids: HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key.as_str(), i))
        .collect();
    let options = SearchOptions {
        min_score: Some(min_score),
        ..SearchOptions::top(neighbours)
    };
    // Every item's pairs with items after it in `records` (each pair once, whichever of the two
    // found it).
    let found: Vec<Vec<(usize, usize, f32)>> = records
        .par_iter()
        .enumerate()
        .map(|(i, r)| {
            let answer = query::by_key(snapshot, &r.key, &options);
            progress();
            let answer = match answer {
                // Deleted between the listing and the search cannot happen on one snapshot;
                // any other failure ends the run.
                Err(QueryError::UnknownKey(_)) => return Ok(Vec::new()),
                other => other?,
            };
            Ok(answer
                .results
                .iter()
                .filter_map(|hit| ids.get(hit.key.as_str()).map(|&j| (i, j, hit.score)))
                .map(|(i, j, s)| (i.min(j), i.max(j), s))
                .collect())
        })
        .collect::<Result<_, QueryError>>()?;
    let mut pairs: HashMap<(usize, usize), f32> = HashMap::new();
    for (a, b, s) in found.into_iter().flatten() {
        let e = pairs.entry((a, b)).or_insert(s);
        *e = e.max(s);
    }
    // Connected components by union-find.
    let mut parent: Vec<usize> = (0..records.len()).collect();
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for &(a, b) in pairs.keys() {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    for &(a, b) in pairs.keys() {
        for x in [a, b] {
            let r = root(&mut parent, x);
            members.entry(r).or_default().push(x);
        }
    }
    let mut joined: HashMap<usize, Vec<Pair>> = HashMap::new();
    for (&(a, b), &score) in &pairs {
        let (ka, kb) = (&records[a].key, &records[b].key);
        let (ka, kb) = if ka <= kb { (ka, kb) } else { (kb, ka) };
        joined.entry(root(&mut parent, a)).or_default().push(Pair {
            a: ka.clone(),
            b: kb.clone(),
            score,
        });
    }
    let mut groups: Vec<Group> = members
        .into_iter()
        .map(|(r, mut m)| {
            m.sort_unstable();
            m.dedup();
            let mut keys: Vec<String> = m.iter().map(|&i| records[i].key.clone()).collect();
            keys.sort();
            let mut pairs = joined.remove(&r).unwrap_or_default();
            pairs.sort_by(|x, y| {
                y.score
                    .total_cmp(&x.score)
                    .then_with(|| (&x.a, &x.b).cmp(&(&y.a, &y.b)))
            });
            Group { keys, pairs }
        })
        .collect();
    groups.sort_by(|x, y| y.keys.len().cmp(&x.keys.len()).then(x.keys.cmp(&y.keys)));
    Ok(Report {
        min_score,
        items: records.len() as u64,
        index_version: snapshot.version(),
        grouped_items: groups.iter().map(|g| g.keys.len()).sum(),
        groups,
        took_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}
