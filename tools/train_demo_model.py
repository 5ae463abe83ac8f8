"""Reproduce the shipped demo model: yolov7-tiny trained from scratch on the built-in synthetic benchmark.

    python tools/train_demo_model.py --device 0 --epochs 80 --out yolo_prune/assets/yolov7-tiny-synth.pt

Trains with `yolo-prune train` defaults for tiny models (hyp.scratch.tiny), stops early at --time-limit,
then stores the best EMA weights in half precision (our checkpoint format, < 15 MB) with a history entry
describing how it was made. On CPU it works too, slowly (hours for the full schedule).

The converged base of the accuracy benchmark is a second stage continuing the first one's weights:

    python tools/train_demo_model.py --weights yolo_prune/assets/yolov7-tiny-synth.pt \
        --hyp tools/hyp.base-continue.yaml --epochs 40 --batch 16 --workers 1 --device cpu --out base.pt
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


from yolo_prune.checkpoint import load_checkpoint, save_checkpoint
from yolo_prune.data.synth import generate_synthetic
from yolo_prune.demo_data import DEMO_SYNTH
from yolo_prune.engine.train_state import TrainSettings
from yolo_prune.engine.trainer import train
from yolo_prune.pipeline.evaluation import DataSettings, evaluate_on_data
from yolo_prune.pipeline.devices import select_device


class TimeUp(Exception):
    """Raised from the epoch callback to stop training at the time limit (last.pt stays resumable)."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="yolo_prune/assets/yolov7-tiny-synth.pt")
    p.add_argument("--work", default="runs/demo_model", help="folder for the data and the training run")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="")
    p.add_argument("--time-limit", type=float, default=0, help="stop after this many seconds (0: none)")
    p.add_argument("--weights", default=None, help="continue these weights (a second stage) instead of a fresh cfg")
    p.add_argument("--hyp", default="scratch.tiny", help="hyp name or file (default scratch.tiny)")
    args = p.parse_args()
    work = Path(args.work)
    data = generate_synthetic(work / "synth", **DEMO_SYNTH, exist_ok=True).data_yaml
    settings = TrainSettings(cfg=None if args.weights else "yolov7-tiny", weights=args.weights, data=str(data),
                             hyp=args.hyp, epochs=args.epochs,
                             batch_size=args.batch, img_size=DEMO_SYNTH["img_size"], device=args.device,
                             workers=args.workers, project=str(work), name="train", exist_ok=True, seed=0)
    started = time.time()

    def stop_at_limit(epoch: int, row: dict) -> None:
        if args.time_limit and time.time() - started > args.time_limit:
            raise TimeUp(f"time limit reached after epoch {epoch}")

    try:
        result = train(settings, on_epoch_end=stop_at_limit)
        best, epochs_done = result.best, result.epochs_completed
    except TimeUp as exc:
        print(exc)
        best = work / "train" / "weights" / "best.pt"
        epochs_done = None
    loaded = load_checkpoint(best)
    metrics = evaluate_on_data(loaded.model, DataSettings(str(data), "val", DEMO_SYNTH["img_size"], 32, 2),
                               device=select_device(args.device), progress=False)
    entry = {"event": "train", "tool": "tools/train_demo_model.py", "synth": DEMO_SYNTH, "hyp": args.hyp,
             "continued_from": args.weights,
             "epochs_planned": args.epochs, "epochs_completed": epochs_done, "map50": metrics.map50,
             "map": metrics.map, "seconds": round(time.time() - started, 1)}
    names = loaded.model.names
    out = save_checkpoint(loaded.model, args.out, history=loaded.history + [entry], half=True)
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB), classes {names}: mAP@.5 {metrics.map50:.4f}, "
          f"mAP@.5:.95 {metrics.map:.4f}")


if __name__ == "__main__":
    main()
