//! `manifest.json`: the one mutable object of an index. It names the immutable segments that make
//! up the current snapshot and the keys deleted since. Every change is a compare-and-swap.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::ModelRef;

/// The manifest format this build writes. Format 2 may list segments of the compact format 2
/// (int8 + sign codes), which builds that read only format 1 cannot open. Format 3 adds
/// `tombstones` and the segment entries' `hidden` (changes ordered by S3 sequencer): a build that
/// read them as format 2 would ignore both and serve stale uploads, so it refuses them instead.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest manifest format this build reads (format 1: full-precision segments only; they
/// stay readable, and `lookalike compact --all` rewrites them in the compact format).
pub const OLDEST_FORMAT: u32 = 1;
/// The manifest's key under the index prefix.
pub const MANIFEST_KEY: &str = "manifest.json";
/// The prefix of the segment files under the index prefix.
pub const SEGMENTS_PREFIX: &str = "segments/";
/// The only distance this build supports.
pub const DISTANCE: &str = "cosine";
/// How many of the latest commits' ids a manifest keeps (see [`Manifest::commits`]).
pub const RECENT_COMMITS: usize = 64;
/// How long a deletion's sequencer is kept ([`Manifest::tombstones`]): far longer than any
/// invocation takes from fetching an object to committing it (15 minutes at most).
pub const TOMBSTONE_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format of this file; readers refuse versions they do not know.
    pub format: u32,
    /// Incremented by every commit.
    pub version: u64,
    /// The model whose embeddings the segments hold.
    pub model: ModelRef,
    /// The distance the vectors are compared with.
    pub distance: String,
    /// Live segments, oldest first (ascending `sequence`).
    pub segments: Vec<SegmentEntry>,
    /// Deleted keys: an item with this key is hidden in every segment whose sequence is lower.
    #[serde(default)]
    pub deleted: BTreeMap<String, u64>,
    /// The sequence number the next commit hands out.
    pub next_sequence: u64,
    /// Segments that left the manifest (replaced by a compaction or a reindex), with the time
    /// they left it (ms since the Unix epoch). Readers of an earlier manifest may still fetch
    /// them, so `gc` deletes one only a grace period after it was retired.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired: BTreeMap<String, u64>,
    /// Ids of the latest commits, oldest first (at most [`RECENT_COMMITS`]). A writer whose
    /// compare-and-swap succeeded but whose response was lost finds its id here on the retry
    /// and stops, rather than applying its change a second time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commits: Vec<String>,
    /// The S3 sequencer of the latest deletion of a key, when it had one: a put of the same key
    /// with an older sequencer that commits later (it was fetched before the delete) is stale
    /// and is hidden instead of resurrecting the key. Kept [`TOMBSTONE_RETENTION_MS`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tombstones: BTreeMap<String, Tombstone>,
    /// When the commit that wrote this manifest was made (ms since the Unix epoch; absent in
    /// manifests written before it was recorded). For people (`lookalike status`), not for
    /// ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_ms: Option<u64>,
}

/// A deletion's place in S3's order of its key's changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The delete notification's sequencer.
    pub sequencer: String,
    /// When it was committed (ms since the Unix epoch).
    pub at_ms: u64,
}

/// One segment of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// File name under `segments/`.
    pub name: String,
    /// Items stored in the segment (including ones hidden by newer segments or deletions).
    pub items: u64,
    /// The file's size.
    pub bytes: u64,
    /// Hex sha256 of the segment file; downloads are verified against it.
    pub sha256: String,
    /// Commit order. When a key is in several segments the highest sequence wins.
    pub sequence: u64,
    /// Compaction level: 0 for ingested segments, n+1 for a merge of level-n segments.
    #[serde(default)]
    pub level: u32,
    /// The segment's format (absent in format-1 manifests, whose segments are all format 1).
    #[serde(default = "first_segment_format")]
    pub format: u32,
    /// Keys of items in this segment that are not live: at commit time a change of the same
    /// key with a later S3 sequencer was already indexed (the item was fetched before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<String>,
}

fn first_segment_format() -> u32 {
    1
}

/// The segment format this build writes, as the manifest records it.
pub const SEGMENT_FORMAT: u32 = 2;

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Written by another format version.
    #[error(
        "index manifest has format version {found}, this build of lookalike reads versions \
         {OLDEST_FORMAT} to {FORMAT_VERSION}: upgrade lookalike, or rebuild the index from its images \
         with this build (`lookalike index <images> --index <new location>`)"
    )]
    UnknownFormat {
        /// The manifest's format version.
        found: u64,
    },
    /// Not a valid manifest.
    #[error("index manifest is not valid: {0}")]
    Invalid(String),
}

impl Manifest {
    /// The manifest of a new, empty index built with `model`.
    pub fn new(model: ModelRef) -> Self {
        Manifest {
            format: FORMAT_VERSION,
            version: 0,
            model,
            distance: DISTANCE.into(),
            segments: Vec::new(),
            deleted: BTreeMap::new(),
            next_sequence: 1,
            retired: BTreeMap::new(),
            commits: Vec::new(),
            tombstones: BTreeMap::new(),
            committed_ms: None,
        }
    }

    /// Forget tombstones committed more than [`TOMBSTONE_RETENTION_MS`] before `now_ms`.
    pub fn prune_tombstones(&mut self, now_ms: u64) {
        self.tombstones
            .retain(|_, t| now_ms.saturating_sub(t.at_ms) < TOMBSTONE_RETENTION_MS);
    }

    /// Record that this manifest is written by commit `id`.
    pub fn record_commit(&mut self, id: &str) {
        self.commits.push(id.to_string());
        let excess = self.commits.len().saturating_sub(RECENT_COMMITS);
        self.commits.drain(..excess);
    }

    /// Whether commit `id` is among the latest [`RECENT_COMMITS`] commits of this manifest.
    pub fn has_commit(&self, id: &str) -> bool {
        self.commits.iter().any(|c| c == id)
    }

    /// The manifest that replaces `old` with a rebuilt index (a reindex): `model`, only
    /// `segments` (numbered in order), no deletions; one version after `old`, with sequence
    /// numbers continuing from it. `old`'s segments are retired at `now_ms`.
    pub fn successor(
        old: &Manifest,
        model: ModelRef,
        segments: impl IntoIterator<Item = SegmentEntry>,
        now_ms: u64,
    ) -> Manifest {
        let mut manifest = Manifest::new(model);
        manifest.next_sequence = old.next_sequence;
        manifest.retired = old.retired.clone();
        manifest.commits = old.commits.clone();
        manifest.tombstones = old.tombstones.clone();
        for s in &old.segments {
            manifest.retired.insert(s.name.clone(), now_ms);
        }
        for mut entry in segments {
            entry.sequence = manifest.bump();
            manifest.segments.push(entry);
        }
        manifest.version = old.version + 1;
        manifest
    }

    /// Parse and validate. The format version is checked before anything else so that a newer
    /// manifest gives a clear error rather than a confusing field error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        let format = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
        if !(OLDEST_FORMAT as u64..=FORMAT_VERSION as u64).contains(&format) {
            return Err(ManifestError::UnknownFormat { found: format });
        }
        let m: Manifest =
            serde_json::from_value(value).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// The JSON bytes of the manifest as written: always in this build's format, whichever format it was read in
    /// (a commit may add compact segments to an index of full-precision ones).
    pub fn to_bytes(&self) -> Vec<u8> {
        let current = Manifest {
            format: FORMAT_VERSION,
            ..self.clone()
        };
        let mut v = serde_json::to_vec_pretty(&current).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if self.distance != DISTANCE {
            return Err(ManifestError::Invalid(format!(
                "unsupported distance {:?}",
                self.distance
            )));
        }
        let mut last = 0;
        for s in &self.segments {
            if !is_segment_name(&s.name) {
                return Err(ManifestError::Invalid(format!(
                    "bad segment name {:?}",
                    s.name
                )));
            }
            if s.sequence <= last || s.sequence >= self.next_sequence {
                return Err(ManifestError::Invalid(format!(
                    "segment {} has sequence out of order",
                    s.name
                )));
            }
            last = s.sequence;
        }
        if let Some(name) = self.retired.keys().find(|n| !is_segment_name(n)) {
            return Err(ManifestError::Invalid(format!(
                "bad retired segment name {name:?}"
            )));
        }
        Ok(())
    }

    /// Hand out the next sequence number and bump the version.
    pub fn bump(&mut self) -> u64 {
        let seq = self.next_sequence;
        self.next_sequence += 1;
        self.version += 1;
        seq
    }

    /// Take `names` out of the segment list and record them as retired at `now_ms`.
    pub fn retire(&mut self, names: &[String], now_ms: u64) {
        self.segments.retain(|s| !names.contains(&s.name));
        for name in names {
            self.retired.insert(name.clone(), now_ms);
        }
    }

    /// Items hidden by a deletion: `key` in a segment of sequence `seq`.
    pub fn is_deleted(&self, key: &str, seq: u64) -> bool {
        self.deleted.get(key).is_some_and(|&d| seq < d)
    }

    /// Items in all segments (deleted ones included).
    pub fn total_items(&self) -> u64 {
        self.segments.iter().map(|s| s.items).sum()
    }

    /// Bytes of all segments.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// Store key of a segment file.
pub fn segment_key(name: &str) -> String {
    format!("{SEGMENTS_PREFIX}{name}")
}

/// Segment names are generated by us: `<hex>.lmdb`; anything else in a manifest is refused so a
/// manifest can never make a reader touch arbitrary paths.
pub fn is_segment_name(name: &str) -> bool {
    name.len() <= 128
        && name.ends_with(".lmdb")
        && name
            .trim_end_matches(".lmdb")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && name.len() > ".lmdb".len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_commit_ids_are_kept_and_round_trip() {
        let mut m = sample();
        assert!(!String::from_utf8(m.to_bytes()).unwrap().contains("commits"));
        for i in 0..RECENT_COMMITS + 5 {
            m.record_commit(&format!("c{i}"));
        }
        assert_eq!(m.commits.len(), RECENT_COMMITS);
        assert!(!m.has_commit("c4"), "the oldest ones are dropped");
        assert!(m.has_commit("c5") && m.has_commit(&format!("c{}", RECENT_COMMITS + 4)));
        let back = Manifest::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
    }

    fn sample() -> Manifest {
        let mut m = Manifest::new(ModelRef {
            id: "m".into(),
            dims: 4,
        });
        let seq = m.bump();
        m.segments.push(SegmentEntry {
            name: "abc-1.lmdb".into(),
            items: 2,
            bytes: 10,
            sha256: "00".into(),
            format: SEGMENT_FORMAT,
            sequence: seq,
            level: 0,
            hidden: Vec::new(),
        });
        m
    }

    #[test]
    fn round_trip() {
        let mut m = sample();
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
        m.retire(&["abc-1.lmdb".to_string()], 7);
        assert!(m.segments.is_empty());
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn unknown_format_is_refused_clearly() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["format"] = 99.into();
        let err = Manifest::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, ManifestError::UnknownFormat { found: 99 }));
        assert!(err.to_string().contains("format version 99"));
    }

    #[test]
    fn hostile_segment_names_are_refused() {
        let mut m = sample();
        m.segments[0].name = "../../etc/passwd".into();
        assert!(Manifest::from_bytes(&m.to_bytes()).is_err());
    }

    #[test]
    fn deletions_hide_older_segments_only() {
        let mut m = sample();
        m.deleted.insert("k".into(), 2);
        assert!(m.is_deleted("k", 1));
        assert!(!m.is_deleted("k", 2));
        assert!(!m.is_deleted("other", 1));
    }

    #[test]
    fn a_successor_holds_only_the_new_segments_and_continues_the_numbers() {
        let mut old = sample();
        old.version = 7;
        old.deleted.insert("gone".into(), 1);
        let next_seq = old.next_sequence;
        let model = ModelRef {
            id: "new".into(),
            dims: 8,
        };
        let mut rebuilt = old.segments[0].clone();
        rebuilt.name = "def-2.lmdb".into();
        let m = Manifest::successor(&old, model.clone(), [rebuilt.clone(), rebuilt], 42);
        assert_eq!(m.model, model);
        assert_eq!(m.version, 8);
        assert!(m.deleted.is_empty());
        assert_eq!(m.retired.get("abc-1.lmdb"), Some(&42));
        let seqs: Vec<u64> = m.segments.iter().map(|s| s.sequence).collect();
        assert_eq!(seqs, vec![next_seq, next_seq + 1]);
        assert_eq!(m.next_sequence, next_seq + 2);
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
    }
}
