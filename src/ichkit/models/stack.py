"""Family `stack`: a LightGBM meta-learner on the first-level models' out-of-fold probabilities.

Features of a slice (`StackFeatures`):
- for every first-level model m: its 7 class probabilities and p(any) (``m__prob_<class>``, ``m__rsna_any``);
- the same 8 values averaged over the models (``mean__...``), and their slice context within the series
  sorted by z: the neighbours at the offsets of `stack.neighbours` (default +-1, +-2; NaN past the end of
  the series, which LightGBM treats as missing) and the series max and mean. This is what the 3rd-place
  RSNA 2019 solution stacked (+-20 neighbouring slices): blood spans adjacent slices, so a slice whose
  neighbours look bloody is more likely bloody itself.

Training rows read the first-level OOF files (`work/oof/<m>.parquet`), so every value a training row sees
was predicted by a model that never saw its fold; test rows read the first-level test files
(`work/test/<m>.parquet`, mean over folds). The stacker is fitted with the same patient-grouped folds as
the first level (`ichkit stack`), so its own OOF score is honest: a slice of a held-out patient is scored
by a stacker that saw none of that patient's slices. Its outputs follow the OOF contract (7-class
probabilities from the multiclass booster, the 6 RSNA ones mapped with `oof.rsna_from_class7` and the
training fold's multi share), so `evaluate`, `submit` and the report treat it like any other model.

`StackTrainer` is a `FoldTrainer` (fit/predict/save/load) run by the fold driver (`ichkit.engine.driver`)
like every other family; `ichkit stack` (`ichkit.outputs.ensemble`) sets ``stack.inputs`` (the
first-level models and a digest of their files, part of the fold fingerprint) and calls the driver, and
`ichkit tune --model stack_lgbm` tunes it. Loaded with `load` in another work folder (`ichkit predict`),
it reads that folder's first-level test predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.engine.trainer import FoldContext, FoldTrainer
from ichkit.errors import IchkitError
from ichkit.labels import CLASSES7, SUBTYPES
from ichkit.models import ModelSpec, register

STACK_MODEL = "stack_lgbm"
# the first-level values a stacker reads per model (the 7-class distribution and p(any))
FIRST_LEVEL_COLUMNS: tuple[str, ...] = tuple(f"prob_{c}" for c in CLASSES7) + ("rsna_any",)
SEP = "__"
MODEL_FILE = "model.joblib"  # model / column separator in feature names (LightGBM refuses ':' and ',' in names)


class StackError(IchkitError):
    """Stacking cannot run as asked; the message says why and what to do."""


def _lgbm(params: dict[str, Any], seed: int):
    from lightgbm import LGBMClassifier

    return LGBMClassifier(objective="multiclass", random_state=seed, verbose=-1, **params)


def _suggest(trial) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 400, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 4, 31, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 5, 60, log=True),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.2, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }




def first_level_models(work: Path | str, wanted: str | Sequence[str] = "all",
                       folds_file: Path | str | None = None) -> list[str]:
    """The first-level models to stack: `wanted` names, or every 7-class model with a merged OOF file
    ("all") that is not itself a stacker. With `folds_file`, a model made with other folds is refused."""
    from ichkit import oof
    from ichkit.engine.tasks import DEFAULT_TASK, split_run_name

    available = [m for m in oof.list_models(work)
                 if not m.startswith("stack") and split_run_name(m)[1] == DEFAULT_TASK]
    if wanted == "all" or wanted == ["all"]:
        names = available
    else:
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        missing = sorted(set(names) - set(available))
        if missing:
            raise StackError(f"no merged OOF file for {missing} under {Path(work) / 'oof'}: train them on every fold")
    if len(names) < 1:
        raise StackError(f"no first-level OOF files under {Path(work) / 'oof'}: run `ichkit train` first")
    if folds_file is not None:
        for m in names:
            oof.check_current(work, m, folds_file)
    return names


def slice_order(slices: pd.DataFrame) -> pd.DataFrame:
    """image_id, series_id and the position in the series (sorted by z, then instance number, then id)."""
    s = slices[["image_id", "series_id", "z", "instance_number"]].copy()
    s["image_id"] = s["image_id"].astype(str)
    # an image without a series is its own series (it has no neighbours)
    no_series = s["series_id"].isna() | (s["series_id"].astype(str) == "")
    s["series_id"] = s["series_id"].astype(str).where(~no_series, "solo:" + s["image_id"])
    s["instance_number"] = pd.to_numeric(s["instance_number"], errors="coerce")
    s = s.sort_values(["series_id", "z", "instance_number", "image_id"], na_position="last", kind="stable")
    return s[["image_id", "series_id"]].reset_index(drop=True)


def context_features(values: pd.DataFrame, slices: pd.DataFrame, offsets: Sequence[int]) -> pd.DataFrame:
    """Slice context of each column of `values` (index image_id): the value of the slice `o` positions
    along the series sorted by z, for every o in `offsets` and its negative, and the series max and mean.

    Only images present in `values` count as neighbours: train and test images never share a series.
    """
    order = slice_order(slices)
    order = order[order["image_id"].isin(set(values.index.astype(str)))]
    v = values.reindex(order["image_id"].to_numpy())
    v.index = pd.Index(order["image_id"].to_numpy(), name="image_id")
    groups = v.groupby(order["series_id"].to_numpy(), sort=False)
    parts = {}
    for o in sorted({abs(int(o)) for o in offsets if int(o) != 0}):
        parts[f"prev{o}"] = groups.shift(o)
        parts[f"next{o}"] = groups.shift(-o)
    parts["series_max"] = groups.transform("max")
    parts["series_mean"] = groups.transform("mean")
    out = pd.concat({name: frame for name, frame in parts.items()}, axis=1)
    out.columns = [f"{col}{SEP}{name}" for name, col in out.columns]
    return out.reindex(values.index)


@dataclass
class StackFeatures:
    """The meta-learner's feature matrix for every training (OOF) and test image of a work folder."""

    models: list[str]
    X: pd.DataFrame            # index image_id (string), one row per image with first-level predictions

    @classmethod
    def build(cls, work: Path | str, models: Sequence[str], slices: pd.DataFrame,
              offsets: Sequence[int]) -> "StackFeatures":
        """Read each model's merged OOF (where it exists: not in a `predict` folder) and test files from
        `work` and build features."""
        from ichkit import oof

        per_model = {}
        for m in models:
            parts = []
            if oof.merged_paths(work, m)[0].is_file():
                parts.append(oof.read_oof(work, m))
            test_path = oof.merged_paths(work, m)[1]
            if test_path.is_file():
                parts.append(oof.read_test(work, m))
            if not parts:
                raise StackError(f"model {m}: no predictions under {work}")
            frame = pd.concat(parts, ignore_index=True)
            per_model[m] = frame.set_index(frame["image_id"].astype(str))[list(FIRST_LEVEL_COLUMNS)]
        return cls(models=list(models), X=stack_matrix(per_model, slices, offsets))

    def rows(self, ids: Sequence[str]) -> pd.DataFrame:
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self.X.index]
        if missing:
            raise StackError(f"{len(missing)} images have no first-level predictions of every stacked model "
                             f"(e.g. {missing[0]}; models {self.models})")
        return self.X.loc[ids]


def stack_matrix(per_model: dict[str, pd.DataFrame], slices: pd.DataFrame, offsets: Sequence[int]) -> pd.DataFrame:
    """Feature matrix from each model's FIRST_LEVEL_COLUMNS frame (index image_id)."""
    ids = None
    for m, frame in per_model.items():
        ids = frame.index if ids is None else ids.intersection(frame.index, sort=False)
    blocks = {m: frame.loc[ids] for m, frame in per_model.items()}
    mean = sum(b.to_numpy() for b in blocks.values()) / len(blocks)
    mean = pd.DataFrame(mean, index=ids, columns=[f"mean{SEP}{c}" for c in FIRST_LEVEL_COLUMNS])
    named = [b.set_axis([f"{m}{SEP}{c}" for c in FIRST_LEVEL_COLUMNS], axis=1) for m, b in blocks.items()]
    X = pd.concat([*named, mean, context_features(mean, slices, offsets)], axis=1)
    X.index = pd.Index(X.index.astype(str), name="image_id", dtype="string")
    return X.astype(np.float64)


class StackTrainer(FoldTrainer):
    """One fold of the meta-learner. `features` may be shared by the folds of one run (built once)."""

    code_version = "1"

    def __init__(self, spec: ModelSpec, params: dict[str, Any], ctx: FoldContext,
                 features: StackFeatures | None = None):
        self.spec, self.params, self.ctx = spec, dict(params), ctx
        self.features = features
        self.estimator = None
        self.classes: np.ndarray | None = None
        self.multi_share: np.ndarray | None = None
        self.columns: list[str] = []
        self.models: list[str] = list(features.models) if features is not None else stacked_models(ctx)

    def _features(self) -> StackFeatures:
        if self.features is None:
            self.features = StackFeatures.build(self.ctx.work, self.models, self.ctx.slices,
                                                self.ctx.cfg["stack"]["neighbours"])
        return self.features

    def fit(self, train_ids: list[str], valid_ids: list[str], fold_dir: Path, resume: bool) -> None:
        from ichkit.heads import multi_share_from_labels

        # train + valid, as the classical family: a fixed number of trees (tuned by Optuna), nothing to stop
        seen = set(map(str, train_ids)) | set(map(str, valid_ids))
        labels = self.ctx.labels[self.ctx.labels.index.isin(seen)]  # folds.csv order, however the ids came
        X = self._features().rows(list(labels.index))
        y7 = labels["y7"].to_numpy(dtype=np.int64)
        self.classes = np.unique(y7)
        self.columns = list(X.columns)
        if len(self.classes) == 1:
            self.estimator = None  # one class in the fold: predict it with certainty
        else:
            self.estimator = SPEC.build(self.params, self.ctx.seed).fit(X, np.searchsorted(self.classes, y7))
        self.multi_share = multi_share_from_labels(labels[list(SUBTYPES)])

    def predict(self, ids: list[str]) -> pd.DataFrame:
        from ichkit.heads import rsna_from_class7
        from ichkit.oof import predictions_frame

        X = self._features().rows(ids)[self.columns]
        p7 = np.zeros((len(X), len(CLASSES7)))
        if self.estimator is None:
            p7[:, self.classes[0]] = 1.0
        elif len(X):
            p7[:, self.classes] = self.estimator.predict_proba(X)
        p7 = p7 / p7.sum(axis=1, keepdims=True).clip(min=1e-12)
        return predictions_frame(list(ids), self.ctx.fold, p7, rsna_from_class7(p7, self.multi_share))

    def save(self, fold_dir: Path) -> None:
        import joblib

        from ichkit.files import atomic_path

        with atomic_path(Path(fold_dir) / MODEL_FILE) as tmp:
            joblib.dump({"estimator": self.estimator, "classes": self.classes, "multi_share": self.multi_share,
                         "columns": self.columns, "models": self.models, "params": self.params}, tmp)

    @classmethod
    def load(cls, fold_dir: Path, ctx: FoldContext) -> "StackTrainer":
        import joblib

        path = Path(fold_dir) / MODEL_FILE
        if not path.is_file():
            raise StackError(f"{path} not found: run `ichkit stack`")
        saved = joblib.load(path)
        trainer = cls.__new__(cls)  # not __init__: the models come from the file, not the context
        trainer.spec, trainer.params, trainer.ctx, trainer.features = SPEC, saved["params"], ctx, None
        trainer.estimator, trainer.classes = saved["estimator"], saved["classes"]
        trainer.multi_share, trainer.columns, trainer.models = saved["multi_share"], saved["columns"], saved["models"]
        return trainer


def stacked_models(ctx: FoldContext) -> list[str]:
    """The first-level models a stacker fold reads: ``stack.inputs.models`` as `ichkit stack` set it, else
    `stack.models` resolved in the work folder (e.g. under `ichkit tune`)."""
    inputs = ctx.cfg["stack"]["inputs"] or {}
    return list(inputs.get("models") or first_level_models(ctx.work, ctx.cfg["stack"]["models"]))


SPEC = register(ModelSpec(
    name=STACK_MODEL,
    family="stack",
    features=(),
    build=_lgbm,
    suggest=_suggest,
    # few, shallow, strongly subsampled and regularised trees: the meta-learner sees a few thousand rows of
    # ~150 highly correlated probabilities from a few dozen patients and overfits quickly otherwise (on the
    # realistic demo 150 trees of 7 leaves scored RSNA log loss 0.369 out of fold, worse than the plain
    # mean's 0.286; these settings 0.278)
    defaults={"n_estimators": 100, "learning_rate": 0.03, "num_leaves": 4, "min_child_samples": 40,
              "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.5, "reg_lambda": 5.0, "n_jobs": 1},
    trainer=StackTrainer,
    # the first-level models and their files' digest, and the context offsets, change the stacker's outputs
    config_keys=("stack.inputs", "stack.neighbours"),
    description="LightGBM meta-learner on first-level OOF probabilities + slice context (+-neighbours, series max/mean)",
))
