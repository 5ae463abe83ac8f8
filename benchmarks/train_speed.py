"""Fine-tuning speed: ``yolo-prune train`` against the official YOLOv7 ``train.py``, same data, same run, CPU.

Setup (issue #15): yolov7-tiny from scratch, hyp ``scratch.tiny``, batch 16, synthetic benchmark images
(``generate_synthetic``), ``--epochs`` epochs, ``--workers`` loader workers and ``--threads`` torch threads for every
trainer. Each training runs in its own process; trainers are interleaved (seed 0 of every variant, then seed 1, ...)
so a change of host load hits all of them alike. Measured per run:

* train-loop seconds of every epoch, timed the same way for both programs: both wrap their epoch loop in
  ``tqdm(enumerate(loader))``, so the runner patches ``tqdm`` to time from the first batch request to the
  loader's end (data loading included, per-epoch evaluation excluded); images/s = images / seconds;
* mAP@.5 and mAP@.5:.95 of the final EMA weights (``last.pt``), all by the same evaluator (``evaluate_on_data``,
  pycocotools) on the same val images.

Variants: ``official`` (the fetched official code: ``train.py --cfg cfg/training/yolov7-tiny.yaml --weights ''
--noautoanchor``; it seeds itself, so its repeats differ by worker randomness only), ``official-cache`` (the same
with its own ``--cache-images``, the fair peer of ``fast``), ``baseline`` (``yolo-prune
train --no-channels-last --amp off``: today's arithmetic), ``fast`` (defaults: channels-last, foreach SGD/EMA,
vectorised OTA, ``--cache-images``) and ``fast-bf16`` (``fast`` + ``--amp bf16``, where the CPU computes bfloat16).
``--start-weights`` starts every trainer from trained yolo-prune weights instead (the official trainer from a checkpoint
of its own classes holding the same tensors), so that a few epochs end at an mAP that can tell the trainers apart.
Goal: the best yolo-prune variant >= ``--goal`` x the official images/s (median over runs and epochs) with mean
mAP@.5:.95 within 1 point of the official's.

``--profile`` also times one epoch of ``baseline`` and ``fast`` in-process by phase (data, forward, loss +
assignment, backward, optimizer, EMA).

The official code: ``--official-git`` is the bare git directory of github:WongKinYiu/yolov7 (the library's fetch);
it is extracted into ``--work`` and patched for today's libraries as ``shared/REFERENCE_RUNS.md`` says (np.trapz,
astype(np.int)); ``--official-deps`` is a ``pip install --target`` folder with its extra dependencies (opencv, pandas,
seaborn, tensorboard, thop; without torch/numpy). Nothing of it enters the project.

    .venv/bin/python benchmarks/train_speed.py --official-git /work/.mirror/WongKinYiu+yolov7/repo \\
        --official-deps /work/scratch/speed/deps --work /tmp/train_speed --write
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _report import REPO, machine, provenance, publish
from yolo_prune.host_allocator import keep_freed_memory

SECTION = "## Fine-tuning speed"
SECTION_FROM_WEIGHTS = "## Fine-tuning speed at equal accuracy (from trained weights)"
VARIANTS = ("official", "official-cache", "baseline", "fast", "fast-bf16")
OURS = {"baseline": ["--no-channels-last", "--amp", "off"], "fast": ["--cache-images"],
        "fast-bf16": ["--cache-images", "--amp", "bf16"]}

RUNNER = r'''
"""Run one trainer with its epoch loops timed (written by benchmarks/train_speed.py)."""
import json, os, runpy, sys, time
import tqdm as _tqdm

OUT = os.environ["TRAIN_SPEED_OUT"]
_Base = _tqdm.tqdm


class Timed(_Base):
    def __iter__(self):
        training = isinstance(self.iterable, enumerate)
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for item in _Base.__iter__(self):
            n += 1
            yield item
        if training:
            with open(OUT, "a") as f:
                f.write(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                                    "batches": n}) + "\n")


_tqdm.tqdm = Timed
kind, argv = sys.argv[1], sys.argv[2:]
if kind == "official":
    sys.argv = ["train.py", *argv]
    runpy.run_path("train.py", run_name="__main__")
    # the EMA weights as plain tensors + cfg, for the common evaluator (loaded here, where the official classes exist)
    import glob, torch
    last = glob.glob(os.path.join(argv[argv.index("--project") + 1], argv[argv.index("--name") + 1], "weights", "last.pt"))[0]
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    ema = (ckpt.get("ema") or ckpt["model"]).float()  # strip_optimizer moved the EMA into "model" at the end
    torch.save({"yaml": ema.yaml, "state_dict": ema.state_dict()}, last[:-3] + "_plain.pt")
else:
    from yolo_prune.cli import main
    sys.argv = ["yolo-prune", *argv]
    sys.exit(main())  # as the console script: the command line's arguments (and its host allocator setting)
'''


CONVERT = r'''
"""A yolo-prune state_dict as a checkpoint the official train.py loads with --weights (run in the official tree)."""
import sys, torch
from models.yolo import Model
plain = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
model = Model("cfg/training/yolov7-tiny.yaml", ch=3, nc=plain["nc"])
result = model.load_state_dict(plain["state_dict"], strict=False)
missing = [k for k in result.missing_keys if not k.endswith(("anchors", "anchor_grid"))]
if missing or result.unexpected_keys:
    sys.exit(f"state_dict does not map onto the official model: missing {missing}, unexpected {result.unexpected_keys}")
torch.save({"model": model, "optimizer": None, "training_results": None, "epoch": -1}, sys.argv[2])
'''


# ------------------------------------------------------------------------------------------------ setup
def start_checkpoints(weights: Path, args) -> Path:
    """``weights`` (a yolo-prune checkpoint) re-saved for the official trainer; returns that file's path."""
    import torch

    from yolo_prune.checkpoint import load_model

    model = load_model(weights).float()
    plain, out = args.work / "start_plain.pt", args.work / "start_official.pt"
    torch.save({"nc": int(model.nc), "state_dict": model.state_dict()}, plain)
    script = args.work / "convert.py"
    script.write_text(CONVERT)
    subprocess.run([sys.executable, str(script), str(plain), str(out)], cwd=args.official_dir,
                   env=dict(os.environ, **official_env(args)), check=True)
    return out


def official_env(args) -> dict[str, str]:
    """What the official code needs in its environment: its tree and dependencies, pickled checkpoints, no wandb."""
    return {"PYTHONPATH": f"{args.official_deps}:{args.official_dir}", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
            "WANDB_MODE": "disabled"}


def official_checkout(git_dir: Path, work: Path) -> Path:
    """The official code extracted from its bare git directory into ``work/yolov7`` and patched for numpy 2."""
    dest = work / "yolov7"
    if not (dest / "train.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "HEAD", "cfg", "data", "models", "utils",
                                  "train.py", "test.py"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        for rel, old, new in (("utils/metrics.py", "np.trapz(", "np.trapezoid("),
                              ("utils/datasets.py", "astype(np.int)", "astype(int)")):
            path = dest / rel
            path.write_text(path.read_text().replace(old, new))
    return dest


def make_data(work: Path, n_train: int, n_val: int, img: int) -> Path:
    from yolo_prune.data.synth import generate_synthetic

    root = work / f"synth_{n_train}_{n_val}_{img}"
    if (root / "data.yaml").exists():
        return root / "data.yaml"
    return generate_synthetic(root, n_train=n_train, n_val=n_val, img_size=img, n_classes=6, seed=0).data_yaml


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    variant: str
    seed: int
    epochs_s: list[float] = field(default_factory=list)
    epochs_cpu: list[float] = field(default_factory=list)  # CPU seconds of the training process (all its threads)
    images: int = 0
    wall: float = 0.0
    map50: float = float("nan")
    map: float = float("nan")
    load: str = ""
    note: str = ""

    @property
    def ips(self) -> list[float]:
        return [self.images / s for s in self.epochs_s]

    @property
    def ips_cpu(self) -> list[float]:
        return [self.images / s for s in self.epochs_cpu]


def load_avg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def command(variant: str, seed: int, args, data: Path, project: Path) -> tuple[list[str], Path, dict]:
    """argv of the runner, its working directory, extra environment."""
    name = f"{variant}_s{seed}"
    common = ["--data", str(data), "--img", str(args.img), str(args.img), "--epochs", str(args.epochs),
              "--batch-size", str(args.batch), "--device", "cpu", "--workers", str(args.workers),
              "--project", str(project), "--name", name, "--exist-ok"]
    if variant.startswith("official"):
        start = str(args.official_start) if args.start_weights else ""
        argv = ["official", "--cfg", "cfg/training/yolov7-tiny.yaml", "--weights", start, "--hyp",
                "data/hyp.scratch.tiny.yaml", "--noautoanchor", *common,
                *(["--cache-images"] if variant == "official-cache" else [])]
        return argv, args.official_dir, official_env(args)
    model = ["--weights", str(args.start_weights)] if args.start_weights else ["--cfg", "yolov7-tiny"]
    argv = ["ours", "train", *model, "--hyp", "scratch.tiny", "--seed", str(seed), *common,
            *OURS[variant]]
    return argv, REPO, {"PYTHONPATH": str(REPO)}


def run_one(variant: str, seed: int, args, data: Path, n_train: int) -> Run:
    project = args.work / "runs"
    argv, cwd, env = command(variant, seed, args, data, project)
    out = args.work / f"{variant}_s{seed}.jsonl"
    out.unlink(missing_ok=True)
    runner = args.work / "runner.py"
    runner.write_text(RUNNER)
    full_env = dict(os.environ, **env, TRAIN_SPEED_OUT=str(out), OMP_NUM_THREADS=str(args.threads))
    load0, t0 = load_avg(), time.perf_counter()
    proc = subprocess.run([sys.executable, str(runner), *argv], cwd=cwd, env=full_env, capture_output=True, text=True)
    run = Run(variant, seed, wall=time.perf_counter() - t0, images=n_train, load=f"{load0} -> {load_avg()}")
    if proc.returncode != 0:
        run.note = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
        return run
    # only training epochs: YOLOv7's --cache-images also walks tqdm(enumerate(...)) once per image while caching
    nb = -(-n_train // args.batch)
    records = [r for r in map(json.loads, out.read_text().splitlines()) if r["batches"] == nb]
    run.epochs_s, run.epochs_cpu = [r["seconds"] for r in records], [r["cpu"] for r in records]
    try:
        run.map50, run.map = final_map(project / f"{variant}_s{seed}" / "weights" / "last.pt", data, args)
    except Exception as e:  # noqa: BLE001 - reported in the table, the timing still counts
        run.note = f"last.pt not evaluated: {type(e).__name__}: {e}"
    return run


def final_map(weights: Path, data: Path, args) -> tuple[float, float]:
    """mAP@.5 and mAP@.5:.95 of ``weights`` by yolo-prune's evaluator (pycocotools), the same for every trainer."""
    import torch

    from yolo_prune.checkpoint import load_model
    from yolo_prune.pipeline.evaluation import DataSettings, evaluate_on_data

    plain = weights.with_name("last_plain.pt")  # the official trainer's EMA, re-saved by the runner
    if plain.exists():
        from yolo_prune.checkpoint.state import load_state_strict
        from yolo_prune.models import build_model

        saved = torch.load(plain, map_location="cpu", weights_only=True)
        model = build_model(saved["yaml"])
        load_state_strict(model, saved["state_dict"], str(plain))
    else:
        model = load_model(weights)
    model = model.float().eval()
    res = evaluate_on_data(model, DataSettings(str(data), img_size=args.img, batch_size=32, workers=0),
                           device=torch.device("cpu"), progress=False)
    return res.map50, res.map


# ------------------------------------------------------------------------------------------------ profile
def profile_epoch(data: Path, args, extra: dict) -> dict[str, float]:
    """Seconds per phase of one epoch of yolo-prune's trainer (the second epoch; the first warms up)."""
    import torch

    from yolo_prune.engine import accel, trainer
    from yolo_prune.engine.train_state import TrainSettings

    torch.set_num_threads(args.threads)
    s = TrainSettings(data=str(data), cfg="yolov7-tiny", hyp="scratch.tiny", epochs=2, batch_size=args.batch,
                      img_size=args.img, device="cpu", workers=args.workers, project=str(args.work / "prof"),
                      exist_ok=True, progress=False, **extra)
    run = trainer._build_run(trainer._load_inputs(s), *trainer.start_distributed("cpu"))
    phases: dict[str, float] = {}
    for epoch in range(2):
        phases = dict.fromkeys(("data", "forward", "loss + assignment", "backward", "optimizer", "EMA"), 0.0)
        run.model.train()
        run.train_loader.set_epoch(epoch)
        nb, last, it = len(run.train_loader), epoch * len(run.train_loader) - 1, iter(run.train_loader)
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            phases[name] += now - t
            t = now

        for i in range(nb):
            imgs, targets, _, _ = next(it)
            lap("data")
            ni = i + nb * epoch
            run.schedule.apply(run.optimizer, epoch, ni)
            x = accel.prepare_inputs(imgs, run.device, s.channels_last)
            with accel.autocast(run.device, run.amp):
                preds = run.model(x)
                lap("forward")
                loss, _ = run.loss(preds, targets, x)
            lap("loss + assignment")
            loss.backward()
            lap("backward")
            if ni - last >= run.schedule.accumulate(ni) or i == nb - 1:
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
                lap("optimizer")
                run.ema.update(run.model)
                lap("EMA")
                last = ni
    return phases


# ------------------------------------------------------------------------------------------------ report
def median_ips(runs: list[Run], cpu: bool = False) -> float:
    values = [v for r in runs for v in (r.ips_cpu if cpu else r.ips)]
    return statistics.median(values) if values else float("nan")


def report(args, runs: list[Run], profiles: dict[str, dict[str, float]], n_train: int, env: dict) -> str:
    by = {v: [r for r in runs if r.variant == v] for v in args.variants}
    off = median_ips(by.get("official", []))
    off_cpu = median_ips(by.get("official", []), cpu=True)
    off_map = statistics.fmean(r.map for r in by.get("official", [])) if by.get("official") else float("nan")
    start = (f"yolov7-tiny from the trained `{os.path.relpath(args.start_weights, REPO)}` (both trainers load the same "
             f"weights; the official one from a checkpoint of its own classes made from them)"
             if args.start_weights else "yolov7-tiny from scratch")
    lines = [SECTION_FROM_WEIGHTS if args.start_weights else SECTION, "",
             f"`yolo-prune train` against the official YOLOv7 `train.py` (fetched code, run with today's libraries), "
             f"{start}, hyp scratch.tiny, {n_train} synthetic training images at {args.img} px, "
             f"batch {args.batch}, {args.epochs} epochs, {args.workers} loader workers, {args.threads} torch "
             f"thread(s) (OMP_NUM_THREADS), CPU; each training a separate process, variants interleaved; "
             f"yolo-prune runs as its console script does (the host allocator keeps freed memory: "
             f"`yolo_prune.host_allocator`), the official trainer with the default allocator. Train-loop "
             f"seconds per epoch are timed the same way for both programs (their `tqdm(enumerate(loader))` epoch "
             f"loop: data loading included, evaluation excluded); mAP of the final EMA weights by one evaluator "
             f"(pycocotools) on the same {args.val} val images.", "",
             "| variant | runs | images/s per epoch (median) | speed-up vs official | images per CPU-second | "
             "speed-up (CPU time) | epoch seconds (wall / CPU) | mAP@.5 (mean) | mAP@.5:.95 (mean) | "
             "load avg (1/5/15) start -> end |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for v, rs in by.items():
        ips = median_ips(rs)
        maps = [r.map for r in rs if r.map == r.map]
        m50 = [r.map50 for r in rs if r.map50 == r.map50]
        secs = "; ".join(", ".join(f"{s:.1f}/{c:.1f}" for s, c in zip(r.epochs_s, r.epochs_cpu)) or r.note
                         for r in rs)
        cpu = median_ips(rs, cpu=True)
        lines.append(f"| {v} | {len(rs)} | {ips:.2f} | {ips / off:.2f}x | {cpu:.2f} | {cpu / off_cpu:.2f}x | {secs} | "
                     f"{statistics.fmean(m50) if m50 else float('nan'):.4f} | "
                     f"{statistics.fmean(maps) if maps else float('nan'):.4f} | {'; '.join(r.load for r in rs)} |")
    lines += ["", "mAP@.5:.95 per run (seed order): " + "; ".join(
        f"{v} " + ", ".join(f"{r.map:.4f}" for r in rs) for v, rs in by.items() if rs)
        + (" (the official trainer seeds itself: its runs differ only by loader randomness, none with 0 workers)"
           if any(v.startswith("official") for v in by) else "") + "."]
    ours = {v: median_ips(rs) for v, rs in by.items() if not v.startswith("official") and rs}
    if ours and off == off:
        best = max(ours, key=ours.get)
        speed = ours[best] / off
        best_map = statistics.fmean(r.map for r in by[best])
        equal = abs(best_map - off_map) <= 0.01
        speed_cpu = median_ips(by[best], cpu=True) / off_cpu
        learned = max(best_map, off_map) >= 0.01  # below 1 point neither model detects anything yet
        verdict = ("NOT met" if speed < args.goal or not equal else "met" if learned else
                   "speed met; equal mAP not shown (both models below 1 point mAP@.5:.95 after these epochs, so the "
                   "check cannot tell accuracies apart)")
        lines += ["", f"Goal (>= {args.goal}x the official images/s at equal mAP, +-1 point): best variant `{best}` "
                  f"{speed:.2f}x by wall time ({speed_cpu:.2f}x by CPU time), mAP@.5:.95 {best_map:.4f} vs "
                  f"{off_map:.4f}: **{verdict}**."]
        cached = median_ips(by.get("official-cache", []))
        if cached == cached:
            lines += ["", f"Against the official trainer with its own `--cache-images` ({cached:.2f} images/s): "
                      f"`{best}` {ours[best] / cached:.2f}x."]
    if profiles:
        lines += ["", "Where one epoch of yolo-prune's trainer goes (seconds, the second of two epochs, in-process):",
                  "", "| phase | " + " | ".join(profiles) + " |", "|---|" + "---:|" * len(profiles)]
        for phase in next(iter(profiles.values())):
            lines.append(f"| {phase} | " + " | ".join(f"{p[phase]:.2f}" for p in profiles.values()) + " |")
        lines.append("| total | " + " | ".join(f"{sum(p.values()):.2f}" for p in profiles.values()) + " |")
    lines += [""] + provenance(sys.argv[1:], env, ("numpy",))
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-git", type=Path, help="bare git dir of github:WongKinYiu/yolov7")
    p.add_argument("--official-deps", type=Path, default=None, help="pip --target folder of its extra dependencies")
    p.add_argument("--work", type=Path, default=Path("/tmp/train_speed"))
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--val", type=int, default=64)
    p.add_argument("--img", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--goal", type=float, default=1.5)
    p.add_argument("--start-weights", type=Path, default=None,
                   help="start every trainer from these yolo-prune weights (e.g. the shipped demo model) instead of "
                        "from scratch, so that the same epochs end at a measurable mAP")
    p.add_argument("--profile", action="store_true", help="also profile one epoch of baseline and fast by phase")
    p.add_argument("--write", action="store_true", help="(re)write the section of BENCHMARKS.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # the in-process --profile runs as a `yolo-prune` process would
    args.work.mkdir(parents=True, exist_ok=True)
    if any(v.startswith("official") for v in args.variants):
        if not args.official_git or not args.official_deps:
            sys.exit("--official-git and --official-deps are needed for the official variant")
        args.official_dir = official_checkout(args.official_git, args.work)
        if args.start_weights:
            args.official_start = start_checkpoints(args.start_weights, args)
    data = make_data(args.work, args.images, args.val, args.img)
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            run = run_one(variant, seed, args, data, args.images)
            print(f"{variant} seed {seed}: epochs {[round(s, 1) for s in run.epochs_s]} s, mAP {run.map:.4f} "
                  f"{run.note} (load {run.load})", file=sys.stderr, flush=True)
            runs.append(run)
    profiles = {}
    if args.profile:
        for name, extra in (("baseline", {"channels_last": False, "amp": "off"}),
                            ("fast", {"cache_images": True}), ("fast-bf16", {"cache_images": True, "amp": "bf16"})):
            profiles[name] = profile_epoch(data, args, extra)
            print(f"profile {name}: {profiles[name]}", file=sys.stderr, flush=True)
    env = machine(("numpy",))
    text = report(args, runs, profiles, args.images, env)
    publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
