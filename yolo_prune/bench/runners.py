"""Ready-to-time forward passes: PyTorch eager or ``torch.compile`` (fused copy), or an ONNX Runtime session.

Each runner owns its input (one synthetic batch made once, on the device) so the timed call is the forward
pass alone: no pre-processing, no host-to-device copy for PyTorch, no NMS. ONNX Runtime's ``session.run`` takes
and returns host arrays, so on CUDA its time includes those copies, as a deployed ORT application pays them.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from yolo_prune.errors import YoloPruneError
from yolo_prune.models.fuse import deployable_copy

if TYPE_CHECKING:
    import onnxruntime

RUNTIMES = ("torch", "torch-compile", "ort")


@dataclass
class Runner:
    """``run()`` processes the runner's batch once; ``sync`` waits for queued device work (None on CPU)."""

    run: Callable[[], Any]
    sync: Callable[[], None] | None
    description: str


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (unchanged when None), restoring the old count."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def torch_runner(model: nn.Module, batch: int, img_size: tuple[int, int], device: torch.device,
                 fp16: bool = False, compiled: bool = False) -> Runner:
    """Eager (or compiled) forward of a fused copy of ``model`` on a fixed random batch [batch, 3, H, W].

    ``compiled``: ``torch.compile`` (mode ``reduce-overhead``, i.e. CUDA graphs, on CUDA; the default mode on CPU);
    the first call, which compiles, is made here, outside any timing.
    """
    net = deployable_copy(model, device, fp16)
    dtype = torch.float16 if fp16 else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *img_size, generator=gen).to(device=device, dtype=dtype)
    if compiled:
        net = torch.compile(net, mode="reduce-overhead" if device.type == "cuda" else None)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def run() -> Any:
        with torch.inference_mode():
            return net(x)

    if compiled:
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - inductor raises many types; the runtime choice is the user's
            raise YoloPruneError(f"--runtime torch-compile failed here ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); use --runtime torch") from exc
    mode = ("torch.compile (CUDA graphs)" if device.type == "cuda" else "torch.compile") if compiled else "eager"
    return Runner(run, sync, f"PyTorch {torch.__version__} {mode}, {'fp16' if fp16 else 'fp32'}, {device}")


def ort_session(path: str | Path, device: torch.device, threads: int | None) -> "onnxruntime.InferenceSession":
    """A session on the CPU provider, or the CUDA provider for a CUDA device; YoloPruneError naming the file."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise YoloPruneError(f"--device {device}: this onnxruntime has no CUDAExecutionProvider (available: "
                                 f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use "
                                 "--device cpu")
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for unloadable graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise YoloPruneError(f"{path}: ONNX Runtime cannot load it ({first})") from None


def ort_runner(path: str | Path, batch: int, img_size: tuple[int, int], device: torch.device,
               threads: int | None = None) -> Runner:
    """``session.run`` of ``path`` on a fixed random batch in the graph's input type (float32 or float16)."""
    import onnxruntime as ort

    session = ort_session(path, device, threads)
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = np.random.default_rng(0).random((batch, 3, *img_size), dtype=np.float32).astype(dtype)
    feed = {inp.name: x}

    def run() -> Any:
        return session.run(None, feed)

    try:
        run()  # the first run allocates and plans memory, outside any timing
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise YoloPruneError(f"{path}: ONNX Runtime cannot run it on a [{batch}, 3, {img_size[0]}, {img_size[1]}] "
                             f"input ({first})") from None
    provider = session.get_providers()[0]
    n = f"{threads} intra-op thread{'s' if threads != 1 else ''}" if threads is not None else "default threads"
    return Runner(run, None, f"ONNX Runtime {ort.__version__} {provider}, {n}")
