"""Reading published ``pruning_config`` YAML files and checking them against a model's derived graph."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from yolo_prune.errors import ConfigError
from yolo_prune.fileio import read_text
from yolo_prune.fileio import write_text_atomic  # noqa: F401 - kept importable from here
from yolo_prune.graph.graph import Entry, PruningGraph


@dataclass(frozen=True)
class PublishedGraph:
    """The raw content of a published-format file: ``nconv`` and the entries, as written."""

    nconv: int
    entries: list[Entry]
    path: str
    coupled: list[list[int]] | None = None  # the optional ``coupled`` key (residual-add groups)


def _int_list(value: object, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: expected a list of integers, got {value!r}")
    return list(value)


def read_published(path: str | Path) -> PublishedGraph:
    """Parse a published-format graph file, validating its shape (not its truth: see ``check_against``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, "pruning graph", ConfigError))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "pruning_cfg" not in data or "nconv" not in data:
        raise ConfigError(f"{path}: expected keys 'nconv' and 'pruning_cfg'")
    if isinstance(data["nconv"], bool) or not isinstance(data["nconv"], int) or data["nconv"] < 0:
        raise ConfigError(f"{path}: 'nconv' must be a non-negative integer, got {data['nconv']!r}")
    raw = data["pruning_cfg"]
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: 'pruning_cfg' must be a list of [consumers, slices, sizes]")
    entries: list[Entry] = []
    for i, entry in enumerate(raw):
        where = f"{path}: pruning_cfg entry {i}"
        if not isinstance(entry, list) or len(entry) != 3:
            raise ConfigError(f"{where}: expected [consumers, slices, sizes], got {entry!r}")
        consumers, slices, sizes = (_int_list(e, where) for e in entry)
        if consumers and len(consumers) != len(slices):
            raise ConfigError(f"{where}: {len(consumers)} consumers but {len(slices)} slices")
        entries.append((consumers, slices if consumers else [], sizes))
    coupled = data.get("coupled")
    if coupled is not None:
        if not isinstance(coupled, list):
            raise ConfigError(f"{path}: 'coupled' must be a list of layer lists, e.g. [[3, 7, 12]]")
        coupled = [sorted(_int_list(g, f"{path}: coupled group {i}")) for i, g in enumerate(coupled)]
    return PublishedGraph(int(data["nconv"]), entries, str(path), coupled)


def check_against(published: PublishedGraph, graph: PruningGraph) -> list[str]:
    """Differences between a published-format file and the model's derived graph, in words (empty = match)."""
    problems: list[str] = []
    if published.nconv != graph.nconv:
        problems.append(f"nconv is {published.nconv} but the model has {graph.nconv} Conv/RepConv layers")
    if len(published.entries) != len(graph):
        problems.append(f"{len(published.entries)} entries but the model has {len(graph)} convs "
                        f"({graph.nconv} + {len(graph) - graph.nconv} head)")
    for i, (theirs, ours) in enumerate(zip(published.entries, graph.entries())):
        node = graph[i]
        for label, a, b in (("consumers/slices", sorted(zip(theirs[0], theirs[1])), sorted(zip(ours[0], ours[1]))),
                            ("sizes", theirs[2], ours[2])):
            if a != b:
                problems.append(f"layer {i} ({node.name}): file says {label} {a}, the model says {b}")
    ours = sorted(list(g) for g in graph.groups)
    theirs = sorted(published.coupled or [])
    if theirs != ours:
        problems.append(f"coupled groups: file says {theirs}, the model says {ours}")
    return problems
