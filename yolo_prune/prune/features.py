"""``FeatureSource``: what data-driven and gradient criteria see of a model on calibration images.

One object per (model, calibration set). It runs the model in eval mode (BatchNorm uses and keeps its running
statistics; nothing is updated) and records, for every conv layer (the published conv index), the feature map
*after BatchNorm and before the activation* -- the input of the block's activation module, so Conv and RepConv
are treated alike:

- ``pooled(layer)``: one number per filter and image, global max or average pooling -> ``[N, C]``;
- ``positions(layer)``: the same maps at a few seeded random positions per image -> ``[P, C]`` (PLS-LC needs
  more samples than images);
- ``targets()``: per image the multi-hot vector of the classes it contains -> ``[N, nc]``;
- ``activation_taylor(layer)``: first-order Taylor estimate of the loss change when a filter's output (after
  the activation, what pruning zeroes) is removed, ``sum over images |sum over positions a * dL/da|`` -> ``[C]``;
- ``weight_grads()``: the loss gradient summed over the calibration set for every parameter (name -> tensor).

Each is computed once (one forward pass for the features, one forward + backward pass for the gradients) and
cached, so a criterion asking for every layer costs one pass. The gradients need ``loss_fn`` (raw head maps,
targets [M, 6], images) -> scalar, passed in by the caller (the detection loss lives in ``engine``).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from yolo_prune.errors import DataError, PruningError
from yolo_prune.models.model import conv_out_channels

LossFn = Callable[[list[Tensor], Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class CalibrationBatch:
    """Images (uint8 0..255 or float 0..1, ``[B, 3, H, W]``, letterboxed as for inference) and their labels
    ``[M, 6]`` = (index in batch, class, cx, cy, w, h normalised)."""

    images: Tensor
    labels: Tensor

    def inputs(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Model input in 0..1 on ``device``."""
        x = self.images.to(device)
        return x.to(dtype) / 255.0 if self.images.dtype == torch.uint8 else x.to(dtype)


def class_vectors(batches: Sequence[CalibrationBatch], nc: int) -> Tensor:
    """Per image, a multi-hot vector of the classes present (all zeros for an image without objects) -> [N, nc]."""
    rows = []
    for b in batches:
        y = torch.zeros(len(b.images), nc)
        if len(b.labels):
            y[b.labels[:, 0].long(), b.labels[:, 1].long().clamp(0, nc - 1)] = 1.0
        rows.append(y)
    return torch.cat(rows) if rows else torch.zeros(0, nc)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has been recorded."""


def _pre_activation_modules(model: nn.Module) -> list[nn.Module]:
    """Each conv block's activation module, whose input is the map after BatchNorm (in conv-index order)."""
    blocks = model.conv_modules() if hasattr(model, "conv_modules") else []
    if not blocks or any(not isinstance(getattr(m, "act", None), nn.Module) for m in blocks):
        raise PruningError(f"data-driven and gradient criteria read conv blocks (conv, BN, activation) of a detector; "
                           f"{type(model).__name__} has none: use a weight criterion (l1, l2, bn, hac)")
    modules = [m.act for m in blocks]
    if len({id(m) for m in modules}) != len(modules):
        raise PruningError("conv blocks share an activation module; data-driven criteria need one per block")
    return modules


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (running BN statistics used, never updated) for the duration; the old mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class FeatureSource:
    """Per-layer pooled features, position samples, targets and gradients of ``model`` on calibration batches.

    ``model`` is read, not changed (its mode and ``requires_grad`` flags are restored; ``.grad`` is left None).
    Call a method before pruning the model: results are cached on first use.
    """

    def __init__(self, model: nn.Module, batches: Sequence[CalibrationBatch], nc: int, *, pool_type: str = "max",
                 loss_fn: LossFn | None = None, positions_per_image: int = 64, seed: int = 0):
        if not batches:
            raise DataError("no calibration images")
        self.model, self.batches, self.nc = model, list(batches), nc
        self.pool_type, self.loss_fn = pool_type, loss_fn
        self.positions_per_image, self.seed = positions_per_image, seed
        self._pooled: list[Tensor] | None = None
        self._positions: list[Tensor] | None = None
        self._taylor: list[Tensor] | None = None
        self._grads: dict[str, Tensor] | None = None

    @property
    def n_images(self) -> int:
        return sum(len(b.images) for b in self.batches)

    def targets(self) -> Tensor:
        """Per image class vectors [N, nc] (multi-hot)."""
        return class_vectors(self.batches, self.nc)

    def position_targets(self) -> Tensor:
        """The class vector of the image each position sample came from [P, nc]."""
        return self.targets().repeat_interleave(self.positions_per_image, dim=0)

    def pooled(self, layer: int) -> Tensor:
        """Pre-activation maps of conv ``layer`` pooled per filter and image [N, C] (float32, CPU)."""
        if self._pooled is None:
            self._collect()
        return self._pooled[layer]

    def positions(self, layer: int) -> Tensor:
        """Pre-activation values of conv ``layer`` at ``positions_per_image`` random positions per image [P, C]."""
        if self._positions is None:
            self._collect(with_positions=True)
        return self._positions[layer]

    def activation_taylor(self, layer: int) -> Tensor:
        """``sum_images |sum_positions a * dL/da|`` per filter of conv ``layer`` (a: output after activation) [C]."""
        if self._taylor is None:
            self._backward()
        return self._taylor[layer]

    def weight_grads(self) -> dict[str, Tensor]:
        """Loss gradient summed over the calibration set for every parameter, by ``named_parameters`` name."""
        if self._grads is None:
            self._backward()
        return self._grads

    def prepare(self, features: bool = False, gradients: bool = False, positions: bool = False) -> None:
        """Compute now what will be needed (before the model is pruned)."""
        if positions and self._positions is None:
            self._collect(with_positions=True)
        if features and self._pooled is None:
            self._collect()
        if gradients and self._grads is None:
            self._backward()

    # ---------------------------------------------------------------------------------------------- passes
    def _pool(self, z: Tensor) -> Tensor:
        return z.amax(dim=(2, 3)) if self.pool_type == "max" else z.mean(dim=(2, 3))

    def _sample_positions(self, z: Tensor, generator: torch.Generator) -> Tensor:
        """``positions_per_image`` values per image at random (seeded) positions: [B, C, H, W] -> [B * k, C]."""
        b, c, h, w = z.shape
        index = torch.randint(0, h * w, (b, 1, self.positions_per_image), generator=generator)
        picked = z.flatten(2).gather(2, index.expand(b, c, -1).to(z.device))  # [B, C, k]
        return picked.permute(0, 2, 1).reshape(-1, c)

    def current_positions(self, layer: int) -> Tensor:
        """``positions(layer)`` of the model as it is *now* (not cached; the forward pass stops after ``layer``).

        The same images and positions as :meth:`positions`, so a model being rewritten layer by layer (PLS-LC)
        can be compared with the original sample for sample.
        """
        return self._collect(only=layer, with_positions=True)[1][layer]

    def _collect(self, only: int | None = None, with_positions: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """One forward pass over the calibration batches recording pooled maps (and position samples) of every
        layer, cached; or of layer ``only``, returned and not cached."""
        acts = _pre_activation_modules(self.model)
        pooled: list[list[Tensor]] = [[] for _ in acts]
        positions: list[list[Tensor]] = [[] for _ in acts]
        # one generator per layer: a layer's positions do not depend on which other layers are recorded
        generators = [torch.Generator().manual_seed(self.seed * 100_003 + i) for i in range(len(acts))]

        def hook(i: int):
            def record(_m: nn.Module, inputs: tuple) -> None:
                z = inputs[0].detach().float()
                pooled[i].append(self._pool(z).cpu())
                if with_positions:
                    positions[i].append(self._sample_positions(z, generators[i]).cpu())
                if only is not None:
                    raise _Stop  # nothing after this layer is needed
            return record

        chosen = range(len(acts)) if only is None else [only]
        handles = [acts[i].register_forward_pre_hook(hook(i)) for i in chosen]
        param = next(self.model.parameters())
        try:
            with _eval_mode(self.model), torch.no_grad():
                for batch in self.batches:
                    try:
                        self.model(batch.inputs(param.device, param.dtype))
                    except _Stop:
                        pass
        finally:
            for h in handles:
                h.remove()
        out = ([torch.cat(p) if p else torch.zeros(0) for p in pooled],
               [torch.cat(p) if p else torch.zeros(0) for p in positions])
        if only is None:
            self._pooled = out[0]
            if with_positions:
                self._positions = out[1]
        return out

    def _backward(self) -> None:
        """One forward + backward pass per batch (eval mode): activation Taylor scores and summed weight grads."""
        if self.loss_fn is None:
            raise PruningError("gradient criteria need a loss function (FeatureSource(..., loss_fn=...))")
        convs = self.model.conv_modules()
        taylor = [torch.zeros(conv_out_channels(m)) for m in convs]
        params = dict(self.model.named_parameters())
        flags = {n: p.requires_grad for n, p in params.items()}
        grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        saved: list[Tensor | None] = [None] * len(convs)

        def keep(i: int):
            def record(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
                out.retain_grad()
                saved[i] = out
            return record

        handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(convs)]
        param = next(self.model.parameters())
        try:
            for p in params.values():
                p.requires_grad_(True)
                p.grad = None
            with _eval_mode(self.model), torch.enable_grad():
                for batch in self.batches:
                    x = batch.inputs(param.device, param.dtype)
                    out = self.model(x)
                    raw = out[1] if isinstance(out, tuple) else out
                    self.loss_fn(list(raw), batch.labels.to(param.device), x).backward()
                    for i, a in enumerate(saved):
                        taylor[i] += (a.detach() * a.grad).float().sum(dim=(2, 3)).abs().sum(0).cpu()
                    for n, p in params.items():
                        if p.grad is not None:
                            grads[n] += p.grad.detach().float()
                            p.grad = None
        finally:
            for h in handles:
                h.remove()
            for n, p in params.items():
                p.requires_grad_(flags[n])
                p.grad = None
        self._taylor, self._grads = taylor, {n: g.cpu() for n, g in grads.items()}


def calibration_batches(image_paths: Sequence[str], nc: int, img_size: int, count: int, seed: int,
                        batch_size: int = 16, stride: int = 32, workers: int = 0) -> list[CalibrationBatch]:
    """A seeded random subset of ``count`` images, preprocessed as for inference (the same letterbox and 0..1
    scaling, RGB, no augmentation) to a square ``img_size`` (evaluation of PyTorch models uses YOLOv7's rectangular
    batches, which pad differently), in batches of ``batch_size``."""
    from yolo_prune.data import create_dataloader

    if not image_paths:
        raise DataError("calibration needs training images, but the split is empty")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(image_paths), generator=generator)[: max(1, min(count, len(image_paths)))]
    chosen = [image_paths[i] for i in sorted(order.tolist())]
    loader, _ = create_dataloader(chosen, nc, img_size, batch_size, augment=False, rect=False, workers=workers,
                                  shuffle=False, stride=stride)
    return [CalibrationBatch(imgs, labels) for imgs, labels, _, _ in loader]


def feature_source(model: nn.Module, data_yaml: str, img_size: int, options, seed: int = 0,
                   loss_fn: LossFn | None = None, batch_size: int = 16, workers: int = 0) -> FeatureSource:
    """A FeatureSource over a seeded subset of the training split of ``data_yaml`` (size from ``options``:
    :class:`~yolo_prune.prune.options.CriterionOptions`' ``n_samples`` / ``perc_samples``)."""
    from yolo_prune.data import load_data_config

    cfg = load_data_config(data_yaml)
    if not cfg.train:
        raise DataError(f"{data_yaml}: data-driven criteria sample the 'train' split, which is missing or empty")
    if model.nc != cfg.nc:
        raise DataError(f"the model has nc={model.nc} classes but --data {data_yaml} has nc={cfg.nc}")
    paths = list(cfg.train)
    stride = int(model.stride.max()) if hasattr(model, "stride") else 32
    batches = calibration_batches(paths, cfg.nc, img_size, options.sample_count(len(paths)), seed, batch_size,
                                  stride, workers)
    return FeatureSource(model, batches, cfg.nc, pool_type=options.pool_type, loss_fn=loss_fn, seed=seed)
