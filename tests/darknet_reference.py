"""An independent NumPy forward pass of a Darknet cfg + weights, written from Darknet's C semantics
(``src/*_layer.c``: convolution with BatchNorm ``(x - mean) / sqrt(var + .00001)``, max-pooling padded with
-FLT_MAX starting ``padding / 2`` cells before the image, grouped routes, shortcut/sam/scale_channels,
``forward_yolo_layer`` + ``get_yolo_box``). It shares no code with yolo_prune: its own cfg parser, its own weights
reader, loops over kernel taps. Tests compare yolo_prune's DarknetModel against it.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def parse_sections(text: str) -> list[tuple[str, dict[str, str]]]:
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.replace(" ", "").replace("\t", "").strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sections.append((line[1:-1], {}))
        else:
            key, value = line.split("=", 1)
            sections[-1][1][key] = value
    return sections


def read_weights(path: Path) -> np.ndarray:
    data = path.read_bytes()
    major, minor, _ = struct.unpack("<3i", data[:12])
    start = 20 if (major * 10 + minor >= 2 and major < 1000 and minor < 1000) else 16
    return np.frombuffer(data[start:], dtype="<f4").astype(np.float64)


ACT = {
    "linear": lambda x: x,
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "relu": lambda x: np.maximum(x, 0),
    "logistic": lambda x: 1 / (1 + np.exp(-x)),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "swish": lambda x: x / (1 + np.exp(-x)),
}


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """x [C, H, W], w [N, C, k, k] -> [N, OH, OW], zero padding, one kernel tap at a time."""
    c, h, wd = x.shape
    k = w.shape[2]
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    xp = np.zeros((c, h + 2 * pad, wd + 2 * pad))
    xp[:, pad:pad + h, pad:pad + wd] = x
    out = np.zeros((w.shape[0], oh, ow))
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, ky:ky + stride * oh:stride, kx:kx + stride * ow:stride]
            out += np.einsum("nc,chw->nhw", w[:, :, ky, kx], patch)
    return out


def maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    c, h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = np.full((c, oh, ow), -np.finfo(np.float32).max)
    for i in range(oh):
        for j in range(ow):
            for n in range(size):
                for m in range(size):
                    y, xx = off + i * stride + n, off + j * stride + m
                    if 0 <= y < h and 0 <= xx < w:
                        out[:, i, j] = np.maximum(out[:, i, j], x[:, y, xx])
    return out


def forward(cfg_path: Path, weights_path: Path, image: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """image [3, H, W] -> per [yolo] layer: (grid width, detections [n*H*W, 5 + classes] in Darknet's entry
    order: anchor, row, column) with x, y, w, h in input pixels, objectness and class probabilities."""
    sections = parse_sections(cfg_path.read_text())
    net, layers = sections[0][1], sections[1:]
    net_w, net_h = int(net["width"]), int(net["height"])
    payload, pos = read_weights(weights_path), 0

    def take(n: int) -> np.ndarray:
        nonlocal pos
        pos += n
        return payload[pos - n:pos]

    outs: list[np.ndarray] = []
    dets = []
    x = image.astype(np.float64)
    for i, (kind, o) in enumerate(layers):
        ref = lambda v: i + int(v) if int(v) < 0 else int(v)  # noqa: E731
        if kind == "convolutional":
            n, k, s = int(o.get("filters", 1)), int(o.get("size", 1)), int(o.get("stride", 1))
            pad = k // 2 if int(o.get("pad", 0)) else int(o.get("padding", 0))
            c = x.shape[0]
            bias = take(n)
            bn = int(o.get("batch_normalize", 0))
            if bn:
                scales, mean, var = take(n), take(n), take(n)
            w = take(n * c * k * k).reshape(n, c, k, k)
            y = conv2d(x, w, s, pad)
            if bn:
                y = (y - mean[:, None, None]) / np.sqrt(var[:, None, None] + .00001) * scales[:, None, None]
            x = ACT[o.get("activation", "logistic")](y + bias[:, None, None])
        elif kind == "maxpool":
            s = int(o.get("stride", 1))
            size = int(o.get("size", s))
            x = maxpool(x, size, s, int(o.get("padding", size - 1)))
        elif kind == "avgpool":
            x = x.mean(axis=(1, 2), keepdims=True)
        elif kind == "upsample":
            s = int(o.get("stride", 2))
            x = x.repeat(s, axis=1).repeat(s, axis=2)
        elif kind == "route":
            groups, gid = int(o.get("groups", 1)), int(o.get("group_id", 0))
            parts = []
            for v in o["layers"].split(","):
                src = outs[ref(v)]
                part = src.shape[0] // groups
                parts.append(src[gid * part:(gid + 1) * part])
            x = np.concatenate(parts, 0)
        elif kind == "shortcut":
            x = ACT[o.get("activation", "linear")](x + outs[ref(o["from"])])
        elif kind == "sam":
            x = ACT[o.get("activation", "linear")](x * outs[ref(o["from"])])
        elif kind == "scale_channels":
            x = ACT[o.get("activation", "linear")](outs[ref(o["from"])] * x)
        elif kind == "yolo":
            dets.append(_yolo(x, o, net_w, net_h))
        else:
            raise ValueError(kind)
        outs.append(x)
    assert pos == len(payload), "the weights file holds more values than the cfg reads"
    return dets


def _yolo(x: np.ndarray, o: dict[str, str], net_w: int, net_h: int) -> tuple[int, np.ndarray]:
    anchors = [float(v) for v in o["anchors"].split(",")]
    mask = [int(v) for v in o["mask"].split(",")]
    classes, scale = int(o["classes"]), float(o.get("scale_x_y", 1))
    new_coords = int(o.get("new_coords", 0))
    _, h, w = x.shape
    out = x.reshape(len(mask), 5 + classes, h, w).copy()
    sig = ACT["logistic"]
    if not new_coords:
        out[:, :2] = sig(out[:, :2])
        out[:, 4:] = sig(out[:, 4:])
    out[:, :2] = out[:, :2] * scale - 0.5 * (scale - 1)
    rows = []
    for n, a in enumerate(mask):
        for r in range(h):
            for col in range(w):
                e = out[n, :, r, col]
                bw = e[2] * e[2] * 4 if new_coords else np.exp(e[2])
                bh = e[3] * e[3] * 4 if new_coords else np.exp(e[3])
                box = [(col + e[0]) / w * net_w, (r + e[1]) / h * net_h,
                       bw * anchors[2 * a] / net_w * net_w, bh * anchors[2 * a + 1] / net_h * net_h]
                rows.append(box + [e[4]] + list(e[5:]))
    return w, np.array(rows)
