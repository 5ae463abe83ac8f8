"""Exception types shared by every stage, so the CLI can map them to exit codes."""
from __future__ import annotations


class YoloPruneError(Exception):
    """Base class: a problem with the user's input that deserves a clear message, not a traceback.

    ``exit_code`` is what the CLI exits with: 2 for bad input (the default), 1 for a failed check.
    """

    exit_code = 2


class CheckFailed(YoloPruneError):
    """A verification ran and failed (e.g. ONNX Runtime disagrees with PyTorch)."""

    exit_code = 1


class ConfigError(YoloPruneError):
    """A model cfg, data YAML, hyp YAML or pruning graph is malformed (message names file/line/layer)."""


class CheckpointError(YoloPruneError):
    """A checkpoint cannot be read, is unsafe, or is not a YOLOv7 model."""


class PruningError(YoloPruneError):
    """Pruning parameters or a pruning graph do not fit the model."""


class DataError(YoloPruneError):
    """A dataset file, label or image is missing or malformed."""
