"""The out-of-fold (OOF) prediction contract every model family writes and every later stage reads.

Files, for a model named `<model>` and fold k:

- ``<work>/oof/<model>/fold<k>.parquet``   fold k's held-out training images, predicted by the model that
  did not see them (``fold`` = k)
- ``<work>/test/<model>/fold<k>.parquet``  every test image, predicted by fold k's model (``fold`` = k)
- ``<work>/oof/<model>.parquet``           merged: every training image of folds.csv exactly once
- ``<work>/test/<model>.parquet``          merged: the mean over folds of the test parts (``fold`` = -1),
  with ``<work>/test/<model>.json`` noting the folds averaged

Columns (OOF_COLUMNS): ``image_id``, ``fold``, ``prob_<class>`` for the 7 classes (CLASSES7 order, a
distribution: each row sums to 1) and ``rsna_<label>`` for the 6 RSNA labels (independent probabilities).
Folds can be trained on different machines: parts are self-contained, and `merge` names the parts missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ichkit.files import atomic_path, write_text_atomic
from ichkit.labels import CLASSES7, RSNA_LABELS
from ichkit.errors import IchkitError

PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{c}" for c in CLASSES7)
RSNA_COLUMNS: tuple[str, ...] = tuple(f"rsna_{label}" for label in RSNA_LABELS)
OOF_COLUMNS: tuple[str, ...] = ("image_id", "fold") + PROB_COLUMNS + RSNA_COLUMNS
# float32 softmax outputs sum to 1 within ~1e-6; anything further off is not a distribution.
PROB_SUM_TOLERANCE = 1e-4
# fold value of merged test rows (they average every fold's model)
MERGED_TEST_FOLD = -1

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class OOFError(IchkitError):
    """A prediction frame or file that breaks the contract; the message names it and the problem."""


def _check_model(model: str) -> str:
    if not _MODEL_NAME.match(model or ""):
        raise OOFError(f"model name {model!r} must be letters, digits and _.+- (it names files)")
    return model


def fold_part_paths(work: Path | str, model: str, fold: int) -> tuple[Path, Path]:
    """(OOF part, test part) of `model`'s fold `fold`."""
    work = Path(work)
    _check_model(model)
    name = f"fold{int(fold)}.parquet"
    return work / "oof" / model / name, work / "test" / model / name


def merged_paths(work: Path | str, model: str) -> tuple[Path, Path]:
    """(merged OOF file, merged test file) of `model`."""
    work = Path(work)
    _check_model(model)
    return work / "oof" / f"{model}.parquet", work / "test" / f"{model}.parquet"


def fold_done(work: Path | str, model: str, fold: int) -> bool:
    """Both parts of the fold exist (they are written atomically, so existing means complete)."""
    return all(p.is_file() for p in fold_part_paths(work, model, fold))


def predictions_frame(
    image_ids: Sequence[str] | pd.Series | np.ndarray, fold: int, p7: np.ndarray, p6: np.ndarray
) -> pd.DataFrame:
    """Build a contract frame from ids, a fold number and the (n, 7) and (n, 6) probability arrays."""
    p7, p6 = np.asarray(p7, dtype=np.float64), np.asarray(p6, dtype=np.float64)
    ids = pd.Series(np.asarray(image_ids, dtype=object), dtype="string")
    if p7.shape != (len(ids), len(CLASSES7)) or p6.shape != (len(ids), len(RSNA_LABELS)):
        raise OOFError(f"{len(ids)} ids need p7 of shape ({len(ids)}, 7) and p6 ({len(ids)}, 6); "
                       f"got {p7.shape} and {p6.shape}")
    frame = pd.DataFrame({"image_id": ids, "fold": np.full(len(ids), int(fold), dtype=np.int64)})
    frame[list(PROB_COLUMNS)] = p7
    frame[list(RSNA_COLUMNS)] = p6
    return frame


def validate_predictions(frame: pd.DataFrame, what: str, fold: int | None = None) -> pd.DataFrame:
    """Check a prediction frame against the contract; return it with canonical column order and types.

    `what` names the frame in error messages (a file path or "OOF part of model m fold k"); `fold`, when
    given, is the value every row's fold column must hold.
    """
    if not isinstance(frame, pd.DataFrame):
        raise OOFError(f"{what}: expected a DataFrame, got {type(frame).__name__}")
    missing = [c for c in OOF_COLUMNS if c not in frame.columns]
    if missing:
        raise OOFError(f"{what}: missing columns {missing}")
    extra = [c for c in frame.columns if c not in OOF_COLUMNS]
    if extra:
        raise OOFError(f"{what}: unexpected columns {extra}; the contract is {list(OOF_COLUMNS)}")
    ids = frame["image_id"]
    no_id = ids.isna() | (ids.astype("string").str.strip() == "")
    if no_id.any():
        raise OOFError(f"{what}: {int(no_id.sum())} rows have no image_id")
    dup = ids.duplicated()
    if dup.any():
        raise OOFError(f"{what}: image {ids[dup].iloc[0]} appears more than once ({int(dup.sum())} duplicate rows)")
    values = frame[list(PROB_COLUMNS + RSNA_COLUMNS)]
    non_numeric = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if non_numeric:
        raise OOFError(f"{what}: columns {non_numeric} are not numeric")
    values = values.astype(np.float64)
    nan_count = values.isna().sum()
    if nan_count.any():
        bad = ", ".join(f"{c}: {int(n)} rows" for c, n in nan_count[nan_count > 0].items())
        raise OOFError(f"{what}: NaN predictions ({bad})")
    arr = values.to_numpy()
    outside = (arr < 0) | (arr > 1)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise OOFError(f"{what}: {values.columns[col]} = {arr[row, col]:.6g} for {ids.iloc[row]} is outside [0, 1]"
                       f" ({int(outside.sum())} values outside)")
    sums = arr[:, : len(PROB_COLUMNS)].sum(axis=1)
    off = np.abs(sums - 1.0) > PROB_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise OOFError(f"{what}: the 7 prob_ columns of {ids.iloc[row]} sum to {sums[row]:.6f}, not 1 "
                       f"(tolerance {PROB_SUM_TOLERANCE}; {int(off.sum())} rows off)")
    folds = pd.to_numeric(frame["fold"], errors="coerce")
    if folds.isna().any() or (folds != folds.round()).any():
        raise OOFError(f"{what}: fold column must hold integers")
    if fold is not None and (folds != fold).any():
        wrong = sorted(folds[folds != fold].unique().astype(int).tolist())
        raise OOFError(f"{what}: rows carry fold {wrong}, expected {fold} for every row")
    out = pd.DataFrame({"image_id": ids.astype("string"), "fold": folds.astype(np.int64)})
    out[list(values.columns)] = arr
    return out.reset_index(drop=True)


def _write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _read_parquet(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise OOFError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from None


def write_fold(work: Path | str, model: str, fold: int, oof: pd.DataFrame, test: pd.DataFrame) -> None:
    """Validate and atomically write fold `fold`'s OOF part (held-out rows) and test part (all test rows)."""
    oof_path, test_path = fold_part_paths(work, model, fold)
    oof = validate_predictions(oof, f"OOF part of model {model} fold {fold}", fold=fold)
    test = validate_predictions(test, f"test part of model {model} fold {fold}", fold=fold)
    # test first: the OOF part is what a reader looks for, and it only appears once both are complete
    _write_parquet_atomic(test, test_path)
    _write_parquet_atomic(oof, oof_path)


def merge(work: Path | str, model: str, folds: pd.DataFrame,
          meta: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge `model`'s fold parts into its OOF and test files; return (oof, test).

    `folds` is folds.csv as read by `ichkit.folds.read_folds` (restricted to the images the task predicts);
    `meta` (the driver passes the task and ``folds_digest``) goes into the merged OOF's sidecar
    ``<work>/oof/<model>.json``, which `check_current` compares with the folds file in use. Checks that every fold's parts exist, that
    the OOF parts cover every training image exactly once, each in the fold folds.csv gives it, and that
    every fold predicted the same test images.
    """
    work = Path(work)
    fold_ids = sorted(int(f) for f in folds["fold"].unique())
    missing = [f for f in fold_ids if not fold_done(work, model, f)]
    if missing:
        absent = [str(p) for f in missing for p in fold_part_paths(work, model, f) if not p.is_file()]
        raise OOFError(
            f"model {model}: parts of folds {missing} (of {fold_ids}) are missing: {', '.join(absent)}. "
            "Train those folds here, or copy their parts from the machine that trained them, then merge again"
        )
    oof_parts, test_parts = [], []
    for f in fold_ids:
        oof_path, test_path = fold_part_paths(work, model, f)
        oof_parts.append(validate_predictions(_read_parquet(oof_path, "an OOF part"), str(oof_path), fold=f))
        test_parts.append(validate_predictions(_read_parquet(test_path, "a test part"), str(test_path), fold=f))

    oof = pd.concat(oof_parts, ignore_index=True)
    dup = oof["image_id"].duplicated(keep=False)
    if dup.any():
        example = oof.loc[dup, "image_id"].iloc[0]
        in_folds = sorted(oof.loc[oof["image_id"] == example, "fold"].tolist())
        raise OOFError(f"model {model}: {int(oof.loc[dup, 'image_id'].nunique())} images are predicted in more "
                       f"than one OOF part (e.g. {example} in folds {in_folds}): the parts come from different "
                       "fold assignments; retrain the stale folds")
    expected = folds[["image_id", "fold"]].astype({"image_id": "string"}).rename(columns={"fold": "expected_fold"})
    joined = expected.merge(oof, on="image_id", how="outer", indicator=True)
    not_predicted = joined.loc[joined["_merge"] == "left_only", "image_id"]
    if len(not_predicted):
        raise OOFError(f"model {model}: {len(not_predicted)} training images of folds.csv have no OOF prediction "
                       f"(e.g. {not_predicted.iloc[0]}): the parts are stale or incomplete; retrain those folds")
    unknown = joined.loc[joined["_merge"] == "right_only", "image_id"]
    if len(unknown):
        raise OOFError(f"model {model}: {len(unknown)} OOF rows are not training images of folds.csv "
                       f"(e.g. {unknown.iloc[0]}): the parts were made with other folds; retrain")
    wrong = joined[joined["fold"] != joined["expected_fold"]]
    if len(wrong):
        row = wrong.iloc[0]
        raise OOFError(f"model {model}: {len(wrong)} images sit in a different fold than folds.csv says "
                       f"(e.g. {row['image_id']} in part {int(row['fold'])}, folds.csv: {int(row['expected_fold'])})"
                       ": the parts were made with other folds; retrain")
    # folds.csv order, so OOF rows line up with the fold file
    oof = expected[["image_id"]].merge(oof, on="image_id", how="left")

    test = _mean_over_folds(test_parts, fold_ids, model)
    oof_path, test_path = merged_paths(work, model)
    _write_parquet_atomic(oof, oof_path)
    _write_parquet_atomic(test, test_path)
    note = {"model": model, "folds": fold_ids, "n_images": int(len(test)), "fold_value": MERGED_TEST_FOLD,
            "how": "mean over folds of the test parts"}
    write_text_atomic(test_path.with_suffix(".json"), json.dumps(note, indent=2) + "\n")
    oof_note = {"model": model, "folds": fold_ids, "n_images": int(len(oof)), **(meta or {})}
    write_text_atomic(oof_path.with_suffix(".json"), json.dumps(oof_note, indent=2) + "\n")
    return oof, test


def fold_summary(plan, frame: pd.DataFrame) -> str:
    """The fold driver's output contract (`ichkit.engine.driver`): the scores line of one held-out fold."""
    from ichkit.engine.driver import score_frame, score_line

    return score_line(score_frame(plan, frame))


def merge_run(plan, run: str) -> tuple[pd.DataFrame, str]:
    """The fold driver's output contract: merge `run`'s current folds; (merged OOF, its scores line)."""
    frame, _ = merge(plan.work, run, plan.task_folds(), meta={"task": plan.task, "folds_digest": plan.folds_digest})
    return frame, fold_summary(plan, frame)


def merged_meta(work: Path | str, model: str) -> dict:
    """The merged OOF's sidecar (task, folds digest, ...); {} when absent or unreadable."""
    path = merged_paths(work, model)[0].with_suffix(".json")
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def check_current(work: Path | str, model: str, folds_file: Path | str) -> dict:
    """Refuse a merged OOF made with other folds than `folds_file` (the stale-OOF guard of evaluate and
    the stacker); return its sidecar."""
    from ichkit.engine.fingerprint import file_digest

    meta = merged_meta(work, model)
    made_with = meta.get("folds_digest")
    current = file_digest(folds_file)
    if made_with != current:
        why = "records no folds file" if made_with is None else f"was made with other folds ({made_with})"
        raise OOFError(f"merged OOF of {model} {why} than the current {folds_file} ({current}): it is stale; "
                       f"retrain it (`ichkit train --model {model}`) before scoring or stacking it")
    return meta


def _mean_over_folds(parts: list[pd.DataFrame], fold_ids: list[int], model: str) -> pd.DataFrame:
    reference = set(parts[0]["image_id"])
    for f, part in zip(fold_ids[1:], parts[1:]):
        ids = set(part["image_id"])
        if ids != reference:
            only_here, only_first = sorted(ids - reference), sorted(reference - ids)
            example = (only_here or only_first)[0]
            raise OOFError(f"model {model}: test part of fold {f} predicts {len(ids)} images, fold {fold_ids[0]} "
                           f"{len(reference)}; they differ (e.g. {example}): the test set changed; retrain")
    value_columns = list(PROB_COLUMNS + RSNA_COLUMNS)
    stacked = pd.concat(parts, ignore_index=True)
    test = stacked.groupby("image_id", sort=True)[value_columns].mean().reset_index()
    test.insert(1, "fold", np.int64(MERGED_TEST_FOLD))
    test["image_id"] = test["image_id"].astype("string")
    return test[list(OOF_COLUMNS)]


def read_oof(work: Path | str, model: str) -> pd.DataFrame:
    """The merged OOF predictions of `model` (every training image once)."""
    path, _ = merged_paths(work, model)
    if not path.is_file():
        raise OOFError(f"{path} not found: train model {model} on every fold (train merges the parts when done)")
    return validate_predictions(_read_parquet(path, "merged OOF predictions"), str(path))


def read_test(work: Path | str, model: str) -> pd.DataFrame:
    """The merged test predictions of `model` (mean over its folds, fold = -1)."""
    _, path = merged_paths(work, model)
    if not path.is_file():
        raise OOFError(f"{path} not found: train model {model} on every fold (train merges the parts when done)")
    return validate_predictions(_read_parquet(path, "merged test predictions"), str(path), fold=MERGED_TEST_FOLD)


def list_models(work: Path | str) -> list[str]:
    """Models with a merged OOF file, sorted by name."""
    root = Path(work) / "oof"
    return sorted(p.stem for p in root.glob("*.parquet") if p.is_file()) if root.is_dir() else []


def truth_for(frame: pd.DataFrame, slices: pd.DataFrame, what: str = "predicted images",
              remedy: str = "the predictions are stale") -> tuple[np.ndarray, np.ndarray]:
    """(y7 class indices, y6 RSNA labels) of `frame`'s images, in its row order, from the slice table.

    Images without labels in the table raise OOFError "<n> `what` have no labels in the table (e.g. <id>):
    `remedy`".
    """
    from ichkit.metrics import as_class_index

    table = slices[["image_id", "label7", *RSNA_LABELS]].astype({"image_id": "string"})
    joined = frame[["image_id"]].astype({"image_id": "string"}).merge(table, on="image_id", how="left")
    unlabelled = joined["label7"].isna() | joined[list(RSNA_LABELS)].isna().any(axis=1)
    if unlabelled.any():
        raise OOFError(f"{int(unlabelled.sum())} {what} have no labels in the table "
                       f"(e.g. {joined.loc[unlabelled, 'image_id'].iloc[0]}): {remedy}")
    y7 = as_class_index(joined["label7"].to_numpy())
    y6 = joined[list(RSNA_LABELS)].to_numpy(dtype=np.int64)
    return y7, y6


def score_oof(oof: pd.DataFrame, slices: pd.DataFrame) -> dict[str, float]:
    """`metrics.score_predictions` of an OOF frame against the table's labels."""
    from ichkit.metrics import score_predictions

    y7, y6 = truth_for(oof, slices)
    return score_predictions(y7, oof[list(PROB_COLUMNS)].to_numpy(), y6, oof[list(RSNA_COLUMNS)].to_numpy())
