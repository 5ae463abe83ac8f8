"""`yolo-prune synth`: write the built-in synthetic detection benchmark (no download needed)."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from yolo_prune.cli.common import fit_img, output_dir
from yolo_prune.data.synth import (
    MAX_CLASSES,
    SPLITS,
    SynthResult,
    check_out_dir,
    generate_synthetic,
    validate_args,
)


def _default_workers() -> int:
    """Worker processes by default: the CPUs we may use, capped so small machines stay responsive."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Add the `synth` subcommand to the dispatcher's subparsers."""
    p = subparsers.add_parser(
        name, help=help_text,
        description=help_text + ". The same --seed gives byte-identical images and labels.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (written atomically)")
    p.add_argument("--train", type=int, default=512, metavar="N",
                   help="training images (default: %(default)s)")
    p.add_argument("--val", type=int, default=128, metavar="M",
                   help="validation images (default: %(default)s)")
    p.add_argument("--img", type=int, default=320, metavar="S",
                   help="image size, rounded up to a multiple of 32 (default: %(default)s)")
    p.add_argument("--classes", type=int, default=6, metavar="K",
                   help=f"number of classes, 1-{MAX_CLASSES} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="X",
                   help="random seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=_default_workers(), metavar="W",
                   help="worker processes; the output does not depend on it (default: %(default)s)")
    p.add_argument("--exist-ok", action="store_true",
                   help="replace --out if an earlier `synth` run wrote it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the dataset with a progress bar and print a short summary; returns the exit code."""
    from tqdm import tqdm

    if isinstance(args.img, int) and args.img > 0:
        args.img = fit_img(args.img, 32)  # the stride of the models that train on it, YOLOv7's rule
    validate_args(args.train, args.val, args.img, args.classes, args.seed, args.workers)
    out = Path(args.out).expanduser()
    output_dir(out, "--out")
    check_out_dir(out.resolve(), args.exist_ok)
    start = time.perf_counter()
    with tqdm(total=args.train + args.val, desc="synth", unit="img", leave=False) as bar:
        result = generate_synthetic(
            args.out, n_train=args.train, n_val=args.val, img_size=args.img,
            n_classes=args.classes, seed=args.seed, exist_ok=args.exist_ok,
            workers=args.workers, progress=bar.update,
        )
    print(format_summary(result, time.perf_counter() - start))
    return 0


def format_summary(result: SynthResult, seconds: float) -> str:
    """Counts, objects per image and COCO size buckets, so users see what they got at a glance."""
    n_img = {"train": result.n_train, "val": result.n_val}
    lines = [
        f"wrote {result.n_train} train + {result.n_val} val images of {result.img_size}x"
        f"{result.img_size} px, {len(result.class_names)} classes, to {result.root} in {seconds:.1f}s",
    ]
    for split in SPLITS:
        n_obj = result.n_objects.get(split, 0)
        per = n_obj / n_img[split] if n_img[split] else 0.0
        lines.append(f"  {split:<5} {n_img[split]:>6} images {n_obj:>7} objects ({per:.1f}/image)")
    total = sum(result.size_buckets.values()) or 1
    sizes = ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in result.size_buckets.items())
    lines.append(f"  sizes (COCO area <32^2 / <96^2 / larger): {sizes}")
    lines.append("  classes: " + ", ".join(f"{k} {v}" for k, v in result.class_counts.items()))
    lines.append(f"  data yaml: {result.data_yaml}")
    lines.append(f"  val COCO json: {result.coco_json}")
    return "\n".join(lines)
