"""Test doubles for the fold driver: trainers of a family "double" that plant leaks or checkpoint per epoch.

- `MemorisingTrainer`: remembers the label of every image id it can see in fit (ctx.labels, and any label
  column left in ctx.slices) and predicts it with certainty; any other id gets the training prior. Out of
  fold it must score at the prior level: a better score means held-out labels reached the trainer.
- `EpochTrainer`: "trains" `epochs` epochs (sleeping `epoch_seconds` each), checkpointing after every one
  (``latest.json``: epoch and RNG state) and appending to ``log.csv``; with resume it continues from the
  checkpoint. Predicts the training prior.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ichkit.engine.trainer import FoldContext, FoldTrainer
from ichkit.files import atomic_path, write_text_atomic
from ichkit.heads import class_prior, rsna_from_class7
from ichkit.labels import CLASS7_INDEX, CLASSES7
from ichkit.models import FAMILY_MODULES, ModelSpec, _REGISTRY, register
from ichkit.oof import predictions_frame

FAMILY = "double"
SHARE = np.full(5, 0.4)


class MemorisingTrainer(FoldTrainer):
    code_version = "1"

    def __init__(self, spec, params, ctx: FoldContext) -> None:
        self.spec, self.params, self.ctx = spec, params, ctx
        self.memory: dict[str, int] = {}
        self.prior = np.full(len(CLASSES7), 1 / len(CLASSES7))

    def fit(self, train_ids, valid_ids, fold_dir: Path, resume: bool) -> None:
        labels = self.ctx.labels
        self.memory = {str(i): int(y) for i, y in labels["y7"].items()}
        if "label7" in self.ctx.slices.columns:  # a label left in the table would be memorised too
            table = self.ctx.slices.dropna(subset=["label7"])
            self.memory.update({str(i): CLASS7_INDEX[c] for i, c in zip(table["image_id"], table["label7"])})
        self.prior = class_prior(labels["y7"].to_numpy())
        self.seen_ids = sorted(labels.index)
        self.fit_args = (list(train_ids), list(valid_ids))

    def predict(self, ids) -> pd.DataFrame:
        p7 = np.tile(self.prior, (len(ids), 1))
        for row, image_id in enumerate(ids):
            if str(image_id) in self.memory:
                p7[row] = 0.0
                p7[row, self.memory[str(image_id)]] = 1.0
        return predictions_frame(list(ids), self.ctx.fold, p7, rsna_from_class7(p7, SHARE))

    def save(self, fold_dir: Path) -> None:
        write_text_atomic(Path(fold_dir) / "memory.json", json.dumps({"prior": self.prior.tolist(), "n": len(self.memory)}))

    @classmethod
    def load(cls, fold_dir: Path, ctx: FoldContext) -> "MemorisingTrainer":
        raise NotImplementedError


class EpochTrainer(FoldTrainer):
    code_version = "1"

    def __init__(self, spec, params, ctx: FoldContext) -> None:
        self.spec, self.params, self.ctx = spec, params, ctx
        self.prior = None

    def fit(self, train_ids, valid_ids, fold_dir: Path, resume: bool) -> None:
        fold_dir = Path(fold_dir)
        latest = fold_dir / "latest.json"
        start, rng = 0, np.random.default_rng(self.ctx.seed)
        if resume and latest.is_file():
            state = json.loads(latest.read_text())
            start = int(state["epoch"])
            rng.bit_generator.state = state["rng"]
        for epoch in range(start + 1, int(self.params["epochs"]) + 1):
            time.sleep(float(self.params["epoch_seconds"]))
            draw = float(rng.random())  # the sampler position must survive a resume
            with open(fold_dir / "log.csv", "a") as log:
                log.write(f"{epoch},{draw:.12f},{int(resume)}\n")
            write_text_atomic(latest, json.dumps({"epoch": epoch, "rng": rng.bit_generator.state}))
        self.prior = class_prior(self.ctx.labels["y7"].to_numpy())

    def predict(self, ids) -> pd.DataFrame:
        p7 = np.tile(self.prior, (len(ids), 1))
        return predictions_frame(list(ids), self.ctx.fold, p7, rsna_from_class7(p7, SHARE))

    def save(self, fold_dir: Path) -> None:
        with atomic_path(Path(fold_dir) / "best.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, self.prior)

    @classmethod
    def load(cls, fold_dir: Path, ctx: FoldContext) -> "EpochTrainer":
        raise NotImplementedError


def _suggest(trial) -> dict:
    return {"smoothing": trial.suggest_float("smoothing", 0.0, 1.0)}


def register_doubles() -> None:
    """Register the doubles' models (idempotent): `memorise` and `epochs`."""
    FAMILY_MODULES.setdefault(FAMILY, "engine_doubles")
    if "memorise" not in _REGISTRY:
        register(ModelSpec(name="memorise", family=FAMILY, features=(), trainer=MemorisingTrainer,
                           suggest=_suggest, defaults={"smoothing": 0.0}, description="memorises labels",
                           num_cpus=1))
    if "epochs" not in _REGISTRY:
        register(ModelSpec(name="epochs", family=FAMILY, features=(), trainer=EpochTrainer,
                           defaults={"epochs": 6, "epoch_seconds": 0.25}, description="checkpoints every epoch"))
