"""Darknet .cfg + .weights: parsing, the model's outputs against an independent NumPy forward pass, the weights
format (header, seen width, BN order) and the byte-for-byte round trip, pruned models written back."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from darknet_reference import forward as reference_forward
from yolo_prune.checkpoint import load_checkpoint, load_model, save_checkpoint
from yolo_prune.checkpoint.darknet import (WeightsHeader, load_darknet, read_weights_file, save_darknet,
                                           weights_bytes)
from yolo_prune.errors import CheckpointError, ConfigError
from yolo_prune.models import build_model
from yolo_prune.models.complexity import count_params, op_costs
from yolo_prune.models.darknet import DarknetModel, parse_darknet_cfg, read_darknet_cfg
from yolo_prune.models.darknet.layers import DarknetMaxPool
from yolo_prune.prune import prune

DATA = Path(__file__).resolve().parent / "data" / "darknet"


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights, BN statistics and biases (BN is no identity, biases are not the init's)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")) or ".bn.weight" in name or name.endswith("weight"):
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * (0.5 if t.dim() > 1 else 1.0))
    return model.eval()


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    model = randomise(build_model(DATA / "mixed.cfg"), 0)
    return save_darknet(model, out / "mixed.cfg", out / "mixed.weights")


def test_outputs_equal_an_independent_numpy_forward_pass(mixed_files):
    """Every layer type (grouped routes, shortcut, sam, scale_channels, padded max-pool, no-BN conv, both
    [yolo] decodings) against NumPy code written from Darknet's C semantics, reading the same files."""
    cfg, weights = mixed_files
    model = load_model(weights)
    image = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        pred, raw = model(torch.from_numpy(image)[None])
    levels = sorted(reference_forward(cfg, weights, image), key=lambda lv: -lv[0])  # finest first, as the head
    expected = np.concatenate([dets for _, dets in levels])
    assert pred.shape == (1, len(expected), 7)
    np.testing.assert_allclose(pred[0].numpy(), expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("size,stride,padding", [(2, 2, 1), (2, 1, 1), (3, 2, 2), (5, 1, 4), (2, 2, 0), (1, 2, 0)])
def test_maxpool_inference_path_equals_the_training_path(size, stride, padding):
    """CPU inference (strided maxima) and autograd (F.max_pool2d on the padded input) give the same values."""
    torch.manual_seed(size * 10 + stride)
    pool = DarknetMaxPool(size, stride, padding)
    x = torch.randn(2, 3, 13, 10)
    with torch.no_grad():
        fast = pool(x)
    slow = pool(x.clone().requires_grad_(True))
    assert fast.shape == slow.shape and torch.equal(fast, slow.detach())


def test_a_yolo_layer_decodes_as_derived_by_hand(tmp_path):
    """Zero weights: every cell predicts sigmoid/exp of the biases only, so the boxes follow in closed form."""
    cfg = ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=7\nsize=1\nstride=1\nactivation=linear\n"
           "[yolo]\nmask=0\nanchors=10,20\nnum=1\nclasses=2\nscale_x_y=1.2\n")
    path = tmp_path / "one.cfg"
    path.write_text(cfg)
    model = build_model(path)
    conv = model.detect.m[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([0.0, 1.0, 0.5, -1.0, 2.0, 0.0, -3.0]))
        pred = model.eval()(torch.rand(1, 3, 32, 32))[0][0]  # [32 * 32, 7], stride 1
    sig = torch.sigmoid
    x0 = sig(torch.tensor(0.0)) * 1.2 - 0.1
    y0 = sig(torch.tensor(1.0)) * 1.2 - 0.1
    cell = 5 * 32 + 7  # row 5, column 7
    expected = torch.tensor([7 + x0, 5 + y0, np.exp(0.5) * 10, np.exp(-1.0) * 20, sig(torch.tensor(2.0)), 0.5,
                             sig(torch.tensor(-3.0))])
    torch.testing.assert_close(pred[cell], expected.float())


@pytest.mark.parametrize("name,bflops", [("yolov3-tiny", 5.571), ("yolov4-tiny", 6.910)])
def test_shapes_match_darknets_printed_bflops(name, bflops):
    """Darknet prints BFLOPS = 2 x conv MACs + max-pool comparisons (size^2 per output); equal figures at 416
    mean every layer has Darknet's shape."""
    model = build_model(DATA / f"{name}.cfg").eval()
    modules = dict(model.named_modules())
    convs = sum(2 * c.macs for c in op_costs(model, 416) if isinstance(modules[c.name], torch.nn.Conv2d))
    pools: list[int] = []
    for m in model.modules():
        if isinstance(m, DarknetMaxPool):
            m.register_forward_hook(lambda mod, i, o: pools.append(mod.size ** 2 * o[0].numel()))
    with torch.no_grad():
        model(torch.zeros(1, 3, 416, 416))
    assert round((convs + sum(pools)) / 1e9, 3) == bflops


def test_parse_keeps_every_byte_and_names_lines(tmp_path):
    text = (DATA / "yolov4-tiny.cfg").read_text().replace("\n", "\r\n")
    cfg = parse_darknet_cfg(text, "v4.cfg")
    assert cfg.text() == text and len(cfg.layers) == 38
    assert cfg.layers[3].kind == "route" and cfg.layers[3].int("groups") == 2
    changed = cfg.with_options({0: {"filters": "24"}, 30: {"classes": "3"}})
    diff = [(a, b) for a, b in zip(text.splitlines(True), changed.text().splitlines(True)) if a != b]
    assert diff == [("filters=32\r\n", "filters=24\r\n"), ("classes=80\r\n", "classes=3\r\n")]
    with pytest.raises(ConfigError, match=r"v4.cfg:\d+: \[convolutional\] \(layer 1\): filters='x6' is not an integer"):
        build_model(_tmp_cfg(tmp_path, text.replace("filters=64", "filters=x6", 1)))
    with pytest.raises(ConfigError, match=r"layer type \[connected\] is not supported"):
        build_model(_tmp_cfg(tmp_path, text + "[connected]\noutput=10\n"))
    with pytest.raises(ConfigError, match="the first section must be \\[net\\]"):
        parse_darknet_cfg("[convolutional]\nfilters=3\n")
    with pytest.raises(ConfigError, match=r"layers \[\d+, 8\] have different sizes"):
        build_model(_tmp_cfg(tmp_path, text.replace("layers=-1, 23", "layers=-1, 8")))


def _tmp_cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "v4.cfg"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov4-tiny", "mixed"])
def test_round_trip_is_bit_for_bit(tmp_path, name):
    """Read a .cfg + .weights, write them again: identical bytes (header, seen, BN order, weights)."""
    model = randomise(build_model(DATA / f"{name}.cfg"), 1)
    (tmp_path / "a").mkdir()
    cfg_a, weights_a = save_darknet(model, tmp_path / "a" / "m.cfg", tmp_path / "a" / "m.weights")
    # a header as older Darknet wrote it: version 0.1.0, seen as 32 bits
    payload = weights_a.read_bytes()[20:]
    weights_a.write_bytes(struct.pack("<3iI", 0, 1, 0, 123456) + payload)
    loaded = load_model(weights_a)
    assert loaded.header == (0, 1, 0, 123456)
    cfg_b, weights_b = save_darknet(loaded, tmp_path / "b.cfg", tmp_path / "b.weights")
    assert weights_b.read_bytes() == weights_a.read_bytes()
    assert cfg_b.read_bytes() == (DATA / f"{name}.cfg").read_bytes()
    # through our checkpoint format and back: the same bytes again
    save_checkpoint(loaded, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt")
    assert isinstance(again, DarknetModel) and weights_bytes(again) == weights_a.read_bytes()


def test_weights_layout_bias_scale_mean_var_then_weights(tmp_path):
    """The first conv's values sit in the file in Darknet's order, after a 64-bit 'seen' for version 0.2."""
    model = randomise(build_model(DATA / "yolov3-tiny.cfg"), 2)
    _, path = save_darknet(model, tmp_path / "t.cfg", tmp_path / "t.weights")
    header, payload = read_weights_file(path)
    assert header == WeightsHeader(0, 2, 5, 0) and header.seen_64bit
    assert path.read_bytes()[:20] == struct.pack("<3iQ", 0, 2, 5, 0)
    first = model.conv_modules()[0]
    n = 16
    expected = [first.bn.bias, first.bn.weight, first.bn.running_mean, first.bn.running_var, first.conv.weight]
    flat = torch.cat([t.detach().flatten() for t in expected]).numpy()
    np.testing.assert_array_equal(payload[: len(flat)], flat)
    assert len(flat) == 4 * n + n * 3 * 3 * 3
    assert len(payload) == count_params(model) + sum(m.bn.num_features for m in model.conv_modules()
                                                     if isinstance(m.bn, torch.nn.BatchNorm2d)) * 2


def test_bad_weights_files_are_named(tmp_path):
    model = build_model(DATA / "yolov4-tiny.cfg")
    cfg, weights = save_darknet(model, tmp_path / "m.cfg", tmp_path / "m.weights")
    weights.write_bytes(weights.read_bytes()[:-400])
    with pytest.raises(CheckpointError, match=r"m.weights: ends in layer 36 \(weights\)"):
        load_darknet(cfg, weights)
    (tmp_path / "other.weights").write_bytes(weights.read_bytes())
    with pytest.raises(CheckpointError, match=r"expected .*other.cfg beside them"):
        load_model(tmp_path / "other.weights")


def test_pruned_model_written_back_reads_into_the_same_model(tmp_path):
    """Filters updated in the cfg, header kept, and the written pair rebuilds the pruned model exactly."""
    model = randomise(build_model(DATA / "yolov4-tiny.cfg"), 3)
    src_cfg, src_weights = save_darknet(model, tmp_path / "src.cfg", tmp_path / "src.weights")
    loaded = load_model(src_weights)
    pruned = prune(loaded, 0.5, "l1", summarize=False).model
    cfg, weights = save_darknet(pruned, tmp_path / "pruned.cfg", tmp_path / "pruned.weights")
    text = read_darknet_cfg(cfg)
    assert [s.int("filters") for s in text.layers if s.kind == "convolutional"][:4] == [16, 32, 32, 16]
    assert read_weights_file(weights)[0] == read_weights_file(src_weights)[0]
    back = load_checkpoint(weights).model
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], pruned(x)[0])
    assert back.widths() == pruned.widths()


def test_int8_preparation_follows_the_scale_through_darknet_maxpools():
    """The int8 linker passes a quantizer's scale through [maxpool] layers (asymmetric Darknet padding and the
    strided-maxima kernels alike), so a yolov3-tiny prepares for TensorRT Q/DQ."""
    from yolo_prune.quant.prepare import quantize_model

    model = build_model(str(DATA / "yolov3-tiny.cfg")).eval()
    prepared = quantize_model(model, "tensorrt", 64)
    assert prepared.quantizers > 0
