"""README.md as a specification: every `yolo-prune` command in its code blocks is run, so none can fail unseen.

How it works (to add a README command, usually nothing is needed):
- ``doc_commands`` reads the README's shell code blocks, joins ``\\`` continuations, drops ``# comments``, expands
  variables assigned in the block (``W=...``) and keeps the lines that run yolo-prune (``yolo-prune ...``,
  ``torchrun ... -m yolo_prune ...``).
- Each code block is one user session: its commands run in order in a fresh working directory (hard-linked copy of
  the files in ``FILES``), so later commands see what earlier ones wrote.
- ``SMALL`` shrinks sizes (set when present, appended when absent); ``RELATIVE`` turns budgets into ones that fit
  the small models; nothing else of a command changes.
- ``EXPECTED`` holds the documented clean exits of commands that need hardware absent here (TensorRT, CUDA).
- ``PREPARE`` creates the state a command documents as its precondition (an interrupted run for ``--resume``).
A new command that reads a file not listed in ``FILES`` fails with a message saying so.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from cli_workspace import narrow_tiny, run_cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


# ------------------------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class DocCommand:
    """One yolo-prune command of a README code block: where it is and what it says."""

    line: int  # 1-based README line where the command starts
    block: int  # code-block number: commands of one block share a working directory, in order
    argv: tuple[str, ...]  # shell words, variables expanded

    @property
    def text(self) -> str:
        return shlex.join(self.argv)

    @property
    def command(self) -> str:
        """The subcommand (``test``, ``train``...), also under torchrun."""
        return self.argv[self.argv.index("yolo_prune") + 1] if "yolo_prune" in self.argv else self.argv[1]


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join backslash continuations; each result keeps the number of its first line."""
    out, start, parts = [], None, []
    for number, text in lines:
        start = number if start is None else start
        if text.rstrip().endswith("\\"):
            parts.append(text.rstrip()[:-1])
            continue
        out.append((start, " ".join(parts + [text])))
        start, parts = None, []
    return out


def doc_commands(path: Path = README) -> list[DocCommand]:
    """Every yolo-prune command in the shell code blocks of ``path``."""
    commands, block, inside, shell, lines, variables = [], 0, False, False, [], {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```\s*(\w*)", text)
        if fence and not inside:  # an opening fence of any language (a python block's closing fence opens nothing)
            inside, shell, lines, variables = True, fence.group(1) in ("", "bash", "sh", "shell", "console"), [], {}
            block += 1
            continue
        if fence:
            for start, logical in _logical_lines(lines if shell else []):
                words = shlex.split(logical, comments=True)
                if len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):
                    name, value = words[0].split("=", 1)
                    variables[name] = value
                elif words and (words[0] == "yolo-prune" or (words[0] == "torchrun" and "yolo_prune" in words)):
                    argv = [re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), w) for w in words]
                    commands.append(DocCommand(start, block, tuple(argv)))
            inside = False
            continue
        if inside:
            lines.append((number, text))
    return commands


# ------------------------------------------------------------------------------------------- substitutions
# Sizes for 2 CPU cores, per command. SMALL: set the flag (its value replaced where the command has it, aliases
# included, else appended: defaults such as 300 epochs or 640 px would take hours here). SHRINK: replaced only where
# present (appending would change what the command does).
ALIASES = {"--img": ("--img", "--img-size"), "--batch": ("--batch", "--batch-size"),
           "--batch-size": ("--batch", "--batch-size")}
SMALL: dict[str, dict[str, str]] = {
    "info": {"--img": "64"},
    "synth": {},
    "test": {"--img": "64", "--batch": "4", "--workers": "0", "--max-images": "4"},
    "train": {"--img": "64", "--batch": "4", "--epochs": "1", "--workers": "0", "--max-val-images": "4"},
    "iterate": {"--img": "64", "--batch": "4", "--workers": "0", "--max-images": "4", "--iterations": "1",
                "--epochs": "1", "--pruning-rate": "[0.5]", "--eval-images": "4"},
    "export": {"--img": "64"},
    "benchmark": {"--img": "64", "--iters": "2", "--warmup": "0"},
    "prune": {"--img": "64"},
    "layer-selection": {},
    "graph": {},
    "convert-activation": {},
    "classify": {},
    "sweep": {"--percents": "[0,0.5]"},
    "mask": {},
    "fbs": {"--latency-iters": "3"},
    "latency-table": {"--img": "64", "--repeats": "3", "--warmup": "0", "--rates": "[0.5]", "--threads": "1"},
    "darknet-prune": {"--img": "64", "--tuning-iter": "1", "--batch-size": "4", "--workers": "0", "--device": "cpu"},
}
SHRINK = {"--train": "8", "--val": "8", "--img": "64", "--batch-size": "1 2", "--calib-count": "2",
          "--epochs": "1", "--retrain-epochs": "1", "--steps": "1", "--width": "0.0625", "--pruning-iter": "2"}
# an analysis of 6 layers at one rate, not of every layer at three (like --max-images: less work, same command)
SMALL_ANALYSIS = {"--pruning-rate": "[0.5]", "--layers": "[0,8,23,25,28,45]"}


def _gflops_of(weights: str, cwd: Path) -> float:
    import yolo_prune as yp

    return yp.count_gflops(yp.load_model(cwd / weights), 64)


def _analysis_gflops(output: str, cwd: Path) -> float:
    import json

    return json.loads((cwd / output / "sensitivity.json").read_text())["baseline"]["gflops"]


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# Budgets written for 640 px full-size models, made relative to the small model the command runs on.
RELATIVE: dict[str, Callable[[list[str], Path], str]] = {
    "--target-gflops": lambda argv, cwd: f"{0.97 * _reference_gflops(argv, cwd):.6g}",
    "--target-latency": lambda argv, cwd: f"{_table_latency(argv, cwd):.6g}",
}


def _table_latency(argv: list[str], cwd: Path) -> float:
    """Halfway between the unpruned model's predicted latency and the floor of the analysed layers."""
    from yolo_prune.analysis.latency import read_latency_table
    from yolo_prune.analysis.table import read_table

    table = read_latency_table(cwd / _flag(argv, "--latency-table"))
    analysis = read_table(cwd / _flag(argv, "--output"))
    floor = table.predict([(layer, max(analysis.rates)) for layer in analysis.layers])
    return (table.predict([]) + floor) / 2


def _reference_gflops(argv: list[str], cwd: Path) -> float:
    if "layer-selection" in argv:
        return _analysis_gflops(_flag(argv, "--output"), cwd)
    return _gflops_of(_flag(argv, "--weights"), cwd)


def _set_flag(argv: list[str], flag: str, value: str, append: bool) -> list[str]:
    """``flag value`` replaced (all its values, for nargs flags) or appended; a value with spaces is several words."""
    names = ALIASES.get(flag, (flag,))
    for i, word in enumerate(argv):
        if word in names:
            end = i + 1
            while end < len(argv) and not argv[end].startswith("--"):
                end += 1
            return argv[: i + 1] + value.split() + argv[end:]
    return argv + [flag, *value.split()] if append else argv


def small(cmd: DocCommand, cwd: Path) -> list[str]:
    """The command as run here: sizes from SMALL / SHRINK / SMALL_ANALYSIS, budgets from RELATIVE."""
    argv = list(cmd.argv)
    if "--resume" in argv:
        return argv  # a resumed run takes every setting from its checkpoint
    for flag, value in SHRINK.items():
        argv = _set_flag(argv, flag, value, append=False)
    for flag, value in SMALL[cmd.command].items():
        argv = _set_flag(argv, flag, value, append=True)
    if "pruning_sensitivity_analysis" in argv:
        for flag, value in SMALL_ANALYSIS.items():
            argv = _set_flag(argv, flag, value, append=True)
    if cmd.command == "test" and "study" in argv:  # a study evaluates at its own 11 sizes, never at --img
        i = argv.index("--img")
        del argv[i:i + 2]
    if cmd.command == "train" and "--pruning-iter" in argv:  # one epoch per round: the fewest the schedule takes
        argv = _set_flag(argv, "--epochs", _flag(argv, "--pruning-iter"), append=True)
    for flag, make in RELATIVE.items():
        if flag in argv:
            argv = _set_flag(argv, flag, make(argv, cwd), append=False)
    return argv


# ------------------------------------------------------------------------------------------- expectations
def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


# (pattern in the command, applies here?, exit code, words on stderr): the documented clean exits.
EXPECTED = [
    (r"--format engine", lambda: _missing("tensorrt"), 2, "TensorRT is not available here"),
    (r"--device 0\b", lambda: not torch.cuda.is_available(), 2, "CUDA device 0 is not available"),
]


def _expected(cmd: DocCommand) -> tuple[int, str]:
    for pattern, applies, code, words in EXPECTED:
        if re.search(pattern, cmd.text) and applies():
            return code, words
    return 0, ""


# ------------------------------------------------------------------------------------------- files
def _interrupted_run(cwd: Path) -> None:
    """A `yolo-prune train` run stopped after its first epoch (what `train --resume` continues)."""
    from yolo_prune.engine.trainer import TrainSettings, train

    def stop(epoch: int, row: dict) -> None:
        raise KeyboardInterrupt

    settings = TrainSettings(weights=str(cwd / "best.pt"), data=str(cwd / "data.yaml"), epochs=2, batch_size=4,
                             img_size=64, device="cpu", workers=0, project=str(cwd / "runs" / "train"),
                             name="interrupted", max_val_images=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(settings, on_epoch_end=stop)


def _analysis(cwd: Path) -> None:
    """output/sens, as the README's `test --task pruning_sensitivity_analysis ... --name sens` leaves it."""
    if not (cwd / "output" / "sens").exists():
        shutil.copytree(cwd / "prepared" / "sens", cwd / "output" / "sens")


PREPARE: dict[str, Callable[[Path], None]] = {r"^yolo-prune train --resume": _interrupted_run, r"--output output/sens\b": _analysis}


def _write_files(root: Path) -> None:
    """FILES: every input a README command names, small and real."""
    import yolo_prune as yp
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.export.onnx_export import export_onnx
    from yolo_prune.export.options import ExportOptions
    from yolo_prune.pipeline.devices import select_device
    from yolo_prune.pipeline.evaluation import AnalysisSettings, DataSettings, sensitivity_on_data
    from yolo_prune.prune import prune

    synth = generate_synthetic(root / "data", n_train=8, n_val=8, img_size=64, n_classes=6, seed=5)
    (root / "data.yaml").write_text(f"path: data\ntrain: images/train\nval: images/val\nnc: 6\n"
                                    f"names: {list(synth.class_names)}\n")
    (root / "data" / "coco.yaml").write_text((root / "data.yaml").read_text().replace("path: data\n", ""))
    for hyp in ("custom", "p5"):  # YOLOv7 repo layout of the published commands
        shutil.copy(REPO / "yolo_prune" / "engine" / "hyp" / f"hyp.scratch.{hyp}.yaml", root / "data")
    (root / "cfg" / "training").mkdir(parents=True)
    shutil.copy(REPO / "yolo_prune" / "models" / "cfg" / "training" / "yolov7.yaml", root / "cfg" / "training")
    # transfer learning's --cfg: narrow_tiny's architecture (a quarter of yolov7-tiny's widths) as a cfg file
    tiny_cfg = (REPO / "yolo_prune" / "models" / "cfg" / "training" / "yolov7-tiny.yaml").read_text()
    (root / "cfg" / "training" / "yolov7-custom.yaml").write_text(
        tiny_cfg.replace("width_multiple: 1.0", "width_multiple: 0.25", 1))
    shutil.copy(root / "data.yaml", root / "custom.yaml")
    model = narrow_tiny(6)
    for name in ("yolov7.pt", "yolov7-tiny.pt", "best.pt", "model.pt", "yolov7_training.pt"):
        yp.save_checkpoint(model, root / name)
    pruned = prune(narrow_tiny(6), 0.3, "l2").model
    yp.save_checkpoint(pruned, root / "pruned.pt")
    for name, m in (("yolov7-tiny.onnx", model), ("pruned.onnx", pruned)):
        export_onnx(m, root / name, ExportOptions(img_size=(64, 64)))
    (root / "path" / "to").mkdir(parents=True)
    shutil.copy(REPO / "yolo_prune" / "models" / "cfg" / "training" / "yolov7-tiny.yaml", root / "path" / "to" / "custom.yaml")
    shared = Path(os.environ.get("YOLO_PRUNE_SHARED", REPO.parent / "shared")) / "fixtures" / "official-cfg"
    shutil.copy(shared / "training" / "yolov7-w6.yaml", root / "path" / "to" / "yolov7-w6.yaml")
    shutil.copy(REPO / "pruning_config" / "yolov7_pruning_cfg.yaml", root / "my_pruning_cfg.yaml")
    (root / "calib").mkdir()
    for img in sorted((root / "data" / "images" / "val").iterdir())[:3]:
        shutil.copy(img, root / "calib")
    sensitivity_on_data(model, DataSettings(str(root / "data.yaml"), img_size=64, batch_size=4, workers=0, max_images=4),
                        AnalysisSettings([0.25, 0.5, 0.75], layers=[0, 8, 23, 28, 45]), root / "prepared" / "sens",
                        device=select_device("cpu"), source="best.pt", progress=False)
    for published in (root / "published_dir", root / "output" / "yolov7_training"):  # text files only, no baseline
        published.mkdir(parents=True)
        for f in (root / "prepared" / "sens").glob("output_*.txt"):
            shutil.copy(f, published)
    _darknet_files(root, len(synth.class_names))
    _latency_table(root, model)
    asset = Path("yolo_prune") / "assets" / "yolov7-tiny-synth.pt"
    (root / asset.parent).mkdir(parents=True)
    os.link(REPO / asset, root / asset)
    _classification_files(root)


def _classification_files(root: Path) -> None:
    """What the classification examples read: a digits classifier run, a user's torchvision .pth with an ImageFolder
    tree of two classes and Fashion-MNIST files."""
    import torchvision
    from PIL import Image

    import yolo_prune as yp
    from _fakes import write_fashion_mnist
    from yolo_prune.models.classify import build_classifier

    torch.manual_seed(0)
    yp.save_checkpoint(build_classifier("scnnb", nc=10, in_ch=1, img_size=32, width=0.25),
                       root / "runs" / "classify" / "scnnb" / "weights" / "best.pt")
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), root / "resnet18.pth")
    for split in ("train", "val"):
        for cls, colour in (("cat", (200, 120, 40)), ("dog", (40, 90, 200))):
            (root / "my_images" / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (80, 70), tuple(c + 10 * i for c in colour)).save(
                    root / "my_images" / split / cls / f"{i}.png")
    write_fashion_mnist(root / "data" / "fashion", 40, 20)


def _darknet_files(root: Path, nc: int) -> None:
    """The Darknet files the README names: the repo's test cfgs, and small yolov4-tiny/yolo models for ``nc`` classes
    at 64 px with random weights, a Darknet .data file and its image lists."""
    from yolo_prune.checkpoint.darknet import save_darknet
    from yolo_prune.models import build_model

    shutil.copytree(REPO / "tests" / "data" / "darknet", root / "tests" / "data" / "darknet")
    text = (REPO / "tests" / "data" / "darknet" / "yolov4-tiny.cfg").read_text()
    text = text.replace("classes=80", f"classes={nc}").replace("filters=255", f"filters={3 * (nc + 5)}")
    (root / "small.cfg").write_text(text.replace("width=416", "width=64").replace("height=416", "height=64"))
    torch.manual_seed(0)
    for stem in ("yolov4-tiny", "yolo"):
        save_darknet(build_model(root / "small.cfg"), root / f"{stem}.cfg", root / f"{stem}.weights")
    for split, name in (("train", "train.txt"), ("val", "valid.txt")):
        images = sorted((root / "data" / "images" / split).glob("*.jpg"))
        (root / name).write_text("".join(f"{p}\n" for p in images))
    (root / "yolo.names").write_text("".join(f"c{i}\n" for i in range(nc)))
    (root / "yolo.data").write_text(f"classes = {nc}\ntrain = train.txt\nvalid = valid.txt\nnames = yolo.names\n")


def _latency_table(root: Path, model) -> None:
    """latency.json of best.pt (what `yolo-prune latency-table --weights best.pt` writes), measured small."""
    from yolo_prune.bench.latency_table import TableSettings, build_latency_table

    settings = TableSettings(img_size=(64, 64), threads=1, warmup=0, repeats=3, rates=(0.25, 0.5, 0.75))
    build_latency_table(model, settings, root / "latency.json", "best.pt").save(root / "latency.json")
    (root / "latency.json.partial.json").unlink()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme-files")
    _write_files(root)
    return root


class Sessions:
    """One working directory per README code block; commands run in README order, each at most once."""

    def __init__(self, base: Path, tmp: Path):
        self.base, self.tmp, self.done = base, tmp, {}

    def run_through(self, cmd: DocCommand) -> tuple[int, str, str, list[str]]:
        cwd = self.tmp / f"block{cmd.block}"
        if not cwd.exists():
            shutil.copytree(self.base, cwd, copy_function=os.link)  # inputs shared, outputs private
        for earlier in (c for c in COMMANDS if c.block == cmd.block and c.line < cmd.line):
            if earlier not in self.done:
                self.done[earlier] = self._run(earlier, cwd)
        if cmd not in self.done:
            self.done[cmd] = self._run(cmd, cwd)
        return self.done[cmd]

    def _run(self, cmd: DocCommand, cwd: Path) -> tuple[int, str, str, list[str]]:
        for pattern, prepare in PREPARE.items():
            if re.search(pattern, cmd.text):
                prepare(cwd)
        argv = small(cmd, cwd)
        if argv[0] == "torchrun":  # the same launcher, run with this interpreter; the workspace has a
            # yolo_prune/assets folder (README paths), which must not shadow the package: no cwd on sys.path
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv[1:]], cwd=cwd,
                                  capture_output=True, text=True, timeout=600,
                                  env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONSAFEPATH="1"))
            return proc.returncode, proc.stdout, proc.stderr, argv
        code, out, err = run_cli(argv[1:], cwd=cwd)
        return code, out, err, argv


COMMANDS = doc_commands()


@pytest.fixture(scope="module")
def sessions(base, tmp_path_factory) -> Sessions:
    return Sessions(base, tmp_path_factory.mktemp("readme-sessions"))


def test_readme_has_commands_of_every_documented_subcommand():
    from yolo_prune.cli import COMMANDS as SUBCOMMANDS

    shown = {c.command for c in COMMANDS}
    assert set(SUBCOMMANDS) <= shown, f"README shows no example of {sorted(set(SUBCOMMANDS) - shown)}"
    assert set(SMALL) >= shown, f"add sizes for {sorted(shown - set(SMALL))} to SMALL"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"README.md:{c.line}:{c.command}" for c in COMMANDS])
def test_readme_command_runs(sessions, cmd):
    code, out, err, argv = sessions.run_through(cmd)
    want_code, want_words = _expected(cmd)
    hint = ("" if "not found" not in err else
            "\n(a file it needs is missing: add it to _write_files in tests/test_readme_commands.py)")
    assert code == want_code and want_words in err and "Traceback" not in err, (
        f"README.md:{cmd.line}: `{cmd.text}`\n  ran as: {shlex.join(argv)}\n  exit {code} (expected {want_code})"
        f"{hint}\n--- stderr (tail)\n{err[-3000:]}\n--- stdout (tail)\n{out[-1500:]}")
