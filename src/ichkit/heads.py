"""The RSNA head: how a classifier's 7-class probabilities become the 6 RSNA label probabilities.

Every family that predicts the 7 classes goes through here, so the mapping, the multi share and the prior
correction are written once:

- `multi_share_from_labels`: P(subtype | multi slice), estimated from the training folds' labels only
  (never the held-out fold, never the test split);
- `class_prior`: the 7-class frequencies of the training folds;
- `prior_correct`: undo balanced class weighting, p(c|x) ~ p_balanced(c|x) * prior(c). Balancing trains a
  model as if every class were equally frequent, which helps the rare classes' recall (the 7-class metrics)
  but over-predicts hemorrhage, and the RSNA log loss punishes that;
- `rsna_from_class7`: any = 1 - p(normal), subtype = p(subtype) + p(multi) * share;
- `class7_from_any`: the contract's 7 columns for a binary (any-hemorrhage) model.

`RSNA_HEADS` names the ways `train.rsna_head` may make the 6 probabilities: ``class7`` (mapped as
predicted), ``prior_corrected`` (mapped after `prior_correct`), ``binary`` (one extra unweighted binary
model per RSNA label, made by the family).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ichkit.errors import IchkitError
from ichkit.labels import CLASS7_INDEX, CLASSES7, SUBTYPES

RSNA_HEADS: tuple[str, ...] = ("class7", "prior_corrected", "binary")
# Prior for P(subtype | multi): a multi slice has at least two of the five subtypes, so with nothing
# else known each subtype is present with probability 2/5.
MULTI_SHARE_PRIOR = 2 / len(SUBTYPES)


class HeadError(IchkitError):
    """Probabilities or labels the RSNA head cannot use; the message says which and why."""


def check_head(rsna_head: str) -> str:
    if rsna_head not in RSNA_HEADS:
        raise HeadError(f"train.rsna_head must be one of {RSNA_HEADS}, got {rsna_head!r}")
    return rsna_head


def class_prior(y7: np.ndarray) -> np.ndarray:
    """(7,) class frequencies of CLASSES7 indices `y7` (the training folds' labels)."""
    y7 = np.asarray(y7, dtype=np.int64)
    if len(y7) == 0:
        raise HeadError("class_prior needs at least one labelled training image")
    return np.bincount(y7, minlength=len(CLASSES7)) / len(y7)


def prior_correct(p7: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """p7 of a model trained with balanced class weights, re-weighted by the training prior and renormalised."""
    base = np.asarray(p7, dtype=np.float64) * np.asarray(prior, dtype=np.float64)[None, :]
    return base / base.sum(axis=1, keepdims=True).clip(min=1e-12)


def multi_share_from_labels(labels: pd.DataFrame, prior_weight: float = 1.0) -> np.ndarray:
    """P(subtype present | multi slice) for the 5 SUBTYPES, estimated from labelled (training-fold) rows.

    `labels` needs the SUBTYPES columns (0/1). The estimate is smoothed toward MULTI_SHARE_PRIOR (2/5) with
    `prior_weight` pseudo-slices, so a fold with few multi slices gets no hard 0 or 1 (a hard 0 turns into
    a 34.5 log-loss penalty whenever that subtype does show up) and a fold with none gets the prior itself.
    """
    missing = [s for s in SUBTYPES if s not in labels.columns]
    if missing:
        raise HeadError(f"labels lack subtype columns {missing}")
    sub = labels[list(SUBTYPES)]
    if sub.isna().any().any():
        raise HeadError(f"labels have {int(sub.isna().any(axis=1).sum())} rows without subtype labels "
                       "(test rows?): pass labelled training rows only")
    sub = sub.to_numpy(dtype=np.float64)
    multi = sub[sub.sum(axis=1) >= 2]
    if len(multi) == 0 and prior_weight <= 0:
        return np.full(len(SUBTYPES), MULTI_SHARE_PRIOR)
    return (multi.sum(axis=0) + prior_weight * MULTI_SHARE_PRIOR) / (len(multi) + prior_weight)


def rsna_from_class7(p7: np.ndarray, multi_share: np.ndarray) -> np.ndarray:
    """Map 7-class probabilities to the 6 RSNA label probabilities (RSNA_LABELS order).

    any = 1 - p(normal); subtype s = p(s) + p(multi) * multi_share[s], multi_share in SUBTYPES order
    (from `multi_share_from_labels` on the training fold). This is exact when the subtype mix of a multi
    slice does not depend on the image beyond being multi. Since multi_share <= 1, every subtype is at
    most p(s) + p(multi) <= any; the result is clipped to [0, 1] and subtypes to <= any against rounding.
    """
    p7 = np.asarray(p7, dtype=np.float64)
    share = np.asarray(multi_share, dtype=np.float64)
    if p7.ndim != 2 or p7.shape[1] != len(CLASSES7):
        raise HeadError(f"p7 must have shape (n, {len(CLASSES7)}), got {p7.shape}")
    if share.shape != (len(SUBTYPES),) or not np.isfinite(share).all() or (share < 0).any() or (share > 1).any():
        raise HeadError(f"multi_share must be {len(SUBTYPES)} values in [0, 1] (SUBTYPES order), got {share}")
    subtype_cols = [CLASS7_INDEX[s] for s in SUBTYPES]
    any_ = np.clip(1.0 - p7[:, CLASS7_INDEX["normal"]], 0.0, 1.0)
    subtypes = p7[:, subtype_cols] + p7[:, [CLASS7_INDEX["multi"]]] * share[None, :]
    subtypes = np.minimum(np.clip(subtypes, 0.0, 1.0), any_[:, None])
    return np.column_stack([any_, subtypes])


def class7_from_any(p_any: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(n, 7) contract columns for an any-hemorrhage model: p(normal) = 1 - p(any), and p(any) shared over
    the six hemorrhage classes in the proportions of the training prior (a binary model knows no subtype)."""
    p_any = np.clip(np.asarray(p_any, dtype=np.float64), 0.0, 1.0)
    prior = np.asarray(prior, dtype=np.float64)
    bleed = prior.copy()
    bleed[CLASS7_INDEX["normal"]] = 0.0
    total = bleed.sum()
    bleed = bleed / total if total > 0 else np.where(np.arange(len(CLASSES7)) == CLASS7_INDEX["normal"], 0.0,
                                                      1.0 / (len(CLASSES7) - 1))
    p7 = p_any[:, None] * bleed[None, :]
    p7[:, CLASS7_INDEX["normal"]] = 1.0 - p_any
    return p7
