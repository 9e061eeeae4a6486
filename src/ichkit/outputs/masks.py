"""Test-set segmentation outputs: mask PNGs at the original image size, the Kaggle RLE CSV, and the
hemorrhage volume per study in mL.

Functions (the submission stage calls `write_submission_masks`; the others are the building blocks):

- `rle_encode(mask) -> str` / `rle_decode(rle, shape) -> mask`: Kaggle run-length encoding, pixels
  numbered column-major (top to bottom, then left to right) from 1, ``"start length start length ..."``;
  an empty mask is the empty string.
- `write_mask_pngs(masks, sizes, out_dir)`: one 8-bit PNG per image, 0 background / 255 blood, resized
  (nearest neighbour) to the image's original (height, width).
- `write_rle_csv(masks, sizes, path)`: ``ImageId,EncodedPixels`` at the original size, one row per image
  (empty EncodedPixels for an image with no blood).
- `slice_spacing_mm(z)`: the slice spacing of one series from its z positions (median step between
  sorted distinct positions), not the SliceThickness tag (overlapping or gapped reconstructions differ).
- `study_volumes(areas, slices)`: per-study volume = sum over slices of mask pixels x pixel area (mm^2,
  from PixelSpacing, scaled to the mask's resolution) x slice spacing (mm) / 1000.
- `volume_agreement(pred, truth)`: mean absolute error (mL) and Pearson correlation against a truth table.
- `write_submission_masks(work, out_dir, run_id, cfg)`: all of the above for a segmentation model's
  voted test masks (`ichkit.models.seg.results.read_test_masks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.files import atomic_path


class MaskOutputError(ValueError):
    """A mask, RLE string or table that cannot be written or read; the message names it."""


# --------------------------------------------------------------------------------------------------
# RLE


def rle_encode(mask: np.ndarray) -> str:
    """Kaggle RLE of a 2-D mask (nonzero = foreground): column-major, 1-indexed ``start length`` pairs."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskOutputError(f"RLE needs a 2-D mask, got shape {m.shape}")
    flat = np.concatenate([[0], (m.flatten(order="F") != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))          # 0-based: starts at even positions, ends at odd ones
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends))


def rle_decode(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """The uint8 0/1 mask of `shape` (height, width) an RLE string describes; '' / NaN / None is empty."""
    h, w = int(shape[0]), int(shape[1])
    flat = np.zeros(h * w, dtype=np.uint8)
    if rle is None or (isinstance(rle, float) and np.isnan(rle)) or not str(rle).strip():
        return flat.reshape((h, w), order="F")
    try:
        numbers = np.asarray(str(rle).split(), dtype=np.int64)
    except ValueError:
        raise MaskOutputError(f"RLE {str(rle)[:40]!r}: not a list of integers") from None
    if numbers.size % 2:
        raise MaskOutputError(f"RLE {str(rle)[:40]!r}: odd number of values (start length pairs expected)")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    if (starts < 0).any() or (lengths <= 0).any() or (starts + lengths > flat.size).any():
        raise MaskOutputError(f"RLE {str(rle)[:40]!r}: a run lies outside a {h}x{w} image")
    for s, n in zip(starts, lengths):
        flat[s:s + n] = 1
    return flat.reshape((h, w), order="F")


# --------------------------------------------------------------------------------------------------
# masks at the original size


def to_original_size(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 mask resized by nearest neighbour to (height, width)."""
    import cv2

    m = (np.asarray(mask) > 0).astype(np.uint8)
    h, w = int(size[0]), int(size[1])
    if m.shape == (h, w):
        return m
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)


def write_mask_pngs(masks: Mapping[str, np.ndarray], sizes: Mapping[str, tuple[int, int]],
                    out_dir: Path | str) -> list[Path]:
    """`out_dir/<image_id>.png` for every mask: 0/255 uint8 at `sizes[image_id]` (height, width)."""
    from PIL import Image

    out_dir = Path(out_dir)
    paths = []
    for image_id, mask in masks.items():
        if image_id not in sizes:
            raise MaskOutputError(f"{image_id}: no original image size known for its mask")
        full = to_original_size(mask, sizes[image_id])
        path = out_dir / f"{image_id}.png"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            Image.fromarray(full * np.uint8(255)).save(fh, format="PNG")
        paths.append(path)
    return paths


def write_rle_csv(masks: Mapping[str, np.ndarray], sizes: Mapping[str, tuple[int, int]], path: Path | str,
                  image_ids: Iterable[str] | None = None) -> Path:
    """``ImageId,EncodedPixels`` for `image_ids` (default: the masks' ids); an id without a mask is empty."""
    ids = list(masks) if image_ids is None else list(image_ids)
    rows = []
    for image_id in ids:
        mask = masks.get(image_id)
        rows.append({"ImageId": image_id,
                     "EncodedPixels": "" if mask is None else rle_encode(to_original_size(mask, sizes[image_id]))})
    path = Path(path)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]).to_csv(tmp, index=False)
    return path


# --------------------------------------------------------------------------------------------------
# volumes


def slice_spacing_mm(z: Iterable[float], fallback: float = float("nan")) -> float:
    """Median distance between consecutive distinct z positions (mm); `fallback` with fewer than two."""
    zs = np.unique(np.round(np.asarray([v for v in z if np.isfinite(v)], dtype=np.float64), 4))
    if zs.size < 2:
        return float(fallback)
    return float(np.median(np.diff(zs)))


def study_volumes(areas: pd.DataFrame, slices: pd.DataFrame) -> pd.DataFrame:
    """Hemorrhage volume per study.

    `areas`: one row per image, columns ``image_id, area_px`` (mask pixels at the mask's resolution),
    ``mask_height, mask_width`` (that resolution). `slices`: the slice table (``image_id, study_id,
    series_id, z, pixel_spacing, slice_thickness``) plus the original ``height, width`` (the manifest's).
    The slice spacing comes from the z positions of every slice of the series in `slices` (a study's
    slices without blood still fix the spacing); SliceThickness only when z is unknown.
    Returns ``study_id, n_slices, slice_spacing_mm, volume_ml`` (one row per study in `areas`).
    """
    need = {"image_id", "study_id", "series_id", "z", "pixel_spacing", "slice_thickness", "height", "width"}
    missing = sorted(need - set(slices.columns))
    if missing:
        raise MaskOutputError(f"study_volumes: the slice table lacks {missing}")
    spacing = {sid: slice_spacing_mm(g["z"].astype(float), float(g["slice_thickness"].astype(float).median()))
               for sid, g in slices.groupby("series_id", sort=False)}
    t = areas.merge(slices[sorted(need)], on="image_id", how="left", validate="one_to_one")
    unknown = t.loc[t["study_id"].isna(), "image_id"]
    if len(unknown):
        raise MaskOutputError(f"study_volumes: {len(unknown)} images not in the slice table, e.g. {unknown.iloc[0]}")
    ps = t["pixel_spacing"].astype(float)
    # the table keeps one PixelSpacing value (rows); CT pixels are square
    mm2 = ps * (t["height"] / t["mask_height"]) * ps * (t["width"] / t["mask_width"])
    t["slice_spacing_mm"] = t["series_id"].map(spacing).astype(float)
    t["ml"] = t["area_px"] * mm2 * t["slice_spacing_mm"] / 1000.0
    out = t.groupby("study_id", sort=True).agg(n_slices=("image_id", "size"),
                                               slice_spacing_mm=("slice_spacing_mm", "median"),
                                               volume_ml=("ml", "sum"))
    return out.reset_index()


def volume_agreement(pred: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """MAE (mL) and Pearson r between ``study_id, volume_ml`` frames, over the studies in both."""
    both = pred[["study_id", "volume_ml"]].merge(truth[["study_id", "volume_ml"]], on="study_id",
                                                 suffixes=("_pred", "_true"))
    if both.empty:
        return {"volume_mae_ml": float("nan"), "volume_corr": float("nan"), "n_studies": 0}
    err = (both["volume_ml_pred"] - both["volume_ml_true"]).abs()
    corr = (float(np.corrcoef(both["volume_ml_pred"], both["volume_ml_true"])[0, 1])
            if len(both) > 1 and both["volume_ml_pred"].std() > 0 and both["volume_ml_true"].std() > 0 else float("nan"))
    return {"volume_mae_ml": float(err.mean()), "volume_corr": corr, "n_studies": int(len(both))}


def read_truth_volumes(data_root: Path | str) -> pd.DataFrame | None:
    """The phantom's ``_truth/volumes.csv`` (study_id, split, volume_ml, ...) if the dataset has one."""
    path = Path(data_root) / "_truth" / "volumes.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"study_id": str, "patient_id": str, "split": str})


# --------------------------------------------------------------------------------------------------
# the submission's mask files


def slices_with_sizes(work: Path | str) -> pd.DataFrame:
    """The slice table joined with the manifest's original image size (height, width)."""
    from ichkit.cache import ImageCache
    from ichkit.table import read_table

    slices = read_table(work).slices
    manifest = pd.read_parquet(ImageCache(work).manifest_path, columns=["image_id", "height", "width"])
    return slices.merge(manifest, on="image_id", how="inner")


def positive_test_slices(work: Path | str, cfg: dict[str, Any], masks: Mapping[str, np.ndarray]) -> set[str]:
    """The test slices whose masks are kept: ``seg.positive_from: segmenter`` keeps every non-empty mask (the
    segmenter's own detection); a classifier or stack model name keeps those whose test ``rsna_any`` is at
    least ``seg.positive_threshold`` (and the segmenter found blood on)."""
    source = str(cfg["seg"]["positive_from"])
    found = {i for i, m in masks.items() if m.any()}
    if source == "segmenter":
        return found
    from ichkit import oof

    test = oof.read_test(work, source)
    called = set(test.loc[test["rsna_any"] >= float(cfg["seg"]["positive_threshold"]), "image_id"])
    return found & called


def write_submission_masks(work: Path | str, out_dir: Path | str, run_id: str, cfg: dict[str, Any],
                           model: str | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<run_id>_masks/<image_id>.png`` (positive test slices only, `positive_test_slices`),
    ``<run_id>_masks.csv`` (RLE, every test image) and ``<run_id>_volumes.csv`` from `model`'s voted test
    masks (default `seg.submit_model`). Returns {name: path}; {} when that model has no test masks yet."""
    from ichkit.models.seg.results import read_test_masks, test_masks_exist

    work, out_dir = Path(work), Path(out_dir)
    model = model or cfg["seg"]["submit_model"]
    if not test_masks_exist(work, model):
        return {}
    masks, areas = read_test_masks(work, model, cfg)
    called = positive_test_slices(work, cfg, masks)
    masks = {i: (m if i in called else np.zeros_like(m)) for i, m in masks.items()}
    areas = areas.assign(area_px=[int(masks[i].sum()) for i in areas["image_id"]])
    slices = slices_with_sizes(work)
    test = slices[slices["split"] == "test"]
    sizes = {r.image_id: (int(r.height), int(r.width)) for r in test.itertuples()}
    positive = {i: m for i, m in masks.items() if m.any()}
    png_dir = out_dir / f"{run_id}_masks"
    write_mask_pngs(positive, sizes, png_dir)
    rle = write_rle_csv(positive, sizes, out_dir / f"{run_id}_masks.csv", image_ids=test["image_id"])
    volumes = study_volumes(areas, slices)
    vol_path = out_dir / f"{run_id}_volumes.csv"
    with atomic_path(vol_path) as tmp:
        volumes.to_csv(tmp, index=False, float_format="%.3f")
    return {"mask_pngs": png_dir, "mask_rle": rle, "volumes": vol_path}
