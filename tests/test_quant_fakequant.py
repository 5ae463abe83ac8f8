"""Fake quantization numerics: power-of-two rounding, int8 clamping, straight-through gradients, calibration."""
from __future__ import annotations

import pytest
import torch

from yolo_prune.quant.calibrate import calibrate
from yolo_prune.quant.fakequant import FakeQuantize, fake_quant, pow2_scale, weight_scale


def test_pow2_scale_is_the_smallest_power_of_two_that_does_not_overflow():
    amax = torch.tensor([1.0, 127.0, 127.5, 0.3, 1000.0])
    s = pow2_scale(amax)
    assert torch.equal(s, torch.tensor([2.0 ** -6, 1.0, 2.0, 2.0 ** -8, 8.0]))
    assert torch.all(s * 127 >= amax) and torch.all(s / 2 * 127 < amax)


def test_fake_quant_rounds_half_to_even_on_the_grid_and_clamps_to_int8():
    scale = torch.tensor(0.25)
    x = torch.tensor([0.1, 0.125, 0.375, -0.3, 31.74, 40.0, -40.0, -32.0])
    # 0.125 / 0.25 = 0.5 -> 0 (half to even, as ONNX QuantizeLinear), 0.375 -> 1.5 -> 2; clamp to [-128, 127] steps
    want = torch.tensor([0.0, 0.0, 0.5, -0.25, 31.75, 31.75, -32.0, -32.0])
    assert torch.equal(fake_quant(x, scale), want)


def test_fake_quant_per_channel_uses_each_channels_scale():
    x = torch.tensor([[1.3, -1.3], [1.3, -1.3]])
    out = fake_quant(x, torch.tensor([1.0, 0.5]), axis=0)
    assert torch.equal(out, torch.tensor([[1.0, -1.0], [1.5, -1.5]]))


def test_straight_through_gradient_is_one_inside_the_range_and_zero_where_clamped():
    x = torch.tensor([0.3, -5.0, 31.0, 40.0, -33.0], requires_grad=True)
    fake_quant(x, torch.tensor(0.25)).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))


def test_fake_quant_keeps_half_precision_inputs_in_their_dtype():
    x = torch.tensor([0.3, -0.7], dtype=torch.float16)
    out = fake_quant(x, torch.tensor(0.25))
    assert out.dtype == torch.float16 and torch.equal(out, torch.tensor([0.25, -0.75], dtype=torch.float16))


def test_weight_scale_mse_may_clip_an_outlier_but_never_picks_a_worse_scale():
    torch.manual_seed(0)
    w = torch.randn(64, 16, 3, 3) * 0.05
    w[0, 0, 0, 0] = 1.0  # one outlier sets the max
    plain, mse = weight_scale(w, True), weight_scale(w, True, mse_steps=3)
    assert float(plain) == 2.0 ** -6 and float(mse) < float(plain)  # clipping the outlier wins
    err = lambda s: float(((fake_quant(w, s) - w) ** 2).sum())  # noqa: E731
    assert err(mse) <= err(plain)
    per_channel = weight_scale(w, False, axis=0)
    assert per_channel.shape == (64,) and torch.allclose(per_channel * 127, w.abs().amax((1, 2, 3)))


def test_fake_quantize_module_refuses_non_power_of_two_scales_and_is_off_until_set():
    q = FakeQuantize(power_of_two=True)
    x = torch.tensor([0.3])
    assert torch.equal(q(x), x)  # not calibrated yet: pass-through
    with pytest.raises(ValueError, match="not a power of two"):
        q.set_scale(torch.tensor(0.3))
    q.set_scale(torch.tensor(0.25))
    assert torch.equal(q(x), torch.tensor([0.25])) and q.enabled


def test_calibration_picks_the_least_squared_error_power_of_two(tiny_quant_model):
    from yolo_prune.quant.prepare import activation_quantizers

    images = [torch.rand(1, 3, 64, 64) for _ in range(2)]
    report = calibrate(tiny_quant_model.model, images)
    quantizers = activation_quantizers(tiny_quant_model.model)
    assert report.images == 2 and report.quantizers == len(quantizers)
    image_q = quantizers["model.0.image_quant"]
    assert float(image_q.scale) == 2.0 ** -7  # inputs in [0, 1): 127 * 2^-7 covers them with the finest step
    assert all(q.enabled for q in quantizers.values())
