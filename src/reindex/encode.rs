//! The encoding pass of a reindex: the live items not encoded yet go through the shared pipeline
//! (fetched one chunk ahead, encoded on all cores); a missing object is dropped, any other failure
//! stops the run.

use bytes::Bytes;

use super::error::ReindexError;
use super::{version_of, ReindexJob};
use crate::index::segment::ItemRecord;
use crate::ingest::Progress;
use crate::pipeline::{self, Job};
use crate::store::StoreError;
use crate::task;

impl ReindexJob<'_> {
    /// Fetch and encode the live items not encoded yet; returns how many were processed.
    /// Stops at the first image that cannot be fetched (other than a missing object, which is
    /// dropped) or encoded.
    pub async fn encode(&mut self, progress: Option<Progress>) -> Result<usize, ReindexError> {
        let todo: Vec<ItemRecord> = self
            .live
            .iter()
            .filter(|r| !self.is_done(r))
            .cloned()
            .collect();
        self.sources
            .open_for(self.r.index.store().as_ref(), &todo)
            .await?;
        let jobs = todo
            .iter()
            .map(|r| {
                Ok(Job {
                    store: self.sources.of(r)?.clone(),
                    key: r.key.clone(),
                    size: r.size,
                    item: r.clone(),
                })
            })
            .collect::<Result<Vec<_>, ReindexError>>()?;
        // The pipeline fetches the next chunk while this one is encoded; dropping it on an error
        // stops the fetching.
        let limits = pipeline::FetchLimits::for_images(self.r.limits.max_bytes);
        let mut chunks = pipeline::fetch_chunks(jobs, limits);
        while let Some(chunk) = chunks.next().await {
            let mut fetched = Vec::with_capacity(chunk.len());
            for f in chunk {
                match f.object {
                    Ok(o) => fetched.push((f.item, Some((o.bytes, o.meta.etag)))),
                    Err(StoreError::NotFound(_)) => fetched.push((f.item, None)),
                    Err(source) => {
                        return Err(ReindexError::Fetch {
                            location: self.sources.of(&f.item)?.location(),
                            key: f.item.key,
                            source,
                        })
                    }
                }
            }
            let encoded = self.encode_chunk(fetched).await?;
            let n = encoded.len() as u64;
            for (record, outcome) in encoded {
                match outcome {
                    Some((vector, etag)) => {
                        if etag != record.etag && !etag.is_empty() {
                            self.modified.insert(record.key.clone());
                        }
                        self.vectors.insert(version_of(&record), vector);
                        self.encoded += 1;
                    }
                    None => {
                        tracing::info!(key = %record.key, "gone from the source; dropped");
                        self.missing.insert(version_of(&record));
                    }
                }
            }
            if let Some(p) = &progress {
                p(n);
            }
        }
        Ok(todo.len())
    }

    /// Encode fetched images on all cores (off the async runtime): `(vector, fetched etag)`, or
    /// `None` for an object that is gone. Stops at the first image the model cannot encode.
    #[allow(clippy::type_complexity)]
    async fn encode_chunk(
        &self,
        fetched: Vec<(ItemRecord, Option<(Bytes, String)>)>,
    ) -> Result<Vec<(ItemRecord, Option<(Vec<f32>, String)>)>, ReindexError> {
        let encoder = self.r.encoder.clone();
        let limits = self.r.limits;
        let encoded = task::par_map(fetched, move |(record, f)| {
            let r = f.map(|(bytes, etag)| encoder.encode_image(&bytes, &limits).map(|v| (v, etag)));
            (record, r)
        })
        .await?;
        encoded
            .into_iter()
            .map(|(record, r)| match r {
                None => Ok((record, None)),
                Some(Ok(v)) => Ok((record, Some(v))),
                Some(Err(source)) => Err(ReindexError::Encode {
                    key: record.key,
                    model: self.new_model.id.clone(),
                    source: Box::new(source),
                }),
            })
            .collect()
    }
}
