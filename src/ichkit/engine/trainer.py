"""The one interface every model family implements so the fold driver can run it.

The driver (``ichkit.engine.driver``) runs (model, fold) units. For fold k it splits the other folds'
images into ``train_ids`` and a patient-grouped inner ``valid_ids`` (early stopping, checkpoint choice,
thresholds, calibration: never the held-out fold), builds a trainer with ``spec.make_trainer(params, ctx)``
and calls, in order::

    trainer.fit(train_ids, valid_ids, fold_dir, resume)
    trainer.save(fold_dir)
    oof  = trainer.predict(heldout_ids)     # -> a frame in the family's output contract
    test = trainer.predict(test_ids)

``FoldContext.labels`` holds the labels of ``train_ids`` and ``valid_ids`` only: a trainer never sees a
held-out label, so nothing it does can leak the held-out fold into its OOF score.

``fold_dir`` is ``<work>/models/<model>/fold<k>/``: the trainer keeps its fitted model or checkpoints
(``latest`` and ``best``), its training log (``log.csv``) there; the driver writes ``fingerprint.json``.
With ``resume=True`` a trainer that checkpoints picks up from its latest checkpoint in ``fold_dir``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class FoldContext:
    """What a trainer may read: settings, the slice table, and the labels of its training images only."""

    cfg: dict[str, Any]          # the resolved configuration (default.yaml < --config < --set)
    work: Path                   # the work folder (table, cache, features, ...)
    model: str                   # registered model name
    fold: int                    # the held-out fold this unit predicts
    seed: int
    task: str                    # 7class | 6class | binary
    slices: pd.DataFrame         # the slice table without its label columns (ids, series, z, spacing, split, status)
    labels: pd.DataFrame         # index image_id (train_ids + valid_ids only): y7 (CLASSES7 index), RSNA_LABELS, patient_id, fold
    options: dict[str, Any] = field(default_factory=dict)  # train settings that change outputs (class_weight, rsna_head, ...)
    progress: bool = True


class FoldTrainer(ABC):
    """One (model, fold) learner. Families subclass this; the driver never looks inside."""

    #: bump when a change to the family's code changes its outputs (part of the fold fingerprint)
    code_version: str = "1"

    @abstractmethod
    def fit(self, train_ids: list[str], valid_ids: list[str], fold_dir: Path, resume: bool) -> None:
        """Fit on `train_ids` (labels in ctx.labels); use `valid_ids` for early stopping / choices."""

    @abstractmethod
    def predict(self, ids: list[str]) -> pd.DataFrame:
        """One row per id in order: ``image_id`` plus the family's output columns.

        Classifiers return `ichkit.oof.predictions_frame(ids, p7, p6)` (7-class and 6 RSNA probabilities).
        """

    @abstractmethod
    def save(self, fold_dir: Path) -> None:
        """Write what `load` needs into `fold_dir` (atomically, keeping each file's own suffix)."""

    @classmethod
    @abstractmethod
    def load(cls, fold_dir: Path, ctx: FoldContext) -> "FoldTrainer":
        """A fitted trainer from `fold_dir` (used by `predict` on new scans and by resumed merges)."""
