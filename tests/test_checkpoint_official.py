"""Checkpoints as the official trainer and the published pruner write them load; everything else stays refused.

Fixtures are written in the tests the way the ecosystem writes them (see ``official_format.py``): the shared
official-format fixture as real objects under the official class names, turned into what ``train.py`` saves
(numpy ``best_fitness``, optimizer state with numpy learning rates, ``model`` + ``ema`` in fp16 ...) or what
``prune.py`` saves, in zip and legacy containers, with numpy 2 and numpy 1 module names.
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import yolo_prune as yp
from official_format import (NUMPY1, load_trusted, pickled_globals, save_official, set_state, stripped,
                             trainer_checkpoint)
from yolo_prune.errors import CheckpointError

NUMPY_NAMES = {"numpy2": "numpy._core.multiarray", "numpy1": "numpy.core.multiarray"}


@pytest.fixture(scope="module")
def official(official_tiny_path):
    """(official object tree of the shared fixture, our model loaded from it)."""
    return load_trusted(official_tiny_path)["model"], yp.load_model(official_tiny_path)


def _perturbed(model, seed):
    """A copy whose weights differ (an EMA is not the trained model)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))
    return out


def _outputs_equal(path, reference_tree):
    """The loaded model computes what the pickled tree's weights define (checked against our own rebuild)."""
    expected = yp.load_model(save_official({"model": reference_tree}, path.with_name("ref.pt")))
    got = yp.load_model(path)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        return torch.equal(got(x)[0], expected(x)[0])


@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("numpy_names", ["numpy2", "numpy1"])
def test_trainer_last_pt_loads_the_ema(tmp_path, official, container, numpy_names):
    tree, _ = official
    ckpt = trainer_checkpoint(_perturbed(tree, 1), ema=_perturbed(tree, 2), epoch=7)
    path = save_official(ckpt, tmp_path / "last.pt", legacy=container == "legacy",
                         renames=NUMPY1 if numpy_names == "numpy1" else None)
    names = pickled_globals(path)
    assert {f"{NUMPY_NAMES[numpy_names]}._reconstruct", f"{NUMPY_NAMES[numpy_names]}.scalar", "numpy.ndarray",
            "numpy.dtype", "_codecs.encode", "models.yolo.Model"} <= names
    loaded = yp.load_checkpoint(path)
    assert loaded.extra["epoch"] == 7 and loaded.extra["best_fitness"] == pytest.approx(0.4242)
    assert loaded.model.nc == 80 and next(loaded.model.parameters()).dtype == torch.float32
    assert _outputs_equal(path, ckpt["ema"])  # official attempt_load: 'ema' when set


@pytest.mark.parametrize("entries", ["stripped", "model-only", "ema-only"])
def test_stripped_and_partial_checkpoints_load(tmp_path, official, entries):
    tree, _ = official
    ckpt = trainer_checkpoint(_perturbed(tree, 3), ema=_perturbed(tree, 4))
    if entries == "stripped":  # what best.pt is after training ends (strip_optimizer)
        ckpt, expected = stripped(ckpt), ckpt["ema"]
    elif entries == "model-only":
        ckpt["ema"], expected = None, ckpt["model"]
    else:
        ckpt["model"], expected = None, ckpt["ema"]
    path = save_official(ckpt, tmp_path / "best.pt")
    assert _outputs_equal(path, expected)


@pytest.mark.parametrize("opt", ["namespace", "dict"])
def test_opt_namespace_or_dict_is_carried_inertly(tmp_path, official, opt):
    tree, _ = official
    ns = argparse.Namespace(weights="yolov7.pt", img_size=[640, 640], epochs=300, hyp="data/hyp.scratch.p5.yaml")
    ckpt = stripped(trainer_checkpoint(copy.deepcopy(tree), ema=None))
    ckpt["opt"] = ns if opt == "namespace" else vars(ns)
    path = save_official(ckpt, tmp_path / "best.pt")
    assert ("argparse.Namespace" in pickled_globals(path)) == (opt == "namespace")
    assert yp.load_checkpoint(path).model.nc == 80


def test_published_pruner_checkpoint_loads_the_pruned_model(tmp_path, official, fixtures_dir):
    """prune.py prunes ckpt['ema'] in place (adding ``pruning_cfg``) and stores it as 'model' too: one object."""
    import yaml

    from yolo_prune.prune import prune

    tree, ours = official
    pruned = prune(ours, "[(3, 0.5), (10, 0.25), (30, 0.5)]", "l2", summarize=False).model
    ckpt = trainer_checkpoint(copy.deepcopy(tree), ema=copy.deepcopy(tree), epoch=12)
    set_state(ckpt["ema"], {k: v.half() if v.is_floating_point() else v for k, v in pruned.state_dict().items()})
    cfg_file = fixtures_dir / "published-pruning-config" / "yolov7-tiny_pruning_cfg.yaml"
    ckpt["ema"].pruning_cfg = yaml.safe_load(cfg_file.read_text())["pruning_cfg"]
    ckpt["model"] = ckpt["ema"]
    path = save_official(ckpt, tmp_path / "pruned.pt")
    loaded = yp.load_checkpoint(path)
    assert loaded.extra["pruned_by_published_code"] is True and loaded.extra["epoch"] == 12
    assert loaded.model.widths() == pruned.widths() != ours.widths()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], pruned.half().float()(x)[0], atol=0, rtol=0)


def test_numpy_values_are_rebuilt_as_arrays_and_scalars(tmp_path, official):
    from yolo_prune.checkpoint.legacy import read_official

    tree, _ = official
    ckpt = trainer_checkpoint(copy.deepcopy(tree), ema=None)
    ckpt["extras"] = {"fortran": np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)),
                      "flags": np.array([True, False]), "names": np.array(["ab", "c"]),
                      "empty": np.zeros((0, 3), np.float16), "lr": np.float64(0.0125)}
    for container, renames in (("zip", None), ("legacy", NUMPY1)):
        path = save_official(ckpt, tmp_path / f"{container}.pt", legacy=container == "legacy", renames=renames)
        raw = read_official(path)
        assert isinstance(raw["best_fitness"], np.ndarray) and raw["best_fitness"].tolist() == [0.4242]
        for key, value in ckpt["extras"].items():
            got, numpys_own = raw["extras"][key], pickle.loads(pickle.dumps(value, protocol=2))
            assert np.asarray(got).dtype == numpys_own.dtype and np.array_equal(got, value), key
        assert type(raw["extras"]["lr"]) is np.float64 and raw["extras"]["lr"] == 0.0125
        lrs = [g["lr"] for g in raw["optimizer"]["param_groups"]]  # warm-up leaves numpy floats there
        assert all(type(lr) is np.float64 for lr in lrs) and lrs == pytest.approx([0.005, 0.005, 0.055])


# ------------------------------------------------------------------------------------------ refusals
class _Call:
    """Pickles as ``evil.run(*args)``; the test renames ``evil.run`` in the stream to the global under test."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (_placeholder, self.args)


def _placeholder(*args):  # pragma: no cover - never called: the pickle names another global
    raise AssertionError

REFUSED = {  # global -> arguments that would leave a marker file behind if it ever ran
    "os.system": ("touch {m}",),
    "posix.system": ("touch {m}",),
    "subprocess.Popen": (["touch", "{m}"],),
    "subprocess.check_output": (["touch", "{m}"],),
    "subprocess.run": (["touch", "{m}"],),
    "builtins.eval": ("open({m!r}, 'w')",),
    "builtins.exec": ("open({m!r}, 'w')",),
    "builtins.__import__": ("os",),
    "importlib.import_module": ("os",),
    "importlib.util.spec_from_file_location": ("x", "{m}"),
    "numpy.load": ("{m}",),
    "numpy.fromfile": ("{m}",),
    "numpy.frombuffer": (b"\0" * 8,),
    "numpy.testing.assert_equal": (1, 1),
    "numpy.f2py.run_main": (["-h"],),
    "numpy.core.multiarray.fromfile": ("{m}",),
    "numpy._core.multiarray.fromstring": ("x",),
    "numpy.lib.format.read_array": ("{m}",),
    "numpy.ctypeslib.load_library": ("libc", "/"),
    "argparse.ArgumentParser": (),
    "torch.load": ("{m}",),
}


@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_global(tmp_path, official, name, container):
    marker = tmp_path / "ran"
    args = tuple(a.format(m=str(marker)) if isinstance(a, str) else
                 [x.format(m=str(marker)) for x in a] if isinstance(a, list) else a for a in REFUSED[name])
    module, attr = name.rsplit(".", 1)
    ckpt = stripped(trainer_checkpoint(copy.deepcopy(official[0]), ema=None))
    ckpt["extra"] = _Call(*args)
    path = save_official(ckpt, tmp_path / "evil.pt", legacy=container == "legacy",
                         renames={f"{__name__}\n_placeholder": f"{module}\n{attr}"})
    assert name in pickled_globals(path)
    with pytest.raises(CheckpointError, match=f"refusing global '{name}'"):
        yp.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["object-dtype", "structured-dtype", "reconstruct-other-class",
                                  "codecs-other-encoding", "bytes-with-size"])
def test_numpy_shapes_outside_plain_arrays_are_refused(tmp_path, official, case):
    ckpt = stripped(trainer_checkpoint(copy.deepcopy(official[0]), ema=None))
    renames = None
    if case == "object-dtype":
        ckpt["extra"] = np.array([1, "a"], dtype=object)
    elif case == "structured-dtype":
        ckpt["extra"] = np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])
    elif case == "reconstruct-other-class":  # _reconstruct(<not ndarray>, ...)
        ckpt["extra"] = _Call(collections.OrderedDict, (0,), b"b")
        renames = {f"{__name__}\n_placeholder": "numpy._core.multiarray\n_reconstruct"}
    elif case == "codecs-other-encoding":
        ckpt["extra"], renames = _Call("cHdu", "base64"), {f"{__name__}\n_placeholder": "_codecs\nencode"}
    else:
        ckpt["extra"], renames = _Call(10**12), {f"{__name__}\n_placeholder": "__builtin__\nbytes"}
    path = save_official(ckpt, tmp_path / "odd.pt", renames=renames)
    with pytest.raises(CheckpointError, match="refusing"):
        yp.load_model(path)


# ------------------------------------------------------------------------------------------ bounds
def _cli_info(path: Path, limit_gb: int = 24) -> subprocess.CompletedProcess:
    """``yolo-prune info --weights path`` with address space capped, so a loader that allocates what a file
    claims fails fast instead of exhausting the machine."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit_gb << 30, limit_gb << 30))

    return subprocess.run([sys.executable, "-m", "yolo_prune", "info", "--weights", str(path)], capture_output=True,
                          text=True, preexec_fn=cap, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_native_checkpoint_with_absurd_width_fails_by_name_without_allocating(tmp_path, tiny_model):
    ckpt = torch.load(yp.save_checkpoint(tiny_model, tmp_path / "m.pt"), weights_only=True)
    ckpt["widths"][3] = 10**9  # would need terabytes for layer 3 and its consumers
    torch.save(ckpt, tmp_path / "absurd.pt")
    res = _cli_info(tmp_path / "absurd.pt")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"{tmp_path / 'absurd.pt'}: widths[3] = 1000000000 but the weights hold 32 filters" in res.stderr
    ckpt["widths"][3] = -5
    torch.save(ckpt, tmp_path / "negative.pt")
    with pytest.raises(CheckpointError, match=r"negative\.pt: widths\[3\] = -5 but the weights hold 32 filters"):
        yp.load_model(tmp_path / "negative.pt")


def test_official_checkpoint_with_broadcast_weights_fails_without_allocating(tmp_path, official):
    """A pickled view with zero strides claims 10^5 filters over one stored number; the layers after it too."""
    tree = copy.deepcopy(official[0])
    big = 100_000
    claims = {}
    for key, value in tree.state_dict().items():
        if key.startswith("model.1.") and value.ndim:  # layer 1 and its BN claim `big` filters
            claims[key] = value.reshape(-1)[:1].reshape([1] * value.ndim).expand(big, *value.shape[1:])
        if key in ("model.2.conv.weight", "model.3.conv.weight"):  # its consumers: `big` input channels
            claims[key] = value.reshape(-1)[:1].reshape(1, 1, 1, 1).expand(value.shape[0], big, 1, 1)
    set_state(tree, claims, copy=False)
    path = save_official({"model": tree}, tmp_path / "broadcast.pt")
    res = _cli_info(path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"{path}: tensor model.1.conv.weight claims shape (100000, 32, 3, 3)" in res.stderr


@pytest.mark.parametrize("field,value,message", [
    ("nc", "80", r"'nc' must be a positive integer.*got '80'"),
    ("nc", 10**9, r"nc=1000000000 with 3 anchors per level needs 3000000015 filters in the head, but "
                  r"model\.77\.m\.0\.weight holds 255"),
    ("anchors", "3", r"'anchors' must be a list of levels"),
    ("anchors", [[10, "x"]], r"'anchors' must be a list"),
    ("width_multiple", -1.0, r"'width_multiple' must be a number in \(0, 16\], got -1\.0"),
    ("depth_multiple", "1", r"'depth_multiple' must be a number in \(0, 16\], got '1'"),
    ("ch", 10**9, r"weights do not fit the architecture: model\.0\.conv\.weight: checkpoint \(32, 3, 3, 3\) vs "
                  r"model \(32, 1000000000, 3, 3\)"),
])
def test_official_checkpoint_with_malformed_embedded_cfg(tmp_path, official, field, value, message):
    tree = copy.deepcopy(official[0])
    tree.yaml = {**tree.yaml, field: value}
    path = save_official({"model": tree, "epoch": -1}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as err:
        yp.load_model(path)
    assert str(path) in str(err.value)


def test_malformed_embedded_cfg_exits_2_through_the_cli(tmp_path, official):
    tree = copy.deepcopy(official[0])
    tree.yaml = {**tree.yaml, "nc": "3"}
    path = save_official({"model": tree}, tmp_path / "bad.pt")
    res = _cli_info(path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{path} (embedded cfg): 'nc' must be a positive integer" in res.stderr


@pytest.mark.parametrize("field,value,message", [
    ("widths", "abc", r"'widths' must be a list of integers"),
    ("state_dict", {"model.0.conv.weight": [1.0, 2.0]}, r"'state_dict' must map names to tensors"),
    ("cfg", {"nc": "3"}, r"missing key 'anchors'"),
])
def test_native_checkpoint_with_malformed_fields(tmp_path, tiny_model, field, value, message):
    ckpt = torch.load(yp.save_checkpoint(tiny_model, tmp_path / "m.pt"), weights_only=True)
    ckpt[field] = value
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as err:
        yp.load_model(tmp_path / "bad.pt")
    assert str(tmp_path / "bad.pt") in str(err.value)


def test_resuming_an_official_run_says_how_to_continue_from_it(tmp_path, official, capsys):
    """`--resume` of a YOLOv7 train.py last.pt: not resumable here (its optimizer groups and schedule are the
    official trainer's); the error names it and the command that continues from its weights."""
    from yolo_prune.cli import main

    tree, _ = official
    (tmp_path / "exp" / "weights").mkdir(parents=True)
    path = save_official(trainer_checkpoint(_perturbed(tree, 1), ema=_perturbed(tree, 2), epoch=41),
                         tmp_path / "exp" / "weights" / "last.pt")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["train", "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the last.pt of a YOLOv7 train.py run (epoch 41)" in err and f"train --weights {path}" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
