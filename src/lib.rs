//! lookalike core: everything the Lambdas and the CLI share.
//!
//! - [`model`]: model cards, the ONNX encoder (tract) and the import of the default model.
//! - [`preprocess`]: image decoding under limits and conversion to the encoder's input tensor.
//! - [`store`]: the object store (local directory or S3) that images and the index live in.
//! - [`index`]: the index snapshot: manifest, immutable LMDB/arroy segments, sync and search.
//! - [`ingest`] and [`query`]: the operations, as plain functions over the above.
//! - [`reindex`]: rebuilding an index with another model, swapped in atomically.
//! - [`api`]: the HTTP search API over [`query`], as the query Lambda serves it.
//! - [`config`]: settings from the environment.
//! - [`train`]: fine-tuning an encoder on category folders: a trained feature layer and
//!   discriminant directions over a frozen base model (`lookalike train`).

pub mod api;
pub mod catalog;
pub mod config;
pub mod digest;
pub mod index;
pub mod ingest;
pub mod lambda;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod query;
pub mod reindex;
pub mod samples;
pub mod store;
pub mod task;
pub mod train;
