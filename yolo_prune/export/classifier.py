"""ONNX export of classifiers (logits ``[B, nc]`` from ``images [B, in_ch, S, S]``): traced in eval mode with
BatchNorm folded by the exporter's constant folding, checked with onnx.checker, and verified in ONNX Runtime
against PyTorch on two different inputs; the file is written only when every check passes. Weights are exported
as they are, so kernel-masked zeros stay zeros."""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from yolo_prune.errors import CheckFailed
from yolo_prune.export.files import atomic_path

TOLERANCE = 1e-3


def export_classifier_onnx(model: nn.Module, path: str | Path, batch_size: int = 1, opset: int = 12,
                           verify: bool = True) -> float:
    """Write ``model`` (not modified) to ``path``; returns the largest relative |ORT - PyTorch| difference."""
    import onnx

    from yolo_prune.export.verify import ort_session, run_ort

    ref = copy.deepcopy(model).float().cpu().eval()
    shape = (batch_size, ref.ch_in, ref.img_size, ref.img_size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (as in onnx_export)
        torch.onnx.export(ref, (torch.zeros(shape),), buf, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["logits"], do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    worst = 0.0
    if verify:
        session = ort_session(proto.SerializeToString())
        for seed in (0, 1):
            x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                expected = ref(x)
            got = run_ort(session, x)[0]
            worst = max(worst, float((got - expected).abs().max() / max(1.0, float(expected.abs().max()))))
        if worst > TOLERANCE:
            raise CheckFailed(f"ONNX Runtime differs from PyTorch by {worst:.2e} (tolerance {TOLERANCE:g}); "
                              f"nothing written")
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return worst
