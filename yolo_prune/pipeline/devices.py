"""Device strings as YOLOv7 users write them: ``cpu``, ``0``, ``0,1``, ``cuda:0``."""
from __future__ import annotations

import torch

from yolo_prune.errors import YoloPruneError


def select_device(text: str | None) -> torch.device:
    """``''``/None: first CUDA device if any, else CPU; ``'cpu'``; ``'0'`` or ``'cuda:0'``."""
    text = (text or "").strip().lower()
    if text in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    index = text.split(",")[0].removeprefix("cuda:")
    if not index.isdigit():
        raise YoloPruneError(f"--device {text!r}: expected cpu, a CUDA index such as 0, or cuda:0")
    if not torch.cuda.is_available() or int(index) >= torch.cuda.device_count():
        raise YoloPruneError(f"--device {text}: CUDA device {index} is not available "
                             f"({torch.cuda.device_count()} visible); use --device cpu")
    return torch.device(f"cuda:{index}")
