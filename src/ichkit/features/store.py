"""The feature cache: ``<work>/features/<set>.parquet`` (one row per image id) with a ``<set>.json`` sidecar
holding the settings it was computed with; extended with missing ids, redone when the settings change."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.features import pool
from ichkit.features.settings import FEATURE_SETS, FeatureError, FeatureSettings
from ichkit.files import atomic_path, write_text_atomic

def features_dir(work: Path | str) -> Path:
    return Path(work) / "features"


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _read_cached(work: Path, feature_set: str, fingerprint: str) -> pd.DataFrame | None:
    path = features_dir(work) / f"{feature_set}.parquet"
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise FeatureError(f"{meta_path}: not valid JSON ({exc}); delete it to recompute the features") from None
    if meta.get("fingerprint") != fingerprint:
        return None
    df = pd.read_parquet(path)
    if "image_id" not in df.columns:
        raise FeatureError(f"{path}: no image_id column; delete it to recompute the features")
    return df.set_index(df["image_id"].astype("string")).drop(columns="image_id")


def _write_cached(work: Path, feature_set: str, df: pd.DataFrame, settings: dict[str, Any]) -> Path:
    out = features_dir(work)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{feature_set}.parquet"
    # sidecar removed first and written last, both files atomically (temp + rename): an interrupted write
    # leaves no sidecar, which reads as "not cached", never as rows paired with the wrong settings
    path.with_suffix(".json").unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        df.rename_axis("image_id").reset_index().to_parquet(tmp, index=False)
    meta = {"fingerprint": _fingerprint(settings), "settings": settings, "n_images": len(df)}
    write_text_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2, default=list))
    return path



# Layouts whose images are rendered windows (PNG / JPG), not Hounsfield units.
RENDERED_LAYOUTS = ("renders", "images")
# Rendered layouts: refuse the radiomic set when fewer slices than this get a brain mask from a closed skull
MIN_CLOSED_SKULL_SHARE = 0.5


def has_hounsfield_units(work: Path | str) -> bool:
    """False where the prepared table comes from a rendered layout (its HU map is a pseudo-HU)."""
    from ichkit.table import table_meta

    meta = table_meta(work)
    return meta is None or meta.get("layout") not in RENDERED_LAYOUTS


def _check_rendered_masks(work: Path, radiomic: pd.DataFrame) -> None:
    """A rendered dataset whose bone window does not show a closed skull on most slices gives meaningless
    radiomic numbers (the mask would take in skull, captions and background): refuse it."""
    closed = float((radiomic["brain_mask_closing"] > 0).mean()) if len(radiomic) else 0.0
    if closed < MIN_CLOSED_SKULL_SHARE:
        raise FeatureError(f"{work}: the images are rendered windows without Hounsfield units, and the bone-window "
                           f"channel closes the skull on only {closed:.0%} of {len(radiomic)} slices (need "
                           f"{MIN_CLOSED_SKULL_SHARE:.0%}): no valid brain mask, so radiomic features are refused for "
                           "this dataset; use the pixel features (`--sets pixels`) or models on pixels")


def ensure_features(work: Path | str, image_ids: Iterable[str], cfg: dict[str, Any],
                    sets: Sequence[str] = FEATURE_SETS, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Make sure every id has every requested feature set cached; return each set's frame for those ids.

    Only ids missing from a cache file are computed; a file written with other settings is redone.
    The returned frames are indexed by image_id in the order given.
    """
    work = Path(work)
    ids = pd.Index(pd.unique(pd.Series(list(image_ids), dtype="string")), name="image_id")
    sets = tuple(dict.fromkeys(sets))
    for s in sets:
        if s not in FEATURE_SETS:
            raise FeatureError(f"unknown feature set {s!r}; expected one of {FEATURE_SETS}")
    settings = FeatureSettings.from_config(cfg)
    hu_units = has_hounsfield_units(work)
    fingerprints = {s: _fingerprint({**settings.for_set(s), **({} if hu_units or s != "radiomic" else {"hu": False})})
                    for s in sets}
    cached = {s: _read_cached(work, s, fingerprints[s]) for s in sets}
    missing = {s: ids.difference(cached[s].index) if cached[s] is not None else ids for s in sets}
    todo = ids[ids.isin(set().union(*(set(m) for m in missing.values())))]
    chunksize = int(cfg.get("features", {}).get("chunksize", 8))
    # computed in batches, each saved before the next starts: an interrupted run on a large dataset keeps
    # what it finished (the next call computes only what is still missing)
    batch = max(1, int(cfg.get("features", {}).get("save_every", 5000)))
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        need = tuple(s for s in sets if missing[s].isin(part).any())
        new = pool.compute(work, list(part), settings, need, pool.workers(cfg), chunksize, progress, hu_units)
        if not hu_units and "radiomic" in new:
            _check_rendered_masks(work, new["radiomic"])
        for s in need:
            fresh = new[s].loc[new[s].index.isin(missing[s])]
            cached[s] = fresh if cached[s] is None else pd.concat([cached[s], fresh])
            meta = settings.for_set(s) if hu_units or s != "radiomic" else {**settings.for_set(s), "hu": False}
            _write_cached(work, s, cached[s], meta)
    return {s: cached[s].loc[ids] for s in sets}


def load_features(work: Path | str, image_ids: Sequence[str], cfg: dict[str, Any],
                  sets: Sequence[str], progress: bool = True) -> pd.DataFrame:
    """One frame (index image_id, in the given order) with the columns of every requested set, as float32."""
    frames = ensure_features(work, image_ids, cfg, sets, progress=progress)
    return pd.concat([frames[s].astype(np.float32) for s in dict.fromkeys(sets)], axis=1)
