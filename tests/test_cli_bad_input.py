"""Every command, fed a table of bad values: exit 2, one `yolo-prune <command>: error:` line naming the cause, no
traceback, no new file or folder, and (since inputs are checked before any work) no time spent.

Add a row to BAD to pin a new check: (command line, words the error must contain). ``{u}`` stands for a location no
one can write (root included).
"""
from __future__ import annotations

import time

import pytest

from cli_workspace import UNWRITABLE, build_workspace, run_cli, snapshot

DATA, DATA6 = "data/data.yaml", "data6/data.yaml"
TEST = f"test --data {DATA} --weights m.pt --img 64 --batch 4 --device cpu --workers 0"
SA = f"{TEST} --task pruning_sensitivity_analysis --pruning-rate [0.5] --layers [0] --max-images 2"
TRAIN = f"train --weights m.pt --data {DATA} --img 64 --epochs 1 --batch-size 4 --device cpu --workers 0"
ITERATE = f"iterate --weights m.pt --data {DATA} --img 64 --epochs 1 --batch 4 --device cpu --workers 0 " \
          "--pruning-rate [0.5] --iterations 1"
PRUNE = "prune --weights m.pt --pruning-params [(0,0.5)]"
EXPORT = "export --weights m.pt --img-size 64"
BENCH = "benchmark --weights m.pt --img-size 64 --iters 1 --warmup 0"
NC_MISMATCH = f"--weights m.pt has nc=3 classes but --data {DATA6} has nc=6"

BAD = [
    # item 1: one class-count message everywhere, before any work
    (f"{TEST.replace(DATA, DATA6)}", NC_MISMATCH),
    (f"{SA.replace(DATA, DATA6)}", NC_MISMATCH),
    (f"{TRAIN.replace(DATA, DATA6)}", NC_MISMATCH),
    (f"{ITERATE.replace(DATA, DATA6)}", NC_MISMATCH),
    # item 4: iterate validates everything before the analysis
    (ITERATE.replace("[0.5]", "[1.5]"), "--pruning-rate: 1.5 is out of range"),
    (f"{ITERATE} --target-gflops nan", "--target-gflops: expected a finite number > 0, got 'nan'"),
    (f"{ITERATE} --target-gflops -1", "--target-gflops: expected a finite number > 0"),
    (f"{ITERATE} --target-gflops 1000", "--target-gflops 1000: m.pt has"),
    (f"{ITERATE} --hyp hyp_negative_lr0.yaml", "hyp key 'lr0' must be > 0, got -0.01"),
    (f"{ITERATE} --hyp hyp_without_lr0.yaml", "missing required hyp key(s): lr0"),
    (f"{ITERATE} --workers -1", "--workers: expected an integer >= 0"),
    (f"{ITERATE} --out afile", "--out afile: is a file, expected a directory"),
    (f"{ITERATE} --out {{u}}/it", "--out {u}/it: cannot write in"),
    (f"{ITERATE} --criterion 99", "unknown criterion '99'"),
    # item 6: output locations checked first
    (f"{TEST} --save-json --project afile", "afile is a file, not a folder"),
    (f"{TEST} --save-json --project {{u}}", "cannot write in"),
    (f"{SA} --project afile", "afile is a file, not a folder"),
    (f"{SA} --project {{u}}", "cannot write in"),
    (f"{PRUNE} --output {{u}}/p.pt", "--output {u}/p.pt: cannot write in"),
    (f"{PRUNE} --output adir", "--output adir: is a directory"),
    (f"{PRUNE} --output m.pt", "--output m.pt: is the input checkpoint"),
    ("graph --cfg yolov7-tiny --out adir", "--out adir: is a directory"),
    ("graph --cfg yolov7-tiny --out {u}/g.yaml", "--out {u}/g.yaml: cannot write in"),
    ("convert-activation --weights m.pt --to relu --output {u}/c.pt", "cannot write in"),
    ("convert-activation --weights m.pt --to relu --output adir", "--output adir: is a directory"),
    (f"{EXPORT} --output {{u}}/m.onnx", "--output {u}/m.onnx: cannot write in"),
    (f"{EXPORT} --output adir", "--output adir: is a directory"),
    (f"{EXPORT} --format engine --output {{u}}/m.engine", "cannot write in"),
    ("synth --out {u}/s --train 1 --val 1 --img 64", "--out {u}/s: cannot write in"),
    ("synth --out afile --train 1 --val 1 --img 64", "--out afile: is a file, expected a directory"),
    (f"{BENCH} --json {{u}}/b.json", "--json {u}/b.json: cannot write in"),
    (f"{BENCH} --json adir", "--json adir: is a directory"),
    ("layer-selection --output sens --save --save-dir {u}/g", "--save-dir {u}/g: cannot write in"),
    ("layer-selection --output sens --save --save-dir afile", "--save-dir afile: is a file"),
    (f"{TRAIN} --project afile", "--project afile: is a file, expected a directory"),
    (f"{TRAIN} --project {{u}}", "--project {u}: cannot write in"),
    # item 7: pruning flags without the pruning they belong to
    (f"{TEST} --criterion 1", "--criterion: only with --pruning-params"),
    (f"{TEST} --modification prune-structured", "--modification prune-structured needs --pruning-params"),
    (f"{SA} --pruning-params [(0,0.5)]", "--pruning-params: the analysis prunes every layer alone"),
    (f"{TEST} --layers [0]", "--layers: only with --task pruning_sensitivity_analysis"),
    # item 8: named causes instead of tracebacks
    (TEST.replace("m.pt", "corrupt.onnx"), "--weights corrupt.onnx: not a readable ONNX model"),
    (TEST.replace("m.pt", "m.onnx").replace("--img 64", "--img 128"), "the ONNX input of m.onnx is fixed at 64x64"),
    (SA.replace("m.pt", "m.onnx"), "give the .pt checkpoint, not an ONNX file"),
    ("info --cfg yolov7-tiny --nc 0", "--nc: expected a positive integer, got '0'"),
    ("info --cfg yolov7-tiny --nc -1", "--nc: expected a positive integer, got '-1'"),
    ("prune --cfg yolov7-tiny --nc 0 --pruning-params 0.5 --output x.pt", "--nc: expected a positive integer"),
    ("export --cfg yolov7-tiny --nc -1 --img-size 64", "--nc: expected a positive integer"),
    ("info --cfg cfg_string_nc.yaml", "'nc' must be a positive integer (number of classes), got 'three'"),
    ("info --cfg cfg_string_anchors.yaml", "'anchors' must be a list of levels"),
    ("info --cfg cfg_negative_width.yaml", "'width_multiple' must be a number in (0, 16], got -0.5"),
    ("info --cfg binary.bin", "model cfg binary.bin: not a text file"),
    ("info --cfg adir", "model cfg adir: is a directory"),
    ("graph --cfg yolov7-tiny --check binary.bin", "pruning graph binary.bin: not a text file"),
    ("graph --cfg yolov7-tiny --check adir", "pruning graph adir: is a directory"),
    (f"{PRUNE} --output x.pt --pruning-config binary.bin", "pruning graph binary.bin: not a text file"),
    (f"{PRUNE} --output x.pt --pruning-config adir", "--pruning-config adir: is a directory"),
    (f"{TRAIN} --hyp binary.bin", "hyp binary.bin: not a text file"),
    (f"{TRAIN} --hyp adir", "hyp adir: is a directory"),
    (f"{TRAIN} --hyp hyp_negative_lr0.yaml", "hyp key 'lr0' must be > 0, got -0.01"),
    ("layer-selection --output damaged_analysis", "damaged_analysis/sensitivity.json: not a readable sensitivity.json"),
    (f"{SA} --project . --name damaged_analysis", "damaged_analysis/sensitivity.json: not a readable sensitivity.json"),
    ("layer-selection --output sens --target-gflops nan", "--target-gflops: expected a finite number > 0"),
    ("layer-selection --output sens --target-gflops 1000", "--target-gflops 1000: the unpruned model already has"),
    ("layer-selection --output sens --params -5", "--params: expected a finite number > 0"),
    ("layer-selection --output sens --save-dir g", "--save-dir: only with --save"),
    ("layer-selection --output afile", "--output afile: is a file, expected a directory"),
    (f"{TRAIN} --workers -1", "--workers: expected an integer >= 0, got '-1'"),
    (f"{TRAIN} --seed 99999999999999999999", "--seed: expected an integer from 0 to 4294967295"),
    (f"{PRUNE} --output x.pt --seed -3", "--seed: expected an integer from 0 to 4294967295"),
    (f"{EXPORT} --opset 25", "opset must be from 11"),
    (f"{EXPORT} --opset 99", "opset must be from 11"),
    (TEST.replace("--img 64", "--img 99999968"), "--img/--img-size: expected an integer from 1 to 8192"),
    (f"{EXPORT} 99999968", "--img-size/--img: expected an integer from 1 to 8192"),
    (f"{BENCH} --img-size 0", "--img-size/--img: expected an integer from 1 to 8192, got '0'"),
    (TEST.replace("m.pt", "adir"), "--weights adir: is a directory, expected a file"),
    (TEST.replace(DATA, "adir"), "--data adir: is a directory, expected a file"),
    (TEST.replace(DATA, "binary.bin"), "data YAML"),
    (f"{TEST} --conf 2", "--conf/--conf-thres: expected a finite number >= 0 and <= 1"),
    (f"{TEST} --weights m.pt m.onnx", "--weights takes one checkpoint here, got 2"),
    (f"{TEST} --device 7", "--device 7: CUDA device 7 is not available"),
    # item 9: layer lists are integers, without repeats; rates without repeats
    (SA.replace("--layers [0]", "--layers [0.5]"), "--layers: expected a non-empty list of layer indices (integers)"),
    (SA.replace("--layers [0]", "--layers '[0, 0]'"), "--layers: 0 listed more than once"),
    (SA.replace("--layers [0]", "--layers [99]"), "--layers: [99] are not prunable conv layers"),
    (SA.replace("[0.5]", "'[0.5, 0.5]'"), "--pruning-rate: 0.5 listed more than once"),
    (SA.replace("[0.5]", "[1.5]"), "--pruning-rate: 1.5 is out of range"),
    (f"{SA} --prune-output ../x.txt", "--prune-output ../x.txt: expected a file name such as output.txt"),
    # classification CNNs, kernel masks, FBS, Li et al.'s sweep
    ("classify train --arch scnnb --data nowhere:x --project runs", "--data nowhere:x: not a known dataset"),
    ("classify train --arch scnnb --data cifar10:adir --project runs", "cifar-10-batches-py/ (nothing is downloaded"),
    ("classify train --weights m.pt --project runs", "--weights m.pt is not a classifier checkpoint"),
    ("classify train --arch scnnb --img 18 --project runs", "scnnb: img_size must be a multiple of 4"),
    ("classify train --arch scnnb --scoring lazy", "invalid choice: 'lazy'"),
    ("classify sensitivity --weights m.pt --pruning-rate [1.5]", "--pruning-rate: 1.5 is out of range"),
    ("classify sensitivity --weights m.pt", "m.pt is not a classifier checkpoint"),
    ("mask --weights m.pt --percent 0.5 --output m.pt", "--output m.pt: is the input checkpoint m.pt"),
    ("mask --weights m.pt --percent 1.5 --output x.pt", "--percent: expected a fraction in (0, 1), got '1.5'"),
    ("mask --weights m.pt --percent 0.5", "--percent needs --output"),
    (f"fbs --weights m.pt --data {DATA} --density 1.5 --out o", "--density must be in (0, 1], got 1.5"),
    (f"fbs --weights m.pt --data {DATA} --layers [999] --out o", "layer 999 cannot be gated: out of range"),
    (f"fbs --weights m.pt --data {DATA} --out afile", "--out afile: is a file, expected a directory"),
    ("sweep --percents '[0.5, 2]' --out o", "--percents: 2 is out of range"),
    ("sweep --weights m.pt --out o", "--weights m.pt is not a classifier checkpoint"),
    ("sweep --arch scnnb --retrain-epochs 0 --out o", "--retrain-epochs: expected a positive integer, got '0'"),
    # YOLOv7 test.py / train.py options yolo-prune does not implement: named, with what to do instead
    (f"{TEST} --augment", "--augment: test-time augmentation is not implemented"),
    (f"{TEST} --save-txt --save-conf", "--save-txt: per-image .txt results are not written"),
    (f"{TEST} --single-cls", "--single-cls: single-class evaluation is not implemented"),
    (f"{TEST} --v5-metric", "--v5-metric: YOLOv5's AP interpolation is not implemented"),
    (f"{TRAIN} --rect --linear-lr", "--rect: rectangular training is not implemented"),
    (f"{TEST} --coco-json missing.json", "--coco-json missing.json: file not found"),
    (f"{TRAIN} --label-smoothing -0.1", "--label-smoothing: expected a finite number >= 0, got '-0.1'"),
    (f"{TRAIN} --label-smoothing 1", "--label-smoothing must be in [0, 1), got 1.0"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("cli-bad-input"))


@pytest.mark.parametrize("command,message", BAD, ids=[f"{c.split()[0]}-{i}" for i, (c, _) in enumerate(BAD)])
def test_bad_value_exits_2_with_one_line_and_writes_nothing(workspace, command, message):
    if "{u}" in command and not UNWRITABLE.parent.is_dir():
        pytest.skip("no /sys here to stand for an unwritable location")
    command, message = command.replace("{u}", str(UNWRITABLE)), message.replace("{u}", str(UNWRITABLE))
    before = snapshot(workspace)
    started = time.perf_counter()
    code, _, err = run_cli(command, cwd=workspace)
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert code == 2 and "Traceback" not in err, f"{command!r} -> exit {code}\n{err[-2000:]}"
    name = " ".join(command.split()[:2 if command.startswith("classify ") else 1])  # classify has sub-commands
    assert len(errors) == 1 and errors[0].startswith(f"yolo-prune {name}: error: "), err
    assert message in errors[0], f"{command!r}: {errors[0]!r} lacks {message!r}"
    assert snapshot(workspace) == before, f"{command!r} left {snapshot(workspace) - before}"
    assert time.perf_counter() - started < 30, "rejected only after doing work"


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`yolo-prune info --json | head -c 1`: stdout's reader is gone; exit 141 (128 + SIGPIPE) without a
    traceback, as a shell pipeline expects, instead of a BrokenPipeError from the JSON writer."""
    import contextlib
    import io
    import os
    import sys

    from yolo_prune.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)
    err = io.StringIO()
    with os.fdopen(write_end, "w") as broken, contextlib.redirect_stdout(broken), contextlib.redirect_stderr(err):
        code = main(["info", "--cfg", "yolov7-tiny", "--img", "64", "--json"])
        assert sys.stdout.fileno() == write_end
    assert code == 141 and "Traceback" not in err.getvalue()
