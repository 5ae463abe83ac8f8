"""Settings of the data-driven, gradient and clustering criteria (the Pruning-Darknet flags), validated once.

``n_samples`` / ``perc_samples``: how many training images the calibration subset holds (seeded random choice);
``pool_type``: how a feature map becomes one number per filter and image; ``n_components``: PLS / CCA
components; ``measure``: HAC's correlation of filter weights; ``selection``: rank filters within each layer
(``layer``) or across every listed layer at once (``global``, the rates then give the total share removed); ``reconstruct``: after choosing the filters, fold a
least-squares reconstruction of the removed channels into the consumers (:mod:`.reconstruct`; needs images).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from yolo_prune.errors import PruningError

POOL_TYPES = ("max", "avg")
MEASURES = ("pearson", "spearman", "kendall")
SELECTIONS = ("layer", "global")
DEFAULT_SAMPLES = 128  # calibration images when neither n_samples nor perc_samples is given


@dataclass(frozen=True)
class CriterionOptions:
    """How data-driven criteria see the model and the data (defaults follow the published examples)."""

    pool_type: str = "max"
    n_components: int = 2
    n_samples: int | None = None
    perc_samples: float | None = None
    measure: str = "pearson"
    selection: str = "layer"
    reconstruct: bool = False

    def __post_init__(self) -> None:
        if self.pool_type not in POOL_TYPES:
            raise PruningError(f"--pool-type {self.pool_type!r}: choose one of {', '.join(POOL_TYPES)}")
        if self.measure not in MEASURES:
            raise PruningError(f"--measure {self.measure!r}: choose one of {', '.join(MEASURES)}")
        if self.selection not in SELECTIONS:
            raise PruningError(f"--selection {self.selection!r}: choose one of {', '.join(SELECTIONS)}")
        if isinstance(self.n_components, bool) or not isinstance(self.n_components, int) or self.n_components < 1:
            raise PruningError(f"--n-components must be a positive integer, got {self.n_components!r}")
        if self.n_samples is not None and self.perc_samples is not None:
            raise PruningError("give at most one of --n-samples and --perc-samples")
        if self.n_samples is not None and (isinstance(self.n_samples, bool) or self.n_samples < 2):
            raise PruningError(f"--n-samples must be an integer >= 2, got {self.n_samples!r}")
        if self.perc_samples is not None and not 0.0 < float(self.perc_samples) <= 1.0:
            raise PruningError(f"--perc-samples must be in (0, 1], got {self.perc_samples!r}")

    def sample_count(self, available: int) -> int:
        """Calibration images to draw from ``available`` training images (at least 2, at most all)."""
        if self.perc_samples is not None:
            wanted = int(round(self.perc_samples * available))
        else:
            wanted = self.n_samples if self.n_samples is not None else DEFAULT_SAMPLES
        return max(2, min(wanted, available))

    def to_dict(self) -> dict:
        return asdict(self)
