#!/usr/bin/env python3
"""Independent numpy reference for EfficientNet-Lite (no torch, no onnx).

Reads a legacy (pre-1.6, non-zip) torch checkpoint with a restricted unpickler and runs the
forward pass in float64 numpy, with BatchNorm kept separate (not folded) and TF "same" padding
computed explicitly. Used by check_onnx.py to validate the Rust converter.

    python3 tools/reference/effnet_numpy.py --pth efficientnet-lite0-57934424.pth IMAGE...
"""

import argparse
import io
import pickle
import struct
import sys

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
BN_EPS = 1e-3
# EfficientNet-B0 stage layout (first-block strides and kernel sizes); repeats come from the weights.
STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]
STAGE_KERNELS = [3, 3, 5, 3, 5, 5, 3]

DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class _Restricted(pickle.Unpickler):
    """Allows only the globals a plain state_dict needs; storages become placeholders."""

    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in DTYPES:
            return name
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed")

    def persistent_load(self, pid):
        kind, stype, key, _location, numel, view = pid
        if kind != "storage" or view is not None:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        self.storages.setdefault(key, (stype, numel))
        return key


def _rebuild_tensor(storage_key, offset, size, stride, *_rest):
    return ("tensor", storage_key, offset, tuple(size), tuple(stride))


def load_pth(path):
    """Returns {name: np.ndarray} for every tensor in the checkpoint's state dict."""
    with open(path, "rb") as f:
        data = f.read()
    buf = io.BytesIO(data)
    magic = pickle.Unpickler(buf).load()
    if magic != MAGIC:
        raise ValueError("not a legacy torch checkpoint (bad magic number)")
    pickle.Unpickler(buf).load()  # protocol version
    sys_info = pickle.Unpickler(buf).load()
    if not sys_info.get("little_endian", False):
        raise ValueError("big-endian checkpoint")
    storages = {}
    state = _Restricted(buf, storages).load()
    keys = pickle.Unpickler(buf).load()
    arrays = {}
    pos = buf.tell()
    for key in keys:
        stype, numel = storages[key]
        dtype = np.dtype(DTYPES[stype]).newbyteorder("<")
        (count,) = struct.unpack_from("<q", data, pos)
        pos += 8
        if count != numel:
            raise ValueError(f"storage {key}: {count} elements on disk, {numel} declared")
        arrays[key] = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
        pos += count * dtype.itemsize
    out = {}
    for name, (_tag, key, offset, size, stride) in state.items():
        storage = arrays[key]
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
        )
        out[name] = np.array(view)
    return out


# ---------------------------------------------------------------------------------------------
# forward pass


def _same_pad(x, k, s):
    """TF 'SAME' padding: total = max((ceil(n/s)-1)*s + k - n, 0), extra pixel at the end."""
    _, _, h, w = x.shape
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def conv(x, w, stride=1):
    """Dense conv, weight [O, I, k, k], TF same padding."""
    k = w.shape[2]
    xp = _same_pad(x, k, stride)
    n, c, h, wd = x.shape
    ho, wo = -(-h // stride), -(-wd // stride)
    if k == 1 and stride == 1:
        return np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0], optimize=True)
    out = np.zeros((n, w.shape[0], ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j], optimize=True)
    return out


def depthwise(x, w, stride):
    """Depthwise conv, weight [C, 1, k, k], TF same padding."""
    k = w.shape[2]
    xp = _same_pad(x, k, stride)
    n, c, h, wd = x.shape
    ho, wo = -(-h // stride), -(-wd // stride)
    out = np.zeros((n, c, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
            out += patch * w[:, 0, i, j][None, :, None, None]
    return out


def bn(x, p, name):
    g, b = p[name + ".weight"], p[name + ".bias"]
    m, v = p[name + ".running_mean"], p[name + ".running_var"]
    inv = g / np.sqrt(v + BN_EPS)
    return (x - m[None, :, None, None]) * inv[None, :, None, None] + b[None, :, None, None]


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def block_layout(p):
    """[(stage, block index, kernel, stride, has_expand)] derived from the weights."""
    n = 0
    while f"_blocks.{n}._depthwise_conv.weight" in p:
        n += 1
    layout, stage = [], -1
    for i in range(n):
        dw = p[f"_blocks.{i}._depthwise_conv.weight"]
        proj = p[f"_blocks.{i}._project_conv.weight"]
        c_in = p[f"_blocks.{i}._expand_conv.weight"].shape[1] if f"_blocks.{i}._expand_conv.weight" in p else dw.shape[0]
        first = i == 0 or c_in != proj.shape[0]
        if first:
            stage += 1
        stride = STAGE_STRIDES[stage] if first else 1
        if dw.shape[2] != STAGE_KERNELS[stage]:
            raise ValueError(f"block {i}: kernel {dw.shape[2]} but stage {stage} expects {STAGE_KERNELS[stage]}")
        layout.append((stage, i, dw.shape[2], stride, f"_blocks.{i}._expand_conv.weight" in p))
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"found {stage + 1} stages, expected {len(STAGE_STRIDES)}")
    return layout


def forward(p, x):
    """x: [N, 3, H, W] normalised input. Returns (embedding [N, 1280], logits [N, 1000])."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    x = x.astype(np.float64)
    x = relu6(bn(conv(x, p["_conv_stem.weight"], 2), p, "_bn0"))
    for _stage, i, _k, stride, has_expand in block_layout(p):
        pre = f"_blocks.{i}."
        inp = x
        if has_expand:
            x = relu6(bn(conv(x, p[pre + "_expand_conv.weight"]), p, pre + "_bn0"))
        x = relu6(bn(depthwise(x, p[pre + "_depthwise_conv.weight"], stride), p, pre + "_bn1"))
        x = bn(conv(x, p[pre + "_project_conv.weight"]), p, pre + "_bn2")
        if stride == 1 and inp.shape[1] == x.shape[1]:
            x = x + inp
    x = relu6(bn(conv(x, p["_conv_head.weight"]), p, "_bn1"))
    emb = x.mean(axis=(2, 3))
    logits = emb @ p["_fc.weight"].T + p["_fc.bias"]
    return emb, logits


# ---------------------------------------------------------------------------------------------
# preprocessing (same rule as the model card: shorter side to size/crop_fraction, centre crop)


def preprocess(path, size=224, crop_fraction=0.875, mean=127.0, std=128.0):
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    short = round(size / crop_fraction)
    if w <= h:
        nw, nh = short, max(round(h * short / w), short)
    else:
        nw, nh = max(round(w * short / h), short), short
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.float32)
    a = (a - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return a.transpose(2, 0, 1)[None]


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pth", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--crop-fraction", type=float, default=0.875)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    p = load_pth(args.pth)
    print(f"{len(p)} tensors, {len(block_layout(p))} blocks")
    for path in args.images:
        x = preprocess(path, args.size, args.crop_fraction)
        emb, logits = forward(p, x)
        prob = softmax(logits)[0]
        top = np.argsort(-prob)[:5]
        print(path, "top-5:", ", ".join(f"{c} ({prob[c]:.3f})" for c in top), f"|emb|={np.linalg.norm(emb):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
