"""One convolution kernel for CPU float32 inference: oneDNN for every ``nn.Conv2d``, whatever the batch size and the
thread count (the kernel PyTorch itself uses with several threads or at batch 16 and above).

PyTorch chooses per call between oneDNN and its native im2col + GEMM kernel: on one thread a 1x1 convolution below
batch 16 (and, on any number of threads, a small one at batch 1) runs natively, everything else on oneDNN. The two
sum in different orders, so a model's outputs depended on the batch size and the thread count (the sensitivity
analysis' stacked passes, at batch k x B, differed from one pass per configuration by ~1e-7), and the native kernel
is 1.5-2.4x slower on these convolutions (a plain yolov7 evaluation on one thread: ~5.0 -> 3.9 s).
"""
from __future__ import annotations

from contextlib import contextmanager
from types import MethodType
from typing import Iterator

import torch
import torch.nn as nn


def _in_layout(t: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``t`` with exactly the strides ``layout`` gives its shape (PyTorch reads the layout from the strides, and a
    1x1 weight or a 1x1 map is "contiguous" in both)."""
    n, c, h, w = t.shape
    canonical = (c * h * w, h * w, w, 1) if layout == torch.contiguous_format else (h * w * c, 1, w * c, c)
    return t if t.stride() == canonical else t.clone(memory_format=layout)


def _onednn_conv_forward(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """``nn.Conv2d._conv_forward`` through oneDNN for a CPU float32 input under no-grad, the class's own otherwise.

    The input's layout alone picks the kernel: a channels-last input runs with channels-last weights, any other in
    NCHW with NCHW weights. (PyTorch switches an NCHW input to channels-last when only the weights are, as training
    in channels-last leaves an EMA model's, so the numbers would depend on the weights' history.)"""
    if (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.dim() == 4
            and not torch.is_grad_enabled()):
        layout = torch.channels_last if not x.is_contiguous() and x.stride(1) == 1 else torch.contiguous_format
        return torch.mkldnn_convolution(_in_layout(x, layout), _in_layout(weight, layout), bias, conv.padding,
                                        conv.stride, conv.dilation, conv.groups)
    return type(conv)._conv_forward(conv, x, weight, bias)


@contextmanager
def onednn_convolutions(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, ``model``'s ``nn.Conv2d`` layers (zero padding given as numbers) run oneDNN's convolution
    on CPU float32 inputs without autograd, in the input's memory layout (the values PyTorch gives when it picks
    oneDNN itself for weights in that layout); other inputs take PyTorch's usual path. The layers
    are restored afterwards (an enclosing block's keep theirs). A no-op when ``enabled`` is false or oneDNN is
    missing. Keep the block to forward passes: a copy or pickle of the model made inside it carries the override."""
    if not enabled or not torch.backends.mkldnn.is_available():
        yield
        return
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros"
             and not isinstance(m.padding, str) and "_conv_forward" not in vars(m)]
    for m in convs:
        m._conv_forward = MethodType(_onednn_conv_forward, m)
    try:
        yield
    finally:
        for m in convs:
            vars(m).pop("_conv_forward", None)
