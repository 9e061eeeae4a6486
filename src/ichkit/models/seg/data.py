"""What a segmenter reads from the prepare cache: the truth mask, the brain mask, the HU map, and the
network's input image, all keyed by image id.

Masks and scores live at ``prepare.seg_size`` (the cached ground-truth resolution, 512 on RSNA data);
every model's prediction is brought to that grid before post-processing and scoring. An image has a
known truth when it has a mask, or when it is normal (truth = empty mask); a positive slice without a
mask (possible on RSNA data) has no pixel truth and is left out of Dice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.cache import ImageCache


def mask_size(cfg: dict[str, Any]) -> int:
    return int(cfg["prepare"]["seg_size"])


def resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """Square-resize an (H, W[, C]) array; nearest for masks, area/linear for images and probabilities."""
    import cv2

    if array.shape[0] == size and array.shape[1] == size:
        return array
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if array.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(array, (size, size), interpolation=interp)


def truth_kind(slices: pd.DataFrame, labels: pd.DataFrame | None = None) -> pd.Series:
    """Per image id: 'mask' (has a ground-truth mask), 'normal' (no blood: empty truth) or 'unknown'.

    `labels` (index image_id, column `any`) gives the normal/positive split where a trainer may only see
    its own training labels; without it the table's own `any` column is used (evaluation, after training).
    """
    s = slices.set_index("image_id")
    any_ = (labels["any"] if labels is not None else s["any"]).reindex(s.index)
    kind = pd.Series("unknown", index=s.index, dtype=object)
    kind[any_.fillna(1).astype(int) == 0] = "normal"
    kind[s["has_mask"].fillna(False).astype(bool)] = "mask"
    return kind


class SegData:
    """Cached arrays of one work folder, for one segmentation setting."""

    def __init__(self, work: Path | str, cfg: dict[str, Any]):
        from ichkit.features import FeatureSettings

        self.cache = ImageCache(work)
        self.cfg = cfg
        self.size = mask_size(cfg)
        self.features = FeatureSettings.from_config(cfg)

    def truth(self, image_id: str) -> np.ndarray:
        """uint8 0/1 truth at seg_size: the cached mask, or empty where the slice has none (normal)."""
        if self.cache.has("mask", image_id):
            return self.cache.load("mask", image_id)
        return np.zeros((self.size, self.size), dtype=np.uint8)

    def hu(self, image_id: str) -> np.ndarray:
        return self.cache.load("hu", image_id).astype(np.float32)

    def brain(self, image_id: str, hu: np.ndarray | None = None) -> np.ndarray:
        """The feature module's brain mask (from the HU map), at seg_size."""
        from ichkit.features import brain_mask

        hu = self.hu(image_id) if hu is None else hu
        b = brain_mask(hu, self.features.bone_hu, self.features.brain_erode_px)
        return resize(b.astype(np.uint8), self.size, nearest=True)

    def image(self, image_id: str, size: int, source: str) -> np.ndarray:
        """uint8 (size, size, 3) window image from the `cls` or `seg` cache, resized."""
        if source not in ("cls", "seg"):
            raise ValueError(f"seg image source must be cls or seg, got {source!r}")
        if not self.cache.has(source, image_id):
            hint = " (set prepare.seg_cache=all and re-run prepare)" if source == "seg" else ""
            raise FileNotFoundError(f"{self.cache.path(source, image_id)} not in the cache{hint}")
        return resize(self.cache.load(source, image_id), size, nearest=False)
