"""letterbox / preprocess / scale_boxes: YOLOv7 shapes and padding, purity, and the box round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_prune.data import letterbox, preprocess, scale_boxes


def _img(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random HWC RGB uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw, new, ratio, pad, unpad", [
    ((480, 640), 640, 1.0, (0.0, 80.0), (480, 640)),
    ((100, 200), 64, 0.32, (0.0, 16.0), (32, 64)),
    ((31, 64), 64, 1.0, (0.0, 16.5), (31, 64)),  # odd pad: 16 on top, 17 below
    ((50, 20), (64, 48), 1.28, (11.0, 0.0), (64, 26)),
])
def test_letterbox_shape_and_padding(hw, new, ratio, pad, unpad) -> None:
    img = _img(*hw)
    out, r, (dw, dh) = letterbox(img, new)
    nh, nw = (new, new) if isinstance(new, int) else new
    assert out.shape == (nh, nw, 3) and out.dtype == np.uint8
    assert r == pytest.approx((ratio, ratio)) and (dw, dh) == pytest.approx(pad)
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    assert (out[:top] == 114).all() and (out[:, :left] == 114).all()
    assert (out[top + unpad[0]:] == 114).all() and (out[:, left + unpad[1]:] == 114).all()
    if hw == unpad:
        np.testing.assert_array_equal(out[top:top + hw[0], left:left + hw[1]], img)


def test_letterbox_auto_and_scaleup() -> None:
    out, _, (dw, dh) = letterbox(_img(100, 200), 640, auto=True, stride=32)
    assert out.shape == (320, 640, 3) and (dw, dh) == (0.0, 0.0)
    out, r, _ = letterbox(_img(100, 200), 640, scaleup=False)
    assert out.shape == (640, 640, 3) and r == (1.0, 1.0)
    out, _, _ = letterbox(_img(10, 20), 32, color=(1, 2, 3))
    assert out[0, 0].tolist() == [1, 2, 3] and out[-1, -1].tolist() == [1, 2, 3]


def test_letterbox_is_pure_and_deterministic() -> None:
    img = _img(123, 77)
    before = img.copy()
    a = letterbox(img, 96)[0]
    b = letterbox(img, 96)[0]
    np.testing.assert_array_equal(img, before)
    np.testing.assert_array_equal(a, b)


def test_preprocess_tensor() -> None:
    t, ratio, pad = preprocess(_img(120, 200), 96, 32)
    assert t.shape == (1, 3, 96, 96) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert ratio == pytest.approx((0.48, 0.48)) and pad == pytest.approx((0.0, 19.0))
    assert preprocess(_img(120, 200), 96, 32, auto=True)[0].shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="HWC RGB uint8"):
        preprocess(np.zeros((4, 4), np.uint8), 32)


@pytest.mark.parametrize("hw, size", [((480, 640), 320), ((333, 120), (256, 192)), ((50, 60), 128)])
def test_scale_boxes_round_trip(hw, size) -> None:
    h0, w0 = hw
    boxes = np.array([[0, 0, w0, h0], [10.0, 5.0, 40.5, 30.25], [w0 - 20, h0 - 10, w0, h0]])
    out, ratio, (dw, dh) = letterbox(_img(*hw), size)
    boxed = boxes * ratio[0] + np.array([dw, dh, dw, dh])
    back = scale_boxes(boxed, out.shape[:2], hw, (ratio, (dw, dh)))
    np.testing.assert_allclose(back, boxes, atol=1e-6)
    approx = scale_boxes(torch.tensor(boxed), out.shape[:2], hw)  # gain/pad recomputed from shapes
    np.testing.assert_allclose(approx.numpy(), boxes, atol=0.6 / ratio[0])
    np.testing.assert_allclose(boxed, boxes * ratio[0] + np.array([dw, dh, dw, dh]))  # input untouched


def test_scale_boxes_clips_and_keeps_extra_columns() -> None:
    preds = torch.tensor([[-10.0, -5.0, 500.0, 400.0, 0.9, 3.0]])
    out = scale_boxes(preds, (320, 320), (100, 200), ((1.6, 1.6), (0.0, 80.0)))
    assert out.tolist() == [[0.0, 0.0, 200.0, 100.0, pytest.approx(0.9), 3.0]]
    assert preds[0, 0] == -10.0
