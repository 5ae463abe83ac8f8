"""Classification CNNs: torchvision's vgg16_bn / resnet18 / resnet50 (random init, never downloaded) and a
shallow SCNNB-style CNN, wrapped in :class:`Classifier` with the spec that rebuilds them."""
from yolo_prune.models.classify.classifier import (ARCHS, ArchSpec, Classifier, build_classifier, conform_to_state,
                                                   is_arch)

__all__ = ["ARCHS", "ArchSpec", "Classifier", "build_classifier", "conform_to_state", "is_arch"]
