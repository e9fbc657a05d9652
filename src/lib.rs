//! lookalike core: everything the Lambdas and the CLI share.
//!
//! From the bottom up (each layer imports only the ones above it in this list):
//!
//! - [`config`]: typed settings from the environment (imports nothing from the crate).
//! - [`digest`]: sha256 of bytes, readers and files (ETags, segment checksums).
//! - [`task`]: CPU work off the async runtime, with a typed error for a failed task.
//! - [`sdk`]: the AWS SDK's configuration: one HTTPS client (rustls on ring) for every client.
//! - [`store`]: the object store (local directory or S3) that images and the index live in.
//! - [`queue`]: the ingest queue (SQS): batched sends with retries, receives, counts.
//! - [`preprocess`]: image decoding under limits and conversion to the encoder's input tensor.
//! - [`model`]: model cards, the ONNX encoder (tract), the import of the default model and the
//!   graph of a fine-tuned one.
//! - [`catalog`]: an item's category (its key's folder), CSV metadata, which files are images.
//! - [`pipeline`]: the one fetch → decode → encode pipeline (chunks, bounded prefetch).
//! - [`index`]: the index snapshot: manifest, immutable LMDB/arroy segments, sync and search,
//!   and its writer (append, delete, compaction, gc).
//! - [`ingest`] and [`query`]: the operations, as plain functions over the above.
//! - [`reindex`]: rebuilding an index with another model, swapped in atomically.
//! - [`backfill`] and [`status`]: operating a deployment: existing objects of a bucket sent to
//!   the ingest queue as notifications; the index, its rejections and the queues at a glance.
//! - [`train`]: fine-tuning an encoder on category folders: a trained feature layer and
//!   discriminant directions over a frozen base model (`lookalike train`).
//! - [`samples`]: the sample photos of the demo.
//! - [`api`]: the HTTP search API over [`query`], as the query Lambda serves it, and the page.
//! - [`server`]: that API over a real HTTP server (`lookalike serve`).
//! - [`lambda`]: what both Lambda functions assemble at init (environment, logging, model,
//!   store), with a typed init error.

#![warn(missing_docs)]

pub mod api;
pub mod backfill;
pub mod catalog;
pub mod config;
pub mod digest;
pub mod duplicates;
pub mod index;
pub mod ingest;
pub mod lambda;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod query;
pub mod queue;
pub mod reindex;
pub mod samples;
pub mod sdk;
pub mod server;
pub mod status;
pub mod store;
pub mod task;
pub mod train;
