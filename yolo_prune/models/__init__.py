"""YOLOv7 models: blocks, the cfg parser, fusion and accounting."""
from yolo_prune.models.blocks import MP, SP, SPPCSPC, Concat, Conv, DownC, ReOrg, RepConv, Shortcut
from yolo_prune.models.cfgs import available_cfgs, build_model, resolve_cfg
from yolo_prune.models.heads import Detect, IAuxDetect, IDetect, ImplicitA, ImplicitM
from yolo_prune.models.model import Model

__all__ = [
    "MP", "SP", "SPPCSPC", "Concat", "Conv", "DownC", "ReOrg", "RepConv", "Shortcut",
    "Detect", "IDetect", "IAuxDetect", "ImplicitA", "ImplicitM", "Model",
    "available_cfgs", "build_model", "resolve_cfg",
]
