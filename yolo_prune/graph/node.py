"""Graph data: one ``ConvNode`` per convolution, in the published conv-layer indexing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from yolo_prune.errors import PruningError


class Slot(NamedTuple):
    """One slot of a convolution's input: the conv that produced these channels (None: the network input) and
    how many. A slot can hold one of ``parts`` equal chunks of its producer's channels (chunk ``part``, as a
    Darknet ``[route] groups=`` reads them); the producer must then keep as many filters in every chunk."""

    producer: int | None
    size: int
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class ConvNode:
    """A convolution: where its input channels come from, and who reads its output (consumer, slot)."""

    index: int
    name: str  # module path, e.g. "model.51.cv3", "model.77.m.0" or "net.layer1.0.conv2"
    kind: str  # "Conv", "RepConv", "head" (YOLO blocks), "conv" (a plain Conv2d) or "linear" (a classifier's Linear)
    out_channels: int
    inputs: tuple[Slot, ...]
    consumers: tuple[tuple[int, int], ...]
    prunable: bool
    reason: str = ""  # why not prunable
    bn: str = ""  # a plain conv's BatchNorm2d (module path), sliced with its filters
    spatial: int = 1  # linear nodes: input features per channel (flattened H*W)
    parts: int = 1  # its output is read in this many equal chunks (Darknet route groups): pruned evenly per chunk

    @property
    def mask_point(self) -> str:
        """Module whose output holds this layer's channels, zeroed when they are masked instead of removed."""
        return self.bn or self.name

    @property
    def sizes(self) -> list[int]:
        """Channel count of each slot of this conv's input when it is a concatenation (else empty)."""
        return [slot.size for slot in self.inputs] if len(self.inputs) > 1 else []

    def whole_slot_offset(self, slot: int, what: str, advice: str) -> int:
        """First input channel of ``slot``, for work that needs the slot's channels contiguous; a slot read in
        chunks (a Darknet route group) is refused with ``what: <name> ...; <advice>``."""
        if self.inputs[slot].parts > 1:
            raise PruningError(f"{what}: {self.name} reads its input in chunks (a Darknet route group); {advice}")
        return sum(s.size for s in self.inputs[:slot])

    def describe(self) -> str:
        links = ", ".join(f"{c}[{s}]" for c, s in self.consumers) or "-"
        state = "prunable" if self.prunable else f"fixed ({self.reason})"
        if self.parts > 1:
            state += f", read in {self.parts} equal chunks"
        return f"conv {self.index:>3} {self.name:<16} {self.kind:<7} out={self.out_channels:<5} -> {links}  {state}"


@dataclass
class NodeDraft:
    """Mutable node while a graph is being traced."""

    index: int
    name: str
    kind: str
    out_channels: int
    inputs: list[Slot] = field(default_factory=list)
    consumers: list[tuple[int, int]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    bn: str = ""
    spatial: int = 1
    parts: int = 1

    def freeze(self) -> ConvNode:
        fixed = {"head": "head output conv", "linear": "classifier layer (its inputs are sliced, its outputs kept)"}
        prunable = self.kind not in fixed and not self.reasons
        reason = fixed.get(self.kind) or "; ".join(self.reasons)
        return ConvNode(self.index, self.name, self.kind, self.out_channels, tuple(self.inputs),
                        tuple(self.consumers), prunable, reason, self.bn, self.spatial, self.parts)
