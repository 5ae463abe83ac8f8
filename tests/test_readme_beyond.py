"""Every command of README's "Beyond YOLOv7 filters" section, run in order in a scratch folder with fewer epochs,
steps and percentages (and narrower new networks) so the chain stays a few minutes on CPU; the files the commands
expect from the user (a torchvision .pth, an ImageFolder tree, Fashion-MNIST files, the synthetic data) are made
first."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import torchvision

from yolo_prune.cli import main

REPO = Path(__file__).resolve().parents[1]
SHRINK = [(r"--epochs \d+", "--epochs 1"), (r"--retrain-epochs \d+", "--retrain-epochs 1"), (r"--steps \d+", "--steps 1"),
          (r"--width 0.25", "--width 0.0625"), (r"--arch scnnb", "--arch scnnb --width 0.25"),
          (r"--img 256", "--img 128"), (r"--img-size 256", "--img-size 128"),
          (r"yolo_prune/assets/", f"{REPO}/yolo_prune/assets/")]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Beyond YOLOv7 filters", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.split("  #")[0].strip() for b in blocks for line in b.splitlines() if line.startswith("yolo-prune ")]


def shrink(command: str) -> list[str]:
    for pattern, repl in SHRINK:
        command = re.sub(pattern, repl, command)
    argv = shlex.split(command)[1:]
    if argv[0] == "sweep" and "--percents" not in argv:
        argv += ["--percents", "[0, 0.5]"]
    if argv[0] == "fbs":
        argv += ["--latency-iters", "3"]
    return argv


def user_files(root: Path) -> None:
    from PIL import Image

    from _fakes import write_fashion_mnist

    from yolo_prune.data.synth import generate_synthetic

    for split in ("train", "val"):
        for cls, colour in (("cat", (200, 120, 40)), ("dog", (40, 90, 200))):
            (root / "my_images" / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (80, 70), tuple(c + 10 * i for c in colour)).save(root / "my_images" / split / cls / f"{i}.png")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), root / "resnet18.pth")
    write_fashion_mnist(root / "data" / "fashion", 40, 20)
    generate_synthetic(root / "data" / "synth", n_train=8, n_val=4, img_size=256, n_classes=6, seed=0)


def test_readme_commands_are_parsed():
    commands = readme_commands()
    assert len(commands) >= 20 and {shlex.split(c)[1] for c in commands} >= {"classify", "sweep", "mask", "fbs"}


@pytest.mark.slow
def test_readme_beyond_commands_run(tmp_path, monkeypatch):
    user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    for command in readme_commands():
        argv = shrink(command)
        assert main(argv) == 0, command
    assert (tmp_path / "runs" / "sweep" / "scnnb" / "sweep.png").is_file()
    assert (tmp_path / "runs" / "fbs" / "tiny" / "fbs.md").is_file()
    assert (tmp_path / "tiny_k50.onnx").is_file() and (tmp_path / "scnnb_50.onnx").is_file()
