"""``train(TrainSettings) -> TrainResult``: YOLOv7 training and fine-tuning of (pruned) models.

The official recipe: YOLOv7 loss (OTA by hyp ``loss_ota``), nesterov SGD with three param groups, nominal batch
64 by gradient accumulation, warm-up then one-cycle LR (:mod:`.optim`), EMA weights (:mod:`.ema`), AMP on CUDA,
the dataset's mosaic/HSV/flip/affine augmentation, and an evaluation of the EMA model on the val split after
every epoch (fitness = 0.1 mAP@.5 + 0.9 mAP@.5:.95). Files are described in :mod:`.train_state`.

Two deliberate differences from the official loop, both so that ``--resume`` ends where an uninterrupted run
would: gradients still accumulated at the end of an epoch are applied there (never carried into the next
epoch), and warm-up lasts at most half of the run. Under ``torchrun`` (or an initialised process group) the
model is wrapped in DistributedDataParallel; ``batch_size`` is the total over ranks; only rank 0 evaluates
and writes files. Weights never change shape silently: loading is strict, and a model whose class count
differs from the data YAML's is an error unless ``--cfg`` asks for transfer learning (:mod:`.model_source`).
"""
from __future__ import annotations

import copy
import os
import random
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from yolo_prune.engine import accel
from yolo_prune.engine.ddp import (DistInfo, ShardSampler, broadcast_buffers, broadcast_path, start_distributed,
                                   stop_distributed, wrap_ddp)
from yolo_prune.engine.distill import distill_loss, make_teacher, teacher_maps
from yolo_prune.engine.ema import ModelEMA, unwrap
from yolo_prune.engine.hooks import TrainHooks
from yolo_prune.engine.model_hook import ModelHook, apply_hook
from yolo_prune.engine.model_source import source_model
from yolo_prune.engine.optim import Schedule, build_optimizer
from yolo_prune.engine.train_state import (STATE_KEY, STATE_VERSION, TrainResult, TrainSettings, TrainState,
                                           find_last, fitness, lock_run_dir, new_run_dir, read_train_state,
                                           strip_checkpoint,
                                           train_entry, write_records, write_run_files)
from yolo_prune.errors import ConfigError, DataError, YoloPruneError

__all__ = ["TrainResult", "TrainSettings", "train"]

EpochCallback = Callable[[int, dict], None]


# ------------------------------------------------------------------------------------------- inputs
@dataclass
class _Inputs:
    """Validated inputs of a run, before anything is written: model (fp32, CPU) with its history, hyp, data.

    ``teacher``: the model before pruning (distillation); ``state``/``ema_model``/``run_dir``: set when resuming.
    """

    settings: TrainSettings
    hyp: dict[str, Any]
    data: Any  # DataConfig
    model: nn.Module
    history: list[dict]
    teacher: nn.Module | None = None
    state: dict[str, Any] | None = None
    ema_model: nn.Module | None = None
    run_dir: Path | None = None
    neck_index: list[list[int]] | None = None  # feature distillation: teacher channel of each student channel
    hooks: TrainHooks = field(default_factory=TrainHooks)  # kernel masks / FBS L1 the checkpoint carries
    extra: dict[str, Any] | None = None  # the resumed checkpoint's ``extra`` (for a ModelHook)


def _seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialisation; the data loader seeds itself from ``seed``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fresh_inputs(settings: TrainSettings) -> _Inputs:
    """Hyp, data, model; pruned (history entry kept) and/or re-initialised as the settings ask."""
    from yolo_prune.data import load_data_config
    from yolo_prune.engine.hyp import default_hyp_name, load_hyp

    if settings.hyp is not None:
        load_hyp(settings.hyp)  # a bad hyp file is reported before the model is read
    data = load_data_config(settings.data)
    _seed_everything(settings.seed)
    model, history, hooks = source_model(settings, data)
    settings = replace(settings, hyp=settings.hyp or default_hyp_name(model),
                       img_size=settings.img_size or getattr(model, "default_img_size", 640))
    hyp = load_hyp(settings.hyp)
    if settings.label_smoothing is not None:
        hyp["label_smoothing"] = settings.label_smoothing  # YOLOv7's --label-smoothing overrides the hyp file
    teacher = model if settings.distill or settings.feature_distill else None
    kept: dict = {}
    if settings.pruning_params is not None:
        from yolo_prune.engine.calibration import prune_for_training

        model, history, kept = prune_for_training(settings, model, history)
    index = None
    if settings.feature_distill:
        from yolo_prune.engine.distill import neck_index
        from yolo_prune.graph.derive import derive_graph

        index = [i.tolist() for i in neck_index(derive_graph(teacher), kept)]
    if settings.from_scratch:
        from yolo_prune.models.cfgs import build_model

        fresh = build_model(model.yaml, widths=model.widths())
        fresh.names = list(model.names)
        model = fresh
    return _Inputs(settings, hyp, data, model, history, teacher, neck_index=index, hooks=hooks)


def _resumed_inputs(settings: TrainSettings) -> _Inputs:
    """Everything from the run's last.pt (settings, hyp, training and EMA weights); device/workers/progress
    come from ``settings``. The teacher of a distilled run is re-read from its original --weights."""
    from yolo_prune.checkpoint import load_checkpoint, load_model
    from yolo_prune.checkpoint.state import load_state_strict
    from yolo_prune.data import load_data_config

    path = find_last(settings.resume, settings.project)
    loaded = load_checkpoint(path)
    state = read_train_state(loaded, path)
    stored = TrainSettings.from_dict(state["settings"], device=settings.device, workers=settings.workers,
                                     progress=settings.progress, resume=str(path))
    data = load_data_config(stored.data)
    model = copy.deepcopy(loaded.model)
    load_state_strict(model, state["model"], f"{path} (training weights)")
    teacher = load_model(stored.weights) if stored.distill or stored.feature_distill else None
    _seed_everything(stored.seed)
    if "rng" in state:
        torch.set_rng_state(state["rng"])
    return _Inputs(stored, dict(state["hyp"]), data, model, list(state.get("base_history", [])), teacher,
                   state, loaded.model, path.parent.parent, neck_index=state.get("neck_index"),
                   hooks=TrainHooks.from_checkpoint(loaded), extra=dict(loaded.extra))


def _load_inputs(settings: TrainSettings) -> _Inputs:
    return _resumed_inputs(settings) if settings.resume else _fresh_inputs(settings)


# ------------------------------------------------------------------------------------------- the run
@dataclass
class _Run:
    """A run ready to train: the (possibly DDP-wrapped) model and everything its loop touches."""

    inputs: _Inputs
    dist: DistInfo
    device: torch.device
    model: nn.Module
    loss: Any  # YoloLoss (AuxYoloLoss for models with auxiliary heads)
    optimizer: torch.optim.SGD
    scaler: torch.amp.GradScaler
    schedule: Schedule
    train_loader: Any
    val_loader: Any  # None off rank 0
    ema: ModelEMA | None  # rank 0 only
    teacher: nn.Module | None
    state: TrainState
    run_dir: Path
    img_size: int
    amp: torch.dtype | None = None  # autocast dtype (None: fp32)
    forward: Callable[[torch.Tensor], Any] | None = None  # the model's (compiled) forward; None: the model itself
    hook: ModelHook | None = None
    distiller: Any = None  # FeatureDistiller, with taps on the student's and the teacher's head inputs
    taps: tuple = ()

    @property
    def settings(self) -> TrainSettings:
        return self.inputs.settings


def _grid_size(model: nn.Module, img_size: int) -> tuple[int, int]:
    """(max stride, image size rounded up to it); rounding is announced, as YOLOv7's check_img_size does."""
    from yolo_prune.data.letterbox import round_up_to_stride

    gs = max(int(model.stride.max()), 32)
    size = round_up_to_stride(img_size, gs)
    if size != img_size:
        warnings.warn(f"--img {img_size} is not a multiple of the model's max stride {gs}; using {size}",
                      stacklevel=3)
    return gs, size


def _check_anchors(inputs: _Inputs, model: nn.Module, dataset: Any, img: int, main: bool) -> None:
    """YOLOv7's autoanchor before the loss is built: when the anchors fit < 98 % of the training boxes, anchors
    that come from a cfg (training from scratch, or transfer learning, where YOLOv7 also takes them from the cfg)
    are replaced by k-means ones if those fit better (every rank computes the same ones from the seed); a
    checkpoint's own anchors are kept with a warning (its weights are tied to them)."""
    from yolo_prune.engine.anchors import MIN_RECALL, evolve_anchors, head_anchors, label_sizes, recall_of, set_anchors

    s, head = inputs.settings, model.detect
    if getattr(head, "levels", None) is not None:  # a Darknet cfg: its [yolo] layers' anchors, as Darknet keeps them
        return
    anchor_t = float(inputs.hyp["anchor_t"])
    wh = label_sizes(dataset.labels, dataset.hw0, img)
    recall = recall_of(wh, head_anchors(head), anchor_t)
    if recall >= MIN_RECALL or not s.autoanchor:
        return
    if not (s.from_scratch or s.cfg):  # a checkpoint's own anchors (fine-tuning, pruning): its weights fit them
        if main:
            warnings.warn(f"the model's anchors fit {recall:.3f} of the training boxes (best possible recall, below "
                          f"{MIN_RECALL}): YOLOv7's train.py would replace them with k-means anchors (autoanchor); "
                          f"yolo-prune keeps a trained model's anchors", stacklevel=2)
        return
    if main:
        print(f"autoanchor: the cfg's anchors fit {recall:.4f} of the training boxes (best possible recall); "
              f"evolving k-means anchors on {len(wh)} boxes...")
    new = evolve_anchors(wh, head.anchor_grid.numel() // 2, anchor_t, seed=s.seed)
    new_recall = recall_of(wh, new, anchor_t) if new is not None else 0.0
    if new is not None and new_recall > recall:
        set_anchors(head, new)
        if main:
            shown = ", ".join(f"{w:.0f},{h:.0f}" for w, h in new)
            print(f"autoanchor: new anchors fit {new_recall:.4f} of the boxes and replace the cfg's: {shown}")
    elif main:
        print("autoanchor: fewer boxes of 2+ pixels than anchors; keeping the cfg's" if new is None else
              "autoanchor: the cfg's anchors fit better than k-means ones; keeping them")


def _loaders(inputs: _Inputs, dist_info: DistInfo, gs: int, img: int) -> tuple[Any, Any]:
    """Train loader (shuffled per (seed, epoch); sharded across ranks) and, on rank 0, the val loader."""
    from yolo_prune.data import create_dataloader

    s, data = inputs.settings, inputs.data
    if not data.train:
        raise DataError(f"{s.data}: key 'train': no images found (training needs a non-empty train split)")
    workers = min(s.workers, os.cpu_count() or 1)
    if s.batch_size < dist_info.world:
        raise ConfigError(f"--batch-size {s.batch_size} is smaller than the number of processes ({dist_info.world})")
    sampler = ShardSampler(dist_info.rank, dist_info.world, s.seed) if dist_info.world > 1 else None
    train_loader, dataset = create_dataloader(
        list(data.train), data.nc, img, s.batch_size // dist_info.world, augment=s.augment, hyp=inputs.hyp,
        rect=False, workers=workers, shuffle=True, seed=s.seed, distributed_sampler=sampler, stride=gs,
        cache_images=s.cache_images)
    if sampler is not None:
        sampler.bind(len(dataset))
    val_loader = None
    if dist_info.main:
        val_paths = list(data.val)[: s.max_val_images] if s.max_val_images else list(data.val)
        val_loader, _ = create_dataloader(val_paths, data.nc, img, max(1, 2 * s.batch_size // dist_info.world),
                                          augment=False, rect=True, workers=workers, shuffle=False, stride=gs, pad=0.5)
    return train_loader, val_loader


def _add_feature_distiller(run: _Run, inputs: _Inputs, device: torch.device) -> None:
    """Neck-output distillation: the distiller (adapters join the optimizer as a 4th group) and the two taps."""
    from yolo_prune.engine.distill import attach_feature_distiller

    run.distiller, run.taps = attach_feature_distiller(run.model, run.teacher, inputs.neck_index,
                                                       run.settings.feature_distill, run.optimizer,
                                                       float(inputs.hyp["lr0"]), device)


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Optimizer, AMP scaler, counters and EMA step count of a resumed run."""
    if run.distiller is not None and "feature_adapter" in state:
        run.distiller.load_state_dict(state["feature_adapter"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])
    run.state = TrainState.from_dict(state)
    if run.ema is not None:
        run.ema.updates = run.state.updates


def freeze_layers(model: nn.Module, freeze: Sequence[int]) -> list[str]:
    """YOLOv7's ``--freeze``: one number N fixes layers 0..N-1, several fix those layer indices (their parameters
    stop taking gradients; batch-norm statistics still update, as in YOLOv7). Returns the frozen parameter names."""
    layers = range(freeze[0]) if len(freeze) == 1 else freeze
    prefixes = tuple(f"model.{i}." for i in layers)
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def _build_run(inputs: _Inputs, dist_info: DistInfo, device: torch.device, hook: ModelHook | None = None) -> _Run:
    """Model (as ``hook`` prepares it) on ``device``, loss, optimizer, schedule, loaders, EMA, teacher, run folder
    (created on rank 0)."""
    from yolo_prune.engine.loss import make_loss, scale_loss_gains

    inputs.model, inputs.ema_model = apply_hook(hook, inputs.model, inputs.ema_model, inputs.data, inputs.extra)
    s = inputs.settings
    model = inputs.model.float().to(device, memory_format=accel.memory_format(s.channels_last)).train()
    for p in model.parameters():
        p.requires_grad_(True)
    freeze_layers(model, s.freeze)
    inputs.hooks.attach(model)
    gs, img = _grid_size(model, s.img_size)
    train_loader, val_loader = _loaders(inputs, dist_info, gs, img)
    if inputs.state is None:
        _check_anchors(inputs, model, train_loader.dataset, img, dist_info.main)
        broadcast_buffers(model.detect, ("anchors", "anchor_grid"), dist_info)  # one set, whatever rounding did
    loss = make_loss(model.detect, scale_loss_gains(inputs.hyp, model.detect.nl, model.nc, img))
    optimizer = build_optimizer(model, inputs.hyp, s.batch_size, s.optimizer)
    ema = ModelEMA((inputs.ema_model or model).float().to(device)) if dist_info.main else None
    teacher = make_teacher(inputs.teacher, device) if inputs.teacher is not None else None
    run_dir = inputs.run_dir or (new_run_dir(s.project, s.name, s.exist_ok) if dist_info.main else None)
    amp = accel.amp_dtype(s.amp, device)
    scaler = accel.grad_scaler(device, amp)  # fp16 only
    schedule = Schedule(inputs.hyp, s.epochs, len(train_loader), s.batch_size, s.linear_lr)
    run = _Run(inputs, dist_info, device, model, loss, optimizer, scaler, schedule, train_loader, val_loader, ema,
               teacher, TrainState(), broadcast_path(run_dir, dist_info), img, amp=amp, hook=hook)
    if s.feature_distill:
        _add_feature_distiller(run, inputs, device)
    if inputs.state is not None:
        _restore(run, inputs.state)
    if dist_info.world > 1:
        run.model = wrap_ddp(model, device, s.sync_bn)
    run.forward = accel.compiled_forward(run.model, device, s.compile)
    return run


# ------------------------------------------------------------------------------------------- one epoch
def _forward_loss(run: _Run, imgs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss to back-propagate (detection loss * batch [* world size for DDP's averaging] + distillation) and
    the per-image items (box, obj, cls, total, weighted distillation)."""
    with accel.autocast(run.device, run.amp):
        preds = (run.model if run.forward is None else run.forward)(imgs)
        loss, items = run.loss(preds, targets, imgs)
        extra = run.inputs.hooks.extra_loss(unwrap(run.model))
        if extra is not None:  # FBS saliency L1, on the per-image scale of the YOLOv7 loss
            loss = loss + extra * imgs.shape[0]
        kd = torch.zeros((), device=imgs.device)
        if run.teacher is not None:
            t_maps = teacher_maps(run.teacher, imgs)
            if run.settings.distill:
                kd = kd + run.settings.distill_weight * distill_loss(preds, t_maps)
            if run.distiller is not None:
                student, teacher = (tap.maps for tap in run.taps)
                kd = kd + run.settings.feature_distill_weight * run.distiller(student, teacher)
            loss = loss + kd * imgs.shape[0]
    return loss * run.dist.world, torch.cat((items, kd.detach().float().view(1)))


def _epoch_bar(run: _Run) -> tqdm:
    """tqdm (with ETA) over the train loader on rank 0 with progress on; YOLOv7's column header printed first."""
    show = run.settings.progress and run.dist.main
    if show:
        print(("\n" + "%10s" * 8) % ("Epoch", "gpu_mem", "box", "obj", "cls", "total", "labels", "img_size"))
    return tqdm(enumerate(run.train_loader), total=len(run.train_loader), disable=not show,
                bar_format="{l_bar}{bar:10}{r_bar}")


def _bar_text(run: _Run, epoch: int, mean: torch.Tensor, n_labels: int, img: int) -> str:
    """YOLOv7's progress columns: epoch, GPU memory, running mean losses, labels in the batch, image size."""
    mem = f"{torch.cuda.memory_reserved(run.device) / 1e9:.3g}G" if run.device.type == "cuda" else "0G"
    return ("%10s" * 2 + "%10.4g" * 6) % (f"{epoch}/{run.settings.epochs - 1}", mem, *mean[:4].tolist(), n_labels, img)


def _optimizer_step(run: _Run) -> None:
    """Apply the accumulated gradients (AMP-aware; kernel masks hold through the step), clear them, update the EMA."""
    run.inputs.hooks.step(unwrap(run.model), run.optimizer, lambda: run.scaler.step(run.optimizer))
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.state.updates += 1
    if run.ema is not None:
        run.ema.update(run.model)


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """One pass over the training data; returns the epoch's mean losses and the LR of each param group.

    Steps the optimizer every ``accumulate`` batches and at the last batch of the epoch. The host waits for the
    device only there (loss sums stay on the device): the divergence check runs before each step, so a
    non-finite loss never reaches the weights.
    """
    run.model.train()
    run.train_loader.set_epoch(epoch)
    nb = len(run.train_loader)
    last_step, sums = epoch * nb - 1, torch.zeros(5, device=run.device)
    pending = torch.zeros((), device=run.device)  # loss summed since the last optimizer step
    run.optimizer.zero_grad(set_to_none=True)
    with _epoch_bar(run) as bar:
        for i, (imgs, targets, _, _) in bar:
            ni = i + nb * epoch
            run.schedule.apply(run.optimizer, epoch, ni)
            imgs = accel.prepare_inputs(imgs, run.device, run.settings.channels_last)
            loss, items = _forward_loss(run, imgs, targets.to(run.device, non_blocking=True))
            pending += loss.detach().sum()
            run.scaler.scale(loss).backward()
            sums += items.detach()
            if ni - last_step >= run.schedule.accumulate(ni) or i == nb - 1:
                if not torch.isfinite(pending):
                    first = last_step + 1 - nb * epoch
                    raise YoloPruneError(f"training diverged: loss {pending.item()} in batches {first}..{i} of epoch "
                                         f"{epoch} (try a lower lr0 in the hyp file)")
                _optimizer_step(run)
                last_step, pending = ni, torch.zeros((), device=run.device)
                if not bar.disable:
                    bar.set_description(_bar_text(run, epoch, sums.cpu() / (i + 1), targets.shape[0], imgs.shape[-1]))
    mean = (sums.cpu() / max(nb, 1)).tolist()
    lrs = [g["lr"] for g in run.optimizer.param_groups]
    return {"epoch": epoch, "box": mean[0], "obj": mean[1], "cls": mean[2], "total": mean[3], "distill": mean[4],
            "lr0": lrs[0], "lr1": lrs[1], "lr2": lrs[2]}


# ------------------------------------------------------------------------------------------- evaluate, save
def _validate(run: _Run) -> dict[str, float]:
    """Evaluate the EMA model on the val split (fp16 on CUDA): P, R, mAP@.5, mAP@.5:.95 and fitness."""
    from yolo_prune.engine.evaluator import evaluate

    data = run.inputs.data
    res = evaluate(run.ema.ema, run.val_loader, nc=data.nc, names=list(data.names), device=run.device,
                   half=run.device.type == "cuda", max_images=run.settings.max_val_images,
                   progress=run.settings.progress)
    return {"P": res.mp, "R": res.mr, "mAP@.5": res.map50, "mAP@.5:.95": res.map,
            "fitness": fitness(res.map50, res.map)}


def _checkpoint(run: _Run) -> dict[str, Any]:
    """Our checkpoint of the EMA model (fp32) plus the ``train_state`` needed to resume."""
    from yolo_prune.checkpoint import to_checkpoint

    model = unwrap(run.model)
    history = run.inputs.history + [train_entry(run.settings, run.state, run.img_size)]
    extra = run.hook.checkpoint_extra(run.ema.ema) if run.hook is not None else {}
    ckpt = run.inputs.hooks.annotate(to_checkpoint(run.ema.ema, history, {
        **extra, "source": run.settings.weights or run.settings.cfg, "epoch": run.state.epoch}))
    ckpt[STATE_KEY] = {"version": STATE_VERSION, **run.state.to_dict(), "base_history": run.inputs.history,
                       "settings": run.settings.to_dict(), "hyp": dict(run.inputs.hyp),
                       "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                       "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
                       "rng": torch.get_rng_state()}
    if run.distiller is not None:
        ckpt[STATE_KEY]["neck_index"] = run.inputs.neck_index
        ckpt[STATE_KEY]["feature_adapter"] = {k: v.detach().cpu() for k, v in run.distiller.state_dict().items()}
    return ckpt


def _save_epoch(run: _Run, row: dict[str, float]) -> None:
    """Record the epoch, write last.pt (and best.pt when best) atomically, then results.csv/png."""
    from yolo_prune.checkpoint import atomic_save

    is_best = run.state.record(row)
    ckpt = _checkpoint(run)
    weights = run.run_dir / "weights"
    atomic_save(ckpt, weights / "last.pt")
    if is_best:
        atomic_save(ckpt, weights / "best.pt")
    write_records(run.run_dir, run.state.rows)


def _finish(run: _Run, started: float) -> None:
    """Strip best.pt to fp16 without training state (idempotent) and report where the results are."""
    best = run.run_dir / "weights" / "best.pt"
    if best.is_file():
        strip_checkpoint(best)
    if run.settings.progress:
        st = run.state
        print(f"{st.epoch + 1} epochs completed in {(time.time() - started) / 3600:.3f} hours; best epoch "
              f"{st.best_epoch} (fitness {st.best_fitness:.4f}). Results saved to {run.run_dir}")


def _header(run: _Run) -> None:
    """One line on what is about to be trained (rank 0, progress on)."""
    if run.settings.progress and run.dist.main:
        from yolo_prune.models.complexity import count_params

        s, first = run.settings, run.state.epoch + 1
        todo = f"epochs {first}..{s.epochs - 1}" if first < s.epochs else f"nothing to do: {s.epochs} epochs done"
        cached = getattr(run.train_loader.dataset, "cached_bytes", 0)
        print(f"train: {count_params(unwrap(run.model)):,} parameters, {todo}, batch {s.batch_size} x accumulate "
              f"{run.schedule.accumulate(10**9)}, img {run.img_size}, {run.dist.world} process(es) on {run.device}"
              f"{accel.describe(s, run.amp)}{f', images cached ({cached / 2**20:.0f} MiB)' if cached else ''}; "
              f"run folder {run.run_dir}")


# ------------------------------------------------------------------------------------------- API
def train(settings: TrainSettings, *, on_epoch_end: EpochCallback | None = None,
          model_hook: ModelHook | None = None) -> TrainResult:
    """Train (or resume) as ``settings`` say; returns where the results are.

    Every input is read and checked (hyp keys, data paths, weights, pruning parameters) before the run
    folder is created, so a bad input leaves earlier runs untouched. ``on_epoch_end(epoch, row)`` is called
    after each epoch's files are written (an exception raised there stops the run like an interruption:
    ``last.pt`` can be resumed). ``model_hook`` (:class:`~yolo_prune.engine.model_hook.ModelHook`) swaps in the model
    to train, e.g. a fake-quantized one (``yolo-prune train --qat``). Seeds Python/NumPy/torch global RNGs with
    ``settings.seed``.
    """
    started = time.time()
    dist_info, device = start_distributed(settings.device)
    lock = None
    try:
        run = _build_run(_load_inputs(settings), dist_info, device, model_hook)
        lock = lock_run_dir(run.run_dir) if dist_info.main else None
        if dist_info.main and run.inputs.state is None:
            write_run_files(run.run_dir, run.inputs.hyp, run.settings)
        _header(run)
        for epoch in range(run.state.epoch + 1, run.settings.epochs):
            row = _train_epoch(run, epoch)
            if dist_info.main:
                row.update(_validate(run))
                _save_epoch(run, row)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        if dist_info.main:
            _finish(run, started)
        return TrainResult.from_state(run.run_dir, run.state)
    finally:
        if lock is not None:
            os.close(lock)
        stop_distributed(dist_info)
