#!/usr/bin/env python3
"""The index benchmark's peers: Annoy, hnswlib, hannoy and an exact numpy scan on the very vectors and
queries that `cargo bench --bench index` just measured lookalike on (it calls this script).

Input folder: base.f32 and queries.f32 (little-endian float32, row-major), truth.json (the exact
top-10 ids per query, computed by the benchmark) and meta.json ({"dims": d}). Prints one JSON
row per engine and setting on stdout. One query thread, like the lookalike figures.
"""
import json
import os
import sys
import tempfile
import time

# One BLAS thread for the exact scan (set before numpy loads its BLAS).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402


def percentile(sorted_ms, p):
    return sorted_ms[round((len(sorted_ms) - 1) * p)]


def measure(search, queries, truth):
    lat, hits = [], 0
    for q, want in zip(queries, truth):
        t = time.perf_counter()
        got = search(q)
        lat.append((time.perf_counter() - t) * 1e3)
        hits += len(set(int(i) for i in got[:10]) & set(want))
    lat.sort()
    return hits / (10 * len(queries)), percentile(lat, 0.5), percentile(lat, 0.99)


def row(engine, params, recall, p50, p99, bytes_per_item, build_s):
    return {"engine": engine, "params": params, "recall_at_10": recall, "p50_ms": p50,
            "p99_ms": p99, "bytes_per_item": bytes_per_item, "build_s": build_s}


def main(folder, only):
    meta = json.load(open(os.path.join(folder, "meta.json")))
    d = meta["dims"]
    base = np.fromfile(os.path.join(folder, "base.f32"), dtype="<f4").reshape(-1, d)
    queries = np.fromfile(os.path.join(folder, "queries.f32"), dtype="<f4").reshape(-1, d)
    truth = json.load(open(os.path.join(folder, "truth.json")))
    n = len(base)
    rows = []

    if "exact" in only:
        # Exact scan: one matrix-vector product per query (numpy, one BLAS thread).
        recall, p50, p99 = measure(lambda q: np.argpartition(-(base @ q), 10)[:10], queries, truth)
        rows.append(row("exact", "numpy flat scan", recall, p50, p99, 4.0 * d, 0.0))

    if "annoy" in only:
        import annoy
        t = time.perf_counter()
        index = annoy.AnnoyIndex(d, "angular")
        for i, v in enumerate(base):
            index.add_item(i, v)
        index.build(50, n_jobs=-1)
        build_s = time.perf_counter() - t
        path = os.path.join(tempfile.mkdtemp(), "annoy.ann")
        index.save(path)
        size = os.path.getsize(path)
        for search_k in (1000, 5000, 20000):
            recall, p50, p99 = measure(lambda q: index.get_nns_by_vector(q, 10, search_k=search_k),
                                       queries, truth)
            rows.append(row("annoy", f"50 trees, search_k {search_k}", recall, p50, p99, size / n, build_s))
        index.unload()
        os.remove(path)

    if "hnswlib" in only:
        import hnswlib
        t = time.perf_counter()
        index = hnswlib.Index(space="cosine", dim=d)
        index.init_index(max_elements=n, M=16, ef_construction=200)
        index.set_num_threads(os.cpu_count() or 1)
        index.add_items(base, np.arange(n))
        build_s = time.perf_counter() - t
        index.set_num_threads(1)
        path = os.path.join(tempfile.mkdtemp(), "hnsw.bin")
        index.save_index(path)
        size = os.path.getsize(path)
        os.remove(path)
        for ef in (50, 100, 200):
            index.set_ef(ef)
            recall, p50, p99 = measure(lambda q: index.knn_query(q, k=10)[0][0], queries, truth)
            rows.append(row("hnswlib", f"M 16, ef_construction 200, ef {ef}", recall, p50, p99,
                            size / n, build_s))

    if "hannoy" in only:
        # hannoy: Meilisearch's HNSW on LMDB (heed 0.23, like lookalike's segments), through its
        # Python binding (the same Rust library).
        import hannoy
        folder_db = tempfile.mkdtemp()
        t = time.perf_counter()
        db = hannoy.Database(folder_db, hannoy.Metric.COSINE,
                             env_size=int(n * d * 4 * 3 + (1 << 30)))
        with db.writer(d, m=16, ef=96) as writer:
            writer.add_items(list(range(n)), np.ascontiguousarray(base, dtype=np.float32))
        build_s = time.perf_counter() - t
        size = sum(os.path.getsize(os.path.join(folder_db, f)) for f in os.listdir(folder_db))
        reader = db.reader()
        for ef in (50, 100, 200):
            recall, p50, p99 = measure(
                lambda q: [i for i, _ in reader.by_array(q, n=10, ef_search=ef)], queries, truth)
            rows.append(row("hannoy", f"M 16, ef_construction 96, ef {ef}", recall, p50, p99,
                            size / n, build_s))

    for r in rows:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], set(sys.argv[2].split(",")) if len(sys.argv) > 2 else {"exact", "annoy", "hnswlib", "hannoy"})
