"""`make demo`: the main job end to end on the built-in default, with no downloads.

Runs every stage that exists in this version: generate the synthetic benchmark, describe the shipped
models, derive the connectivity graph, prune, and compare before/after. Later stages (analysis,
fine-tuning, export) join as they land.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from yolo_prune.cli import main as cli


def step(title: str, argv: list[str]) -> None:
    """Run one CLI command, echoing it so users can copy it."""
    print(f"\n=== {title}\n$ yolo-prune {' '.join(argv)}", flush=True)
    t0 = time.time()
    rc = cli(argv)
    if rc != 0:
        sys.exit(f"demo step failed ({rc}): yolo-prune {' '.join(argv)}")
    print(f"--- {title}: {time.time() - t0:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step("synthetic benchmark", ["synth", "--out", str(out / "synth"), "--train", "64", "--val", "32",
                                 "--img", "256", "--seed", "0", "--exist-ok"])
    step("model summary (yolov7-tiny, fused)", ["info", "--cfg", "yolov7-tiny", "--fuse", "--img", "640"])
    print(f"\nDemo finished; outputs under {out}/")


if __name__ == "__main__":
    main()
