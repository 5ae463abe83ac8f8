"""Official checkpoints load safely and exactly; our format round-trips; hostile pickles are refused."""
from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

import yolo_prune as yp
from yolo_prune.errors import CheckpointError
from yolo_prune.models.fuse import fuse


def test_official_fixture_reproduces_expected_output(official_tiny_path, fixtures_dir):
    model = yp.load_model(official_tiny_path)
    expected = torch.load(fixtures_dir / "yolov7-tiny-random-official-format.expected.pt", weights_only=True)
    with torch.no_grad():
        out = model(expected["input"])[0]
    assert out.shape == expected["output"].shape == (1, 4032, 85)
    torch.testing.assert_close(out, expected["output"], atol=1e-3, rtol=1e-3)


def test_official_fixture_weights_are_the_pickled_ones(official_tiny_path):
    from yolo_prune.checkpoint.legacy import pick_model, read_official, state_dict_of

    raw = state_dict_of(pick_model(read_official(official_tiny_path), official_tiny_path))
    ours = yp.load_model(official_tiny_path).state_dict()
    assert set(raw) == set(ours)
    for k, v in raw.items():
        assert torch.equal(v.to(ours[k].dtype), ours[k]), k


class _Payload:
    """Pickles as a call to os.system, the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_before_running(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": _Payload(marker)}
    if container == "zip":
        torch.save(payload, path)
    else:
        with path.open("wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing global '(posix|os|nt)\.system'"):
        yp.load_model(path)
    assert not marker.exists()


def test_not_a_model_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointError, match="no YOLOv7 model"):
        yp.load_model(path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint at all, just some bytes" * 4)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        yp.load_model(junk)
    with pytest.raises(CheckpointError, match="not found"):
        yp.load_model(tmp_path / "missing.pt")


@pytest.mark.parametrize("fused", [False, True])
def test_native_round_trip_is_exact(tmp_path, tiny_model, fused):
    import copy

    model = copy.deepcopy(tiny_model)
    widths = model.widths()
    widths[5] = 8  # a "pruned" architecture must rebuild from the recorded widths
    model = yp.build_model("yolov7-tiny", widths=widths).eval()
    if fused:
        fuse(model, implicit=True)
    path = yp.save_checkpoint(model, tmp_path / "m.pt", history=[{"event": "prune", "layers": [5]}])
    raw = torch.load(path, weights_only=True)
    assert raw["widths"][5] == 8 and raw["history"][0]["event"] == "prune"
    loaded = yp.load_checkpoint(path)
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded.model(x)[0])
    assert loaded.history == [{"event": "prune", "layers": [5]}]


def test_native_shape_mismatch_is_an_error(tmp_path, tiny_model):
    path = yp.save_checkpoint(tiny_model, tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["widths"][3] = 16  # architecture says 16 filters, weights have 32
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"widths\[3\] = 16 but the weights hold 32 filters \(model\.3\.conv\.weight\)"):
        yp.load_model(path)
    ckpt = torch.load(yp.save_checkpoint(tiny_model, tmp_path / "m.pt"), weights_only=True)
    ckpt["state_dict"]["model.3.bn.running_mean"] = torch.zeros(16)  # one BN buffer of another size
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"model\.3\.bn\.running_mean: checkpoint \(16,\) vs model \(32,\)"):
        yp.load_model(path)


def test_save_is_atomic(tmp_path, tiny_model, monkeypatch):
    target = tmp_path / "m.pt"

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        yp.save_checkpoint(tiny_model, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_official_format_fused_head_is_not_folded_twice(tmp_path, official_tiny_path):
    """An official checkpoint saved after IDetect.fuse() keeps ia/im but uses fuseforward."""
    from yolo_prune.checkpoint.legacy import _head_is_fused, pick_model, read_official
    from yolo_prune.checkpoint.unpickler import AttributeRef

    root = pick_model(read_official(official_tiny_path), official_tiny_path)
    assert not _head_is_fused(root)
    head = list(root.state["_modules"]["model"].state["_modules"].values())[-1]
    head.state["forward"] = AttributeRef(None, "fuseforward")
    assert _head_is_fused(root)
    assert zipfile.is_zipfile(official_tiny_path)
