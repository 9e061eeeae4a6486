"""The segmentation output contract: what a seg trainer's `predict` returns and the files it becomes.

`FoldTrainer.predict(ids)` of a seg model returns one row per id (`SEG_COLUMNS`):
``image_id``, ``score`` (the slice's blood score: the highest post-processed probability, 0 if the mask is
empty), ``area_px`` (mask pixels at seg_size), ``mask_height``, ``mask_width`` and ``mask_bits``
(the post-processed mask, `np.packbits` of the row-major flattened 0/1 array; empty bytes for an empty
mask, so normal slices cost nothing).

Files, per fold k (written by the fold driver, `ichkit.engine.driver`, through this module's
``fold_done`` / ``write_fold`` / ``fold_summary`` / ``merge_run``; read by `merge`):

- ``<work>/seg_oof/<model>/fold<k>.parquet``  held-out images of fold k (+ ``fold``)
- ``<work>/seg_test/<model>/fold<k>.parquet`` every test image, as predicted by fold k's model

and, once every fold is done:

- ``<work>/seg_oof/<model>.parquet``: per training image ``image_id, fold, truth`` (mask | normal | unknown),
  ``dice, iou, precision, recall`` (NaN where undefined or the truth is unknown), ``pred_area_px,
  true_area_px, score, tp_px`` (blood pixels predicted correctly: pooled scores sum them)
- ``<work>/seg_oof/<model>.masks.parquet``: ``image_id, mask_height, mask_width, mask_bits`` for every
  non-empty OOF prediction (the report draws them with `unpack_mask`)
- test masks are voted over the folds on demand (`read_test_masks`, share `seg.test_vote`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.errors import IchkitError
from ichkit.files import atomic_path

SEG_COLUMNS: tuple[str, ...] = ("image_id", "score", "area_px", "mask_height", "mask_width", "mask_bits")
OOF_COLUMNS: tuple[str, ...] = ("image_id", "fold", "truth", "dice", "iou", "precision", "recall",
                                "pred_area_px", "true_area_px", "score")


class SegError(IchkitError):
    """A segmentation request that cannot run as given (model, profile, loss, grid, data)."""


class SegResultError(SegError):
    """A missing or malformed segmentation output file; the message names it."""


def pack_mask(mask: np.ndarray) -> bytes:
    m = np.asarray(mask) != 0
    return b"" if not m.any() else np.packbits(m.ravel()).tobytes()


def unpack_mask(bits: bytes, height: int, width: int) -> np.ndarray:
    """uint8 0/1 (height, width) mask from `pack_mask`'s bytes."""
    if not bits:
        return np.zeros((height, width), dtype=np.uint8)
    flat = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=height * width)
    return flat.reshape(height, width)


def predictions_frame(ids: Sequence[str], masks: Sequence[np.ndarray], scores: Sequence[float]) -> pd.DataFrame:
    """A seg trainer's `predict` result (`SEG_COLUMNS`), one row per id in order."""
    if not (len(ids) == len(masks) == len(scores)):
        raise SegResultError(f"{len(ids)} ids, {len(masks)} masks, {len(scores)} scores")
    return pd.DataFrame({
        "image_id": list(ids),
        "score": np.asarray(scores, dtype=np.float64),
        "area_px": [int(np.count_nonzero(m)) for m in masks],
        "mask_height": [int(m.shape[0]) for m in masks],
        "mask_width": [int(m.shape[1]) for m in masks],
        "mask_bits": [pack_mask(m) for m in masks],
    }, columns=list(SEG_COLUMNS))


def frame_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {r.image_id: unpack_mask(r.mask_bits, r.mask_height, r.mask_width) for r in frame.itertuples()}


# --------------------------------------------------------------------------------------------------
# files


def oof_dir(work: Path | str) -> Path:
    return Path(work) / "seg_oof"


def fold_paths(work: Path | str, model: str, fold: int) -> tuple[Path, Path]:
    return (oof_dir(work) / model / f"fold{fold}.parquet", Path(work) / "seg_test" / model / f"fold{fold}.parquet")


def merged_paths(work: Path | str, model: str) -> tuple[Path, Path]:
    return oof_dir(work) / f"{model}.parquet", oof_dir(work) / f"{model}.masks.parquet"


def _write(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def validate(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    missing = [c for c in SEG_COLUMNS if c not in frame.columns]
    if missing:
        raise SegResultError(f"{what}: missing columns {missing}")
    if frame["image_id"].duplicated().any():
        raise SegResultError(f"{what}: duplicated image ids, e.g. {frame.loc[frame['image_id'].duplicated(), 'image_id'].iloc[0]}")
    if frame["score"].isna().any():
        raise SegResultError(f"{what}: NaN scores")
    return frame


def write_fold(work: Path | str, model: str, fold: int, oof: pd.DataFrame, test: pd.DataFrame) -> None:
    oof_path, test_path = fold_paths(work, model, fold)
    _write(validate(oof, str(oof_path)).assign(fold=fold), oof_path)
    _write(validate(test, str(test_path)).assign(fold=fold), test_path)


def fold_done(work: Path | str, model: str, fold: int) -> bool:
    return all(p.is_file() for p in fold_paths(work, model, fold))


def merge(work: Path | str, model: str, folds: pd.DataFrame, slices: pd.DataFrame,
          truth_of) -> pd.DataFrame:
    """Score every fold's held-out predictions against the truth and write the merged OOF files.

    `folds`: image_id, fold (the training images); `truth_of(image_id)` -> the truth mask at seg_size.
    Returns the per-image OOF table (`OOF_COLUMNS`).
    """
    from ichkit.metrics import mask_counts, overlap_scores
    from ichkit.models.seg.data import truth_kind

    parts = []
    for k in sorted(folds["fold"].unique()):
        path = fold_paths(work, model, int(k))[0]
        if not path.is_file():
            raise SegResultError(f"{model}: fold {k} has no OOF part {path}: run it first")
        parts.append(pd.read_parquet(path))
    pred = pd.concat(parts, ignore_index=True)
    expected, got = set(folds["image_id"]), set(pred["image_id"])
    if expected != got or len(pred) != len(got):
        raise SegResultError(f"{model}: OOF parts hold {len(pred)} rows for {len(got)} ids; the folds list "
                             f"{len(expected)} ({len(expected - got)} missing, {len(got - expected)} unexpected)")
    kind = truth_kind(slices)
    rows = []
    for r in pred.itertuples():
        k = kind.get(r.image_id, "unknown")
        p = unpack_mask(r.mask_bits, r.mask_height, r.mask_width)
        row = {"image_id": r.image_id, "fold": int(r.fold), "truth": k, "pred_area_px": int(r.area_px),
               "score": float(r.score)}
        if k == "unknown":
            row.update(dice=np.nan, iou=np.nan, precision=np.nan, recall=np.nan, true_area_px=np.nan, tp_px=np.nan)
        else:
            tp, n_pred, n_true = mask_counts(p, truth_of(r.image_id))
            row.update(overlap_scores(tp, n_pred, n_true), true_area_px=n_true, tp_px=tp)
        rows.append(row)
    table = pd.DataFrame(rows)
    metrics_path, masks_path = merged_paths(work, model)
    _write(table[list(OOF_COLUMNS) + ["tp_px"]], metrics_path)
    _write(pred.loc[pred["area_px"] > 0, ["image_id", "mask_height", "mask_width", "mask_bits"]], masks_path)
    return table


def fold_summary(plan, frame: pd.DataFrame) -> str:
    """The fold driver's output contract: one line on a held-out fold's predictions (scored at the merge)."""
    return f"{int((frame['area_px'] > 0).sum())} of {len(frame)} slices with a predicted mask"


def merge_run(plan, run: str) -> tuple[pd.DataFrame, str]:
    """The fold driver's output contract: merge and score `run`'s folds; (per-image OOF table, its line)."""
    from ichkit.models.seg.data import SegData

    table = merge(plan.work, run, plan.task_folds(), plan.slices, SegData(plan.work, plan.cfg).truth)
    blood = table[table["truth"] == "mask"]
    return table, (f"mean Dice {blood['dice'].mean():.3f} on {len(blood)} slices with blood "
                   f"-> {merged_paths(plan.work, run)[0]}")


def read_oof(work: Path | str, model: str) -> pd.DataFrame:
    path = merged_paths(work, model)[0]
    if not path.is_file():
        raise SegResultError(f"no merged segmentation OOF file {path}: run `ichkit segment --model {model}`")
    return pd.read_parquet(path)


def list_models(work: Path | str) -> list[str]:
    d = oof_dir(work)
    return sorted(p.name[: -len(".parquet")] for p in d.glob("*.parquet") if not p.name.endswith(".masks.parquet")) if d.is_dir() else []


def read_oof_masks(work: Path | str, model: str) -> dict[str, np.ndarray]:
    """image_id -> the non-empty OOF mask (seg_size) of `model`."""
    return frame_masks(pd.read_parquet(merged_paths(work, model)[1]))


def test_masks_exist(work: Path | str, model: str) -> bool:
    d = Path(work) / "seg_test" / model
    return d.is_dir() and any(d.glob("fold*.parquet"))


def read_test_masks(work: Path | str, model: str, cfg: dict[str, Any]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Test masks voted over the fold models (a pixel is blood where at least `seg.test_vote` of them
    say so), and the frame ``image_id, area_px, mask_height, mask_width, score`` for `study_volumes`."""
    paths = sorted((Path(work) / "seg_test" / model).glob("fold*.parquet"))
    if not paths:
        raise SegResultError(f"no test predictions of {model} under {Path(work) / 'seg_test' / model}")
    parts = [pd.read_parquet(p) for p in paths]
    ids = list(parts[0]["image_id"])
    for p, part in zip(paths, parts):
        if list(part["image_id"]) != ids:
            raise SegResultError(f"{p}: its test images differ from {paths[0]}'s")
    vote = float(cfg["seg"]["test_vote"])
    masks, rows = {}, []
    for i, image_id in enumerate(ids):
        rs = [part.iloc[i] for part in parts]
        stack = np.stack([unpack_mask(r.mask_bits, r.mask_height, r.mask_width) for r in rs])
        m = (stack.mean(axis=0) >= vote - 1e-9).astype(np.uint8) if stack.any() else stack[0]
        masks[image_id] = m
        rows.append({"image_id": image_id, "area_px": int(m.sum()), "mask_height": m.shape[0],
                     "mask_width": m.shape[1], "score": float(np.mean([r.score for r in rs]))})
    return masks, pd.DataFrame(rows)
