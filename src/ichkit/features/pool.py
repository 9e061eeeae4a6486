"""Computing feature sets over many images: one image per task, over the project's process pool
(`ichkit.workers`) with a progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.features.analysis import composite_hu, radiomic_features
from ichkit.features.doc import radiomic_columns
from ichkit.features.pixels import pixel_columns, pixel_features
from ichkit.features.settings import FeatureError, FeatureSettings


def _compute_one(work: str, image_id: str, settings: FeatureSettings, sets: tuple[str, ...],
                 hu_units: bool = True) -> dict[str, Any]:
    """Worker: both feature sets of one image, read from the prepared cache. Without Hounsfield units (a
    rendered layout) the radiomic set is measured on `composite_hu` of the cached windows."""
    from ichkit.cache import ImageCache

    cache = ImageCache(work)
    out: dict[str, Any] = {}
    if "pixels" in sets:
        cls_image = cache.load("cls", image_id)
        if cls_image.dtype != np.uint8 or cls_image.ndim != 3 or cls_image.shape[2] != len(settings.windows):
            raise FeatureError(f"{cache.path('cls', image_id)}: expected uint8 (H, W, 3), got {cls_image.dtype} {cls_image.shape}")
        out["pixels"] = pixel_features(cls_image, settings.pixel_size)
    if "radiomic" in sets and not hu_units:
        cls_image = cache.load("cls", image_id)
        out["radiomic"] = radiomic_features(composite_hu(cls_image, settings), settings)
    elif "radiomic" in sets:
        hu = cache.load("hu", image_id)
        if hu.ndim != 2 or hu.dtype.kind not in "iuf":
            raise FeatureError(f"{cache.path('hu', image_id)}: expected a 2-D HU map, got {hu.dtype} {hu.shape}")
        out["radiomic"] = radiomic_features(hu, settings)
    return out


def compute(work: Path, ids: Sequence[str], settings: FeatureSettings, sets: tuple[str, ...],
             workers: int, chunksize: int, progress: bool, hu_units: bool = True) -> dict[str, pd.DataFrame]:
    from functools import partial

    from tqdm import tqdm

    from ichkit.workers import process_pool

    fn = partial(_compute_one, str(work), settings=settings, sets=sets, hu_units=hu_units)
    bar = tqdm(total=len(ids), desc=f"features ({'+'.join(sets)})", unit="img", disable=not progress)
    results: list[dict[str, Any]] = []
    if workers <= 1 or len(ids) < 2 * chunksize:
        for image_id in ids:
            results.append(fn(image_id))
            bar.update()
    else:
        with process_pool(workers, preload=("ichkit.features.pool",)) as pool:
            for r in pool.map(fn, ids, chunksize=chunksize):
                results.append(r)
                bar.update()
    bar.close()
    index = pd.Index(list(ids), name="image_id", dtype="string")
    frames: dict[str, pd.DataFrame] = {}
    if "pixels" in sets:
        data = np.stack([r["pixels"] for r in results]) if results else np.zeros((0, 3 * settings.pixel_size**2), np.uint8)
        frames["pixels"] = pd.DataFrame(data, index=index, columns=pixel_columns(settings))
    if "radiomic" in sets:
        frames["radiomic"] = pd.DataFrame([r["radiomic"] for r in results], index=index,
                                          columns=radiomic_columns(settings), dtype=np.float32)
    return frames


def workers(cfg: dict[str, Any]) -> int:
    """Processes for the features stage: `features.workers` through the project's one rule (0 = all cores)."""
    from ichkit.workers import worker_count

    return worker_count(cfg["features"]["workers"], key="features.workers")
