"""Segmentation losses (Keras 3, backend-agnostic `keras.ops`): the paper's smoothed soft Dice, BCE + Dice,
and focal Tversky for small lesions.

All take `y_true` (0/1) and `y_pred` (sigmoid probabilities) of shape (batch, H, W, 1) and return one
loss per image (Keras averages over the batch). The Dice is computed per image, so an empty ground truth
with an empty prediction scores ~1 (loss ~0): the network is rewarded for saying "no blood" on normal
slices instead of being pushed to paint something.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from ichkit.models.seg.results import SegError

LOSSES: tuple[str, ...] = ("dice", "bce_dice", "focal_tversky")


def _flat(y_true, y_pred):
    y_true = ops.cast(ops.reshape(y_true, (ops.shape(y_true)[0], -1)), "float32")
    y_pred = ops.cast(ops.reshape(y_pred, (ops.shape(y_pred)[0], -1)), "float32")
    return y_true, y_pred


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - (2 sum(t p) + s) / (sum(t) + sum(p) + s) per image: the smoothed soft Dice of the paper."""
    t, p = _flat(y_true, y_pred)
    inter = ops.sum(t * p, axis=1)
    return 1.0 - (2.0 * inter + smooth) / (ops.sum(t, axis=1) + ops.sum(p, axis=1) + smooth)


def bce_dice_loss(y_true, y_pred, smooth: float = 1.0, bce_weight: float = 1.0):
    """Pixel-mean binary cross-entropy + soft Dice: BCE gives dense gradients early, Dice the overlap."""
    t, p = _flat(y_true, y_pred)
    bce = ops.mean(keras.losses.binary_crossentropy(ops.expand_dims(t, -1), ops.expand_dims(p, -1)), axis=1)
    return bce_weight * bce + soft_dice_loss(y_true, y_pred, smooth)


def focal_tversky_loss(y_true, y_pred, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75,
                       smooth: float = 1.0):
    """(1 - TI) ** gamma with the Tversky index TI = TP / (TP + alpha FP + beta FN) (Abraham & Khan 2019):
    beta > alpha weighs missed blood more than false alarms; gamma < 1 focuses on the hard images."""
    t, p = _flat(y_true, y_pred)
    tp = ops.sum(t * p, axis=1)
    fp = ops.sum((1.0 - t) * p, axis=1)
    fn = ops.sum(t * (1.0 - p), axis=1)
    tversky = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return ops.power(ops.maximum(1.0 - tversky, 0.0), gamma)


def ignoring_unknown(loss: Callable) -> Callable:
    """`loss` per image, 0 for images whose truth is all -1 (no pixel truth: a positive slice without a
    mask, `models.cnn.inputs.CacheSequence(unknown_masks=...)`), so they neither teach "no blood" nor blood."""

    def masked(y_true, y_pred):
        flat = ops.reshape(ops.cast(y_true, "float32"), (ops.shape(y_true)[0], -1))
        known = ops.cast(ops.min(flat, axis=1) >= 0.0, "float32")
        return loss(ops.maximum(y_true, 0.0), y_pred) * known

    masked.__name__ = f"{getattr(loss, '__name__', 'loss')}_known"
    return masked


def get_loss(name: str, smooth: float = 1.0) -> Callable:
    """The loss named in the config (`seg.<profile>.loss`)."""
    if name == "dice":
        fn = lambda t, p: soft_dice_loss(t, p, smooth)  # noqa: E731
    elif name == "bce_dice":
        fn = lambda t, p: bce_dice_loss(t, p, smooth)  # noqa: E731
    elif name == "focal_tversky":
        fn = lambda t, p: focal_tversky_loss(t, p, smooth=smooth)  # noqa: E731
    else:
        raise SegError(f"unknown segmentation loss {name!r}; expected one of {LOSSES}")
    fn.__name__ = f"{name}_loss"
    return fn
