"""``train_classifier(ClassifySettings) -> TrainResult``: train or fine-tune (pruned, masked, gated) classifiers.

Shares the detection trainer's machinery rather than copying it: the SGD param groups, nominal-batch
accumulation and one-cycle/warm-up schedule (:mod:`yolo_prune.engine.optim`), run folders, ``TrainState``,
``TrainResult``, results.csv/png and best.pt stripping (:mod:`yolo_prune.engine.train_state`), the mask/FBS hooks
(:mod:`yolo_prune.engine.hooks`) and the seeded loaders. The task plug-in is the loss (cross-entropy) and the
metric (top-1 = fitness). ``--resume`` continues from ``last.pt`` and ends where an uninterrupted run would (CPU,
same seed): the epoch order, augmentation and dropout RNG are restored. Single process (no DDP).
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from yolo_prune.engine.hooks import TrainHooks
from yolo_prune.engine.optim import Schedule, build_optimizer
from yolo_prune.engine.train_state import (STATE_KEY, STATE_VERSION, TrainResult, TrainState, find_last, new_run_dir,
                                           read_train_state, strip_checkpoint, write_records)
from yolo_prune.errors import ConfigError, YoloPruneError

COLUMNS = ("epoch", "loss", "l1", "val_loss", "top1", "top5", "fitness", "lr0", "lr1", "lr2")
PANELS = (("train loss", ("loss", "l1", "val_loss")), ("val accuracy", ("top1", "top5")))


@dataclass
class ClassifySettings:
    """A classification run. Model source: ``arch`` alone (random init), ``arch`` + ``weights`` (a torchvision-style
    state dict, e.g. the user's own ``.pth``) or ``weights`` alone (a yolo-prune classifier checkpoint: pruned,
    masked or gated models keep their state). ``resume``: a last.pt, a run folder, or True (newest under project);
    every other field then comes from the checkpoint except device, workers and progress."""

    data: str = "digits"
    arch: str | None = None
    weights: str | None = None
    width: float = 1.0
    img_size: int | None = None  # default: a checkpoint's own input size, else 32
    epochs: int = 10
    batch_size: int = 64
    lr0: float = 0.05
    lrf: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    pruning_params: str | float | list | None = None
    criterion: str = "l1"
    round_to: int | None = None
    pruning_config: str | None = None
    scoring: str = "sequential"
    saliency_l1: float | None = None
    augment: bool = True
    seed: int = 0
    device: str = ""
    workers: int = 0
    project: str = "runs/classify"
    name: str = "exp"
    exist_ok: bool = False
    resume: str | bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("img_size", 8), ("workers", 0), ("seed", 0)):
            value = getattr(self, name)
            if name == "img_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        for name in ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        from yolo_prune.prune.plan import scoring_name

        self.scoring = scoring_name(self.scoring)
        if self.resume:
            return
        if not self.arch and not self.weights:
            raise ConfigError("give --arch (a new network) and/or --weights (a checkpoint or a state dict)")
        if self.pruning_params is not None:
            from yolo_prune.prune import parse_pruning_params

            parse_pruning_params(self.pruning_params)

    def hyp(self) -> dict[str, float]:
        """The optimiser recipe in the detection trainer's hyp vocabulary (what ``Schedule`` reads)."""
        return {"lr0": self.lr0, "lrf": self.lrf, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "warmup_epochs": self.warmup_epochs, "warmup_momentum": 0.8, "warmup_bias_lr": 0.0}

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out["weights"] = os.path.abspath(self.weights) if self.weights else None
        kind, sep, rest = self.data.partition(":")
        if sep and kind in ("imagefolder", "cifar10", "fashion-mnist"):
            out["data"] = f"{kind}:{os.path.abspath(rest)}"
        elif self.data != "digits":
            out["data"] = os.path.abspath(self.data)  # a resumed run finds its data from any folder
        if self.pruning_params is not None and not isinstance(self.pruning_params, str):
            out["pruning_params"] = repr(self.pruning_params)
        out["resume"] = False
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> "ClassifySettings":
        return cls(**({k: v for k, v in d.items() if k in cls.__dataclass_fields__} | overrides))


def _checkpoint_source(settings: ClassifySettings) -> tuple[nn.Module | None, list[dict], TrainHooks]:
    """A yolo-prune classifier checkpoint named by ``weights`` alone (else None: the network is built later)."""
    if not settings.weights or settings.arch:
        return None, [], TrainHooks(saliency_l1=settings.saliency_l1 or 0.0)
    from yolo_prune.checkpoint import load_checkpoint
    from yolo_prune.models.classify import Classifier

    loaded = load_checkpoint(settings.weights)
    if not isinstance(loaded.model, Classifier):
        raise ConfigError(f"--weights {settings.weights} is not a classifier checkpoint (use 'yolo-prune train' for "
                          f"detectors, or --arch with a torchvision state dict)")
    return loaded.model, list(loaded.history), TrainHooks.from_checkpoint(loaded, settings.saliency_l1)


def load_source(settings: ClassifySettings) -> tuple[nn.Module, list[dict], TrainHooks, Any]:
    """The model the settings name, its history, hooks and the data (resized to the model's input size); a model
    must take the data's channels, classes and size (layers are never re-initialised silently)."""
    from yolo_prune.checkpoint.classify import load_torchvision_weights
    from yolo_prune.data.classify import load_classification_data
    from yolo_prune.models.classify import ArchSpec, build_classifier
    from yolo_prune.pipeline.classify import check_fits

    model, history, hooks = _checkpoint_source(settings)
    data = load_classification_data(settings.data, settings.img_size or (model.img_size if model else 32))
    if model is None:
        spec = ArchSpec(settings.arch, data.nc, data.in_ch, data.img_size, settings.width)
        model = load_torchvision_weights(settings.weights, spec) if settings.weights else build_classifier(spec)
        model.names = list(data.names)
    check_fits(model, data, f"--weights {settings.weights}")
    return model, history, hooks, data


@dataclass
class _Run:
    settings: ClassifySettings
    model: nn.Module
    history: list[dict]
    hooks: TrainHooks
    optimizer: torch.optim.SGD
    schedule: Schedule
    train_loader: Any
    val_loader: Any
    device: torch.device
    run_dir: Path
    state: TrainState


def _prepare(settings: ClassifySettings) -> tuple[ClassifySettings, dict[str, Any] | None, Any, Path | None]:
    """Settings (from last.pt when resuming), the stored training state, the loaded checkpoint and its run dir."""
    if not settings.resume:
        return settings, None, None, None
    from yolo_prune.checkpoint import load_checkpoint

    path = find_last(settings.resume, settings.project)
    loaded = load_checkpoint(path)
    state = read_train_state(loaded, path)
    stored = ClassifySettings.from_dict(state["settings"], device=settings.device, workers=settings.workers,
                                        progress=settings.progress, resume=str(path))
    return stored, state, loaded, path.parent.parent


def _build(settings: ClassifySettings) -> _Run:
    from yolo_prune.data.classify import data_loader, load_classification_data
    from yolo_prune.pipeline.devices import select_device

    settings, state, loaded, run_dir = _prepare(settings)
    torch.manual_seed(settings.seed)
    if loaded is not None:
        model, history = loaded.model, list(state.get("base_history", []))
        hooks = TrainHooks.from_checkpoint(loaded, settings.saliency_l1)
        data = load_classification_data(settings.data, model.img_size)
    else:
        model, history, hooks, data = load_source(settings)
        if settings.pruning_params is not None:
            from yolo_prune.graph.io import read_published
            from yolo_prune.prune import prune

            graph = read_published(settings.pruning_config) if settings.pruning_config else None
            result = prune(model, settings.pruning_params, settings.criterion, round_to=settings.round_to,
                           seed=settings.seed, graph=graph, scoring=settings.scoring)
            model, history = result.model, history + [result.history_entry()]
    device = select_device(settings.device)
    model = model.float().to(device).train()
    hooks.attach(model)
    optimizer = build_optimizer(model, settings.hyp(), settings.batch_size)
    train_loader = data_loader(data.train, settings.batch_size, shuffle=True, seed=settings.seed,
                               workers=settings.workers)
    val_loader = data_loader(data.val, 2 * settings.batch_size, shuffle=False, workers=settings.workers)
    schedule = Schedule(settings.hyp(), settings.epochs, len(train_loader), settings.batch_size)
    run = _Run(settings, model, history, hooks, optimizer, schedule, train_loader, val_loader, device,
               run_dir or new_run_dir(settings.project, settings.name, settings.exist_ok), TrainState())
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        run.state = TrainState.from_dict(state)
        torch.set_rng_state(state["rng"])
    return run


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding): light augmentation for small images."""
    if max_shift < 1:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (b,), generator=generator) for _ in range(2))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    s, model = run.settings, run.model
    model.train()
    run.train_loader.set_epoch(epoch)
    nb, last_step, sums = len(run.train_loader), epoch * len(run.train_loader) - 1, torch.zeros(2)
    gen = torch.Generator().manual_seed(s.seed * 100_003 + epoch)
    run.optimizer.zero_grad(set_to_none=True)
    bar = tqdm(run.train_loader, total=nb, disable=not s.progress, desc=f"epoch {epoch}/{s.epochs - 1}",
               bar_format="{l_bar}{bar:10}{r_bar}")
    for i, (x, y) in enumerate(bar):
        ni = i + nb * epoch
        run.schedule.apply(run.optimizer, epoch, ni)
        x = random_shift(x, gen, x.shape[-1] // 16) if s.augment else x
        logits = model(x.to(run.device))
        loss = F.cross_entropy(logits, y.to(run.device))
        extra = run.hooks.extra_loss(model)
        total = loss if extra is None else loss + extra
        if not torch.isfinite(total):
            raise YoloPruneError(f"training diverged: loss {total.item()} at epoch {epoch}, batch {i} (lower --lr0)")
        total.backward()
        if ni - last_step >= run.schedule.accumulate(ni) or i == nb - 1:
            run.hooks.step(model, run.optimizer, run.optimizer.step)
            run.optimizer.zero_grad(set_to_none=True)
            run.state.updates += 1
            last_step = ni
        sums += torch.tensor([loss.item(), 0.0 if extra is None else extra.item()])
        bar.set_postfix(loss=f"{sums[0] / (i + 1):.4f}")
    lrs = [g["lr"] for g in run.optimizer.param_groups]
    return {"epoch": epoch, "loss": float(sums[0] / nb), "l1": float(sums[1] / nb), "lr0": lrs[0], "lr1": lrs[1],
            "lr2": lrs[2]}


def _save(run: _Run, row: dict[str, float]) -> None:
    """Record the epoch; write last.pt (best.pt when best) atomically with the state to resume; results."""
    from yolo_prune.checkpoint import atomic_save, to_checkpoint

    is_best = run.state.record(row)
    s = run.settings
    entry = {"event": "train", "task": "classify", "epochs_completed": run.state.epoch + 1, "epochs": s.epochs,
             "data": s.data, "best_epoch": run.state.best_epoch, "best_top1": run.state.best_fitness}
    ckpt = run.hooks.annotate(to_checkpoint(run.model, run.history + [entry],
                                            {"source": s.weights or s.arch, "epoch": run.state.epoch}))
    ckpt[STATE_KEY] = {"version": STATE_VERSION, **run.state.to_dict(), "base_history": run.history,
                       "settings": s.to_dict(), "hyp": s.hyp(), "model": copy.deepcopy(ckpt["state_dict"]),
                       "optimizer": run.optimizer.state_dict(), "rng": torch.get_rng_state()}
    atomic_save(ckpt, run.run_dir / "weights" / "last.pt")
    if is_best:
        atomic_save(ckpt, run.run_dir / "weights" / "best.pt")
    write_records(run.run_dir, run.state.rows, COLUMNS, PANELS)


def train_classifier(settings: ClassifySettings,
                     on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train (or resume) as ``settings`` say; every input is checked before the run folder is created."""
    from yolo_prune.engine.classify.evaluate import evaluate_classifier

    started = time.time()
    run = _build(settings)
    s = run.settings
    if s.progress:
        print(f"classify: {sum(p.numel() for p in run.model.parameters()):,} parameters, epochs "
              f"{run.state.epoch + 1}..{s.epochs - 1}, batch {s.batch_size}, {s.data}, run folder {run.run_dir}")
    for epoch in range(run.state.epoch + 1, s.epochs):
        row = _train_epoch(run, epoch)
        res = evaluate_classifier(run.model, run.val_loader, run.device)
        row.update({"val_loss": res.loss, "top1": res.top1, "top5": res.top5, "fitness": res.top1})
        _save(run, row)
        if s.progress:
            print(f"epoch {epoch}: loss {row['loss']:.4f}  val top-1 {res.top1:.4f}  top-5 {res.top5:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    best = run.run_dir / "weights" / "best.pt"
    if best.is_file():
        strip_checkpoint(best)
    if s.progress:
        print(f"done in {time.time() - started:.1f} s; best top-1 {run.state.best_fitness:.4f} (epoch "
              f"{run.state.best_epoch}); results in {run.run_dir}")
    return TrainResult.from_state(run.run_dir, run.state)
