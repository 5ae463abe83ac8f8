"""The Pruning-Darknet workflow (``prune.py`` of pedbrgs/Pruning-Darknet) on yolo-prune's parts.

Per pruning iteration: every prunable conv (all but the convs feeding ``[yolo]`` layers, as there) loses the same
share of its filters, chosen by the technique's criterion, with concatenations, grouped routes and shortcut-coupled
layers kept consistent by the pruning graph; the pruned model is written as ``.cfg`` + ``.weights``; with
``tuning`` it is fine-tuned by yolo-prune's trainer and written again. After ``pruning_iter`` iterations every
layer has lost ``pruning_rate`` of its filters (iteration k prunes so that ``k / pruning_iter`` of the total is
gone). A finished iteration (``iter_<k>/done.json``) is skipped when the same command runs again.

Flag mapping (theirs -> here): ``--technique``/``--method`` L0, L1, L2, L-Inf, Random -> criteria l0, l1, l2, linf,
random; From-Scratch -> random with re-initialised weights (also ``--from-scratch`` with any technique);
PLS-VIP-Single/Multi, CCA-CV-Multi, PLS-LC-Multi, HAC -> criteria of the same lower-case name where installed
(``--pool-type``, ``--n-components``, ``--num-classes``, ``--perc-samples``, ``--measure`` are their options);
``--tuning-iter`` Darknet iterations (batches of 64 images) -> epochs over the training list; ``--lr`` -> hyp lr0;
``--data``/``--names`` a Darknet ``.data`` file (or a YOLOv7 data YAML); ``--network`` is not needed (the cfg is
kept and only its ``filters=`` change).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yolo_prune.errors import ConfigError, YoloPruneError

TECHNIQUES = {"L0": "l0", "L1": "l1", "L2": "l2", "L-INF": "linf", "RANDOM": "random", "FROM-SCRATCH": "random",
              "PLS-VIP-SINGLE": "pls-vip-single", "PLS-VIP-MULTI": "pls-vip-multi", "CCA-CV-MULTI": "cca-cv-multi",
              "PLS-LC-MULTI": "pls-lc-multi", "HAC": "hac"}
DARKNET_BATCH = 64  # images per Darknet iteration in the Pruning-Darknet cfgs


@dataclass
class DarknetPruneSettings:
    """The workflow's inputs (Pruning-Darknet's flags, see the module docstring)."""

    cfg: str
    weights: str
    output: str
    technique: str = "L2"
    pruning_rate: float = 0.5
    pruning_iter: int = 1
    tuning: bool = False
    tuning_iter: int = 30000
    lr: float = 0.005
    data: str | None = None
    names: str | None = None
    img_size: int = 416
    from_scratch: bool = False
    pool_type: str = "max"
    n_components: int = 2
    num_classes: int = 3
    perc_samples: float = 1.0
    measure: str = "Pearson"
    batch_size: int = 16
    device: str = ""
    workers: int = 2
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.technique.upper() not in TECHNIQUES:
            raise ConfigError(f"--technique {self.technique}: choose one of {', '.join(TECHNIQUES)}")
        if not 0 < self.pruning_rate < 1:
            raise ConfigError(f"--pruning-rate must be in (0, 1), got {self.pruning_rate}")
        if self.pruning_iter < 1 or self.tuning_iter < 1:
            raise ConfigError("--pruning-iter and --tuning-iter must be >= 1")
        if self.pool_type not in ("max", "avg") or self.n_components < 1 or not 0 < self.perc_samples <= 1:
            raise ConfigError("--pool-type must be max or avg, --n-components >= 1, --perc-samples in (0, 1]")
        if self.tuning and not self.data:
            raise ConfigError("--tuning needs --data (a Darknet .data file or a data YAML)")
        for flag, path in (("--cfg", self.cfg), ("--weights", self.weights)):
            if not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: file not found")

    @property
    def criterion(self) -> str:
        return TECHNIQUES[self.technique.upper()]

    @property
    def reinitialise(self) -> bool:
        return self.from_scratch or self.technique.upper() == "FROM-SCRATCH"


def iteration_rate(rate: float, k: int, iters: int) -> float:
    """Rate of iteration ``k`` (1-based) of the current widths, so ``k / iters`` of ``rate`` is gone after it."""
    return 1.0 - (1.0 - rate * k / iters) / (1.0 - rate * (k - 1) / iters)


def tuning_epochs(tuning_iter: int, train_images: int) -> int:
    """Darknet iterations (batches of 64 images) as whole epochs over the training images (at least 1)."""
    return max(1, math.ceil(tuning_iter * DARKNET_BATCH / max(train_images, 1)))


def _data_yaml(s: DarknetPruneSettings, out: Path) -> str:
    if s.data and s.data.endswith(".data"):
        from yolo_prune.data.darknet_data import darknet_data_yaml

        return str(darknet_data_yaml(s.data, out, s.names))
    return s.data or ""


def _check_criterion(name: str) -> None:
    from yolo_prune.prune.criteria import criterion_name

    try:
        criterion_name(name)
    except YoloPruneError as exc:
        raise ConfigError(f"technique {name}: not available in this installation ({exc})") from None


def run_darknet_workflow(s: DarknetPruneSettings, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the workflow; returns a summary (per-iteration widths, params, files)."""
    from yolo_prune.checkpoint import load_model, save_checkpoint
    from yolo_prune.checkpoint.darknet import load_darknet, save_darknet
    from yolo_prune.models.complexity import count_params
    from yolo_prune.prune import prune

    _check_criterion(s.criterion)
    out = Path(s.output)
    out.mkdir(parents=True, exist_ok=True)
    data = _data_yaml(s, out)
    model = load_darknet(s.cfg, s.weights)
    rows = []
    for k in range(1, s.pruning_iter + 1):
        it = out / f"iter_{k}"
        done = it / "done.json"
        if done.is_file():
            row = json.loads(done.read_text())
            model = load_model(row["model"])
            rows.append(row)
            continue
        rate = iteration_rate(s.pruning_rate, k, s.pruning_iter)
        model = prune(model, rate, s.criterion, seed=s.seed + k, summarize=False).model
        ckpt = save_checkpoint(model, it / "pruned.pt", history=[{"event": "darknet-prune", "iteration": k,
                                                                  "technique": s.technique, "rate": rate}])
        save_darknet(model, it / "pruned.cfg", it / "pruned.weights")
        row = {"iteration": k, "rate": rate, "params": count_params(model), "widths": model.widths(),
               "model": str(ckpt), "cfg": str(it / "pruned.cfg"), "weights": str(it / "pruned.weights")}
        if s.tuning:
            row |= _tune(s, model, ckpt, data, it, progress)
            model = load_model(row["model"])
        from yolo_prune.fileio import write_text_atomic

        write_text_atomic(done, json.dumps(row, indent=1))
        rows.append(row)
    final_cfg, final_weights = save_darknet(model, out / "final.cfg", out / "final.weights")
    return {"settings": asdict(s), "iterations": rows, "cfg": str(final_cfg), "weights": str(final_weights)}


def _tune(s: DarknetPruneSettings, model: Any, ckpt: Path, data: str, it: Path, progress: bool) -> dict[str, Any]:
    """Fine-tune one iteration's model with yolo-prune's trainer; write it as Darknet files too."""
    import yaml

    from yolo_prune.checkpoint import load_model
    from yolo_prune.checkpoint.darknet import save_darknet
    from yolo_prune.data import load_data_config
    from yolo_prune.engine.hyp import default_hyp_name, load_hyp
    from yolo_prune.engine.train_state import TrainSettings
    from yolo_prune.engine.trainer import train
    from yolo_prune.fileio import write_text_atomic

    hyp = load_hyp(default_hyp_name(model)) | {"lr0": s.lr}
    hyp_path = write_text_atomic(it / "hyp.yaml", yaml.safe_dump(hyp, sort_keys=False))
    epochs = tuning_epochs(s.tuning_iter, len(load_data_config(data).train))
    result = train(TrainSettings(weights=str(ckpt), data=data, hyp=str(hyp_path), epochs=epochs,
                                 batch_size=s.batch_size, img_size=s.img_size, device=s.device, workers=s.workers,
                                 project=str(it), name="tune", exist_ok=True, seed=s.seed,
                                 from_scratch=s.reinitialise, progress=progress))
    tuned = load_model(result.best)
    save_darknet(tuned, it / "tuned.cfg", it / "tuned.weights")
    best = result.best_row or {}
    return {"model": str(result.best), "epochs": epochs, "cfg": str(it / "tuned.cfg"),
            "weights": str(it / "tuned.weights"), "map": best.get("mAP@.5:.95"), "map50": best.get("mAP@.5")}
