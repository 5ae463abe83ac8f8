"""`yolo-prune info`: the table, JSON totals and usage errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from yolo_prune.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yolo_prune", *args], capture_output=True, text=True)


@pytest.mark.parametrize("cfg,fused,params,gflops", [
    ("yolov7", True, 36_907_898, 104.514),
    ("deploy/yolov7-tiny", True, 6_219_709, 13.702),
    ("yolov7-tiny", False, 6_228_762, None),
])
def test_info_json_totals(capsys, cfg, fused, params, gflops):
    argv = ["info", "--cfg", cfg, "--json"] + (["--fuse"] if fused else [])
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == params
    if gflops is not None:
        assert round(data["gflops"], 3) == gflops
    assert sum(row["params"] for row in data["layers"]) == params
    assert data["layers"][-1]["module"] in {"IDetect", "Detect"}


def test_info_table_and_weights(capsys, official_tiny_path):
    assert main(["info", "--weights", str(official_tiny_path), "--img", "320"]) == 0
    out = capsys.readouterr().out
    assert "IDetect" in out and "6,228,762 parameters" in out and "55 Conv/RepConv + 3 head convs" in out


def test_info_usage_errors():
    r = run_cli("info", "--cfg", "does-not-exist")
    assert r.returncode == 2 and "unknown model cfg 'does-not-exist'" in r.stderr
    r = run_cli("info", "--cfg", "yolov7-tiny", "--img", "100")  # YOLOv7's rule: rounded up, with a notice
    assert r.returncode == 0 and "--img 100 is not a multiple of the model's max stride 32; using 128" in r.stderr
    r = run_cli("info")
    assert r.returncode == 2 and "--cfg" in r.stderr
    r = run_cli("info", "--weights", "/nonexistent/x.pt")
    assert r.returncode == 2 and "--weights /nonexistent/x.pt: file not found" in r.stderr


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0 and "info" in r.stdout
