#!/usr/bin/env python3
"""onnxruntime reference timings for the encoder benchmark (benches/encoder.rs runs this).

Reads the preprocessed inputs the Rust bench wrote (raw little-endian float32, N x C x H x W or
N x H x W x C as the model takes them) and times the same ONNX model with onnxruntime on the CPU:

- one thread (intra_op_num_threads=1), batch 1, sequential: ms/image, wall clock and the calling
  thread's CPU time (onnxruntime runs on the calling thread then);
- all cores, three ways, reporting images/s for each:
  * one session with intra_op_num_threads=cores, batch 1, sequential;
  * the same session, one fixed batch of 8 per run;
  * `cores` Python threads each driving its own one-thread session on batch 1 (the way the Rust
    encoder gets its throughput: onnxruntime releases the GIL while it runs).

Prints one JSON object on stdout, with the raw output of the first image for a cross-check.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

import numpy as np
import onnxruntime as ort


def session(model, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def time_per_image(sess, name, output, images, seconds):
    """Median ms of a batch-1 run, cycling through the images for about `seconds`."""
    for x in images[:3]:
        sess.run([output], {name: x[None]})
    times, cpu = [], []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds or len(times) < 10:
        x = images[i % len(images)][None]
        t, c = time.perf_counter(), time.thread_time()
        sess.run([output], {name: x})
        cpu.append((time.thread_time() - c) * 1e3)
        times.append((time.perf_counter() - t) * 1e3)
        i += 1
    return statistics.median(times), min(times), len(times), statistics.median(cpu)


def throughput_sequential(sess, name, output, images, batch, seconds):
    xs = [np.stack([images[(i * batch + j) % len(images)] for j in range(batch)]) for i in range(4)]
    sess.run([output], {name: xs[0]})
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or n < 4 * batch:
        sess.run([output], {name: xs[(n // batch) % len(xs)]})
        n += batch
    return n / (time.perf_counter() - start)


def throughput_threads(model, name, output, images, workers, seconds):
    sessions = [session(model, 1) for _ in range(workers)]
    for s in sessions:
        s.run([output], {name: images[0][None]})
    counts = [0] * workers
    stop = time.perf_counter() + seconds
    barrier = threading.Barrier(workers + 1)

    def work(k):
        barrier.wait()
        i = k
        while time.perf_counter() < stop:
            sessions[k].run([output], {name: images[i % len(images)][None]})
            counts[k] += 1
            i += workers

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True, help="raw float32 file")
    ap.add_argument("--shape", required=True, help="per-image shape, e.g. 3,224,224")
    ap.add_argument("--input-name", required=True)
    ap.add_argument("--output-name", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()

    shape = tuple(int(s) for s in a.shape.split(","))
    flat = np.fromfile(a.inputs, dtype="<f4")
    images = list(flat.reshape((-1,) + shape))
    if not images:
        sys.exit("no inputs")

    one = session(a.model, 1)
    ms, ms_min, runs, cpu_ms = time_per_image(one, a.input_name, a.output_name, images, a.seconds)
    first = one.run([a.output_name], {a.input_name: images[0][None]})[0].reshape(-1)

    cores = max(1, a.threads)
    many = session(a.model, cores)
    ips_intra_b1 = throughput_sequential(many, a.input_name, a.output_name, images, 1, a.seconds)
    ips_intra_b8 = throughput_sequential(many, a.input_name, a.output_name, images, 8, a.seconds)
    ips_threads = throughput_threads(a.model, a.input_name, a.output_name, images, cores, a.seconds)

    print(json.dumps({
        "onnxruntime": ort.__version__,
        "cores": cores,
        "single_thread_ms_per_image": ms,
        "single_thread_ms_min": ms_min,
        # CPU time of the calling thread (with one intra-op thread, onnxruntime runs on it).
        "single_thread_cpu_ms": cpu_ms,
        "single_thread_runs": runs,
        "single_thread_images_per_s": 1e3 / ms,
        "all_cores_intra_op_batch1_images_per_s": ips_intra_b1,
        "all_cores_intra_op_batch8_images_per_s": ips_intra_b8,
        "all_cores_thread_per_core_images_per_s": ips_threads,
        "all_cores_best_images_per_s": max(ips_intra_b1, ips_intra_b8, ips_threads),
        "first_output": [float(v) for v in first],
    }))


if __name__ == "__main__":
    main()
