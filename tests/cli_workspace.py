"""Real, small inputs for CLI tests (imported by test modules; not a test module itself).

``build_workspace(root)`` writes synthetic data sets (3 and 6 classes), a narrow yolov7-tiny checkpoint (all 55
prunable layers, quarter widths, so it runs fast), its ONNX export, a finished sensitivity analysis and files that
are wrong on purpose (binary, a folder, a damaged ONNX, bad hyp / cfg / analysis files). ``run_cli`` runs one
command in-process and returns (exit code, stdout, stderr); ``snapshot`` lists every path under a folder.
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
from pathlib import Path
from typing import Sequence

import torch
import yaml

IMG = 64
# A path no one can write, root included (sysfs refuses new files even to root).
UNWRITABLE = Path("/sys/yolo-prune-unwritable")


def snapshot(root: Path) -> set[str]:
    """Every file and folder under ``root`` (relative paths), hidden ones included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_cli(argv: Sequence[str] | str, cwd: Path | None = None) -> tuple[int, str, str]:
    """``yolo-prune <argv>`` in this process (exit code, stdout, stderr); argparse's SystemExit becomes the code.

    Torch's thread count is restored afterwards (``benchmark --threads`` changes it)."""
    from yolo_prune.cli import main

    argv = shlex.split(argv) if isinstance(argv, str) else list(argv)
    out, err, threads, old = io.StringIO(), io.StringIO(), torch.get_num_threads(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(old)
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def narrow_tiny(nc: int, seed: int = 0):
    """yolov7-tiny with a quarter of the filters (>= 8): every layer index of the real one, a fraction of the
    cost; detection-head biases raised so NMS and COCOeval see boxes."""
    import yolo_prune as yp

    torch.manual_seed(seed)
    widths = [max(8, w // 4) for w in yp.build_model("yolov7-tiny").widths()]
    model = yp.build_model("yolov7-tiny", nc=nc, widths=widths)
    with torch.no_grad():
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 3.0
    return model.eval()


def write_bad_files(root: Path) -> None:
    """Inputs that are wrong on purpose (each must be refused with exit 2 and a named cause)."""
    from yolo_prune.engine.hyp import resolve_hyp_path

    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "afile").write_text("a plain file\n")
    (root / "adir").mkdir()
    (root / "corrupt.onnx").write_bytes((root / "m.onnx").read_bytes()[:2000])
    hyp = resolve_hyp_path("scratch.tiny").read_text()
    (root / "hyp_negative_lr0.yaml").write_text(hyp.replace("lr0: 0.01", "lr0: -0.01"))
    (root / "hyp_without_lr0.yaml").write_text(hyp.replace("lr0: 0.01", ""))
    cfg = yaml.safe_load(resolve_cfg_text())
    for name, key, value in (("cfg_string_nc.yaml", "nc", "three"), ("cfg_string_anchors.yaml", "anchors", "many"),
                             ("cfg_negative_width.yaml", "width_multiple", -0.5)):
        (root / name).write_text(yaml.safe_dump({**cfg, key: value}, sort_keys=False))
    (root / "damaged_analysis").mkdir()
    (root / "damaged_analysis" / "sensitivity.json").write_text('{"settings": {}, "results": [1,')


def resolve_cfg_text() -> str:
    from yolo_prune.models.cfgs import resolve_cfg

    return resolve_cfg("yolov7-tiny").read_text()


def build_workspace(root: Path) -> Path:
    """Write the workspace described in the module docstring under ``root``; returns ``root``."""
    import yolo_prune as yp
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions
    from yolo_prune.pipeline.devices import select_device
    from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings, sensitivity_on_data

    root.mkdir(parents=True, exist_ok=True)
    generate_synthetic(root / "data", n_train=4, n_val=4, img_size=IMG, n_classes=3, seed=1)
    generate_synthetic(root / "data6", n_train=2, n_val=2, img_size=IMG, n_classes=6, seed=2)
    model = narrow_tiny(3)
    yp.save_checkpoint(model, root / "m.pt")
    export_onnx(model, root / "m.onnx", ExportOptions(img_size=(IMG, IMG), grid=True))
    sensitivity_on_data(model, DataSettings(str(root / "data" / "data.yaml"), img_size=IMG, batch_size=4, workers=0),
                        AnalysisSettings([0.5], layers=[0, 23]), root / "sens", device=select_device("cpu"),
                        source="m.pt", progress=False)
    write_bad_files(root)
    return root
