"""Class-specific augmentation (albumentations 2), shared by the CNN classifiers and the segmentation U-Net.

A *policy* is a named recipe in the config (``cnn.augment.policies``); ``cnn.augment.by_class`` says
which policy each 7-class label gets in training. `ClassAugmenter` builds one `albumentations.Compose` per
policy and picks it by the image's label, so a normal slice gets light geometry and a rare or hard one
(multi, epidural, subarachnoid) gets stronger geometry and intensity changes. Image and mask go through
the same draw (``Compose(image=, mask=)``); masks are resampled with nearest neighbour and filled with 0.

Window jitter is not an albumentations transform: it perturbs the window centre/width *before* the
HU -> uint8 mapping, so it needs the HU map. `ClassAugmenter.jitter_windows` draws the perturbed windows;
the input pipeline (`ichkit.models.cnn.inputs`) re-windows the HU map with them where one is available.

Validation and test images are never augmented: the pipeline only calls an augmenter in training; the
flip TTA of prediction is a plain horizontal flip done by the trainer.

Policy keys (each optional; absent or null = not applied):

- ``affine``: {rotate: degrees, scale: fraction, shift: fraction, p}  -> A.Affine
- ``hflip``: p                                                         -> A.HorizontalFlip
- ``crop``: {scale: [lo, hi], p}                                       -> A.RandomResizedCrop (output size kept)
- ``brightness_contrast``: {brightness: b, contrast: c, p}            -> A.RandomBrightnessContrast
- ``noise``: {std: [lo, hi] (fraction of 255), p}                      -> A.GaussNoise
- ``window_jitter``: {center: HU, width: fraction, p}                  -> re-windowing from the HU map
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ichkit.labels import CLASSES7
from ichkit.models.cnn import CNNError

POLICY_KEYS = ("affine", "hflip", "crop", "brightness_contrast", "noise", "window_jitter")


def _check_policy(name: str, policy: Mapping[str, Any]) -> None:
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise CNNError(f"augmentation policy {name!r}: unknown keys {unknown}; known: {list(POLICY_KEYS)}")


def build_compose(policy: Mapping[str, Any], size: int, seed: int | None = None):
    """One `albumentations.Compose` for a policy at a square output `size` (window jitter excluded)."""
    import albumentations as A
    import cv2

    steps: list[Any] = []
    if policy.get("affine"):
        a = policy["affine"]
        steps.append(A.Affine(
            rotate=(-float(a.get("rotate", 0)), float(a.get("rotate", 0))),
            scale=(1 - float(a.get("scale", 0)), 1 + float(a.get("scale", 0))),
            translate_percent=(-float(a.get("shift", 0)), float(a.get("shift", 0))),
            interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=float(a.get("p", 0.5)),
        ))
    if policy.get("hflip"):
        steps.append(A.HorizontalFlip(p=float(policy["hflip"])))
    if policy.get("crop"):
        c = policy["crop"]
        lo, hi = c.get("scale", (0.7, 1.0))
        steps.append(A.RandomResizedCrop(size=(size, size), scale=(float(lo), float(hi)), ratio=(0.9, 1.1),
                                         interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                         p=float(c.get("p", 0.5))))
    if policy.get("brightness_contrast"):
        b = policy["brightness_contrast"]
        steps.append(A.RandomBrightnessContrast(brightness_limit=float(b.get("brightness", 0.1)),
                                                contrast_limit=float(b.get("contrast", 0.1)), p=float(b.get("p", 0.5))))
    if policy.get("noise"):
        n = policy["noise"]
        lo, hi = n.get("std", (0.01, 0.03))
        steps.append(A.GaussNoise(std_range=(float(lo), float(hi)), p=float(n.get("p", 0.3))))
    return A.Compose(steps, seed=seed)


class ClassAugmenter:
    """Picks the Compose of the image's label and applies it; also draws window jitter.

    ``augmenter(image, mask=None, label=k, seed=s)`` -> (image, mask). `label` is a CLASSES7 index (or
    name); ``seed`` makes the draw a pure function of (seed, image): the input pipeline passes a seed
    derived from (base seed, epoch, position), so forked workers never repeat each other's transforms and
    a rerun of an epoch draws the same transforms.
    """

    def __init__(self, policies: Mapping[str, Mapping[str, Any]], by_class: Mapping[str, str], size: int):
        for name, policy in policies.items():
            _check_policy(name, policy or {})
        missing = sorted(set(CLASSES7) - set(by_class))
        if missing:
            raise CNNError(f"cnn.augment.by_class: no policy for classes {missing}")
        unknown = sorted({p for p in by_class.values() if p not in policies})
        if unknown:
            raise CNNError(f"cnn.augment.by_class names unknown policies {unknown}; defined: {sorted(policies)}")
        self.size = int(size)
        self.policies = {name: dict(p or {}) for name, p in policies.items()}
        self.by_class = {CLASSES7.index(c): by_class[c] for c in CLASSES7}
        self._local = threading.local()

    # A Compose holds its own RNG: thread workers each get their own copies (a shared one would race
    # between set_random_seed and the draw); process workers get theirs by pickling without them.
    @property
    def composes(self) -> dict[str, Any]:
        composes = getattr(self._local, "composes", None)
        if composes is None:
            composes = {name: build_compose(p, self.size) for name, p in self.policies.items()}
            self._local.composes = composes
        return composes

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_local")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], size: int) -> "ClassAugmenter":
        """From the resolved config's ``cnn.augment`` section."""
        section = cfg["cnn"]["augment"]
        return cls(section["policies"], section["by_class"], size)

    def policy_name(self, label: int | str) -> str:
        index = CLASSES7.index(label) if isinstance(label, str) else int(label)
        return self.by_class[index]

    def compose_for(self, label: int | str):
        return self.composes[self.policy_name(label)]

    def jitter_windows(self, label: int | str, windows: Sequence[tuple[float, float]],
                       rng: np.random.Generator) -> list[tuple[float, float]] | None:
        """Perturbed (centre, width) windows for this label's policy, or None when no jitter is drawn."""
        jitter = self.policies[self.policy_name(label)].get("window_jitter")
        if not jitter or rng.random() >= float(jitter.get("p", 0.5)):
            return None
        dc, dw = float(jitter.get("center", 0)), float(jitter.get("width", 0))
        return [(c + rng.uniform(-dc, dc), w * (1 + rng.uniform(-dw, dw))) for c, w in windows]

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, label: int | str = "normal",
                 seed: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        compose = self.compose_for(label)
        if seed is not None:
            compose.set_random_seed(int(seed))
        if mask is None:
            return compose(image=image)["image"], None
        out = compose(image=image, mask=mask)
        return out["image"], out["mask"]
