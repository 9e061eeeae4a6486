"""Post-processing of a probability map into a blood mask: threshold, minimum component size, brain
masking; and the choice of those three on an inner validation split (never the held-out fold).

The choice maximises the mean per-image Dice over the validation images, an empty prediction on a normal
slice counting 1 (so a setting that sprinkles false positives over normal slices is penalised as in the
false-positive rate the evaluation reports).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ichkit.models.seg.results import SegError


@dataclass(frozen=True)
class PostProcess:
    threshold: float = 0.5
    min_size: int = 0          # px at seg_size; smaller 8-connected components are dropped
    brain_mask: bool = True

    def region(self, prob: np.ndarray, brain: np.ndarray | None) -> np.ndarray:
        """bool mask before the size filter: the threshold, and the brain mask where asked for."""
        mask = np.asarray(prob) >= self.threshold
        if self.brain_mask and brain is not None:
            mask &= np.asarray(brain) > 0
        return mask

    def apply(self, prob: np.ndarray, brain: np.ndarray | None) -> np.ndarray:
        return remove_small(self.region(prob, brain), self.min_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(8-connected component labels, pixels per label; label 0 = background) of a bool mask."""
    from scipy import ndimage as ndi

    labels, _ = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels, np.bincount(labels.ravel())


def _keep_large(labels: np.ndarray, sizes: np.ndarray, min_size: int) -> np.ndarray:
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels].astype(np.uint8)


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """uint8 0/1 mask without the 8-connected components smaller than `min_size` pixels."""
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not mask.any():
        return mask.astype(np.uint8)
    return _keep_large(*_components(mask), min_size)


def mean_dice_by_min_size(masks: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                          min_sizes: Sequence[int]) -> list[float]:
    """Mean per-image Dice (two empty masks score 1) of `remove_small(mask, m)` against the truths, for each
    m of `min_sizes`; each mask is labelled once and every size reuses the labelling."""
    from ichkit.metrics import dice

    if not len(truths):
        return [float("nan")] * len(min_sizes)
    per_size: list[list[float]] = [[] for _ in min_sizes]
    for mask, truth in zip(masks, truths):
        labels, sizes = _components(np.asarray(mask, dtype=bool))
        for scores, m in zip(per_size, min_sizes):
            scores.append(dice(_keep_large(labels, sizes, int(m)), truth))
    return [float(np.mean(scores)) for scores in per_size]


def grid(cfg: dict[str, Any]) -> list[PostProcess]:
    p = cfg["seg"]["postprocess"]
    return [PostProcess(float(t), int(m), bool(b))
            for t, m, b in itertools.product(p["thresholds"], p["min_sizes"], p["brain_mask"])]


def choose(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], brains: Sequence[np.ndarray],
           candidates: Sequence[PostProcess]) -> tuple[PostProcess, float]:
    """The candidate with the best mean Dice on these (inner validation) images, and that Dice.
    Ties go to the earlier candidate (the grid's order), so the choice is deterministic.

    The candidates of one (threshold, brain mask) pair share their thresholded masks and component
    labelling (`mean_dice_by_min_size`): the scores of `PostProcess.apply`, at a fifth of the labelling
    work for the default grid (5 sizes)."""
    if not len(truths):
        raise SegError("post-processing: no validation images to choose on")
    scores: dict[PostProcess, float] = {}
    for pair in dict.fromkeys((pp.threshold, pp.brain_mask) for pp in candidates):
        group = [pp for pp in candidates if (pp.threshold, pp.brain_mask) == pair]
        regions = [group[0].region(p, b) for p, b in zip(probs, brains)]
        scores.update(zip(group, mean_dice_by_min_size(regions, truths, [pp.min_size for pp in group])))
    best, best_score = candidates[0], -1.0
    for pp in candidates:
        if scores[pp] > best_score + 1e-12:
            best, best_score = pp, scores[pp]
    return best, best_score
