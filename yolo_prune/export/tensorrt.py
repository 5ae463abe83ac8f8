"""TensorRT engines from exported ONNX files: trtexec commands, Python-API builds, metadata, loading.

Everything that touches ``tensorrt`` is imported inside the function that needs it and kept small; the
rest (command lines, metadata, version checks) is plain Python and unit-tested.
An engine ``model.engine`` is always written with ``model.json``: TensorRT version, bindings, export options.
Engines are not portable across TensorRT versions: :func:`load_engine` refuses a mismatch.
"""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from yolo_prune.errors import YoloPruneError
from yolo_prune.data.calibration import calibration_batches, calibration_files  # noqa: F401 - engine calibrator
from yolo_prune.export.files import atomic_path, write_json

INT8_DUMMY_WARNING = ("trtexec --int8 without --calib=<cache> builds with dummy (random) dynamic ranges: the engine "
                      "runs at INT8 speed but its accuracy is meaningless; calibrate first (yolo-prune export "
                      "--format engine --int8 --calib-images DIR writes a cache) or use --fp16")


class TensorRTUnavailable(YoloPruneError):
    """``import tensorrt`` failed; the message carries the trtexec command to run on the target (exit 2)."""

    exit_code = 2


class EngineVersionError(YoloPruneError):
    """An engine was built with another TensorRT version than the one loading it (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class EngineOptions:
    """How to build an engine: precision, INT8 calibration, DLA core, workspace (MiB), timing cache.

    ``explicit``: the ONNX carries Q/DQ nodes (explicit quantization): INT8 is enabled without a calibrator or
    cache, TensorRT takes every scale from the graph.
    """

    fp16: bool = False
    int8: bool = False
    explicit: bool = False
    calib_cache: Path | None = None
    calib_images: Path | None = None
    calib_batch: int = 8
    calib_max_images: int = 512
    dla_core: int | None = None
    workspace_mib: int = 2048
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.workspace_mib < 1 or self.calib_batch < 1 or self.calib_max_images < 1:
            raise YoloPruneError("workspace, calibration batch and image count must be >= 1")
        if self.dla_core is not None and self.dla_core < 0:
            raise YoloPruneError(f"DLA core must be >= 0, got {self.dla_core}")
        if self.explicit and (not self.int8 or self.calib_cache is not None):
            raise YoloPruneError("explicit (Q/DQ) quantization needs int8 and takes no calibration cache")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class InputShape:
    """The engine input: name, (H, W), batch; with ``dynamic`` the profile spans batch 1..``batch``."""

    name: str
    img_size: tuple[int, int]
    batch: int = 1
    dynamic: bool = False

    def dims(self, batch: int) -> tuple[int, int, int, int]:
        """[batch, 3, H, W]."""
        return batch, 3, self.img_size[0], self.img_size[1]

    def profile(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of the optimisation profile."""
        return self.dims(1 if self.dynamic else self.batch), self.dims(self.batch), self.dims(self.batch)


def build_warnings(opts: EngineOptions) -> list[str]:
    """Things worth telling the user before a build (empty when none)."""
    warns = []
    if opts.int8 and not opts.explicit and opts.calib_cache is None and opts.calib_images is None:
        warns.append(INT8_DUMMY_WARNING)
    if opts.dla_core is not None and not (opts.fp16 or opts.int8):
        warns.append("DLA runs FP16 or INT8 only: --fp16 is implied for the DLA build")
    return warns


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, opts: EngineOptions,
                    shape: InputShape | None = None) -> list[str]:
    """The ``trtexec`` argv that builds the same engine on the target (JetPack 5.1 / TensorRT 8.5 syntax)."""
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if opts.fp16 or (opts.dla_core is not None and not opts.int8):
        cmd.append("--fp16")
    if opts.int8:
        cmd.append("--int8")
        if opts.calib_cache is not None:
            cmd.append(f"--calib={opts.calib_cache}")
    if opts.dla_core is not None:
        cmd += [f"--useDLACore={opts.dla_core}", "--allowGPUFallback"]
    cmd.append(f"--memPoolSize=workspace:{opts.workspace_mib}")
    if opts.timing_cache is not None:
        cmd.append(f"--timingCacheFile={opts.timing_cache}")
    if shape is not None and shape.dynamic:
        lo, opt, hi = ("x".join(map(str, s)) for s in shape.profile())
        cmd += [f"--minShapes={shape.name}:{lo}", f"--optShapes={shape.name}:{opt}", f"--maxShapes={shape.name}:{hi}"]
    return cmd


def format_command(argv: Sequence[str]) -> str:
    """A shell-ready command line."""
    return shlex.join([str(a) for a in argv])


def unavailable_message(onnx_path: Path, engine_path: Path, opts: EngineOptions, shape: InputShape,
                        reason: str) -> str:
    """Why no engine was built here and the exact command that builds it on the target."""
    lines = [f"TensorRT is not available here ({reason}); no engine was built.",
             f"The verified ONNX is at {onnx_path}. On the target (e.g. Jetson, JetPack 5.1.x) run:",
             "  " + format_command(trtexec_command(onnx_path, engine_path, opts, shape))]
    return "\n".join(lines + [f"warning: {w}" for w in build_warnings(opts)])


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; TensorRTUnavailable (without a command) when it cannot be imported."""
    try:
        import tensorrt  # noqa: PLC0415 - optional, heavy
    except ImportError as exc:
        raise TensorRTUnavailable(f"import tensorrt failed: {exc}") from exc
    return tensorrt


# ------------------------------------------------------------------------------------------ metadata
def metadata_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.json``."""
    return Path(engine_path).with_suffix(".json")


def engine_metadata(trt_version: str, bindings: list[dict[str, Any]], export_meta: dict[str, Any],
                    build: dict[str, Any], onnx_path: str | Path) -> dict[str, Any]:
    """The JSON written next to an engine (``build``: EngineOptions.to_dict() or the trtexec flags)."""
    return {"format_version": 1, "tensorrt": trt_version, "bindings": bindings, "onnx": str(onnx_path),
            "build": build, "export": export_meta}


def read_engine_metadata(engine_path: str | Path) -> dict[str, Any]:
    """The JSON next to an engine (YoloPruneError when missing or unreadable)."""
    import json

    path = metadata_path(engine_path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise YoloPruneError(f"{path}: engine metadata missing or unreadable ({exc}); rebuild the engine") from exc


def check_version(meta: dict[str, Any], runtime_version: str) -> None:
    """EngineVersionError unless the engine was built by exactly ``runtime_version``."""
    built = str(meta.get("tensorrt", "unknown"))
    if built != runtime_version:
        raise EngineVersionError(f"engine built with TensorRT {built} cannot be loaded by TensorRT "
                                 f"{runtime_version}: rebuild it on this device")


def engine_bindings(engine: Any) -> list[dict[str, Any]]:
    """Name, shape, dtype and direction of every I/O tensor (tensor API of TensorRT >= 8.5, else bindings)."""
    import tensorrt as trt

    if not hasattr(engine, "num_io_tensors"):  # TensorRT < 8.5
        return [{"name": engine.get_binding_name(i), "shape": [int(d) for d in engine.get_binding_shape(i)],
                 "dtype": str(engine.get_binding_dtype(i)).split(".")[-1].lower(),
                 "input": bool(engine.binding_is_input(i))} for i in range(engine.num_bindings)]
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append({"name": name, "shape": [int(d) for d in engine.get_tensor_shape(name)],
                    "dtype": str(engine.get_tensor_dtype(name)).split(".")[-1].lower(),
                    "input": engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT})
    return out


def make_calibrator(trt: Any, batches: Iterator[np.ndarray], cache: Path | None, nbytes: int) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``batches`` reading/writing ``cache`` (device buffer via torch.cuda)."""
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        """Feeds ``batches`` to TensorRT one device copy at a time; the cache skips calibration next time."""

        def __init__(self) -> None:
            super().__init__()
            self.device: torch.Tensor | None = None  # allocated on the first batch (none with a cache)

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is part of the input shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            arr = next(batches, None)
            if arr is None:
                return None
            if arr.nbytes > nbytes:
                raise YoloPruneError(f"calibration batch of {arr.nbytes} bytes exceeds the {nbytes}-byte buffer")
            if self.device is None:
                self.device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
            self.device[: arr.nbytes].copy_(torch.from_numpy(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)))
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            if cache is not None:
                with atomic_path(cache) as tmp:
                    tmp.write_bytes(bytes(data))

    return _Calibrator()


# ------------------------------------------------------------------------------------------ building
def set_workspace(config: Any, trt: Any, mib: int) -> None:
    """Workspace limit: ``set_memory_pool_limit`` (TensorRT >= 8.4), else ``max_workspace_size``."""
    nbytes = int(mib) << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, nbytes)
    else:  # TensorRT < 8.4
        config.max_workspace_size = nbytes


def configure(trt: Any, builder: Any, config: Any, opts: EngineOptions, shape: InputShape,
              calibrator: Any | None) -> None:
    """Precision flags, DLA with GPU fallback, workspace, optimisation profile and calibrator."""
    set_workspace(config, trt, opts.workspace_mib)
    if opts.fp16 or (opts.dla_core is not None and not opts.int8):
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator  # None for explicit (Q/DQ) quantization
    if opts.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(opts.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    profile.set_shape(shape.name, *shape.profile())
    config.add_optimization_profile(profile)
    if opts.int8 and calibrator is not None:
        config.set_calibration_profile(profile)


def parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """(network, parser): an explicit-batch network parsed from ``onnx_path`` (EfficientNMS_TRT plugin
    registered); keep the parser alive as long as the network."""
    trt.init_libnvinfer_plugins(logger, "")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise YoloPruneError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def _timing_cache(config: Any, path: Path | None) -> Any:
    """Attach a timing cache loaded from ``path`` (empty when missing); returns it."""
    cache = config.create_timing_cache(path.read_bytes() if path is not None and path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_engine(onnx_path: str | Path, engine_path: str | Path, opts: EngineOptions, shape: InputShape,
                 export_meta: dict[str, Any]) -> dict[str, Any]:
    """Build and write ``engine_path`` plus its JSON (atomically); returns the metadata. Needs TensorRT + CUDA."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, logger, Path(onnx_path))
    config = builder.create_builder_config()
    cache = _timing_cache(config, opts.timing_cache)
    calibrator = None
    if opts.explicit:
        pass  # Q/DQ network: every scale is in the graph
    elif opts.int8 and opts.calib_images is not None:
        files = calibration_files(opts.calib_images, opts.calib_max_images)
        batches = calibration_batches(files, shape.batch, shape.img_size, int(max(export_meta["stride"])),
                                      bool(export_meta["options"]["fp16"]))
        calibrator = make_calibrator(trt, batches, opts.calib_cache, 4 * int(np.prod(shape.dims(shape.batch))))
    elif opts.int8 and opts.calib_cache is not None:
        calibrator = make_calibrator(trt, iter(()), opts.calib_cache, 4)
    configure(trt, builder, config, opts, shape, calibrator)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise YoloPruneError("TensorRT failed to build the engine (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if opts.timing_cache is not None:
        with atomic_path(opts.timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    meta = engine_metadata(trt.__version__, engine_bindings(engine), export_meta, opts.to_dict(), onnx_path)
    write_json(metadata_path(engine_path), meta)
    return meta


def describe_engine(engine_path: str | Path, onnx_path: str | Path, build: dict[str, Any]) -> dict[str, Any]:
    """Write the JSON of an engine built elsewhere (trtexec) with the installed TensorRT; returns it."""
    from yolo_prune.export.onnx_export import read_metadata

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise YoloPruneError(f"{engine_path}: TensorRT could not deserialise the engine")
    meta = engine_metadata(trt.__version__, engine_bindings(engine), read_metadata(onnx_path), build, onnx_path)
    write_json(metadata_path(engine_path), meta)
    return meta


def load_engine(engine_path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(deserialised ICudaEngine, metadata); EngineVersionError when built by another TensorRT version."""
    trt = import_tensorrt()
    meta = read_engine_metadata(engine_path)
    check_version(meta, trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise YoloPruneError(f"{engine_path}: TensorRT could not deserialise the engine")
    return engine, meta
