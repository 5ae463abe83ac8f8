"""Darknet YOLO models (YOLOv3/v4 and -tiny): the ``.cfg`` parser and writer, layers, head and the builder."""
from yolo_prune.models.darknet.cfg import DarknetCfg, Section, parse_darknet_cfg, read_darknet_cfg
from yolo_prune.models.darknet.head import DarknetBoxCoder, DarknetDetect, YoloLevel
from yolo_prune.models.darknet.model import DarknetModel, build_darknet

__all__ = ["DarknetBoxCoder", "DarknetCfg", "DarknetDetect", "DarknetModel", "Section", "YoloLevel",
           "build_darknet", "parse_darknet_cfg", "read_darknet_cfg"]
