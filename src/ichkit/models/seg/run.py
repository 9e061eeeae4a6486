"""Stage `segment`: the seg models through the engine's fold driver; merge, score and tabulate them.

`ichkit.engine.driver.train_models` runs every (model, fold): the patient-grouped inner split of the
training folds (``train.inner_valid_fraction``), fold fingerprints (a changed ``seg`` / ``prepare`` /
``features`` setting retrains; an unchanged re-run trains nothing), resume, ``--fold K`` (folds on
different machines), ``--force`` and ``--executor local|ray``. The seg family's `ModelSpec.outputs`
(`ichkit.models.seg.results`) writes the parts ``<work>/seg_oof/<model>/fold<k>.parquet`` and
``<work>/seg_test/<model>/fold<k>.parquet`` and, once every fold is current, merges and scores them into
``<work>/seg_oof/<model>.parquet`` (+ ``.masks.parquet``). Segmentation runs the 7-class task's images
(every training image; the inner split is stratified by the 7-class label).
"""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from ichkit.engine.executors import EXECUTORS
from ichkit.models.seg.results import SegError


def segment(models: list[str], cfg: dict[str, Any], folds_wanted: list[int] | None = None, force: bool = False,
            progress: bool = True, executor: str | None = None, ray_address: str | None = None) -> dict[str, pd.DataFrame]:
    """Run `models` on the folds; returns the merged per-image OOF tables of the models now complete."""
    from ichkit.engine.driver import train_models
    from ichkit.engine.tasks import DEFAULT_TASK

    merged = train_models(models, cfg, folds=folds_wanted, force=force, executor=executor, ray_address=ray_address,
                          task=DEFAULT_TASK, progress=progress)
    return {run: table for run, table in merged.items() if table is not None}


def model_list(requested: str, cfg: dict[str, Any]) -> list[str]:
    from ichkit.models import list_models

    names = list(cfg["seg"]["models"]) if requested == "all" else [n.strip() for n in requested.split(",") if n.strip()]
    known = set(list_models("seg"))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SegError(f"unknown segmentation model(s) {unknown}; registered: {sorted(known)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="all", help="seg model(s), comma list, or 'all' = seg.models")
    parser.add_argument("--fold", type=int, action="append", default=None, help="only this fold (repeatable)")
    parser.add_argument("--force", action="store_true", help="retrain folds whose outputs exist")
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="where the (model, fold) units run (default: train.executor)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (with --executor ray)")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from ichkit.models.seg.evaluate import print_seg_table

    # bad requests raise IchkitError subclasses (SegError, FoldsError, ...): ichkit.cli.main reports them
    models = model_list(args.model, cfg)
    segment(models, cfg, args.fold, args.force, executor=args.executor, ray_address=args.ray_address)
    print_seg_table(cfg)
    return 0
