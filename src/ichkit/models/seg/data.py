"""What a segmenter reads from the prepare cache besides the network's input (that comes through the one
input pipeline, `ichkit.models.cnn.inputs`): the truth mask, the brain mask and the HU map, by image id.

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
from ichkit.windows import resize


def mask_size(cfg: dict[str, Any]) -> int:
    return int(cfg["prepare"]["seg_size"])


def truth_kind(slices: pd.DataFrame, labels: pd.DataFrame | None = None) -> pd.Series:
    """Per image id: 'mask' (has a ground-truth mask), 'normal' (no blood: empty truth) or 'unknown'.

    `labels` (index image_id, column `any`) gives the normal/positive split where a trainer may only see
    its own training labels; without it the table's own `any` column is used (evaluation, after training).
    """
    s = slices.set_index("image_id")
    any_ = (labels["any"] if labels is not None else s["any"]).reindex(s.index)
    kind = pd.Series("unknown", index=s.index, dtype=object)
    kind[any_.fillna(1).astype(int) == 0] = "normal"
    if "has_mask" in s.columns:   # a table without the column has no masks: its positives are unknown
        kind[s["has_mask"].fillna(False).astype(bool)] = "mask"
    return kind


# (cache root, image id, feature settings) -> packed brain mask: a per-process memo (~8 KB an image)
_BRAINS: dict[tuple, tuple[np.ndarray, tuple[int, int]]] = {}


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

    def brain_small(self, image_id: str) -> np.ndarray:
        """The feature module's brain mask (bool) on the HU map's grid; computed once per process (it is
        the slow part of a threshold segmenter and every fold of every seg model asks for it again)."""
        from ichkit.features import brain_mask

        key = (str(self.cache.root), image_id, self.features)
        packed = _BRAINS.get(key)
        if packed is None:
            b = brain_mask(self.hu(image_id), self.features)
            packed = _BRAINS[key] = (np.packbits(b.ravel()), b.shape)
        bits, shape = packed
        return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)

    def brain(self, image_id: str) -> np.ndarray:
        """uint8 0/1 brain mask at seg_size."""
        return resize(self.brain_small(image_id).astype(np.uint8), self.size, mask=True)
