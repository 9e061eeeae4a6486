"""Every score the project reports, in one place: 7-class metrics, the RSNA competition log loss, AUCs.

Conventions:
- 7-class truth `y7` is an int array of indices into `labels.CLASSES7` (class names are accepted too);
  7-class predictions `p7` are (n, 7) probabilities in CLASSES7 order; the predicted class is the argmax.
- RSNA truth `y6` is an (n, 6) 0/1 array and `p6` (n, 6) probabilities, columns in `labels.RSNA_LABELS`
  order (any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural).
- A class absent from `y_true` has no recall and no one-vs-rest AUC: those come out as NaN (never a crash,
  never a misleading 0), and macro averages skip them.

scikit-learn computes everything it has; only the RSNA weighted multi-label log loss is written here.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from ichkit.labels import CLASS7_INDEX, CLASSES7, RSNA_LABELS

# Kaggle RSNA 2019 weights, RSNA_LABELS order: `any` counts twice, each subtype once.
RSNA_WEIGHTS: np.ndarray = np.array([2.0 if label == "any" else 1.0 for label in RSNA_LABELS])
# Probabilities are clipped to [eps, 1 - eps] before the log, as the Kaggle scorer (and scikit-learn before
# 1.5) did, so one confident mistake costs -log(1e-15) = 34.5 instead of infinity.
LOG_LOSS_EPS: float = 1e-15

SCORE_KEYS: tuple[str, ...] = (
    "rsna_logloss",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_auc",
    "any_accuracy",
    "any_auc",
) + tuple(f"recall_{c}" for c in CLASSES7)

_ALL_CLASSES = np.arange(len(CLASSES7))

# 7-class truth: indices into CLASSES7, or the class names themselves
ClassLabels = Sequence[int] | Sequence[str] | np.ndarray


def as_class_index(y7: ClassLabels) -> np.ndarray:
    """7-class truth as int indices into CLASSES7; accepts indices or class names."""
    y = np.asarray(y7)
    if y.ndim != 1:
        raise ValueError(f"7-class labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind in "iu":
        bad = (y < 0) | (y >= len(CLASSES7))
        if bad.any():
            raise ValueError(f"7-class index {y[bad][0]} out of range 0..{len(CLASSES7) - 1}")
        return y.astype(np.int64)
    try:
        return np.array([CLASS7_INDEX[str(v)] for v in y], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"unknown 7-class label {exc.args[0]!r}; expected one of {list(CLASSES7)}") from None


def _check_probabilities(p: np.ndarray, n: int, width: int, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (n, width):
        raise ValueError(f"{name} must have shape ({n}, {width}), got {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{name} must hold finite probabilities in [0, 1]")
    return p


def _check_rsna(y6: np.ndarray, p6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y6)
    if y.ndim != 2 or y.shape[1] != len(RSNA_LABELS):
        raise ValueError(f"RSNA labels must have shape (n, {len(RSNA_LABELS)}), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("RSNA labels must be 0 or 1")
    return y.astype(np.float64), _check_probabilities(p6, len(y), len(RSNA_LABELS), "RSNA probabilities")


def _check_class7(y7: ClassLabels, p7: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = as_class_index(y7)
    return y, _check_probabilities(p7, len(y), len(CLASSES7), "7-class probabilities")


def predicted_class(p7: np.ndarray) -> np.ndarray:
    """The arg-max class index of each row (ties go to the earlier class in CLASSES7)."""
    return np.asarray(p7).argmax(axis=1)


def accuracy(y7: ClassLabels, p7: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    y, p = _check_class7(y7, p7)
    return float(accuracy_score(y, predicted_class(p)))


def balanced_accuracy(y7: ClassLabels, p7: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (scikit-learn's definition)."""
    from sklearn.metrics import balanced_accuracy_score

    y, p = _check_class7(y7, p7)
    with warnings.catch_warnings():
        # predicting a class absent from y_true is legitimate here (small folds); the score handles it
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y, predicted_class(p)))


def macro_f1(y7: ClassLabels, p7: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in y_true or predicted (a class nobody has is skipped)."""
    from sklearn.metrics import f1_score

    y, p = _check_class7(y7, p7)
    return float(f1_score(y, predicted_class(p), average="macro", zero_division=0))


def per_class_recall(y7: ClassLabels, p7: np.ndarray) -> dict[str, float]:
    """Recall of each of the 7 classes; NaN for a class absent from y_true."""
    from sklearn.metrics import recall_score

    y, p = _check_class7(y7, p7)
    recall = recall_score(y, predicted_class(p), labels=_ALL_CLASSES, average=None, zero_division=np.nan)
    return {c: float(r) for c, r in zip(CLASSES7, recall)}


def confusion(y7: ClassLabels, p7: np.ndarray, normalize: bool = False) -> pd.DataFrame:
    """7 x 7 confusion matrix, rows = true class, columns = predicted class, CLASSES7 order.

    `normalize=True` divides each row by its total (row = recall profile); a class absent from y_true
    gets a row of NaN rather than scikit-learn's zeros, which would read as "never recognised".
    """
    from sklearn.metrics import confusion_matrix

    y, p = _check_class7(y7, p7)
    counts = confusion_matrix(y, predicted_class(p), labels=_ALL_CLASSES)
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(totals > 0, counts / totals, np.nan)
    else:
        values = counts.astype(np.int64)
    return pd.DataFrame(
        values,
        index=pd.Index(CLASSES7, name="true"),
        columns=pd.Index(CLASSES7, name="predicted"),
    )


def macro_auc(y7: ClassLabels, p7: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC over the classes present in y_true (NaN when fewer than two are)."""
    from sklearn.metrics import roc_auc_score

    y, p = _check_class7(y7, p7)
    onehot = np.eye(len(CLASSES7), dtype=np.int64)[y]
    # one-vs-rest needs positives and negatives: a class every row has, or none has, has no AUC
    scorable = (onehot.sum(axis=0) > 0) & (onehot.sum(axis=0) < len(y))
    if not scorable.any():
        return float("nan")
    return float(roc_auc_score(onehot[:, scorable], p[:, scorable], average="macro"))


def rsna_label_log_losses(y6: np.ndarray, p6: np.ndarray, eps: float = LOG_LOSS_EPS) -> dict[str, float]:
    """Mean binary cross-entropy of each RSNA label over the rows (probabilities clipped to [eps, 1-eps])."""
    y, p = _check_rsna(y6, p6)
    if len(y) == 0:
        raise ValueError("no rows to score")
    p = np.clip(p, eps, 1.0 - eps)
    bce = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    return {label: float(v) for label, v in zip(RSNA_LABELS, bce.mean(axis=0))}


def rsna_log_loss(y6: np.ndarray, p6: np.ndarray, eps: float = LOG_LOSS_EPS) -> float:
    """The RSNA Intracranial Hemorrhage Detection (Kaggle 2019) metric: weighted multi-label log loss.

    For each image i and label j (RSNA_LABELS order) the binary cross-entropy is
    BCE_ij = -(y_ij log p_ij + (1 - y_ij) log(1 - p_ij)), with p clipped to [eps, 1 - eps]; the score is

        mean_i [ sum_j w_j BCE_ij / sum_j w_j ],   w = (2, 1, 1, 1, 1, 1)   (any weighs 2)

    Kaggle scored the long submission (one row per image x label) as sum(w * BCE) / sum(w) over all of
    its rows; every image contributes the same six rows (weight 7), so that equals the per-image weighted
    mean averaged over images above, and also the weighted average of the six per-label mean losses,
    which is how it is computed here.
    """
    per_label = rsna_label_log_losses(y6, p6, eps)
    return float(np.average([per_label[label] for label in RSNA_LABELS], weights=RSNA_WEIGHTS))


def any_accuracy(y6: np.ndarray, p6: np.ndarray, threshold: float = 0.5) -> float:
    """Accuracy of the binary hemorrhage / no-hemorrhage call `p(any) >= threshold`."""
    from sklearn.metrics import accuracy_score

    y, p = _check_rsna(y6, p6)
    return float(accuracy_score(y[:, 0].astype(int), (p[:, 0] >= threshold).astype(int)))


def any_auc(y6: np.ndarray, p6: np.ndarray) -> float:
    """ROC AUC of p(any) against `any`; NaN when every row has the same `any`."""
    from sklearn.metrics import roc_auc_score

    y, p = _check_rsna(y6, p6)
    if len(np.unique(y[:, 0])) < 2:
        return float("nan")
    return float(roc_auc_score(y[:, 0], p[:, 0]))


def score_predictions(y7: ClassLabels, p7: np.ndarray, y6: np.ndarray, p6: np.ndarray) -> dict[str, float]:
    """All scalar metrics, keyed and ordered as SCORE_KEYS (recall_<class> NaN for absent classes)."""
    y7 = as_class_index(y7)
    if len(y7) != len(np.asarray(y6)):
        raise ValueError(f"7-class truth has {len(y7)} rows but RSNA truth {len(np.asarray(y6))}")
    scores = {
        "rsna_logloss": rsna_log_loss(y6, p6),
        "accuracy": accuracy(y7, p7),
        "balanced_accuracy": balanced_accuracy(y7, p7),
        "macro_f1": macro_f1(y7, p7),
        "macro_auc": macro_auc(y7, p7),
        "any_accuracy": any_accuracy(y6, p6),
        "any_auc": any_auc(y6, p6),
    }
    scores.update({f"recall_{c}": r for c, r in per_class_recall(y7, p7).items()})
    return {key: scores[key] for key in SCORE_KEYS}


# --------------------------------------------------------------------------------------------------
# segmentation: pixel overlap of a predicted and a true binary mask
#
# Conventions: masks are 2-D arrays (nonzero = blood) of one shape. Per image, Dice = 2|P&T| / (|P| + |T|),
# IoU = |P&T| / |P|T|, precision = |P&T| / |P|, recall = |P&T| / |T|; a ratio whose denominator is 0 is NaN
# (an empty truth has no recall), except Dice and IoU of two empty masks, which are 1 (a correct "no blood").


def mask_counts(pred: np.ndarray, true: np.ndarray) -> tuple[int, int, int]:
    """(true positives, predicted pixels, true pixels) of one image."""
    p, t = np.asarray(pred) != 0, np.asarray(true) != 0
    if p.shape != t.shape:
        raise ValueError(f"predicted mask {p.shape} and true mask {t.shape} differ in shape")
    return int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t))


def overlap_scores(tp: float, n_pred: float, n_true: float) -> dict[str, float]:
    """Dice, IoU, precision and recall from pixel counts (per image, or summed over images = pooled)."""
    nan = float("nan")
    union = n_pred + n_true - tp
    empty = n_pred == 0 and n_true == 0
    return {
        "dice": 1.0 if empty else 2.0 * tp / (n_pred + n_true),
        "iou": 1.0 if empty else tp / union,
        "precision": tp / n_pred if n_pred else nan,
        "recall": tp / n_true if n_true else nan,
    }


def mask_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision, recall of one predicted mask against its truth."""
    return overlap_scores(*mask_counts(pred, true))


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    return mask_scores(pred, true)["dice"]


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    return mask_scores(pred, true)["iou"]


SEG_SCORE_KEYS: tuple[str, ...] = (
    "mean_dice", "mean_iou", "pooled_dice", "pixel_precision", "pixel_recall", "normal_fp_rate",
)


def segmentation_summary(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray,
                         normal: np.ndarray) -> dict[str, float]:
    """Scores of a set of images from their pixel counts.

    mean_dice / mean_iou: over the images with blood (n_true > 0); pooled_dice, pixel_precision and
    pixel_recall: from the counts summed over every image; normal_fp_rate: share of `normal` images
    (no blood) with any predicted pixel.
    """
    tp, n_pred, n_true = (np.asarray(a, dtype=np.float64) for a in (tp, n_pred, n_true))
    normal = np.asarray(normal, dtype=bool)
    blood = n_true > 0
    per = [overlap_scores(a, b, c) for a, b, c in zip(tp[blood], n_pred[blood], n_true[blood])]
    pooled = overlap_scores(tp.sum(), n_pred.sum(), n_true.sum())
    return {
        "mean_dice": float(np.mean([s["dice"] for s in per])) if per else float("nan"),
        "mean_iou": float(np.mean([s["iou"] for s in per])) if per else float("nan"),
        "pooled_dice": pooled["dice"],
        "pixel_precision": pooled["precision"],
        "pixel_recall": pooled["recall"],
        "normal_fp_rate": float((n_pred[normal] > 0).mean()) if normal.any() else float("nan"),
    }
