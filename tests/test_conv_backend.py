"""yolo_prune.models.conv_backend: one convolution kernel on CPU whatever the batch size and thread count."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn as nn

from yolo_prune.models import build_model
from yolo_prune.models.conv_backend import onednn_convolutions


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("yolov7-tiny", nc=2).eval()


def _outputs(model, x, n_threads, batch, override):
    """The head's raw maps (its convolutions' outputs times ImplicitM, before the sigmoid) for ``x`` computed in a
    batch of ``batch`` rows (``x`` repeated), first rows kept, concatenated. (The sigmoid after them is not compared:
    PyTorch computes the last few elements of a tensor that do not fill a vector with its scalar formula, which can
    differ from the vectorised one in the last bit, so its values may depend on where an image sits in a batch.)"""
    rows = x.repeat(batch // len(x), 1, 1, 1)
    with threads(n_threads), torch.inference_mode(), onednn_convolutions(model, override):
        return torch.cat([level[:len(x)].flatten() for level in model(rows)[1]])


def test_outputs_do_not_depend_on_batch_size_or_threads(tiny):
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # the premise: on one thread PyTorch runs 1x1 convolutions below batch 16 on its native kernel, above on oneDNN
    assert not torch.equal(_outputs(tiny, x, 1, 4, False), _outputs(tiny, x, 1, 16, False))
    ref = _outputs(tiny, x, 1, 4, True)
    assert torch.equal(ref, _outputs(tiny, x, 1, 16, True))
    assert torch.equal(ref, _outputs(tiny, x, 2, 4, True))
    assert torch.equal(ref, _outputs(tiny, x, 1, 16, False))  # what PyTorch itself computes at batch 16


def test_layers_are_restored_and_nested_blocks_keep_the_outer_override(tiny):
    convs = [m for m in tiny.modules() if isinstance(m, nn.Conv2d)]
    with onednn_convolutions(tiny):
        assert all("_conv_forward" in vars(m) for m in convs)
        with onednn_convolutions(tiny):
            pass
        assert all("_conv_forward" in vars(m) for m in convs)  # the inner block left the outer one's in place
    assert not any("_conv_forward" in vars(m) for m in convs)
    with onednn_convolutions(tiny, enabled=False):
        assert not any("_conv_forward" in vars(m) for m in convs)
    with pytest.raises(RuntimeError, match="inside"), onednn_convolutions(tiny):
        raise RuntimeError("inside")
    assert not any("_conv_forward" in vars(m) for m in convs)  # restored after an error too


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the calls of ``torch.mkldnn_convolution`` (the override's; PyTorch's own path calls it in C++)."""
    calls = []
    original = torch.mkldnn_convolution

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(torch, "mkldnn_convolution", counting)
    return calls


@pytest.mark.parametrize("case", ["grad", "float64", "string padding", "reflect padding"])
def test_other_inputs_take_pytorchs_own_path(case, onednn_calls):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 1, padding="same" if case == "string padding" else 0,
                     padding_mode="reflect" if case == "reflect padding" else "zeros")
    x = torch.randn(2, 8, 6, 6)
    if case == "float64":
        conv, x = conv.double(), x.double()
    with onednn_convolutions(conv), torch.set_grad_enabled(case == "grad"):
        y = conv(x)
    assert not onednn_calls
    assert torch.equal(y, conv(x))
    if case == "grad":
        y.sum().backward()
        assert conv.weight.grad is not None


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_float32_inputs_go_through_onednn_with_every_conv_setting(layout, onednn_calls):
    """Every conv setting and memory layout: oneDNN's values, as PyTorch computes them where it picks oneDNN itself
    (two threads, batch 16), in the layout PyTorch would return."""
    torch.manual_seed(0)
    x = torch.randn(16, 8, 9, 9)
    x = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
         "strided": torch.randn(16, 16, 9, 9)[:, ::2]}[layout]
    convs = (nn.Conv2d(8, 4, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
             nn.Conv2d(8, 4, 1, bias=False))
    for n, conv in enumerate(convs, 1):
        if layout == "channels_last":
            conv.to(memory_format=torch.channels_last)
        with threads(2), torch.inference_mode():
            want = conv(x)
        with threads(1), torch.inference_mode(), onednn_convolutions(conv):
            got = conv(x)
        assert len(onednn_calls) == n
        assert torch.equal(got, want)
        assert got.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(
            memory_format=torch.channels_last)


def test_the_inputs_layout_alone_picks_the_kernel():
    """Weights left in channels-last by training (an EMA model's) give the values of contiguous ones for an NCHW
    input, and an NCHW output (PyTorch itself would switch the input to channels-last and sum in another order)."""
    torch.manual_seed(0)
    x = torch.randn(16, 32, 12, 12)
    for k in (1, 3):
        conv = nn.Conv2d(32, 32, k, padding=k // 2)
        with torch.inference_mode(), onednn_convolutions(conv):
            want = conv(x)
            conv.to(memory_format=torch.channels_last)
            got = conv(x)
        assert torch.equal(got, want) and got.is_contiguous()


def test_a_copy_made_outside_the_block_is_untouched(tiny):
    copied = copy.deepcopy(tiny)
    with onednn_convolutions(tiny):
        assert not any("_conv_forward" in vars(m) for m in copied.modules())


def test_an_evaluation_runs_its_convolutions_on_onednn_and_gives_the_models_layers_back(tmp_path, onednn_calls):
    """evaluate() (what `yolo-prune test`, training's validation and the iterate loop run) on one thread at batch 2,
    where PyTorch alone would run the 1x1 convolutions natively: every convolution call goes through oneDNN."""
    from yolo_prune.data.synth import generate_synthetic
    from yolo_prune.pipeline.evaluation import DataSettings, evaluate_on_data

    data = generate_synthetic(tmp_path / "data", n_train=0, n_val=4, img_size=64, n_classes=2, seed=0).data_yaml
    torch.manual_seed(0)
    model = build_model("yolov7-tiny", nc=2).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with threads(1):
        evaluate_on_data(model, DataSettings(str(data), img_size=64, batch_size=2, workers=0), device=torch.device("cpu"),
                         progress=False)
    assert len(onednn_calls) == 2 * len(convs)  # two batches, every convolution once per batch
    assert not any("_conv_forward" in vars(m) for m in convs)


def test_a_classifier_evaluation_runs_its_convolutions_on_onednn(onednn_calls):
    from yolo_prune.engine.classify.evaluate import evaluate_classifier

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 3))
    loader = [(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    with threads(1):
        result = evaluate_classifier(net, loader)
    assert result.images == 12 and len(onednn_calls) == 2 * 3  # two convolutions, three batches
