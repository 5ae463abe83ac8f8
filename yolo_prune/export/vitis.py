"""INT8 ONNX for Vitis AI DPUs: QDQ with power-of-two scales, made by AMD Quark (its XINT8 configuration).

The float graph ends at the detection head's convs (``conv`` mode): reshape, box decoding and NMS run on
the CPU, as the DPU runs convolutions, pools, concatenations and resizes only. Calibration images get exactly
the inference pre-processing (letterbox, RGB, /255). The written file carries the export metadata, so
``yolo-prune test --weights model.int8.onnx`` evaluates it and ``deploy/vitis/run_vitis.py`` decodes it.
Quark is an optional extra (``pip install 'yolo-prune[vitis]'``) imported only here.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from yolo_prune.errors import CheckFailed, YoloPruneError
from yolo_prune.data.calibration import calibration_batches, readable_files
from yolo_prune.export.files import atomic_path
from yolo_prune.export.onnx_export import annotate, build_onnx, max_stride
from yolo_prune.export.options import ExportOptions, as_hw, check_img_size
from yolo_prune.export.verify import ort_session, run_ort, sample_images, torch_reference
from yolo_prune.export.vitis_checks import (DPU_MAXPOOL_KERNEL, QuantCheck, check_xint8, dpu_warnings,
                                            fit_bias_shifts)
from yolo_prune.export.wrappers import assemble_head_maps
from yolo_prune.models.pools import stack_large_pools

if TYPE_CHECKING:
    import onnx

MIN_COSINE = 0.9  # INT8 head maps below this similarity to float mean a broken quantization, not rounding


class QuarkUnavailable(YoloPruneError):
    """AMD Quark is not installed (exit 2 with the install command)."""


QUARK_ALGORITHMS = ("cle", "bias-correction", "adaround", "adaquant")
CALIB_METHODS = ("minmse", "minmax")


@dataclass(frozen=True)
class VitisOptions:
    """Quantization settings: calibration image count and method, float head convs, one conv per head output
    group (box / obj / cls, each with its own scale), Quark algorithms, DPU family for the CPU-op report."""

    calib_count: int = 100
    keep_head_float: bool = False
    target: str = "DPUCZDX8G"
    split_head: bool = True
    algorithms: tuple[str, ...] = ()
    calib_method: str = "minmse"
    finetune_iterations: int = 200  # AdaRound / AdaQuant steps per layer (Quark's default 1000 is slow on CPU)

    def __post_init__(self) -> None:
        if self.calib_count < 1:
            raise YoloPruneError(f"--calib-count must be >= 1, got {self.calib_count}")
        if self.target not in DPU_MAXPOOL_KERNEL:
            raise YoloPruneError(f"--dpu {self.target!r}: choose one of {', '.join(DPU_MAXPOOL_KERNEL)}")
        bad = [a for a in self.algorithms if a not in QUARK_ALGORITHMS]
        if bad or ("adaround" in self.algorithms and "adaquant" in self.algorithms):
            raise YoloPruneError(f"--quark-algo {', '.join(self.algorithms)}: choose from {', '.join(QUARK_ALGORITHMS)}"
                                 " (adaround and adaquant exclude each other)")
        if self.calib_method not in CALIB_METHODS:
            raise YoloPruneError(f"--calib-method {self.calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")


@dataclass
class VitisResult:
    """The written file, the QDQ check, INT8-vs-float agreement per head level, and DPU warnings."""

    path: Path
    check: QuantCheck
    cosine: list[float]
    max_abs_diff: list[float]
    warnings: list[str]
    calib_images: int
    stacked_pools: int = 0

    def __str__(self) -> str:
        agree = ", ".join(f"conv{i} cos {c:.4f} / max diff {d:.3g}" for i, (c, d) in
                          enumerate(zip(self.cosine, self.max_abs_diff)))
        pools = (f"; {self.stacked_pools} large max-pool(s) exported as stacked 5x5 pools (exact, DPU-supported)"
                 if self.stacked_pools else "")
        return (f"checked: {self.check}\nINT8 vs float head maps (ONNX Runtime, synthetic images): {agree}\n"
                f"calibrated on {self.calib_images} images{pools}")


def import_quark() -> Any:
    """``quark.onnx``, or QuarkUnavailable saying how to install it."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import quark.onnx as quark_onnx
    except ImportError as exc:
        raise QuarkUnavailable(f"--format vitis-int8 needs AMD Quark ({exc}); install it with "
                               "`pip install 'yolo-prune[vitis]'` (or `pip install amd-quark`)") from None
    return quark_onnx


def _reader(quark_onnx: Any, input_name: str, arrays: Iterator[np.ndarray]) -> Any:
    """A Quark CalibrationDataReader over ``arrays``; ``count`` says how many it handed out (0: empty set)."""

    class Reader(quark_onnx.CalibrationDataReader):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            arr = next(arrays, None)
            if arr is None:
                return None
            self.count += 1
            return {input_name: arr}

    return Reader()


def head_conv_nodes(proto: "onnx.ModelProto") -> list[str]:
    """Names of the Conv nodes whose outputs are graph outputs (the detection head's convs in ``conv`` mode)."""
    outputs = {o.name for o in proto.graph.output}
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.output[0] in outputs]


def quark_config(opts: VitisOptions, exclude: Sequence[str]) -> Any:
    """Quark's XINT8 configuration (power-of-two, symmetric int8, per-tensor) with ``opts``' calibration method
    and algorithms (cross-layer equalisation, bias correction, AdaRound / AdaQuant fine-tuning on CPU)."""
    from quark.onnx.quantization.config import algorithm as algo
    from quark.onnx.quantization.config.config import QConfig
    from quark.onnx.quantization.config.spec import CalibMethod, QLayerConfig, XInt8Spec

    method = {"minmse": CalibMethod.MinMSE, "minmax": CalibMethod.MinMax}[opts.calib_method]
    spec = XInt8Spec(calibration_method=method)
    steps = {"cle": lambda: algo.CLEConfig(),
             "bias-correction": lambda: algo.BiasCorrectionConfig(),
             "adaround": lambda: algo.AdaRoundConfig(num_iterations=opts.finetune_iterations, batch_size=1,
                                                     data_size=opts.calib_count),
             "adaquant": lambda: algo.AdaQuantConfig(num_iterations=opts.finetune_iterations, batch_size=1,
                                                     data_size=opts.calib_count, learning_rate=1e-5)}
    return QConfig(global_config=QLayerConfig(activation=spec, weight=spec),
                   algo_config=[steps[a]() for a in opts.algorithms], exclude=list(exclude),
                   extra_options={"ForceQuantizeNoInputCheck": True, "PrintSummary": False, "AlignConcat": True})


def quantize(float_path: Path, out_path: Path, arrays: Iterator[np.ndarray], exclude: Sequence[str],
             opts: VitisOptions = VitisOptions()) -> int:
    """Quark XINT8 of ``float_path`` as :func:`quark_config` sets it up; returns the images used."""
    quark_onnx = import_quark()
    config = quark_config(opts, exclude)
    reader = _reader(quark_onnx, "images", arrays)
    from quark.common.utils.log import ScreenLogger

    log, level = io.StringIO(), ScreenLogger._shared_level
    ScreenLogger.set_shared_level(logging.ERROR)  # Quark logs every step at INFO; restored below
    try:
        # Quark writes quantized_info.csv into the working directory: keep it in the temporary folder
        with contextlib.redirect_stdout(log), contextlib.chdir(float_path.parent):
            quark_onnx.ModelQuantizer(config).quantize_model(str(float_path), str(out_path), reader)
    except Exception as exc:  # noqa: BLE001 - Quark raises assorted types; say which step failed
        if reader.count == 0:
            raise YoloPruneError("calibration set is empty: no images were read") from None
        raise CheckFailed(f"AMD Quark quantization failed ({type(exc).__name__}: {exc})\n"
                          f"{log.getvalue()[-2000:]}") from exc
    finally:
        ScreenLogger.set_shared_level(level)
    if reader.count == 0:
        raise YoloPruneError("calibration set is empty: no images were read")
    return reader.count


def keep_outputs(proto: "onnx.ModelProto", names: Sequence[str]) -> None:
    """Drop graph outputs other than ``names`` (Quark's bias correction leaves its probe tensors as outputs)."""
    kept = [o for o in proto.graph.output if o.name in set(names)]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)


def agreement(model: nn.Module, proto: "onnx.ModelProto", images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per head level: cosine similarity and max abs difference of INT8 (ORT) vs PyTorch float raw maps."""
    session = ort_session(proto.SerializeToString())
    per_image = [run_ort(session, images[i: i + 1]) for i in range(len(images))]  # static batch 1
    outs = [torch.cat(level) for level in zip(*per_image)]
    _, raw = torch_reference(model, images)
    if len(outs) != len(raw):  # split head: one output per level and box / obj / cls group
        outs = assemble_head_maps(outs, [g.tolist() for g in model.detect.channel_groups().values()], len(raw))
    cos, diff = [], []
    for got, want in zip(outs, raw):
        got = model.detect.reshape(got.float())
        cos.append(float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)))
        diff.append(float((got - want).abs().max()))
    return cos, diff


def export_vitis_int8(model: nn.Module, path: str | Path, img_size: int | Sequence[int], calib_files: Sequence[Path],
                      opts: VitisOptions = VitisOptions()) -> VitisResult:
    """Quantize ``model`` (not modified) for a DPU and write ``path`` only after every check passed."""
    import onnx

    export = ExportOptions(img_size=as_hw(img_size), conv_maps=True, split_head=opts.split_head, opset=13)
    stride = max_stride(model)
    check_img_size(export.img_size, stride, "--img-size")  # before the slow steps (build_onnx checks it too)
    if not calib_files:
        raise YoloPruneError("calibration set is empty: no images")
    import_quark()
    limit = DPU_MAXPOOL_KERNEL[opts.target]
    model = copy.deepcopy(model).float().eval()
    stacked = stack_large_pools(model, limit)
    float_proto, meta = build_onnx(model, export)
    with tempfile.TemporaryDirectory(prefix="yolo-prune-vitis-") as tmp:
        float_path, q_path = Path(tmp).resolve() / "float.onnx", Path(tmp).resolve() / "int8.onnx"
        onnx.save(float_proto, str(float_path))
        exclude = head_conv_nodes(float_proto) if opts.keep_head_float else []
        files = readable_files([Path(f).resolve() for f in list(calib_files)[: opts.calib_count]])
        arrays = calibration_batches(files, 1, export.img_size, stride)  # the inference pre-processing
        used = quantize(float_path, q_path, arrays, exclude, opts)
        proto = onnx.load(str(q_path))
    keep_outputs(proto, [o.name for o in float_proto.graph.output])
    fit_bias_shifts(proto)
    check = check_xint8(proto)
    onnx.checker.check_model(proto)
    meta["quantization"] = {"tool": "amd-quark", "config": "XINT8 (power-of-two, symmetric int8, per-tensor)",
                            "calib_images": used, "stacked_pools": stacked, **asdict(opts),
                            "algorithms": list(opts.algorithms)}
    annotate(proto, meta, export)
    cos, diff = agreement(model, proto, sample_images(export.img_size, 2))
    if min(cos) < MIN_COSINE:
        raise CheckFailed(f"INT8 head maps disagree with float (cosine {min(cos):.3f} < {MIN_COSINE}); "
                          "check the calibration images (they should look like the deployment data)")
    with atomic_path(path) as out:
        onnx.save(proto, str(out))
    return VitisResult(Path(path), check, cos, diff, dpu_warnings(model, opts.target, check), used, stacked)
