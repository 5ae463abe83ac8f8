"""The connectivity graph: derive it from a model, read/write/check the published pruning_config YAML."""
from yolo_prune.graph.derive import derive_graph
from yolo_prune.graph.graph import PruningGraph
from yolo_prune.graph.io import PublishedGraph, check_against, read_published
from yolo_prune.graph.node import ConvNode

__all__ = ["ConvNode", "PruningGraph", "PublishedGraph", "check_against", "derive_graph", "read_published"]
