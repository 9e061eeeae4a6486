"""Stage `train`: fit a model on k-1 folds, predict the held-out fold and the test split, for every fold.

``ichkit train --model NAME [--fold K] [--force]``; ``--model all`` trains the list in ``train.models``.

Per fold k of folds.csv:
- fit the registered model (`ichkit.models`) on the other folds' images, with the class imbalance handled
  one way for every model: balanced sample weights for estimators whose fit takes them, balanced
  resampling (oversampling every class to the largest) of the training fold for the others (kNN, QDA,
  one-vs-rest);
- predict the held-out fold and every test image: 7-class probabilities, and the 6 RSNA label
  probabilities by `train.rsna_head` (see `RSNA_HEADS`);
- write ``<work>/oof/<model>/fold<k>.parquet`` and ``<work>/test/<model>/fold<k>.parquet`` (`oof.write_fold`)
  and the fitted model ``<work>/models/<model>/fold<k>.joblib``; print the fold's scores.

A finished fold is skipped unless ``--force``; ``--fold K`` trains one fold (so folds can run on
different machines), and the parts are merged (`oof.merge`) as soon as every fold's part exists.
Parameters: the model's defaults, then ``features.pca_components`` and ``train.n_jobs`` (for models that
have them), then ``models.<name>`` from the config, then the best parameters `ichkit tune` saved in
``<work>/params/<name>.json`` (unless ``--no-tuned`` / ``train.use_tuned: false``); see `resolve_params`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.files import atomic_path
from ichkit.labels import CLASSES7, RSNA_LABELS, SUBTYPES

# How the 6 RSNA probabilities are made:
# - class7: from the 7-class probabilities as predicted (oof.rsna_from_class7)
# - prior_corrected: the same after undoing the balanced weighting, p(c|x) ~ p_balanced(c|x) * prior(c):
#   balancing trains the model as if every class were equally frequent, which helps recall of rare classes
#   (the 7-class metrics) but over-predicts hemorrhage, and the RSNA log loss punishes that
# - binary: one extra unweighted binary model per RSNA label (the same estimator and params)
RSNA_HEADS: tuple[str, ...] = ("class7", "prior_corrected", "binary")
CLASS_WEIGHTS: tuple[str, ...] = ("balanced", "none")


class TrainError(ValueError):
    """A training request that cannot run; the message says what to do."""


# --------------------------------------------------------------------------------------------------
# data


@dataclass
class TrainData:
    """Training images in folds.csv order with their labels and fold, test images, their features."""

    X: pd.DataFrame            # index image_id, feature columns of every loaded set
    labels: pd.DataFrame       # image_id, fold, y7 (CLASSES7 index), RSNA_LABELS; aligned with X
    X_test: pd.DataFrame
    folds: pd.DataFrame        # folds.csv as read
    slices: pd.DataFrame       # the slice table

    def columns_for(self, feature_sets: tuple[str, ...]) -> list[str]:
        from ichkit.features import PIXEL_PREFIX

        is_pixel = self.X.columns.str.startswith(PIXEL_PREFIX)
        keep = np.zeros(len(self.X.columns), dtype=bool)
        if "pixels" in feature_sets:
            keep |= is_pixel
        if "radiomic" in feature_sets:
            keep |= ~is_pixel
        return list(self.X.columns[keep])

    @property
    def fold_ids(self) -> list[int]:
        return sorted(int(f) for f in self.folds["fold"].unique())


def load_train_data(cfg: dict[str, Any], feature_sets: tuple[str, ...], progress: bool = True) -> TrainData:
    """Read the table and folds.csv, compute / load the features of every training and test image."""
    from ichkit.features import load_features
    from ichkit.folds import folds_path, read_folds
    from ichkit.oof import OOFError, truth_for
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    slices = read_table(work).slices
    folds = read_folds(folds_path(cfg), slices)
    try:
        y7, y6 = truth_for(folds, slices, what="training images of folds.csv", remedy="re-run `ichkit prepare`")
    except OOFError as exc:
        raise TrainError(str(exc)) from None
    labels = folds[["image_id", "fold"]].assign(y7=y7)
    labels[list(RSNA_LABELS)] = y6
    test_ids = slices.loc[(slices["split"] == "test") & (slices["status"] == "ok"), "image_id"].astype(str).tolist()
    all_ids = labels["image_id"].tolist() + test_ids
    X_all = load_features(work, all_ids, cfg, feature_sets, progress=progress)
    X = X_all.iloc[: len(labels)]
    X_test = X_all.iloc[len(labels):]
    return TrainData(X=X, labels=labels.reset_index(drop=True), X_test=X_test, folds=folds, slices=slices)


# --------------------------------------------------------------------------------------------------
# fitting


def balanced_resample(y: np.ndarray, seed: int) -> np.ndarray:
    """Row indices that keep every row and oversample (with replacement) each class up to the largest."""
    rng = np.random.default_rng(seed)
    n_per_class = np.bincount(y)
    target = int(n_per_class.max())
    picks = [np.arange(len(y))]
    for c in np.flatnonzero(n_per_class):
        rows = np.flatnonzero(y == c)
        if len(rows) < target:
            picks.append(rng.choice(rows, size=target - len(rows), replace=True))
    return np.sort(np.concatenate(picks))


def fit_balanced(estimator, X: pd.DataFrame, y: np.ndarray, seed: int, class_weight: str):
    """Fit a Pipeline (final step `clf`) with the imbalance handled the same way for every model."""
    from sklearn.utils.class_weight import compute_sample_weight
    from sklearn.utils.validation import has_fit_parameter

    if class_weight == "none":
        return estimator.fit(X, y)
    if class_weight != "balanced":
        raise TrainError(f"train.class_weight must be one of {CLASS_WEIGHTS}, got {class_weight!r}")
    if has_fit_parameter(estimator.steps[-1][1], "sample_weight"):
        return estimator.fit(X, y, clf__sample_weight=compute_sample_weight("balanced", y))
    rows = balanced_resample(y, seed)
    return estimator.fit(X.iloc[rows], y[rows])


@dataclass
class FoldModel:
    """One fold's fitted model and everything needed to turn its output into the OOF contract columns."""

    name: str
    fold: int
    params: dict[str, Any]
    classes: np.ndarray            # CLASSES7 indices seen in training = the estimator's proba columns
    estimator: Any
    class_prior: np.ndarray        # (7,) class frequencies of the training folds
    multi_share: np.ndarray        # (5,) P(subtype | multi) of the training folds
    class_weight: str
    rsna_head: str
    rsna_estimators: list[Any] = field(default_factory=list)  # binary heads (RSNA_LABELS order)
    rsna_constants: dict[int, float] = field(default_factory=dict)  # label index -> constant prob

    def predict_class7(self, X: pd.DataFrame) -> np.ndarray:
        p = np.zeros((len(X), len(CLASSES7)))
        if len(X):
            p[:, self.classes] = self.estimator.predict_proba(X)
        return p / p.sum(axis=1, keepdims=True).clip(min=1e-12)

    def predict(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(p7 (n, 7), p6 (n, 6)) for the rows of X."""
        from ichkit.oof import rsna_from_class7

        p7 = self.predict_class7(X)
        if self.rsna_head == "binary":
            p6 = np.zeros((len(X), len(RSNA_LABELS)))
            for j in range(len(RSNA_LABELS)):
                if j in self.rsna_constants:
                    p6[:, j] = self.rsna_constants[j]
                elif len(X):
                    p6[:, j] = self.rsna_estimators[j].predict_proba(X)[:, 1]
            return p7, p6
        base = p7
        if self.rsna_head == "prior_corrected" and self.class_weight == "balanced":
            base = p7 * self.class_prior
            base = base / base.sum(axis=1, keepdims=True).clip(min=1e-12)
        return p7, rsna_from_class7(base, self.multi_share)


def _cap_pca(params: dict[str, Any], n_rows: int, n_pixel_columns: int) -> dict[str, Any]:
    """PCA cannot have more components than training rows or pixel columns."""
    if "pca_components" not in params:
        return params
    cap = max(1, min(n_rows - 1, n_pixel_columns))
    if params["pca_components"] > cap:
        return {**params, "pca_components": cap}
    return params


def fit_fold_model(spec, params: dict[str, Any], X: pd.DataFrame, labels: pd.DataFrame, fold: int, seed: int,
                   class_weight: str, rsna_head: str) -> FoldModel:
    """Fit `spec` with `params` on the rows of X / labels (the training folds of `fold`)."""
    from ichkit.features import PIXEL_PREFIX
    from ichkit.oof import multi_share_from_labels

    if rsna_head not in RSNA_HEADS:
        raise TrainError(f"train.rsna_head must be one of {RSNA_HEADS}, got {rsna_head!r}")
    params = _cap_pca(params, len(X), int(X.columns.str.startswith(PIXEL_PREFIX).sum()))
    y7 = labels["y7"].to_numpy()
    present = np.unique(y7)
    # estimators see contiguous labels 0..m-1 (XGBoost requires it when a class is absent from the fold)
    y_encoded = np.searchsorted(present, y7)
    estimator = fit_balanced(spec.build(params, seed), X, y_encoded, seed, class_weight)
    prior = np.bincount(y7, minlength=len(CLASSES7)) / len(y7)
    model = FoldModel(name=spec.name, fold=fold, params=params, classes=present, estimator=estimator,
                      class_prior=prior, multi_share=multi_share_from_labels(labels[list(SUBTYPES)]),
                      class_weight=class_weight, rsna_head=rsna_head)
    if rsna_head == "binary":
        for j, label in enumerate(RSNA_LABELS):
            y = labels[label].to_numpy()
            if y.min() == y.max():  # a label the fold never (or always) has: a smoothed constant
                model.rsna_constants[j] = float((y.sum() + 0.5) / (len(y) + 1.0))
                model.rsna_estimators.append(None)
            else:
                model.rsna_estimators.append(spec.build(params, seed).fit(X, y))
    return model


@dataclass
class FoldResult:
    model: FoldModel
    oof: pd.DataFrame          # contract frame of the held-out rows
    test: pd.DataFrame | None  # contract frame of the test rows (None when not asked for)
    scores: dict[str, float]
    seconds: float


def run_fold(spec, params: dict[str, Any], data: TrainData, fold: int, train_cfg: dict[str, Any],
             predict_test: bool = True) -> FoldResult:
    """Fit on every fold but `fold`, predict `fold` (and the test split), score the held-out rows."""
    from ichkit.metrics import score_predictions
    from ichkit.oof import predictions_frame

    t0 = time.perf_counter()
    cols = data.columns_for(spec.features)
    held = (data.labels["fold"] == fold).to_numpy()
    if not held.any():
        raise TrainError(f"fold {fold} has no images in folds.csv (folds: {data.fold_ids})")
    model = fit_fold_model(spec, params, data.X.loc[~held, cols], data.labels[~held], fold,
                           int(train_cfg.get("seed", 42)), str(train_cfg.get("class_weight", "balanced")),
                           str(train_cfg.get("rsna_head", "prior_corrected")))
    val_labels = data.labels[held]
    p7, p6 = model.predict(data.X.loc[held, cols])
    oof_frame = predictions_frame(val_labels["image_id"], fold, p7, p6)
    scores = score_predictions(val_labels["y7"].to_numpy(), p7, val_labels[list(RSNA_LABELS)].to_numpy(), p6)
    test_frame = None
    if predict_test:
        t7, t6 = model.predict(data.X_test[cols])
        test_frame = predictions_frame(data.X_test.index, fold, t7, t6)
    return FoldResult(model=model, oof=oof_frame, test=test_frame, scores=scores, seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# parameters and saved models


def params_path(work: Path | str, model: str) -> Path:
    """Where `ichkit tune` saves a model's best parameters."""
    return Path(work) / "params" / f"{model}.json"


def read_tuned_params(work: Path | str, model: str) -> dict[str, Any] | None:
    path = params_path(work, model)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainError(f"{path}: not valid JSON ({exc}); re-run `ichkit tune --model {model}` or delete it") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), dict):
        raise TrainError(f"{path}: expected an object with a 'params' object; re-run `ichkit tune --model {model}`")
    return saved["params"]


def resolve_params(spec, cfg: dict[str, Any], use_tuned: bool = True) -> tuple[dict[str, Any], str]:
    """(params, where they came from): defaults < features.pca_components, train.n_jobs < models.<name> <
    the tuned file."""
    work = Path(cfg["paths"]["work"])
    layers: list[dict[str, Any] | None] = []
    sources = ["defaults"]
    if "pca_components" in spec.defaults and cfg.get("features", {}).get("pca_components"):
        layers.append({"pca_components": int(cfg["features"]["pca_components"])})
        sources.append("features.pca_components")
    if "n_jobs" in spec.defaults and cfg.get("train", {}).get("n_jobs") is not None:
        layers.append({"n_jobs": int(cfg["train"]["n_jobs"])})
        sources.append("train.n_jobs")
    configured = (cfg.get("models") or {}).get(spec.name)
    if configured:
        layers.append(dict(configured))
        sources.append(f"config models.{spec.name}")
    tuned = read_tuned_params(work, spec.name) if use_tuned else None
    if tuned:
        layers.append(tuned)
        sources.append(f"tuned {params_path(work, spec.name)}")
    try:
        return spec.params(*layers), " < ".join(sources)
    except ValueError as exc:  # an unknown key in the config or the tuned file: say where params came from
        raise TrainError(f"{exc}; params from {' < '.join(sources)}") from None


def model_path(work: Path | str, model: str, fold: int) -> Path:
    return Path(work) / "models" / model / f"fold{int(fold)}.joblib"


def save_fold_model(work: Path | str, model: FoldModel) -> Path:
    import joblib

    path = model_path(work, model.name, model.fold)
    with atomic_path(path) as tmp:
        joblib.dump(model, tmp)
    return path


def load_fold_model(work: Path | str, model: str, fold: int) -> FoldModel:
    import joblib

    path = model_path(work, model, fold)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `ichkit train --model {model} --fold {fold}`")
    return joblib.load(path)


def model_names(requested: list[str], cfg: dict[str, Any]) -> list[str]:
    """Expand `all` to train.models and check every name against the registry."""
    from ichkit.models import get_model_spec

    names: list[str] = []
    for item in requested:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                names += list(cfg.get("train", {}).get("models") or [])
            else:
                names.append(name)
    for name in names:
        try:
            get_model_spec(name)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------------
# stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=None, metavar="NAME",
                        help="model to train (repeatable or comma-separated); 'all' = train.models (default)")
    parser.add_argument("--fold", type=int, action="append", default=None, metavar="K",
                        help="train only this fold (repeatable); the merge happens when every fold's part exists")
    parser.add_argument("--force", action="store_true", help="retrain folds that are already done")
    parser.add_argument("--no-tuned", dest="use_tuned", action="store_false", default=None,
                        help="ignore <work>/params/<model>.json written by `ichkit tune`")


def _score_line(scores: dict[str, float]) -> str:
    return (f"acc {scores['accuracy']:.3f}  bal_acc {scores['balanced_accuracy']:.3f}  "
            f"macro_f1 {scores['macro_f1']:.3f}  rsna_logloss {scores['rsna_logloss']:.4f}  any_auc {scores['any_auc']:.3f}")


def train_models(names: list[str], cfg: dict[str, Any], folds: list[int] | None = None, force: bool = False,
                 use_tuned: bool = True, progress: bool = True) -> dict[str, pd.DataFrame | None]:
    """Train `names` on `folds` (all by default); return each model's merged OOF frame (None if incomplete)."""
    from tqdm import tqdm

    from ichkit import oof
    from ichkit.models import get_model_spec

    work = Path(cfg["paths"]["work"])
    train_cfg = cfg.get("train", {})
    specs = [get_model_spec(n) for n in names]
    not_classical = [s.name for s in specs if s.family != "classical"]
    if not_classical:
        raise TrainError(f"models {not_classical} are not classical; train them with their family's stage")
    sets = tuple(dict.fromkeys(s for spec in specs for s in spec.features))
    data = load_train_data(cfg, sets, progress=progress)
    fold_ids = data.fold_ids if not folds else list(dict.fromkeys(folds))
    unknown = sorted(set(fold_ids) - set(data.fold_ids))
    if unknown:
        raise TrainError(f"folds {unknown} do not exist; folds.csv has {data.fold_ids}")
    merged: dict[str, pd.DataFrame | None] = {}
    bar = tqdm(total=len(specs) * len(fold_ids), desc="train", unit="fold", disable=not progress)
    for spec in specs:
        params, source = resolve_params(spec, cfg, use_tuned)
        tqdm.write(f"{spec.name}: {spec.description}; params from {source}: {json.dumps(params, sort_keys=True)}")
        for k in fold_ids:
            if oof.fold_done(work, spec.name, k) and not force:
                tqdm.write(f"{spec.name} fold {k}: done already (--force to retrain)")
                bar.update()
                continue
            result = run_fold(spec, params, data, k, train_cfg)
            oof.write_fold(work, spec.name, k, result.oof, result.test)
            save_fold_model(work, result.model)
            tqdm.write(f"{spec.name} fold {k}: {_score_line(result.scores)}  "
                       f"(n={len(result.oof)}, {result.seconds:.1f} s)")
            bar.update()
        missing = [k for k in data.fold_ids if not oof.fold_done(work, spec.name, k)]
        if missing:
            tqdm.write(f"{spec.name}: folds {missing} not trained yet; the merge runs once every fold's part exists")
            merged[spec.name] = None
            continue
        oof_frame, _ = oof.merge(work, spec.name, data.folds)
        tqdm.write(f"{spec.name} all folds (OOF): {_score_line(oof.score_oof(oof_frame, data.slices))}")
        merged[spec.name] = oof_frame
    bar.close()
    return merged


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from ichkit.features import FeatureError
    from ichkit.folds import FoldsError
    from ichkit.oof import OOFError

    use_tuned = bool(cfg.get("train", {}).get("use_tuned", True)) if args.use_tuned is None else args.use_tuned
    try:
        names = model_names(args.model or ["all"], cfg)
        if not names:
            raise TrainError("no models to train: pass --model NAME or set train.models")
        train_models(names, cfg, folds=args.fold, force=args.force, use_tuned=use_tuned)
    except (TrainError, FeatureError, FoldsError, OOFError, FileNotFoundError) as exc:
        print(f"ichkit train: error: {exc}", file=sys.stderr)
        return 1
    return 0
