#!/usr/bin/env python3
"""Check a converted model directory (encoder.onnx + model.json) against the numpy reference.

Runs encoder.onnx with onnxruntime and effnet_numpy.forward on the same preprocessed images,
reports the max abs difference of `embedding` and `logits`, and the top-1 ImageNet classes.

    python3 tools/reference/check_onnx.py --model DIR --pth CHECKPOINT.pth IMAGE...

Exit status 1 when the embedding differs by more than --tol (default 1e-3).
Needs: numpy, onnxruntime, pillow.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import effnet_numpy as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="directory with encoder.onnx and model.json")
    ap.add_argument("--pth", required=True, help="the checkpoint the model was converted from")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()

    with open(os.path.join(args.model, "model.json")) as f:
        card = json.load(f)
    size = card["input"]["width"]
    crop = card["resize"].get("crop_fraction", 1.0)
    mean, std = card["normalize"]["mean"], card["normalize"]["std"]
    sess = ort.InferenceSession(os.path.join(args.model, "encoder.onnx"), providers=["CPUExecutionProvider"])
    weights = ref.load_pth(args.pth)

    x = np.concatenate([ref.preprocess(p, size, crop, mean, std) for p in args.images])
    t0 = time.time()
    emb, logits = sess.run([card["output"], card["logits"]], {card["input"]["name"]: x})
    t_ort = time.time() - t0
    t0 = time.time()
    ref_emb, ref_logits = ref.forward(weights, x)
    t_ref = time.time() - t0

    d_emb = np.abs(emb - ref_emb).max()
    d_logits = np.abs(logits - ref_logits).max()
    print(f"model {card['id']}: input {size}x{size}, crop {crop:.4f}, batch {len(args.images)}")
    print(f"onnxruntime {t_ort:.2f}s, numpy reference {t_ref:.2f}s")
    print(f"max |embedding - reference| = {d_emb:.3g} (|embedding| max {np.abs(ref_emb).max():.3g})")
    print(f"max |logits - reference|    = {d_logits:.3g}")
    prob = ref.softmax(logits.astype(np.float64))
    ref_top = ref_logits.argmax(axis=1)
    for i, path in enumerate(args.images):
        top = np.argsort(-prob[i])[:3]
        print(
            f"{os.path.basename(path)}: top-1 {top[0]} (p={prob[i, top[0]]:.3f}), "
            f"top-3 {', '.join(f'{c} ({prob[i, c]:.3f})' for c in top)}; reference top-1 {ref_top[i]}"
        )
    ok = d_emb <= args.tol and (logits.argmax(axis=1) == ref_top).all()
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
