"""Atomic file writes shared by every stage: write a temporary sibling, then rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def umask_mode() -> int:
    """File mode an ordinary ``open()`` would create (mkstemp makes owner-only files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary path)``, then rename onto ``path``: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))
