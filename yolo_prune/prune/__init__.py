"""Structured filter pruning: criteria, plans, surgery."""
from yolo_prune.prune.criteria import CRITERIA, criterion_name
from yolo_prune.prune.params import kept_count, parse_pruning_params
from yolo_prune.prune.plan import LayerPlan, PruningPlan, make_plan
from yolo_prune.prune.pruner import PruneResult, format_result, prune
from yolo_prune.prune.surgery import apply_plan

__all__ = ["CRITERIA", "LayerPlan", "PruneResult", "PruningPlan", "apply_plan", "criterion_name",
           "format_result", "kept_count", "make_plan", "parse_pruning_params", "prune"]
