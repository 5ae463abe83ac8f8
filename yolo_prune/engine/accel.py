"""Training speed levers that keep results statistically equal: channels-last memory format, mixed precision,
``torch.compile`` (with CUDA graphs on CUDA, where training shapes are static) and input preparation with one
host-to-device copy per batch.

Mixed precision (``amp``): ``auto`` is fp16 autocast + GradScaler on CUDA (the official recipe) and full fp32
elsewhere; ``bf16`` is bfloat16 autocast (no scaler needed: bfloat16 has fp32's range) on a CPU or GPU that
computes it natively; ``fp16`` forces the CUDA recipe; ``off`` is fp32 everywhere. Weights, optimizer state and
the EMA stay fp32 in every mode.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
import torch.nn as nn

from yolo_prune.errors import ConfigError

AMP_MODES = ("auto", "off", "fp16", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA: Ampere or newer; CPU: AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of mixed-precision mode ``amp`` on ``device`` (None: fp32); ConfigError if unusable."""
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp in ("auto", "fp16"):
        if device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device (on CPU use --amp bf16 or off)")
        return torch.float16
    if not bf16_supported(device):
        raise ConfigError(f"--amp bf16: this {device.type.upper()} has no native bfloat16 support "
                          f"(use --amp off{' or fp16' if device.type == 'cuda' else ''})")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast to ``dtype`` on ``device`` (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bfloat16 and fp32 gradients do not underflow); disabled otherwise."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and dtype == torch.float16)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare_inputs(imgs: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 [B, 3, H, W] batch -> float 0..1 on ``device``: the uint8 tensor is copied (4x fewer bytes than
    float), then converted and laid out there."""
    x = imgs.to(device, non_blocking=True)
    return x.to(dtype=torch.float32, memory_format=memory_format(channels_last)).div_(255.0)


def compiled_forward(model: nn.Module, device: torch.device, enabled: bool,
                     backend: str = "inductor") -> Callable[[torch.Tensor], object]:
    """``model``'s forward, compiled when ``enabled`` (CUDA: mode ``max-autotune-no-cudagraphs`` would lose the
    graphs; ``reduce-overhead`` replays CUDA graphs for the static training shape). The module itself is kept
    unwrapped, so state dicts, EMA updates and checkpoints never see ``_orig_mod`` names."""
    if not enabled:
        return model
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(model, backend=backend, mode=mode, dynamic=False)


def describe(settings, dtype: torch.dtype | None) -> str:
    """The levers in use, for the trainer's header line (``, bf16 autocast, channels-last, compiled``)."""
    parts = [f"{str(dtype).removeprefix('torch.')} autocast"] if dtype is not None else []
    parts += ["channels-last"] if settings.channels_last else []
    parts += ["compiled"] if settings.compile else []
    return "".join(f", {p}" for p in parts)
