"""Run an exported ONNX file with the model contract, so evaluation code can take it in place of a Model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from yolo_prune.errors import YoloPruneError
from yolo_prune.export.wrappers import assemble_head_maps


class OrtDetector:
    """ONNX Runtime detector with the eval-mode Model contract: ``images [B, 3, H, W] -> (pred, raw)``.

    ``pred`` [B, N, 5 + nc] is (cx, cy, w, h) in input pixels, objectness, class scores (float32, on the
    images' device). ``--grid`` exports give ``raw == []``; raw and conv-map exports (plain or INT8 QDQ)
    give the per-level maps [B, na, ny, nx, 5 + nc] and ``pred`` decoded from them with the stored strides
    and anchors (split-head exports, one output per level and box / obj / cls group, are reassembled first).
    A static-batch graph is run in chunks (the last one zero-padded). End-to-end graphs are refused.
    """

    training = False

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        from yolo_prune.export.onnx_export import read_metadata
        from yolo_prune.export.verify import ort_session

        self.path = Path(path)
        self.meta: dict[str, Any] = read_metadata(self.path)
        mode = self.meta.get("options", {}).get("mode")
        if mode not in ("grid", "raw", "conv"):
            raise YoloPruneError(f"{self.path}: evaluating an ONNX file needs a yolo-prune raw, --grid or vitis-int8 "
                                 f"export (not end-to-end NMS), got mode {mode!r}")
        self.session = ort_session(self.path) if providers is None else _session(self.path, providers)
        self.mode: str = mode
        self.nc: int = int(self.meta["nc"])
        self.names: list[str] = list(self.meta["names"])
        self.stride = torch.tensor(self.meta["stride"])
        self.img_size: tuple[int, int] = tuple(self.meta["options"]["img_size"])  # type: ignore[assignment]
        inp = self.session.get_inputs()[0]
        self._input, self._batch = inp.name, inp.shape[0] if isinstance(inp.shape[0], int) else None
        fixed = all(isinstance(d, int) for d in inp.shape[2:4])
        self.input_hw: tuple[int, int] | None = (int(inp.shape[2]), int(inp.shape[3])) if fixed else None
        self._dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self._head = _decoder(self.meta) if mode in ("raw", "conv") else None

    def eval(self) -> "OrtDetector":
        """No-op (always inference); returns self like ``nn.Module.eval``."""
        return self

    def __call__(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """images [B, 3, H, W] RGB 0..1 -> (pred [B, N, 5 + nc], raw maps or [])."""
        outs = [torch.from_numpy(o).float() for o in self._run(images)]
        if self._head is None:
            return outs[0].to(images.device), []
        if self.mode == "conv":
            if "head_groups" in self.meta:  # split head convs: one output per level and group
                outs = assemble_head_maps(outs, list(self.meta["head_groups"].values()), self._head.nl)
            outs = [self._head.reshape(o) for o in outs]
        with torch.no_grad():
            pred = torch.cat([self._head.decode(i, r) for i, r in enumerate(outs)], 1)
        return pred.to(images.device), [r.to(images.device) for r in outs]

    def _run(self, images: Tensor) -> list[np.ndarray]:
        """Outputs for all B images, chunked to the graph's static batch when it has one."""
        arr = images.detach().cpu().numpy().astype(self._dtype)
        if self._batch is None or self._batch == len(arr):
            return self.session.run(None, {self._input: arr})
        chunks = []
        for start in range(0, len(arr), self._batch):
            part = arr[start: start + self._batch]
            pad = np.zeros((self._batch - len(part), *part.shape[1:]), dtype=part.dtype)
            outs = self.session.run(None, {self._input: np.concatenate([part, pad])})
            chunks.append([o[: len(part)] for o in outs])
        return [np.concatenate(parts) for parts in zip(*chunks)]


def _session(path: Path, providers: list[str]) -> Any:
    """An ONNX Runtime session with explicit execution providers."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=providers)


def _decoder(meta: dict[str, Any]) -> Any:
    """A weightless detection head that decodes raw maps with the stored strides and pixel anchors (as Darknet's
    [yolo] layers do when the metadata says so)."""
    from yolo_prune.models.heads import Detect

    if "darknet_decode" in meta:
        from yolo_prune.models.darknet import DarknetDetect, YoloLevel

        levels = [YoloLevel(tuple(zip(a[::2], a[1::2])), d["scale_xy"], d["new_coords"], -1, -1)
                  for a, d in zip(meta["anchors"], meta["darknet_decode"])]
        head = DarknetDetect(int(meta["nc"]), levels, [])
    else:
        head = Detect(int(meta["nc"]), meta["anchors"], ch=())
    head.stride = torch.tensor(meta["stride"], dtype=torch.float32)
    return head.eval()
