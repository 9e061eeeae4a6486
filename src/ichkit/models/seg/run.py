"""Stage `segment`: train each seg model per fold, write the seg OOF / test parts, merge and score them.

For held-out fold k of folds.csv: the other folds' images are split by patient into ``train_ids`` and an
inner ``valid_ids`` (``seg.inner_valid_fraction``); the trainer gets a `FoldContext` whose labels cover
those two sets only, fits, saves into ``<work>/models/<model>/fold<k>/`` and predicts the held-out fold
and the test images (`results` has the file contract). A fold whose two parts exist is skipped (``--force``
redoes it); ``--fold K`` runs one fold, so folds can run on different machines; once every fold's parts
are present they are merged into ``<work>/seg_oof/<model>.parquet`` and scored.

This is the seg family's fold loop until the engine's fold driver (``ichkit.engine.driver``) learns the
seg output contract; the trainers already follow the driver's `FoldTrainer` interface.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.engine.trainer import FoldContext


def inner_split(ids: list[str], patients: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train_ids, valid_ids): about `fraction` of the patients go to valid; grouped, seeded."""
    from sklearn.model_selection import GroupShuffleSplit

    if fraction <= 0 or len(set(patients)) < 2:
        return list(ids), []
    split = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=int(seed))
    tr, va = next(split.split(np.zeros(len(ids)), groups=np.asarray(patients)))
    return [ids[i] for i in tr], [ids[i] for i in va]


def labels_frame(slices: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """index image_id: y7 (CLASSES7 index) and the RSNA labels, for `ids` only."""
    from ichkit.labels import CLASS7_INDEX, RSNA_LABELS

    s = slices.set_index("image_id").loc[ids]
    out = pd.DataFrame({"y7": s["label7"].map(CLASS7_INDEX).astype(int)}, index=pd.Index(ids, name="image_id"))
    for label in RSNA_LABELS:
        out[label] = s[label].astype(int).to_numpy()
    return out


def run_fold(model: str, fold: int, cfg: dict[str, Any], slices: pd.DataFrame, folds: pd.DataFrame,
             force: bool = False, progress: bool = True) -> float:
    """Train and predict one (model, fold); returns the seconds taken (0 when already done)."""
    from ichkit.models.seg import make_trainer, results

    work = Path(cfg["paths"]["work"])
    if results.fold_done(work, model, fold) and not force:
        return 0.0
    t0 = time.perf_counter()
    seed = int(cfg["train"]["seed"])
    rest = folds[folds["fold"] != fold]
    train_ids, valid_ids = inner_split(rest["image_id"].tolist(), rest["patient_id"].tolist(),
                                       float(cfg["seg"]["inner_valid_fraction"]), seed + fold)
    heldout = folds.loc[folds["fold"] == fold, "image_id"].tolist()
    test_ids = slices.loc[(slices["split"] == "test") & (slices["status"] == "ok"), "image_id"].tolist()
    ctx = FoldContext(cfg=cfg, work=work, model=model, fold=fold, seed=seed, task="seg", slices=slices,
                      labels=labels_frame(slices, train_ids + valid_ids), progress=progress)
    fold_dir = work / "models" / model / f"fold{fold}"
    trainer = make_trainer(model, {}, ctx)
    trainer.fit(train_ids, valid_ids, fold_dir, resume=not force)
    trainer.save(fold_dir)
    results.write_fold(work, model, fold, trainer.predict(heldout), trainer.predict(test_ids))
    return time.perf_counter() - t0


def segment(models: list[str], cfg: dict[str, Any], folds_wanted: list[int] | None = None, force: bool = False,
            progress: bool = True) -> dict[str, pd.DataFrame]:
    """Run `models` on the folds; returns the merged per-image OOF tables of the models now complete."""
    from ichkit.folds import read_folds
    from ichkit.models.seg import results
    from ichkit.models.seg.data import SegData
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    slices = read_table(work).slices
    folds = read_folds(Path(cfg["paths"]["folds"]), slices)
    all_folds = sorted(int(k) for k in folds["fold"].unique())
    wanted = all_folds if folds_wanted is None else folds_wanted
    merged = {}
    data = SegData(work, cfg)
    for model in models:
        for k in wanted:
            seconds = run_fold(model, k, cfg, slices, folds, force, progress)
            note = "done already" if seconds == 0 else f"{seconds:.1f} s"
            print(f"{model} fold {k}: {note}", flush=True)
        if all(results.fold_done(work, model, k) for k in all_folds):
            merged[model] = results.merge(work, model, folds, slices, data.truth)
            m = merged[model]
            blood = m[m["true_area_px"] > 0]
            print(f"{model}: OOF mean Dice on {len(blood)} slices with blood {blood['dice'].mean():.3f} "
                  f"-> {results.merged_paths(work, model)[0]}", flush=True)
    return merged


def model_list(requested: str, cfg: dict[str, Any]) -> list[str]:
    from ichkit.models import list_models

    names = list(cfg["seg"]["models"]) if requested == "all" else [n.strip() for n in requested.split(",") if n.strip()]
    known = set(list_models("seg"))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown segmentation model(s) {unknown}; registered: {sorted(known)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="all", help="seg model(s), comma list, or 'all' = seg.models")
    parser.add_argument("--fold", type=int, action="append", default=None, help="only this fold (repeatable)")
    parser.add_argument("--force", action="store_true", help="retrain folds whose outputs exist")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from ichkit.folds import FoldsError
    from ichkit.models.seg.evaluate import print_seg_table
    from ichkit.models.seg.results import SegResultError

    try:
        models = model_list(args.model, cfg)
        segment(models, cfg, args.fold, args.force)
        print_seg_table(cfg)
    except (ValueError, FileNotFoundError, FoldsError, SegResultError) as exc:
        print(f"ichkit segment: error: {exc}", file=sys.stderr)
        return 1
    return 0
