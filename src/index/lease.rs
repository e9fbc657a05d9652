//! Leases on uploaded segments that no manifest lists yet.
//!
//! A writer that holds uploaded segments for a long time before its commit (a reindex, which may
//! run for hours and retry after races) takes a lease: an object `leases/<id>.json` naming those
//! segments, renewed in the background while the writer lives. `gc` never deletes a segment that
//! a live lease names, whatever its age; once a lease is released (after the commit) or has not
//! been renewed for its time to live (its writer died), its segments are ordinary orphans again,
//! deleted by age.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::store::{get_object, DynStore, StoreError};

use super::clock::now_ms;
use super::IndexError;

/// Where leases live in the index store.
pub const LEASES_PREFIX: &str = "leases/";

/// How long a lease holds without renewal (it is renewed every third of that).
pub const LEASE_TTL: Duration = Duration::from_secs(30 * 60);

/// The stored form of a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// What holds it (for people reading the bucket).
    pub holder: String,
    /// The segments it keeps.
    pub segments: Vec<String>,
    /// When it was last written, in ms since the Unix epoch.
    pub renewed_ms: u64,
    /// How long it holds after `renewed_ms`, in ms.
    pub ttl_ms: u64,
}

impl LeaseRecord {
    /// Whether the lease still holds at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.renewed_ms) < self.ttl_ms
    }
}

/// A lease held by this process: renewed in the background until [`Lease::release`] (or drop,
/// which stops renewing and lets it expire).
#[derive(Debug)]
pub struct Lease {
    store: DynStore,
    key: String,
    state: Arc<Mutex<LeaseRecord>>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Take a new lease (no segments yet) in `store`, held for `ttl` past each renewal.
    pub async fn take(store: DynStore, holder: &str, ttl: Duration) -> Result<Lease, IndexError> {
        let r: u64 = rand::rng().random();
        let key = format!("{LEASES_PREFIX}{:013}-{r:016x}.json", now_ms());
        let state = Arc::new(Mutex::new(LeaseRecord {
            holder: holder.to_string(),
            segments: Vec::new(),
            renewed_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
        }));
        put(&store, &key, &mut *state.lock().await).await?;
        let renewer = {
            let (store, key, state) = (store.clone(), key.clone(), state.clone());
            let every = (ttl / 3).max(Duration::from_millis(10));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = put(&store, &key, &mut *state.lock().await).await {
                        tracing::warn!(lease = %key, error = %e, "cannot renew a segment lease");
                    }
                }
            })
        };
        Ok(Lease {
            store,
            key,
            state,
            renewer,
        })
    }

    /// Add segments to the lease (written at once).
    pub async fn hold(&self, names: impl IntoIterator<Item = String>) -> Result<(), IndexError> {
        let mut s = self.state.lock().await;
        s.segments.extend(names);
        put(&self.store, &self.key, &mut s).await
    }

    /// The lease's key in the store.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Stop renewing and delete the lease (its segments are committed, or given up).
    pub async fn release(self) -> Result<(), IndexError> {
        self.renewer.abort();
        self.store.delete(&self.key).await?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Write the lease, renewed now. The caller holds the lease's lock across the write, so a
/// renewal and a [`Lease::hold`] never land out of order (an older list over a newer one).
async fn put(store: &DynStore, key: &str, record: &mut LeaseRecord) -> Result<(), IndexError> {
    record.renewed_ms = now_ms();
    // Strings and numbers only: serialising cannot fail.
    let body = serde_json::to_vec(&*record).unwrap_or_default();
    store.put(key, Bytes::from(body)).await?;
    Ok(())
}

/// The leases in `store`: the segments that live ones hold, and the keys of those that have
/// expired (or cannot be read as a lease) for `expired_for` or longer.
pub async fn read_leases(
    store: &DynStore,
    expired_for: Duration,
) -> Result<(HashSet<String>, Vec<String>), IndexError> {
    let now = now_ms();
    let mut held = HashSet::new();
    let mut dead = Vec::new();
    for obj in store.list(LEASES_PREFIX).await? {
        let record = match get_object(store.as_ref(), &obj.key).await {
            Ok(o) => serde_json::from_slice::<LeaseRecord>(&o.bytes).ok(),
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        match record {
            Some(r) if r.live_at(now) => held.extend(r.segments),
            Some(r) => {
                let expired_at = r.renewed_ms.saturating_add(r.ttl_ms);
                if Duration::from_millis(now.saturating_sub(expired_at)) >= expired_for {
                    dead.push(obj.key);
                }
            }
            None => {
                tracing::warn!(lease = %obj.key, "not a lease; left alone");
            }
        }
    }
    Ok((held, dead))
}
