"""A training run as data: its settings (:class:`TrainSettings`), counters (:class:`TrainState`), result, the
files it leaves, and how it is picked up again.

A run folder ``<project>/<name>/`` holds ``weights/last.pt`` and ``weights/best.pt`` (our checkpoint format,
the EMA weights as the model), ``results.csv``, ``results.png``, ``hyp.yaml`` and ``opt.yaml``.
While training, both checkpoints carry a ``"train_state"`` entry (plain tensors and primitives, so the file
still loads with ``weights_only=True``)::

    {"version": 1, "epoch": last completed epoch, "updates": optimizer steps (EMA counter),
     "best_fitness": float, "best_epoch": int, "rows": [results.csv rows], "base_history": [...],
     "settings": {TrainSettings fields}, "hyp": {raw hyp}, "model": {training-model state_dict},
     "optimizer": {SGD state_dict}, "scaler": {GradScaler state_dict}, "rng": torch CPU RNG state}

At the end of a run ``best.pt`` is stripped to fp16 weights without ``train_state``; ``last.pt`` keeps it.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from yolo_prune.checkpoint import LoadedCheckpoint, atomic_save
from yolo_prune.errors import CheckpointError, ConfigError, YoloPruneError

STATE_KEY = "train_state"
STATE_VERSION = 1
COLUMNS = ("epoch", "box", "obj", "cls", "total", "distill", "P", "R", "mAP@.5", "mAP@.5:.95", "fitness",
           "lr0", "lr1", "lr2")
# results.png panels: (title, keys); a task other than detection passes its own columns and panels
PANELS = (("train loss", ("box", "obj", "cls", "total", "distill")), ("val", ("P", "R", "mAP@.5", "mAP@.5:.95")))


def _positive(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass
class TrainSettings:
    """Everything a training run depends on (YOLOv7 ``train.py`` options, validated on construction).

    Model source: ``weights`` (official YOLOv7 .pt or ours), ``cfg`` (shipped name or cfg path, trained from
    scratch with ``nc`` from the data YAML), or both (transfer learning: built from ``cfg``, every tensor of
    ``weights`` whose name and shape match copied in, the rest named in the history). With ``resume`` (a last.pt, a run folder, or
    True for the newest last.pt under ``project``) every other field is read from the checkpoint except
    ``device``, ``workers`` and ``progress``. ``batch_size`` is the total over all ranks. ``augment=False``
    turns off mosaic/HSV/flip/affine (API only; used by tests). ``hyp`` None: ``finetune`` when starting from
    ``weights``, the model's default for ``cfg`` or ``from_scratch`` (``scratch.p6`` for P6, else ``scratch.p5``).
    ``criterion_options``: CriterionOptions fields (data-driven criteria, global selection, reconstruction).
    ``feature_distill`` ("kept" or "adapter"): also distil the neck outputs (the head's inputs). Speed
    (:mod:`.accel`): ``amp`` mixed precision (auto: fp16 on CUDA, fp32 elsewhere; bf16; fp16; off),
    ``channels_last`` memory format, ``compile`` (torch.compile; CUDA graphs on CUDA), ``cache_images`` (decode and
    resize each training image once, kept in RAM, as YOLOv7's --cache-images). Raises ConfigError/PruningError.
    """

    data: str | None = None
    weights: str | None = None
    cfg: str | None = None
    hyp: str | None = None  # None: finetune from weights; else scratch.p6 for P6 models, scratch.p5 for others
    epochs: int = 300
    batch_size: int = 16
    img_size: int | None = None  # None: the model's default (1280 for P6 models, a Darknet cfg's width, else 640)
    device: str = ""
    workers: int = 8
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: str | bool = False
    pruning_params: str | float | list | None = None
    criterion: str = "0"
    round_to: int | None = None
    pruning_config: str | None = None
    seed: int = 0
    scoring: str = "sequential"
    from_scratch: bool = False
    distill: bool = False
    distill_weight: float = 1.0
    feature_distill: str | None = None
    feature_distill_weight: float = 1.0
    criterion_options: dict = field(default_factory=dict)
    max_val_images: int | None = None
    sync_bn: bool = False
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    cache_images: bool = False
    optimizer: str = "sgd"  # YOLOv7's --adam: "adam" (betas momentum, 0.999)
    linear_lr: bool = False  # YOLOv7's --linear-lr: a linear LR decay to lrf instead of the one-cycle cosine
    label_smoothing: float | None = None  # YOLOv7's --label-smoothing; None: the hyp's label_smoothing (0)
    freeze: tuple[int, ...] = ()  # YOLOv7's --freeze: N (the first N layers) or the layer indices to keep fixed
    autoanchor: bool = True  # YOLOv7's autoanchor for anchors that come from a cfg (--noautoanchor: False)
    augment: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        from yolo_prune.prune.plan import scoring_name

        self.criterion = str(self.criterion)
        self.scoring = scoring_name(self.scoring)
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("img_size", 1), ("workers", 0), ("seed", 0)):
            if getattr(self, name) is not None or name != "img_size":  # img_size None: the model's default
                _positive(name, getattr(self, name), minimum)
        if self.seed > 2**32 - 1:
            raise ConfigError(f"seed must be at most 2**32 - 1 (NumPy's range), got {self.seed}")
        for name in ("round_to", "max_val_images"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        from yolo_prune.engine.accel import AMP_MODES

        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        for name in ("distill_weight", "feature_distill_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.feature_distill not in (None, "kept", "adapter"):
            raise ConfigError(f"--feature-distill {self.feature_distill!r}: choose kept or adapter")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be sgd or adam, got {self.optimizer!r}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing!r}")
        self.freeze = tuple(int(x) for x in self.freeze)
        if any(x < 0 for x in self.freeze):
            raise ConfigError(f"--freeze takes layer counts / indices >= 0, got {list(self.freeze)}")
        if self.resume:
            return
        if self.hyp is None and self.weights and not self.cfg and not self.from_scratch:
            self.hyp = "finetune"  # otherwise the model's default (default_hyp_name), once it is built
        from yolo_prune.prune.options import CriterionOptions

        unknown = set(self.criterion_options) - set(CriterionOptions.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"criterion_options: unknown key(s) {sorted(unknown)}")
        CriterionOptions(**self.criterion_options)  # bad values fail now, before any work
        if not self.data:
            raise ConfigError("--data is required (a YOLOv7 data YAML)")
        if not self.weights and not self.cfg:
            raise ConfigError("give --weights (fine-tune a checkpoint), --cfg (train from scratch) or both (build "
                              "--cfg and transfer the matching tensors of --weights)")
        for flag, on in (("--distill", self.distill), ("--feature-distill", self.feature_distill)):
            if on and (not self.weights or self.cfg):
                raise ConfigError(f"{flag} needs --weights without --cfg: the teacher is the loaded model before "
                                  "pruning")
        if self.pruning_params is not None:
            from yolo_prune.prune import parse_pruning_params

            parse_pruning_params(self.pruning_params)  # format errors now; fit to the model when pruning

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (stored in checkpoints for --resume); file paths made absolute."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for key in ("data", "weights", "pruning_config"):
            out[key] = os.path.abspath(out[key]) if out[key] else out[key]
        if self.cfg and Path(self.cfg).is_file():
            out["cfg"] = os.path.abspath(self.cfg)
        if self.pruning_params is not None and not isinstance(self.pruning_params, str):
            out["pruning_params"] = repr(self.pruning_params)
        out["resume"] = False
        out["criterion_options"] = dict(self.criterion_options)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> "TrainSettings":
        """Inverse of :meth:`to_dict` (unknown keys ignored), with ``overrides`` applied."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**(known | overrides))


@dataclass
class TrainResult:
    """Where a run's files are and how it went (rows and fitness are complete on rank 0 only).

    rows: one dict per completed epoch (results.csv columns); best_epoch: -1 if no epoch completed.
    """

    run_dir: Path
    last: Path
    best: Path
    epochs_completed: int
    best_epoch: int
    best_fitness: float
    rows: list[dict[str, float]]

    @classmethod
    def from_state(cls, run_dir: Path, state: "TrainState") -> "TrainResult":
        """The result of the run in ``run_dir`` whose counters are ``state``."""
        w = run_dir / "weights"
        return cls(run_dir, w / "last.pt", w / "best.pt", state.epoch + 1, state.best_epoch, state.best_fitness,
                   [dict(r) for r in state.rows])

    @property
    def best_row(self) -> dict[str, float] | None:
        """The results row of the best epoch (mAP@.5, mAP@.5:.95, P, R...), or None."""
        return next((r for r in self.rows if int(r["epoch"]) == self.best_epoch), None)


@dataclass
class TrainState:
    """Counters of a run that, with model, optimizer and EMA weights, make a resumed run continue exactly."""

    epoch: int = -1  # last completed epoch (-1: none)
    updates: int = 0  # optimizer steps taken (drives the EMA decay)
    best_fitness: float = 0.0
    best_epoch: int = -1
    rows: list[dict[str, float]] = field(default_factory=list)  # one results.csv row per completed epoch

    def record(self, row: dict[str, float]) -> bool:
        """Append an epoch's row (with ``fitness``); returns True when it is the best so far (ties: newest)."""
        self.rows.append(row)
        self.epoch = int(row["epoch"])
        if row["fitness"] >= self.best_fitness:
            self.best_fitness, self.best_epoch = float(row["fitness"]), self.epoch
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "updates": self.updates, "best_fitness": self.best_fitness,
                "best_epoch": self.best_epoch, "rows": [dict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(int(d["epoch"]), int(d["updates"]), float(d["best_fitness"]), int(d["best_epoch"]),
                   [dict(r) for r in d["rows"]])


def train_entry(settings: TrainSettings, state: TrainState, img_size: int) -> dict[str, Any]:
    """The checkpoint-history entry of a training run (after what came before: load, prune)."""
    return {"event": "train", "epochs_completed": state.epoch + 1, "epochs": settings.epochs,
            "data": settings.to_dict()["data"], "img_size": img_size, "hyp": settings.hyp,
            "from_scratch": settings.from_scratch, "distill": settings.distill, "best_epoch": state.best_epoch,
            "best_fitness": state.best_fitness}


def fitness(map50: float, map5095: float) -> float:
    """YOLOv7's model selection score: 0.1 * mAP@.5 + 0.9 * mAP@.5:.95."""
    return 0.1 * float(map50) + 0.9 * float(map5095)


# ------------------------------------------------------------------------------------------- run folders
def new_run_dir(project: str | Path, name: str, exist_ok: bool) -> Path:
    """Create and return ``project/name``; if it exists and not ``exist_ok``: ``name2``, ``name3``... (YOLOv7).

    Creation is atomic (``mkdir`` without exist_ok), so two runs never share a folder by accident.
    """
    base = Path(project) / name
    if exist_ok:
        base.mkdir(parents=True, exist_ok=True)
        return base
    base.parent.mkdir(parents=True, exist_ok=True)
    for candidate in run_dir_names(project, name):
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise YoloPruneError(f"{base}: no free run name (tried {name} .. {name}9999)")


def run_dir_names(project: str | Path, name: str) -> Iterator[Path]:
    """The run folders YOLOv7 tries in turn (``increment_path``): ``project/name``, then ``name2`` .. ``name9999``."""
    base = Path(project) / name
    yield base
    for n in range(2, 10_000):
        yield base.with_name(f"{name}{n}")


def _last_activity(run_dir: Path) -> float:
    """When a run folder last changed: its ``last.pt`` (written every epoch) or ``opt.yaml`` (written at start)."""
    times = [f.stat().st_mtime for f in (run_dir / "weights" / "last.pt", run_dir / "opt.yaml") if f.is_file()]
    return max(times, default=0.0)


def find_last(resume: str | bool, project: str | Path) -> Path:
    """The ``last.pt`` to resume: the given file, ``<dir>/weights/last.pt`` for a run folder, or (``True``)
    that of the run under ``project`` that changed last. A newest run stopped before its first epoch ended has
    no ``last.pt``: that is an error naming it (never an older, unrelated run picked instead)."""
    if resume is True:
        runs = {p.parent.parent for p in Path(project).glob("**/weights/last.pt")}
        runs |= {p.parent for p in Path(project).glob("**/opt.yaml")}
        if not runs:
            raise CheckpointError(f"--resume: no run to resume under {project}")
        newest = max(runs, key=_last_activity)
        if not (newest / "weights" / "last.pt").is_file():
            raise CheckpointError(f"--resume: the newest run {newest} stopped before its first epoch ended, so it "
                                  f"has no last.pt; start it again (or give the run folder to resume explicitly)")
        return newest / "weights" / "last.pt"
    path = Path(str(resume))
    if path.is_dir():
        path = path / "weights" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume: checkpoint not found: {path}")
    return path


def lock_run_dir(run_dir: Path) -> int:
    """Hold an exclusive lock on the run folder (released when the returned descriptor is closed) so two runs
    never write into one folder (``--exist-ok`` twice, a resume while the run still trains)."""
    import fcntl

    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise YoloPruneError(f"{run_dir} is in use by another training run; wait for it, or choose another "
                             f"--name") from None
    return fd


def read_train_state(loaded: LoadedCheckpoint, path: Path) -> dict[str, Any]:
    """The ``train_state`` entry of a loaded checkpoint; CheckpointError if the file cannot resume (for the
    ``last.pt`` of an official YOLOv7 run, one that says how to continue from its weights)."""
    state = (loaded.raw or {}).get(STATE_KEY)
    if not isinstance(state, dict):
        epoch = loaded.extra.get("epoch") if loaded.raw is None else None
        if isinstance(epoch, int) and epoch >= 0:  # official train.py's epoch; -1 once stripped (a final best.pt)
            raise CheckpointError(f"{path}: the last.pt of a YOLOv7 train.py run (epoch {epoch}); "
                                  "yolo-prune resumes only its own runs. Continue from its weights with `yolo-prune "
                                  f"train --weights {path} --data ... --epochs N` (its EMA weights, a new schedule "
                                  "and optimizer)")
        raise CheckpointError(f"{path}: no training state in this checkpoint (only the last.pt of an unfinished "
                              f"'yolo-prune train' run can be resumed)")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise CheckpointError(f"{path}: training state written by a newer yolo-prune (version {state['version']})")
    missing = [k for k in ("epoch", "updates", "settings", "hyp", "model", "optimizer") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {', '.join(missing)}")
    return state


def strip_checkpoint(path: Path) -> Path:
    """Rewrite a checkpoint of ours without ``train_state`` and with fp16 floating tensors (atomically);
    a checkpoint without ``train_state`` is left as it is."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if STATE_KEY not in ckpt:
        return path  # already stripped
    del ckpt[STATE_KEY]
    ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    return atomic_save(ckpt, path)


# ------------------------------------------------------------------------------------------- records
def results_csv(rows: list[dict[str, float]], columns: tuple[str, ...] = COLUMNS) -> str:
    """The text of results.csv: header ``columns`` (first: epoch) and one line per epoch."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([int(row["epoch"])] + [f"{float(row.get(c, 0.0)):.6g}" for c in columns[1:]])
    return buf.getvalue()


def _plot(rows: list[dict[str, float]], panels: tuple = PANELS):
    """A matplotlib Figure (no pyplot, no global backend switch): losses and metrics against epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    epochs = [int(r["epoch"]) for r in rows]
    for ax, (title, keys) in zip(fig.subplots(1, len(panels)), panels):
        for key in keys:
            if key != "distill" or any(r.get(key, 0.0) for r in rows):
                ax.plot(epochs, [float(r.get(key, 0.0)) for r in rows], marker=".", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    return fig


def write_records(run_dir: Path, rows: list[dict[str, float]], columns: tuple[str, ...] = COLUMNS,
                  panels: tuple = PANELS) -> None:
    """Write results.csv and results.png in ``run_dir`` (each atomically)."""
    from yolo_prune.graph.io import write_text_atomic

    write_text_atomic(run_dir / "results.csv", results_csv(rows, columns))
    tmp = run_dir / f".results.png.{os.getpid()}.tmp"  # plain open: the user's umask applies
    try:
        _plot(rows, panels).savefig(tmp, dpi=100, format="png")
        os.replace(tmp, run_dir / "results.png")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_run_files(run_dir: Path, hyp: dict[str, Any], settings: TrainSettings) -> None:
    """hyp.yaml and opt.yaml (the settings) in the run folder, as YOLOv7 writes them."""
    import yaml

    from yolo_prune.graph.io import write_text_atomic

    write_text_atomic(run_dir / "hyp.yaml", yaml.safe_dump(dict(hyp), sort_keys=False))
    write_text_atomic(run_dir / "opt.yaml", yaml.safe_dump(settings.to_dict(), sort_keys=False))
