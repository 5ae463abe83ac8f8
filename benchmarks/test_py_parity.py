"""test.py parity: YOLOv7's official ``test.py`` and ``yolo-prune test`` side by side on the same files.

Both programs evaluate one official-format checkpoint on one validation split (conf 0.001, IoU 0.65, the same
``--img`` and batch size, CPU). The official numbers are parsed from test.py's printed table (3 significant
digits, as it prints them); ours are test.py's own set as ``yolo-prune test`` prints it (``official`` in
``--json``), plus pycocotools' mAPs (the authority). The official code is never imported here: it runs as a
program from a checkout given by ``--yolov7``, with its extra dependencies (opencv-python-headless, pandas,
seaborn, tensorboard, thop; ``pip install --target DIR``, then delete torch* and numpy* from DIR) in ``--deps``;
with numpy 2 its ``np.trapz`` must read ``np.trapezoid`` (utils/metrics.py) and ``astype(np.int)``
``astype(int)`` (utils/datasets.py), and torch >= 2.6 loads its pickles with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
(set here).

Data: ``--data`` (a data YAML), or by default the shipped demo model's synthetic validation images
(``yolo-prune synth``, 200 images, 256 px) in three versions: as generated (square); a mixed-aspect copy
(each image randomly cropped to 50-100 % of its width and height and rescaled by 0.6-1.8, labels clipped,
boxes that keep < 60 % of their area dropped), which exercises test.py's rectangular batches and resizing; and a
copy labelled with polygons (an octagon touching each box's edges, 6 decimals, as the official COCO labels hold
segments), every 40th label file repeating its first row, which exercises test.py's reading of segments and its
skipping of images with repeated labels, and holding what a copied or zipped folder picks up: a hidden
``.ipynb_checkpoints`` folder with labelled copies of 3 images and a macOS ``._`` file beside each image, which
test.py's file listing skips. The image and label counts must be equal too.
Weights: ``--weights`` (an official-format .pt), or by default the shipped demo model written as the official
code writes it (its ``models.yolo.Model`` built from ``cfg/training/yolov7-tiny.yaml`` with our weights, fp16,
``best_fitness`` a numpy array, as after ``strip_optimizer``).

    .venv/bin/python benchmarks/test_py_parity.py --yolov7 ~/yolov7 --deps ~/yolov7-deps           # print
    .venv/bin/python benchmarks/test_py_parity.py --yolov7 ~/yolov7 --deps ~/yolov7-deps --write   # BENCHMARKS.md

Exits with status 1 when a printed number differs by more than one unit in its last printed digit.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _report import REPO, machine, provenance, publish

SECTION = "## test.py parity"
ROW = re.compile(r"^\s*(\S+)\s+(\d+)\s+(\d+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.e+-]+)\s*$")

NOTES = ("A last digit can differ because test.py evaluates the model after `fuse()` (BatchNorm folded into the "
         "convolutions): the fused weights round differently, raw outputs move by up to ~3e-4 and the mAPs by < 1e-5, "
         "enough to flip a third digit that sits on a rounding boundary. On the same predictions test.py's metric "
         "code and ours agree to every digit (`tests/test_eval_official.py`; also checked on test.py's own recorded "
         "statistics). Before yolo-prune fed test.py's inputs (commit 7e8b184: square letterbox, Pillow resizing) it "
         "printed P 0.575 / R 0.553 (test.py-style mAPs 0.580 / 0.393) on the mixed-aspect set and P 0.675 / R 0.558 "
         "(0.637 / 0.426) on the square one.")

EXPORT = """
import sys, numpy as np, torch
sys.path.insert(0, {repo!r})
from models.yolo import Model
import yolo_prune as yp
ours = yp.load_model({src!r})
m = Model('cfg/training/yolov7-tiny.yaml', ch=3, nc=ours.nc)
m.load_state_dict(ours.state_dict(), strict=True)
m.names = list(ours.names)
m.half().requires_grad_(False)
torch.save({{'epoch': -1, 'best_fitness': np.array([0.5]), 'training_results': None, 'model': m, 'ema': None,
             'updates': None, 'optimizer': None, 'wandb_id': None}}, {dst!r})
"""


def run_program(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run one program to completion; on failure, stop with its command and the end of its output."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise SystemExit(f"{' '.join(cmd)}\nexited with status {done.returncode}:\n{tail}")
    return done


def official_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment for the official code: its checkout and dependency folder first, full (non weights-only) loads."""
    paths = [str(Path(args.deps).resolve())] if args.deps else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [str(Path(args.yolov7).resolve())]),
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": str(args.threads)}


def export_demo(args: argparse.Namespace, dst: Path) -> Path:
    """The shipped demo model as an official-format checkpoint, written by the official ``Model`` class."""
    from yolo_prune.demo_data import DEMO_MODEL

    code = EXPORT.format(repo=str(REPO), src=str(DEMO_MODEL), dst=str(dst))
    run_program([sys.executable, "-c", code], cwd=args.yolov7, env=official_env(args))
    return dst


def mixed_aspect_copy(src: Path, out: Path, seed: int = 0) -> Path:
    """A copy of a data YAML's val split with varied aspect ratios and sizes (see the module docstring)."""
    import yaml
    from PIL import Image

    cfg = yaml.safe_load(src.read_text())
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(cfg["val"]).glob("*.jpg")):
        im = Image.open(p).convert("RGB")
        w0, h0 = im.size
        lab = np.loadtxt(Path(str(p.parent).replace("/images", "/labels")) / f"{p.stem}.txt", ndmin=2)
        cw, ch = int(rng.integers(w0 // 2, w0 + 1)), int(rng.integers(h0 // 2, h0 + 1))
        x0, y0 = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - ch + 1))
        s = float(rng.uniform(0.6, 1.8))
        im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((max(8, round(cw * s)), max(8, round(ch * s))),
                                                       Image.BILINEAR)
        rows = []
        for c, cx, cy, bw, bh in lab:
            x1, y1, x2, y2 = (cx - bw / 2) * w0 - x0, (cy - bh / 2) * h0 - y0, (cx + bw / 2) * w0 - x0, (cy + bh / 2) * h0 - y0
            area = (x2 - x1) * (y2 - y1)
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, cw), min(y2, ch)
            if x2 - x1 >= 2 and y2 - y1 >= 2 and (x2 - x1) * (y2 - y1) >= 0.6 * area:
                rows.append("%d %.6f %.6f %.6f %.6f\n" % (c, (x1 + x2) / 2 / cw, (y1 + y2) / 2 / ch,
                                                          (x2 - x1) / cw, (y2 - y1) / ch))
        im.save(out / "images" / p.name, quality=95)
        (out / "labels" / f"{p.stem}.txt").write_text("".join(rows))
    names = ", ".join(cfg["names"])
    (out / "data.yaml").write_text(f"train: {out / 'images'}\nval: {out / 'images'}\nnc: {cfg['nc']}\n"
                                   f"names: [{names}]\n")
    return out / "data.yaml"


def octagon(cx: float, cy: float, w: float, h: float) -> list[float]:
    """Eight points touching each edge of a box: the polygon a segment label would hold for it."""
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    return [x1, cy - h / 4, cx - w / 4, y1, cx + w / 4, y1, x2, cy - h / 4,
            x2, cy + h / 4, cx + w / 4, y2, cx - w / 4, y2, x1, cy + h / 4]


def polygon_copy(src: Path, out: Path, every: int = 40) -> Path:
    """A copy of a data YAML's val split labelled with polygons (6 decimals, as the official COCO labels), every
    ``every``-th label file with its first row repeated (an image both loaders skip), plus hidden files that are
    not part of the split (see the module docstring)."""
    import shutil

    import yaml

    cfg = yaml.safe_load(src.read_text())
    shutil.copytree(cfg["val"], out / "images")
    (out / "labels").mkdir()
    for k, p in enumerate(sorted(Path(str(Path(cfg["val"])).replace("/images", "/labels")).glob("*.txt"))):
        rows = [" ".join([c, *(f"{v:.6f}" for v in octagon(*map(float, box)))])
                for c, *box in map(str.split, p.read_text().splitlines())]
        (out / "labels" / p.name).write_text("\n".join(rows + rows[:1] * (k % every == every - 1)) + "\n")
    images = sorted((out / "images").glob("*.jpg"))
    for sub in ("images", "labels"):
        (out / sub / ".ipynb_checkpoints").mkdir()
    for image in images[:3]:
        shutil.copy(image, out / "images" / ".ipynb_checkpoints" / image.name)
        shutil.copy(out / "labels" / f"{image.stem}.txt", out / "labels" / ".ipynb_checkpoints" / f"{image.stem}.txt")
    for image in images:
        (out / "images" / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (out / "data.yaml").write_text(f"train: {out / 'images'}\nval: {out / 'images'}\nnc: {cfg['nc']}\n"
                                   f"names: [{', '.join(cfg['names'])}]\n")
    return out / "data.yaml"


def run_official(args: argparse.Namespace, data: Path, weights: Path, work: Path) -> dict[str, list[float]]:
    """test.py's printed rows: name -> [images, labels, P, R, mAP@.5, mAP@.5:.95]."""
    cmd = [sys.executable, "test.py", "--data", str(data), "--weights", str(weights), "--img", str(args.img),
           "--batch", str(args.batch), "--conf", "0.001", "--iou", "0.65", "--device", "cpu", "--verbose",
           "--project", str(work), "--name", "official", "--exist-ok"]
    out = run_program(cmd, cwd=args.yolov7, env=official_env(args))
    return {m.group(1): [float(m.group(i)) for i in range(2, 8)]
            for m in map(ROW.match, out.stdout.splitlines()) if m}


def run_ours(args: argparse.Namespace, data: Path, weights: Path) -> tuple[dict[str, list[float]], dict]:
    """``yolo-prune test --verbose`` rows (test.py's columns) and its ``--json`` report."""
    base = [sys.executable, "-m", "yolo_prune", "test", "--data", str(data), "--weights", str(weights), "--img",
            str(args.img), "--batch", str(args.batch), "--device", "cpu", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    text = run_program(base + ["--verbose"], env=env).stdout
    report = json.loads(run_program(base + ["--json"], env=env).stdout)
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 9 and parts[1].isdigit():
            rows[parts[0]] = [float(v) for v in parts[1:7]]
    return rows, report


def same_print(a: float, b: float) -> bool:
    """Equal within one unit of the third significant digit (``%.3g``, how both programs print)."""
    scale = 10 ** (np.floor(np.log10(max(abs(a), abs(b), 1e-12))) - 2)
    return abs(a - b) <= scale * 1.0001


def compare(name: str, official: dict, ours: dict, report: dict) -> tuple[list[str], bool]:
    """Markdown rows for one data set, and whether the counts are equal and every printed number agrees."""
    lines, ok = [], True
    for cls, off in official.items():
        mine = ours.get(cls, [float("nan")] * 6)
        counts = f"{off[0]:.0f} / {off[1]:.0f}"
        if off[:2] != mine[:2]:
            counts += f" (ours {mine[0]:.0f} / {mine[1]:.0f})"
        exact = off[:2] == mine[:2] and all("%.3g" % a == "%.3g" % b for a, b in zip(off[2:], mine[2:]))
        ok &= off[:2] == mine[:2] and all(same_print(a, b) for a, b in zip(off[2:], mine[2:]))
        lines.append(f"| {name} | {cls} | {counts} | " + " / ".join("%.3g" % v for v in off[2:]) + " | "
                     + " / ".join("%.3g" % v for v in mine[2:]) + f" | {'identical' if exact else 'last digit'} |")
    lines.append(f"| {name} | pycocotools (ours) | | | mAP@.5 {report['map50']:.4f}, "
                 f"mAP@.5:.95 {report['map']:.4f} | |")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--yolov7", required=True, help="checkout of github.com/WongKinYiu/yolov7 (runnable)")
    parser.add_argument("--deps", default=None, help="folder with the official code's extra dependencies")
    parser.add_argument("--data", action="append", help="data YAML(s) (default: demo val, square and mixed aspect)")
    parser.add_argument("--weights", default=None, help="official-format .pt (default: the demo model, exported)")
    parser.add_argument("--img", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help=f"(re)write '{SECTION}' in BENCHMARKS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        work = Path(tmp)
        weights = Path(args.weights) if args.weights else export_demo(args, work / "demo_official.pt")
        if args.data:
            sets = {Path(d).parent.name: Path(d) for d in args.data}
        else:
            from yolo_prune.data.synth import generate_synthetic
            from yolo_prune.demo_data import DEMO_SYNTH

            generate_synthetic(work / "demo", **{**DEMO_SYNTH, "n_train": 1})
            sets = {"demo val (square)": work / "demo" / "data.yaml"}
            sets["demo val, mixed aspect"] = mixed_aspect_copy(sets["demo val (square)"], work / "mixed")
            sets["demo val, polygon labels"] = polygon_copy(sets["demo val (square)"], work / "polygons")
        table = ["| data | class | images / labels | official test.py: P / R / mAP@.5 / mAP@.5:.95 |"
                 " yolo-prune test (test.py's set) | printed digits |", "|---|---|---|---|---|---|"]
        ok = True
        for name, data in sets.items():
            official = run_official(args, data, weights, work)
            ours, report = run_ours(args, data, weights)
            lines, agree = compare(name, official, ours, report)
            table += lines
            ok &= agree
    env = machine(["opencv-python-headless", "numpy", "pycocotools"])
    about = [part.replace("\n", " ") for part in __doc__.split("\n\n")[1:3]]  # what is compared; on which data
    text = "\n".join([SECTION, "", about[0], "", about[1], "", *table, "",
                      f"Equal image and label counts, and every printed number within one unit of its last digit: "
                      f"**{'yes' if ok else 'NO'}**.", "",
                      NOTES, "",
                      *provenance(sys.argv[1:] if argv is None else argv, env,
                                  ["opencv-python-headless", "numpy", "pycocotools"])])
    publish(text, args.write)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
