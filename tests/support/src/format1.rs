//! Snapshots in the index's first format (full-precision vectors in an arroy `Cosine` index,
//! manifest format 1), written exactly as lookalike up to commit 2c5b5e3 wrote them, so that the
//! tests can check what this build does with an index made by an older one.

use std::path::Path;

use arroy::distances::Cosine;
use heed::byteorder::BE;
use heed::types::{SerdeJson, Str, U32};
use heed::{CommitOrAbort, CompactionOption, EnvFlags, EnvOpenOptions};
use lookalike::digest::sha256_file;
use lookalike::index::segment::ItemRecord;
use lookalike::model::ModelRef;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Write a format-1 segment of `items` (unit-norm vectors of `dims`) at `out`.
pub fn write_segment(out: &Path, model_id: &str, dims: usize, items: &[(ItemRecord, Vec<f32>)]) {
    let build = tempfile::tempdir().unwrap();
    let env = unsafe {
        EnvOpenOptions::new()
            .read_txn_without_tls()
            .map_size(256 << 20)
            .max_dbs(8)
            .flags(EnvFlags::NO_SUB_DIR)
            .open(build.path().join("build.lmdb"))
    }
    .unwrap();
    type Vectors = arroy::Database<'static, Cosine>;
    type Items = heed::Database<'static, U32<BE>, SerdeJson<ItemRecord>>;
    type Keys = heed::Database<'static, Str, U32<BE>>;
    type Info = heed::Database<'static, Str, Str>;
    let wtxn = env.write_txn().unwrap();
    let (vectors, items_db, keys_db, info_db): (Vectors, Items, Keys, Info) = env
        .create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
            Ok(CommitOrAbort::<_, ()>::Commit((
                dbo.create_database(wtxn, Some("vectors"))?,
                dbo.create_database(wtxn, Some("items"))?,
                dbo.create_database(wtxn, Some("keys"))?,
                dbo.create_database(wtxn, Some("info"))?,
            )))
        })
        .unwrap()
        .unwrap_commit();
    let mut wtxn = env.write_txn().unwrap();
    let writer = arroy::Writer::<Cosine>::new(vectors, 0, dims);
    for (id, (record, vector)) in items.iter().enumerate() {
        let id = id as u32;
        writer.add_item(&mut wtxn, id, vector).unwrap();
        items_db.put(&mut wtxn, &id, record).unwrap();
        keys_db.put(&mut wtxn, &record.key, &id).unwrap();
    }
    info_db.put(&mut wtxn, "format", "1").unwrap();
    info_db.put(&mut wtxn, "model", model_id).unwrap();
    info_db.put(&mut wtxn, "dims", &dims.to_string()).unwrap();
    info_db
        .put(&mut wtxn, "items", &items.len().to_string())
        .unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    writer
        .builder(&mut rng)
        .n_trees(4)
        .build(&mut wtxn)
        .unwrap();
    wtxn.commit().unwrap();
    env.copy_to_path(out, CompactionOption::Enabled).unwrap();
}

/// Write a format-1 index into the local-store folder `store_dir`: one segment per batch of
/// `batches` (sequences 1, 2, ...) and `deleted` keys at the last sequence.
pub fn write_index(
    store_dir: &Path,
    model: &ModelRef,
    batches: &[Vec<(ItemRecord, Vec<f32>)>],
    deleted: &[&str],
) {
    let segments_dir = store_dir.join("segments");
    std::fs::create_dir_all(&segments_dir).unwrap();
    let mut entries = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let name = format!("{:013}-{:016x}.lmdb", 1_700_000_000_000u64 + i as u64, i);
        let path = segments_dir.join(&name);
        write_segment(&path, &model.id, model.dims, batch);
        entries.push(serde_json::json!({
            "name": name,
            "items": batch.len(),
            "bytes": std::fs::metadata(&path).unwrap().len(),
            "sha256": sha256_file(&path).unwrap(),
            "sequence": i + 1,
            "level": 0,
        }));
    }
    let last = batches.len().max(1);
    let deleted: serde_json::Map<String, serde_json::Value> = deleted
        .iter()
        .map(|k| (k.to_string(), last.into()))
        .collect();
    let manifest = serde_json::json!({
        "format": 1,
        "version": last,
        "model": {"id": model.id, "dims": model.dims},
        "distance": "cosine",
        "segments": entries,
        "deleted": deleted,
        "next_sequence": last + 1,
    });
    std::fs::write(
        store_dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}
