"""Classification training and evaluation (top-1) on the engine's shared parts: the optimiser recipe and
schedule, run folders, atomic checkpoints in our format, exact resume, progress bars and the mask/FBS hooks."""
from yolo_prune.engine.classify.evaluate import ClassifyResult, evaluate_classifier
from yolo_prune.engine.classify.trainer import ClassifySettings, train_classifier

__all__ = ["ClassifyResult", "ClassifySettings", "evaluate_classifier", "train_classifier"]
