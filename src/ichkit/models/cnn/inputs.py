"""The one input pipeline of the CNN classifiers and the segmentation U-Net: prepared cache -> batches.

`CacheSequence` is a `keras.utils.PyDataset`: each batch is read from the prepared cache
(`ichkit.cache.ImageCache`, one ``.npy`` per image), so the set is never held in RAM; ``workers`` threads
(or processes with ``use_multiprocessing``) prepare batches while the model trains. It yields

- classification: ``x`` float32 (B, size, size, C) in [0, 1] and the ``targets`` given (a dict of
  per-id arrays, e.g. ``{"class7": one-hot (n, 7), "rsna": (n, 6)}``), batch-sliced;
- segmentation (``kind="seg", masks=True``): ``x`` from the ``seg`` cache and the mask from the ``mask``
  cache as float32 (B, size, size, 1) 0/1 (an image without a mask file is all background, except the
  ``unknown_masks`` ids, positive slices without a pixel truth: their mask is all -1, which
  `ichkit.models.seg.losses.ignoring_unknown` leaves out of the loss);
- prediction (no targets, no masks): ``(x,)``.

With exactly one target the bare array is yielded instead of a one-key dict (a single-output model).

**Channels** (``context``):

- ``none``: the cached windows of the slice itself (3 channels: brain, subdural, bone by default);
- ``subdural3``: the subdural window of slices i-1, i, i+1 of the same series (3 channels), the RSNA-2019
  1st/3rd place input;
- ``all9``: all windows of i-1, i, i+1 (9 channels, slice-major); the models put a 1x1 conv stem in front.

**Neighbours** (`neighbour_table`): slices of one series sorted by z. A neighbour is the next present
slice (status ok) on that side if it lies within ``max_gap`` times the series' slice spacing (its
smallest positive z step, which missing slices cannot enlarge); otherwise, and at the series' ends, the
slice itself is repeated. With the default 2.5 one missing or quarantined slice is bridged by the slice
beyond it; a larger hole repeats the centre slice. A slice without z has no neighbours. A neighbour whose
cache file is absent (e.g. not in the ``seg`` cache) is also replaced by the centre slice.

**Sampling** (`epoch_order`): ``samples_per_class=N`` draws N images of each class present per epoch
(without replacement where a class has at least N, else with), reshuffled every epoch; ``None`` uses
every image once per epoch (shuffled if ``shuffle``).

**Augmentation**: an `ichkit.models.cnn.augment.ClassAugmenter` given at training only; each image's draw
is seeded from (``seed``, epoch, position in the epoch), so forked or threaded workers never repeat each
other's transforms, and a rerun epoch draws the same ones. Window jitter re-windows the cached HU map
(``hu`` kind, real HU only: ids in ``hu_ids``) when the output size is not larger than the HU map;
otherwise the cached uint8 windows are used unjittered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.cache import ImageCache
from ichkit.models.cnn import CNNError
from ichkit.windows import as_windows, resize, window_hu

try:  # keep `neighbour_table` / `epoch_order` importable without Keras
    from keras.utils import PyDataset
except ImportError:  # pragma: no cover
    PyDataset = object

CONTEXTS: dict[str, int] = {"none": 3, "subdural3": 3, "all9": 9}
DEFAULT_WINDOWS = {"brain": (40.0, 80.0), "subdural": (80.0, 200.0), "bone": (600.0, 2800.0)}


def context_channels(context: str, n_windows: int = 3) -> int:
    """Channels a `context` feeds the model."""
    if context not in CONTEXTS:
        raise CNNError(f"unknown input context {context!r}; expected one of {sorted(CONTEXTS)}")
    return {"none": n_windows, "subdural3": 3, "all9": 3 * n_windows}[context]


def cache_windows(work: Path | str, cfg: Mapping[str, Any] | None = None) -> dict[str, tuple[float, float]]:
    """The windows (name -> (centre, width)) the cache was built with: cache.json, else prepare.windows."""
    path = ImageCache(work).settings_path
    if path.is_file():
        windows = json.loads(path.read_text()).get("windows")
        if windows:
            return {k: (float(v[0]), float(v[1])) for k, v in windows.items()}
    if cfg is not None and cfg.get("prepare", {}).get("windows"):
        return {k: (float(v[0]), float(v[1])) for k, v in cfg["prepare"]["windows"].items()}
    return dict(DEFAULT_WINDOWS)


def neighbour_table(slices: pd.DataFrame, max_gap: float = 2.5) -> pd.DataFrame:
    """Index image_id of every present slice (status ok, or all if no status): columns prev_id, next_id.

    See the module docstring for the rule. ``max_gap`` is in units of the series' slice spacing.
    """
    df = slices
    if "status" in df.columns:
        df = df[df["status"].astype("string").fillna("") == "ok"]
    df = df[["image_id", "series_id", "z"]].copy()
    df["image_id"] = df["image_id"].astype(str)
    prev = df["image_id"].to_numpy(dtype=object).copy()
    nxt = prev.copy()
    pos_of = {image_id: i for i, image_id in enumerate(df["image_id"])}
    with_z = df[df["z"].notna() & df["series_id"].notna()]
    for _, group in with_z.groupby("series_id", sort=False):
        if len(group) < 2:
            continue
        group = group.sort_values(["z", "image_id"], kind="stable")
        ids = group["image_id"].tolist()
        z = group["z"].to_numpy(dtype=np.float64)
        steps = np.diff(z)
        positive = steps[steps > 1e-3]
        if positive.size == 0:
            continue
        limit = float(max_gap) * float(positive.min()) + 1e-6
        for j, image_id in enumerate(ids):
            row = pos_of[image_id]
            if j > 0 and z[j] - z[j - 1] <= limit:
                prev[row] = ids[j - 1]
            if j + 1 < len(ids) and z[j + 1] - z[j] <= limit:
                nxt[row] = ids[j + 1]
    return pd.DataFrame({"prev_id": prev, "next_id": nxt}, index=pd.Index(df["image_id"], name="image_id"))


def epoch_order(labels7: np.ndarray | None, n: int, samples_per_class: int | None, shuffle: bool,
                rng: np.random.Generator) -> np.ndarray:
    """Positions (into the id list) of one epoch: balanced per class, all shuffled, or all in order."""
    if samples_per_class is None or labels7 is None:
        order = np.arange(n)
        return rng.permutation(order) if shuffle else order
    labels7 = np.asarray(labels7)
    picks = []
    for cls in np.unique(labels7):
        members = np.flatnonzero(labels7 == cls)
        picks.append(rng.choice(members, int(samples_per_class), replace=members.size < samples_per_class))
    return rng.permutation(np.concatenate(picks))


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of one image draw: distinct per (seed, epoch, position), worker-independent."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1)[0])


class CacheSequence(PyDataset):
    """Batches of cached images (+ targets / masks) for Keras `fit` / `predict`. See the module docstring.

    Arguments: ``work`` (work folder with ``cache/``), ``ids`` (image ids), ``size`` (square output px),
    ``batch_size``; ``kind`` ``cls`` | ``seg`` (which cached image); ``context`` (``none`` | ``subdural3``
    | ``all9``) with ``slices`` (the slice table, needed for 2.5D) and ``max_gap``; ``labels7`` (CLASSES7
    indices, needed for balanced sampling and class policies); ``targets`` (name -> per-id array);
    ``masks`` (add the ``mask`` target) with ``unknown_masks`` (ids whose mask is -1: no truth);
    ``augmenter`` (training only); ``samples_per_class``;
    ``shuffle``; ``seed``; ``windows`` (default: the cache's); ``hu_ids`` (ids whose HU map is real HU,
    enabling window jitter); ``flip`` (mirror every image left-right: flip TTA at prediction); the rest
    goes to `keras.utils.PyDataset` (workers, use_multiprocessing, max_queue_size).
    """

    def __init__(self, work: Path | str, ids: Sequence[str], *, size: int, batch_size: int, kind: str = "cls",
                 context: str = "none", slices: pd.DataFrame | None = None, max_gap: float = 2.5,
                 labels7: np.ndarray | None = None, targets: Mapping[str, np.ndarray] | None = None,
                 masks: bool = False, augmenter: Any = None, samples_per_class: int | None = None,
                 shuffle: bool = False, seed: int = 0, windows: Mapping[str, Sequence[float]] | None = None,
                 hu_ids: Iterable[str] | None = None, flip: bool = False,
                 unknown_masks: Iterable[str] | None = None, **pydataset_kwargs: Any):
        super().__init__(**pydataset_kwargs)
        if kind not in ("cls", "seg"):
            raise CNNError(f"kind must be cls or seg, got {kind!r}")
        context_channels(context)
        self.work = Path(work)
        self.cache = ImageCache(self.work)
        self.ids = [str(i) for i in ids]
        self.size, self.batch_size, self.kind, self.context = int(size), int(batch_size), kind, context
        self.labels7 = None if labels7 is None else np.asarray(labels7, dtype=np.int64)
        if self.labels7 is not None and len(self.labels7) != len(self.ids):
            raise CNNError(f"labels7 has {len(self.labels7)} rows for {len(self.ids)} ids")
        self.targets = {k: np.asarray(v) for k, v in (targets or {}).items()}
        for name, arr in self.targets.items():
            if len(arr) != len(self.ids):
                raise CNNError(f"target {name!r} has {len(arr)} rows for {len(self.ids)} ids")
        self.masks = bool(masks)
        unknown = frozenset(str(i) for i in (unknown_masks if unknown_masks is not None else ()))
        self.unknown_mask = np.array([i in unknown for i in self.ids], dtype=bool)
        self.augmenter = augmenter
        if augmenter is not None and self.labels7 is None:
            raise CNNError("augmentation picks its policy by label: pass labels7 with an augmenter")
        self.samples_per_class = None if samples_per_class is None else int(samples_per_class)
        self.shuffle, self.seed, self.flip = bool(shuffle), int(seed), bool(flip)
        named = dict(windows) if windows is not None else cache_windows(self.work)
        self.window_names = list(named)
        self.windows = list(as_windows(named))
        self.subdural = self.window_names.index("subdural") if "subdural" in self.window_names else min(1, len(named) - 1)
        self.hu_ids = frozenset(str(i) for i in hu_ids) if hu_ids is not None else frozenset()
        self.neighbours: dict[str, tuple[str, str]] = {}
        if context != "none":
            if slices is None:
                raise CNNError(f"context {context!r} needs the slice table (slices=) for the neighbours")
            table = neighbour_table(slices, max_gap)
            wanted = table.index.intersection(pd.Index(self.ids))
            sub = table.loc[wanted]
            self.neighbours = dict(zip(sub.index, zip(sub["prev_id"], sub["next_id"])))
        self.epoch = 0
        self._make_order()

    # -- epochs -------------------------------------------------------------------------------------------
    def _make_order(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        self.order = epoch_order(self.labels7, len(self.ids), self.samples_per_class, self.shuffle, rng)

    def set_epoch(self, epoch: int) -> None:
        """Jump to `epoch` (a resumed fit starts at its saved epoch, with that epoch's order and draws)."""
        self.epoch = int(epoch)
        self._make_order()

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    @property
    def channels(self) -> int:
        return context_channels(self.context, len(self.windows))

    # -- one image ----------------------------------------------------------------------------------------
    def _windows_of(self, image_id: str, jitter: list[tuple[float, float]] | None) -> np.ndarray:
        """uint8 (size, size, n_windows) of one slice, re-windowed from HU when `jitter` applies."""
        if jitter is not None and image_id in self.hu_ids and self.cache.has("hu", image_id):
            hu = self.cache.load("hu", image_id)
            if self.size <= hu.shape[0]:
                img = np.stack([window_hu(hu, c, w) for c, w in jitter], axis=-1)
                return resize(img, self.size)
        return resize(self.cache.load(self.kind, image_id), self.size)

    def load(self, position: int, draw: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(image uint8 (size, size, C), mask uint8 (size, size) or None) of ids[position].

        `draw` seeds the augmentation (None: no augmentation).
        """
        image_id = self.ids[position]
        label = int(self.labels7[position]) if self.labels7 is not None else None
        augment = self.augmenter is not None and draw is not None
        rng = np.random.default_rng(draw) if augment else None
        jitter = self.augmenter.jitter_windows(label, self.windows, rng) if augment else None
        if self.context == "none":
            image = self._windows_of(image_id, jitter)
        else:
            prev_id, next_id = self.neighbours.get(image_id, (image_id, image_id))
            centre = self._windows_of(image_id, jitter)
            stack = [self._windows_of(n, jitter) if n != image_id and self.cache.has(self.kind, n) else centre
                     for n in (prev_id, image_id, next_id)]
            if self.context == "subdural3":
                image = np.stack([s[..., self.subdural] for s in stack], axis=-1)
            else:
                image = np.concatenate(stack, axis=-1)
        mask = None
        if self.masks:
            if self.cache.has("mask", image_id):
                mask = resize(self.cache.load("mask", image_id), self.size, mask=True)
            else:
                mask = np.zeros((self.size, self.size), dtype=np.uint8)
        if augment:
            image, mask = self.augmenter(image, mask, label=label, seed=draw)
        return np.ascontiguousarray(image), mask

    # -- batches ------------------------------------------------------------------------------------------
    def batch_positions(self, index: int) -> np.ndarray:
        return self.order[index * self.batch_size:(index + 1) * self.batch_size]

    def __getitem__(self, index: int):
        positions = self.batch_positions(index)
        base = index * self.batch_size
        images, masks = [], []
        for j, position in enumerate(positions):
            draw = item_seed(self.seed, self.epoch, base + j) if self.augmenter is not None else None
            image, mask = self.load(int(position), draw)
            images.append(image)
            masks.append(mask)
        x = np.stack(images).astype(np.float32) / np.float32(255.0)
        if self.flip:  # flip TTA: the mirrored image (masks are not flipped: prediction only)
            x = x[:, :, ::-1]
        y = {name: arr[positions] for name, arr in self.targets.items()}
        if self.masks:
            y["mask"] = np.stack(masks).astype(np.float32)[..., None]
            y["mask"][self.unknown_mask[positions]] = -1.0
        if not y:
            return (x,)
        if len(y) == 1:
            return x, next(iter(y.values()))
        return x, y
