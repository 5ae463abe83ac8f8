"""Image decoding as YOLOv7 sees images (OpenCV ``imread``): EXIF orientation applied, 16-bit greyscale reduced to
its high byte. Torch-free, so the deployment runners read frames exactly as evaluation and training read them."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from yolo_prune.errors import DataError


def load_image_rgb(path: str) -> np.ndarray:
    """Decode an image to HWC RGB uint8 with EXIF orientation applied; DataError if it cannot be decoded.

    16-bit greyscale keeps its 8 high bits, as OpenCV's ``imread`` (YOLOv7's decoder) gives it; Pillow's own
    conversion would saturate it (every value above 255 white)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16"):
                grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.array(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any decoder failure is a data problem
        raise DataError(f"{path}: cannot decode image: {e}") from e
