"""Atomic file writes shared by every stage: write a temporary sibling, then rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """Mode an ordinary ``open()`` (or ``mkdir``) would create; mkstemp/mkdtemp make owner-only ones."""
    return (0o777 if directory else 0o666) & ~umask()


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


def read_text(path: str | Path, what: str, error: type[Exception] = ValueError) -> str:
    """The UTF-8 text of ``path``; ``error`` (naming ``what`` and the path) for a missing file, a directory,
    unreadable or binary content, so every reader of user-given text files fails the same clear way."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path}: is a directory, expected a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path}: file not found") from None
    except OSError as exc:
        raise error(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    try:
        if b"\x00" in data[:8192]:
            raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "NUL byte")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{what} {path}: not a text file (binary or not UTF-8)") from None
