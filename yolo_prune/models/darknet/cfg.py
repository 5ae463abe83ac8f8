"""Darknet ``.cfg`` files: sections of ``key=value`` options, read with their line numbers and written back.

A cfg is kept as its original lines plus a typed view of every section, so writing it back after pruning
changes only the ``filters=`` (and, for a new class count, ``classes=``) lines and leaves every other byte
as the user wrote it. Parsing follows Darknet's ``read_cfg``: whitespace inside a line is ignored, ``#`` and
``;`` start comment lines, the first section is ``[net]`` (or ``[network]``), every later section is one layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from yolo_prune.errors import ConfigError

NET_SECTIONS = ("net", "network")


@dataclass(frozen=True)
class Section:
    """One ``[kind]`` block: its options (values as written) and where each came from (0-based line numbers)."""

    kind: str
    header_line: int
    options: dict[str, str] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)
    index: int = -1  # Darknet layer index (-1 for [net])
    source: str = "<cfg>"

    def where(self, key: str | None = None) -> str:
        """``file:line: [kind] (layer i)`` for messages, pointing at ``key``'s line when given."""
        line = self.option_lines.get(key, self.header_line) if key else self.header_line
        layer = f" (layer {self.index})" if self.index >= 0 else ""
        return f"{self.source}:{line + 1}: [{self.kind}]{layer}"

    def _get(self, key: str, default: Any, convert: Callable[[str], Any], what: str) -> Any:
        if key not in self.options:
            if default is _REQUIRED:
                raise ConfigError(f"{self.where()}: missing option '{key}'")
            return default
        text = self.options[key]
        try:
            return convert(text)
        except ValueError:
            raise ConfigError(f"{self.where(key)}: {key}={text!r} is not {what}") from None

    def int(self, key: str, default: Any = None) -> int:
        return self._get(key, default, int, "an integer")

    def float(self, key: str, default: Any = None) -> float:
        return self._get(key, default, float, "a number")

    def value(self, key: str, default: Any = None) -> str:
        return self._get(key, default, lambda s: s, "text")

    def ints(self, key: str, default: Any = None) -> list[int]:
        return self._get(key, default, lambda s: [int(v) for v in s.split(",") if v != ""],
                         "a comma-separated list of integers")

    def floats(self, key: str, default: Any = None) -> list[float]:
        return self._get(key, default, lambda s: [float(v) for v in s.split(",") if v != ""],
                         "a comma-separated list of numbers")


_REQUIRED = object()
REQUIRED = _REQUIRED  # pass as ``default`` to make an option mandatory


@dataclass(frozen=True)
class DarknetCfg:
    """A parsed cfg: the original lines (with their line endings), ``net`` and the layer sections in order."""

    lines: tuple[str, ...]
    net: Section
    layers: tuple[Section, ...]
    source: str = "<cfg>"

    def text(self) -> str:
        return "".join(self.lines)

    def with_options(self, changes: dict[int, dict[str, str]]) -> "DarknetCfg":
        """A copy with option values replaced (``{layer index: {key: value}}``); a missing key is added right
        after the section header. Every other line is kept byte for byte."""
        lines = list(self.lines)
        inserts: dict[int, list[str]] = {}
        for index, options in changes.items():
            section = self.layers[index]
            for key, value in options.items():
                if key in section.option_lines:
                    i = section.option_lines[key]
                    ending = lines[i][len(lines[i].rstrip("\r\n")):] or "\n"
                    lines[i] = f"{key}={value}{ending}"
                else:
                    inserts.setdefault(section.header_line, []).append(f"{key}={value}\n")
        for line in sorted(inserts, reverse=True):
            if not lines[line].endswith("\n"):
                lines[line] += "\n"
            lines[line + 1:line + 1] = inserts[line]
        return parse_darknet_cfg("".join(lines), self.source)


def _clean(line: str) -> str:
    """Darknet's ``strip``: drop every space, tab and line ending."""
    return "".join(ch for ch in line if ch not in " \t\r\n")


def parse_darknet_cfg(text: str, source: str = "<cfg>") -> DarknetCfg:
    """Parse cfg text; errors name the file and line."""
    lines = tuple(text.splitlines(keepends=True))
    sections: list[dict[str, Any]] = []
    for number, raw in enumerate(lines):
        line = _clean(raw)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(f"{source}:{number + 1}: malformed section header {raw.strip()!r}")
            sections.append({"kind": line[1:-1].lower(), "line": number, "options": {}, "lines": {}})
            continue
        if not sections:
            raise ConfigError(f"{source}:{number + 1}: option {raw.strip()!r} before the first [section]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}:{number + 1}: expected key=value, got {raw.strip()!r}")
        sections[-1]["options"][key] = value
        sections[-1]["lines"][key] = number
    if not sections or sections[0]["kind"] not in NET_SECTIONS:
        raise ConfigError(f"{source}: the first section must be [net] (Darknet network settings)")
    built = [Section(s["kind"], s["line"], s["options"], s["lines"], i - 1, source) for i, s in enumerate(sections)]
    if len(built) < 2:
        raise ConfigError(f"{source}: no layers after [net]")
    return DarknetCfg(lines, built[0], tuple(built[1:]), source)


def read_darknet_cfg(path: str | Path) -> DarknetCfg:
    """Read and parse a ``.cfg`` file. Bytes are decoded as latin-1 (every byte maps to one character), so
    ``text().encode("latin-1")`` gives the file back exactly, whatever its encoding and line endings."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"Darknet cfg not found: {path}") from None
    return parse_darknet_cfg(data.decode("latin-1"), str(path))
