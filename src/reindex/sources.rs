//! Where a reindex reads its images: the source recorded with each item (opened once each) or
//! one replacement for all of them, and the check that refuses a source whose images are all
//! gone (a wrong or moved source, not a mass deletion).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::error::ReindexError;
use crate::index::segment::ItemRecord;
use crate::store::{self, DynStore, ObjectStore, S3Store};

/// The stores a reindex reads from.
pub(super) struct Sources {
    /// Replaces every recorded source (a folder that moved).
    over: Option<DynStore>,
    /// Opened recorded sources, by location.
    opened: HashMap<String, DynStore>,
}

impl Sources {
    /// Recorded sources, or `over` for every item.
    pub(super) fn new(over: Option<DynStore>) -> Self {
        Sources {
            over,
            opened: HashMap::new(),
        }
    }

    /// Opens the recorded sources of `todo` not opened yet (each once).
    pub(super) async fn open_for(
        &mut self,
        index_store: &dyn ObjectStore,
        todo: &[ItemRecord],
    ) -> Result<(), ReindexError> {
        if self.over.is_some() {
            return Ok(());
        }
        let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
        for r in todo.iter().filter(|r| !self.opened.contains_key(&r.source)) {
            *wanted.entry(&r.source).or_default() += 1;
        }
        for (location, items) in wanted {
            let store = open_source(index_store, location, items).await?;
            self.opened.insert(location.to_string(), store);
        }
        Ok(())
    }

    /// The store `r`'s image is read from (opened by [`Sources::open_for`]).
    pub(super) fn of(&self, r: &ItemRecord) -> Result<&DynStore, ReindexError> {
        match &self.over {
            Some(s) => Ok(s),
            None => self
                .opened
                .get(&r.source)
                .ok_or_else(|| ReindexError::Internal(format!("source {} not open", r.source))),
        }
    }

    /// The location new records name as their source: the replacement's, if there is one.
    pub(super) fn replacement(&self) -> Option<String> {
        self.over.as_ref().map(|s| s.location())
    }

    /// Refuses a source from which every live item is gone.
    pub(super) fn check(
        &self,
        live: &[ItemRecord],
        is_missing: impl Fn(&ItemRecord) -> bool,
    ) -> Result<(), ReindexError> {
        // With a replacement every item is read from there, whatever source it was indexed from.
        let over = self.replacement();
        let mut per_source: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for r in live {
            let (total, gone) = per_source
                .entry(over.as_deref().unwrap_or(&r.source))
                .or_default();
            *total += 1;
            *gone += is_missing(r) as usize;
        }
        let empty = per_source
            .into_iter()
            .find(|(_, (total, gone))| *total > 0 && gone == total)
            .map(|(location, (items, _))| (location.to_string(), items));
        match empty {
            Some((location, items)) => Err(ReindexError::SourceEmpty { location, items }),
            None => Ok(()),
        }
    }
}

/// Open the source recorded as `location`. An S3 source goes through the index store's client
/// when it has one (same endpoint and credentials, as the query service does for presigned
/// URLs). A local folder must exist: opening a missing one would create it empty, and every
/// image would then look deleted.
async fn open_source(
    index_store: &dyn ObjectStore,
    location: &str,
    items: usize,
) -> Result<DynStore, ReindexError> {
    if let Some((bucket, prefix)) = store::parse_s3_location(location) {
        if let (Some(client), false) = (index_store.s3_client(), bucket.is_empty()) {
            return Ok(Arc::new(S3Store::new(client, bucket, prefix)));
        }
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        if !Path::new(path).is_dir() {
            return Err(ReindexError::SourceMissing {
                location: location.to_string(),
                items,
            });
        }
    }
    store::open(location)
        .await
        .map_err(|source| ReindexError::OpenSource {
            location: location.to_string(),
            items,
            source,
        })
}
