"""Stage `folds`: patient-grouped, class-stratified k-fold assignment of the training images.

Every slice of a patient lands in the same fold (slices of one head are near-duplicates, so splitting a
patient across folds leaks). Within that constraint the folds are stratified on the 7-class label with
scikit-learn's `StratifiedGroupKFold`. That splitter is a greedy heuristic and can leave a class out of a
fold even when enough patients carry it (e.g. 7 subdural patients spread over 4 of 5 folds), which makes
that fold's per-class recall undefined; `make_folds` therefore follows it with a small repair that moves or
swaps patients until every class carried by at least k patients appears in every fold.

Output: `paths.folds` (default ``folds/folds.csv``: image_id, patient_id, fold) and a ``folds.json`` sidecar
beside it (k, seed, table root, counts), both written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ichkit.files import write_text_atomic
from ichkit.labels import CLASSES7
from ichkit.errors import IchkitError

FOLD_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "fold")


class FoldsError(IchkitError):
    """A folds file or a fold request that cannot be used; the message says what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=None, help="number of folds (default: folds.k)")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed (default: folds.seed)")


def folds_path(cfg: dict) -> Path:
    """Where the folds file lives: `paths.folds` (relative paths are relative to the current directory)."""
    return Path(cfg["paths"]["folds"])


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def training_slices(slices: pd.DataFrame) -> pd.DataFrame:
    """The rows folds are made from: the training split, prepared successfully (status ok)."""
    return slices.loc[(slices["split"] == "train") & (slices["status"] == "ok")]


def make_folds(slices: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Assign every ok training image to one of `k` folds, grouped by patient, stratified on label7.

    Deterministic for a given (table, k, seed) whatever the row order. Returns image_id, patient_id, fold
    sorted by image_id. Raises FoldsError when patient ids or labels are missing or there are fewer than
    `k` patients; warns (UserWarning) about classes too rare to reach every fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise FoldsError(f"k must be at least 2, got {k}")
    train = training_slices(slices)
    if train.empty:
        raise FoldsError("the table has no training images with status ok: run `ichkit prepare` first")
    train = train.sort_values("image_id", kind="stable").reset_index(drop=True)
    image_ids = train["image_id"].astype(str).to_numpy()

    patient = train["patient_id"]
    no_patient = patient.isna() | (patient.astype("string").str.strip() == "")
    if no_patient.any():
        raise FoldsError(
            f"{int(no_patient.sum())} of {len(train)} training images have no patient_id "
            f"(e.g. {image_ids[np.flatnonzero(no_patient.to_numpy())[0]]}); folds must be grouped by patient "
            "so that slices of one head never sit on both sides of a split: fix the reader or the table"
        )
    label = train["label7"]
    bad_label = label.isna() | ~label.isin(CLASSES7)
    if bad_label.any():
        first = np.flatnonzero(bad_label.to_numpy())[0]
        raise FoldsError(
            f"{int(bad_label.sum())} training images have no valid label7 (e.g. {image_ids[first]}: "
            f"{label.iloc[first]!r}); expected one of {list(CLASSES7)}"
        )
    patient_ids = patient.astype(str).to_numpy()
    n_patients = len(np.unique(patient_ids))
    if n_patients < k:
        raise FoldsError(
            f"only {n_patients} patients in the training split, fewer than k={k}: lower --k "
            f"(e.g. --k {max(2, n_patients)}) or add data"
        )

    class_index = pd.Categorical(label.astype(str), categories=CLASSES7).codes.astype(np.int64)
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer *slices* than k; the relevant count is patients, which
        # `_warn_rare_classes` reports below in those terms.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        fold = np.full(len(train), -1, dtype=np.int64)
        for f, (_, held_out) in enumerate(splitter.split(image_ids, class_index, groups=patient_ids)):
            fold[held_out] = f

    patients, patient_of_row = np.unique(patient_ids, return_inverse=True)
    counts = np.zeros((len(patients), len(CLASSES7)), dtype=np.int64)
    np.add.at(counts, (patient_of_row, class_index), 1)
    patient_fold = np.zeros(len(patients), dtype=np.int64)
    patient_fold[patient_of_row] = fold
    patient_fold = _spread_classes_over_folds(counts, patient_fold, k)
    _warn_rare_classes(counts, patient_fold, k)

    out = pd.DataFrame({"image_id": image_ids, "patient_id": patient_ids, "fold": patient_fold[patient_of_row]})
    empty = sorted(set(range(k)) - set(out["fold"].unique()))
    if empty:
        raise FoldsError(f"folds {empty} received no patient; lower k (now {k})")
    return out


def _imbalance(class_counts_per_fold: np.ndarray, class_totals: np.ndarray) -> np.ndarray:
    """StratifiedGroupKFold's own criterion: mean over classes of the std over folds of each fold's share.

    Works on a stack of candidate (..., k, classes) count arrays at once.
    """
    share = class_counts_per_fold / np.maximum(class_totals, 1)
    return share.std(axis=-2).mean(axis=-1)


def _spread_classes_over_folds(counts: np.ndarray, patient_fold: np.ndarray, k: int) -> np.ndarray:
    """Move or swap patients until every class carried by >= k patients has a carrier in every fold.

    `counts` is (patients, classes) slice counts; `patient_fold` the splitter's assignment. Each step picks,
    among moves of one carrier out of a fold holding two or more carriers of a missing class (alone, or
    swapped with any patient of the receiving fold), the one that fixes the most (class, fold) gaps, ties
    broken by the splitter's balance criterion. Stops when nothing improves; some class layouts are
    impossible (e.g. k=2 and three classes each in exactly two patients, pairwise shared).
    """
    patient_fold = patient_fold.copy()
    carries = (counts > 0).astype(np.int64)
    class_totals = counts.sum(axis=0)
    required = carries.sum(axis=0) >= k

    def per_fold(matrix: np.ndarray) -> np.ndarray:
        out = np.zeros((k, matrix.shape[1]), dtype=np.int64)
        np.add.at(out, patient_fold, matrix)
        return out

    while True:
        carriers = per_fold(carries)
        gaps = (carriers == 0) & required
        if not gaps.any():
            return patient_fold
        fold_counts = per_fold(counts)
        # (gaps fixed, imbalance, patient moved, its new fold, patient sent back in exchange or -1)
        best: tuple[int, float, int, int, int] | None = None
        for to_fold, cls in zip(*np.nonzero(gaps)):
            receivers = np.flatnonzero(patient_fold == to_fold)
            # candidate 0 moves the carrier alone; candidate j > 0 swaps it with receivers[j - 1]
            back_carry = np.vstack([np.zeros((1, carries.shape[1]), np.int64), carries[receivers]])
            back_count = np.vstack([np.zeros((1, counts.shape[1]), np.int64), counts[receivers]])
            for from_fold in np.flatnonzero(carriers[:, cls] >= 2):
                for mover in np.flatnonzero((patient_fold == from_fold) & (carries[:, cls] > 0)):
                    new_carriers = np.repeat(carriers[None], len(back_carry), axis=0)
                    new_carriers[:, from_fold] += back_carry - carries[mover]
                    new_carriers[:, to_fold] += carries[mover] - back_carry
                    new_counts = np.repeat(fold_counts[None], len(back_count), axis=0)
                    new_counts[:, from_fold] += back_count - counts[mover]
                    new_counts[:, to_fold] += counts[mover] - back_count
                    fixed = int(gaps.sum()) - ((new_carriers == 0) & required).sum(axis=(1, 2))
                    score = _imbalance(new_counts, class_totals)
                    j = int(np.lexsort((score, -fixed))[0])
                    if fixed[j] > 0 and (best is None or (fixed[j], -score[j]) > (best[0], -best[1])):
                        partner = int(receivers[j - 1]) if j else -1
                        best = (int(fixed[j]), float(score[j]), int(mover), int(to_fold), partner)
        if best is None:
            return patient_fold
        _, _, mover, to_fold, partner = best
        if partner >= 0:
            patient_fold[partner] = patient_fold[mover]
        patient_fold[mover] = to_fold


def _warn_rare_classes(counts: np.ndarray, patient_fold: np.ndarray, k: int) -> None:
    n_carriers = (counts > 0).sum(axis=0)
    for c, name in enumerate(CLASSES7):
        folds_with = np.unique(patient_fold[counts[:, c] > 0])
        if 0 < len(folds_with) < k:
            why = (f"carried by only {n_carriers[c]} patient{'s' if n_carriers[c] != 1 else ''}" if n_carriers[c] < k
                   else "no move or swap of patients could spread it further")
            missing = sorted(set(range(k)) - set(folds_with.tolist()))
            warnings.warn(f"class {name} is absent from folds {missing}: {why}", UserWarning, stacklevel=3)


def fold_class_counts(folds: pd.DataFrame, slices: pd.DataFrame) -> pd.DataFrame:
    """Images per fold x class (CLASSES7 order, absent classes as 0) plus image and patient totals."""
    labelled = folds.merge(slices[["image_id", "label7"]].astype({"image_id": str}), on="image_id", how="left")
    table = pd.crosstab(labelled["fold"], pd.Categorical(labelled["label7"], categories=CLASSES7), dropna=False)
    table = table.reindex(columns=list(CLASSES7), fill_value=0)
    table.columns = list(CLASSES7)
    table["images"] = labelled.groupby("fold").size()
    table["patients"] = labelled.groupby("fold")["patient_id"].nunique()
    table.index.name = "fold"
    return table.astype(np.int64)


def write_folds(folds: pd.DataFrame, path: Path, meta: dict) -> None:
    """Write folds.csv and its folds.json sidecar (`meta` plus what can be derived from `folds`)."""
    path = Path(path)
    write_text_atomic(path, folds[list(FOLD_COLUMNS)].to_csv(index=False))
    write_text_atomic(sidecar_path(path), json.dumps(meta, indent=2) + "\n")


def read_folds(path: Path, slices: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read and validate a folds file; with `slices` (the table) also check it still matches the table.

    Checks: the file exists, has image_id/patient_id/fold, one row per image, integer folds numbered
    0..k-1, no patient in two folds; and with `slices`: the same ok training images and patients.
    """
    path = Path(path)
    if not path.is_file():
        raise FoldsError(f"{path} not found: run `ichkit folds` first")
    try:
        folds = pd.read_csv(path, dtype={"image_id": str, "patient_id": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FoldsError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise FoldsError(f"{path}: missing columns {missing} (has {list(folds.columns)}): re-run `ichkit folds`")
    folds = folds[list(FOLD_COLUMNS)]
    fold_values = pd.to_numeric(folds["fold"], errors="coerce")
    if fold_values.isna().any() or (fold_values != fold_values.round()).any():
        bad = folds.loc[fold_values.isna() | (fold_values != fold_values.round()), "fold"].iloc[0]
        raise FoldsError(f"{path}: fold value {bad!r} is not an integer")
    folds = folds.assign(fold=fold_values.astype(np.int64))
    k = int(folds["fold"].max()) + 1 if len(folds) else 0
    if len(folds) == 0 or sorted(folds["fold"].unique()) != list(range(k)):
        raise FoldsError(f"{path}: folds are not numbered 0..k-1 (found {sorted(folds['fold'].unique().tolist())})")
    dup = folds["image_id"].duplicated(keep=False)
    if dup.any():
        raise FoldsError(
            f"{path}: {int(folds.loc[dup, 'image_id'].nunique())} images have more than one row "
            f"(e.g. {folds.loc[dup, 'image_id'].iloc[0]}): re-run `ichkit folds`"
        )
    folds_per_patient = folds.groupby("patient_id")["fold"].nunique()
    leaked = folds_per_patient[folds_per_patient > 1]
    if len(leaked):
        example = leaked.index[0]
        in_folds = sorted(folds.loc[folds["patient_id"] == example, "fold"].unique().tolist())
        raise FoldsError(
            f"{path}: {len(leaked)} patients have slices in more than one fold (e.g. {example} in folds "
            f"{in_folds}), which leaks between training and validation: re-run `ichkit folds`"
        )
    if slices is not None:
        train = training_slices(slices)
        expected = dict(zip(train["image_id"].astype(str), train["patient_id"].astype(str)))
        have = dict(zip(folds["image_id"], folds["patient_id"]))
        only_table = sorted(expected.keys() - have.keys())
        only_folds = sorted(have.keys() - expected.keys())
        moved = sorted(i for i in expected.keys() & have.keys() if expected[i] != have[i])
        if only_table or only_folds or moved:
            parts = []
            if only_table:
                parts.append(f"{len(only_table)} ok training images of the table are not in it (e.g. {only_table[0]})")
            if only_folds:
                parts.append(f"{len(only_folds)} of its images are not ok training images of the table "
                             f"(e.g. {only_folds[0]})")
            if moved:
                parts.append(f"{len(moved)} images changed patient_id (e.g. {moved[0]})")
            raise FoldsError(f"{path}: folds.csv is stale: {'; '.join(parts)}: re-run `ichkit folds`")
    return folds.reset_index(drop=True)


def run(args: argparse.Namespace, cfg: dict) -> int:
    from ichkit.table import read_table

    section = cfg["folds"]
    k = int(args.k if args.k is not None else section["k"])
    seed = int(args.seed if args.seed is not None else section["seed"])
    work = Path(cfg["paths"]["work"])
    out = folds_path(cfg)
    dataset = read_table(work)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        folds = make_folds(dataset.slices, k, seed)
    for w in caught:
        print(f"ichkit folds: warning: {w.message}", file=sys.stderr)

    counts = fold_class_counts(folds, dataset.slices)
    meta = {
        "k": k,
        "seed": seed,
        "table_root": str(dataset.root),
        "layout": dataset.layout,
        "work": str(work.resolve()),
        "n_images": int(len(folds)),
        "n_patients": int(folds["patient_id"].nunique()),
        "per_fold": {
            str(f): {"images": int(row["images"]), "patients": int(row["patients"]),
                     "classes": {c: int(row[c]) for c in CLASSES7}}
            for f, row in counts.iterrows()
        },
        "warnings": [str(w.message) for w in caught],
    }
    write_folds(folds, out, meta)
    shown = counts.copy()
    shown.loc["total"] = shown.sum()
    shown.loc["total", "patients"] = meta["n_patients"]
    print(f"{meta['n_images']} images of {meta['n_patients']} patients in {k} folds (seed {seed}) -> {out}")
    print(shown.to_string())
    return 0
