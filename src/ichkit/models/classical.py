"""The classical model family: scikit-learn pipelines over the cached pixel and radiomic features.

Every model is ``Pipeline([("features", ColumnTransformer), ("clf", estimator)])`` fed a DataFrame whose
columns are the feature sets it names (`ichkit.features.load_features`). The ColumnTransformer picks the
columns of each set by name: pixel columns (``px_*``) go through PCA fitted on the training folds only,
radiomic columns through a StandardScaler for scale-sensitive models (linear, kernel, distance, QDA) and
untouched for trees. The final step is always named ``clf``, so balanced sample weights go in as
``clf__sample_weight`` to every estimator that accepts them.

`ClassicalTrainer` is the family's `FoldTrainer` for the fold driver (`ichkit.engine.driver`). It fits on
every image of the training folds (train + inner valid, in folds.csv order: these estimators make no
choice that needs held-back images), with the class imbalance handled one way for every model: balanced
sample weights for estimators whose fit takes them, balanced resampling (oversampling every class to the
largest) for the others (kNN, QDA, one-vs-rest). The 6 RSNA probabilities follow `train.rsna_head`
(`ichkit.heads`); the class prior and multi share come from the training folds' labels only.

LightGBM and XGBoost are imported inside their factories, so registering the models stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from ichkit.engine.trainer import FoldContext, FoldTrainer
from ichkit.errors import IchkitError
from ichkit.features import PIXEL_PREFIX
from ichkit.files import atomic_path
from ichkit.labels import CLASSES7, RSNA_LABELS, SUBTYPES
from ichkit.models import ModelSpec, register

Params = dict[str, Any]


def preprocessor(features: tuple[str, ...], *, scale: bool, pca_components: int | None, whiten: bool, seed: int):
    """ColumnTransformer: pixels -> PCA (whitened or not), radiomic -> StandardScaler or passthrough."""
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    parts = []
    if "pixels" in features:
        pca = PCA(n_components=int(pca_components), whiten=whiten, svd_solver="auto", random_state=seed)
        parts.append(("pixels", pca, make_column_selector(pattern=f"^{PIXEL_PREFIX}")))
    if "radiomic" in features:
        parts.append(("radiomic", StandardScaler() if scale else "passthrough",
                      make_column_selector(pattern=f"^(?!{PIXEL_PREFIX})")))
    if not parts:
        raise ValueError(f"no known feature set in {features}")
    return ColumnTransformer(parts, remainder="drop")


# --------------------------------------------------------------------------------------------------
# estimators: (params, seed) -> unfitted classifier


def _logreg(p: Params, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    lr = LogisticRegression(C=p["C"], max_iter=p["max_iter"], random_state=seed)
    if p["scheme"] == "multinomial":  # lbfgs fits the softmax over all classes jointly
        return lr
    if p["scheme"] == "ovr":  # the reference paper: one binary model per class, scores normalised
        return OneVsRestClassifier(lr)
    raise ValueError(f"logreg scheme must be 'multinomial' or 'ovr', got {p['scheme']!r}")


def _knn(p: Params, seed: int):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=p["n_neighbors"], weights=p["weights"])


def _tree(p: Params, seed: int):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=p["max_depth"], min_samples_leaf=p["min_samples_leaf"],
                                  criterion=p["criterion"], random_state=seed)


def _forest(p: Params, seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=p["n_estimators"], max_features=p["max_features"],
                                  min_samples_leaf=p["min_samples_leaf"], n_jobs=p["n_jobs"], random_state=seed)


def _qda(p: Params, seed: int):
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    # Each class covariance is shrunk toward a scaled identity: the features are collinear and the rare
    # classes have fewer rows than features, so unregularised covariances are singular. scikit-learn's
    # `reg_param` does the same but only with the svd solver, which refuses classes with fewer rows than
    # features; the eigen solver's `shrinkage` (0..1) has no such limit.
    return QuadraticDiscriminantAnalysis(solver="eigen", shrinkage=p["shrinkage"])


def _svm(p: Params, seed: int):
    return PlattSVC(C=p["C"], gamma=p["gamma"], random_state=seed)


class PlattSVC(ClassifierMixin, BaseEstimator):
    """RBF SVC with Platt-scaled (sigmoid) probabilities over all classes.

    `SVC(probability=True)` is deprecated in scikit-learn 1.9 in favour of `CalibratedClassifierCV(SVC(),
    ensemble=False)`, whose stratified calibration folds need every class `cv` times; here the folds are
    capped by the rarest class, and a class with a single row (possible in a small training fold) falls
    back to calibrating on the training decision values instead of failing.
    """

    def __init__(self, C: float = 1.0, gamma: float | str = "scale", cv: int = 3, random_state: int | None = None):
        self.C = C
        self.gamma = gamma
        self.cv = cv
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> "PlattSVC":
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.frozen import FrozenEstimator
        from sklearn.svm import SVC

        svc = SVC(C=self.C, gamma=self.gamma, kernel="rbf", random_state=self.random_state)
        rarest = int(np.unique(y, return_counts=True)[1].min())
        if rarest >= 2:
            calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=min(self.cv, rarest), ensemble=False)
        else:
            calibrated = CalibratedClassifierCV(FrozenEstimator(svc.fit(X, y, sample_weight=sample_weight)),
                                                method="sigmoid")
        self.calibrated_ = calibrated.fit(X, y, sample_weight=sample_weight)
        self.classes_ = self.calibrated_.classes_
        return self

    def predict_proba(self, X):
        return self.calibrated_.predict_proba(X)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def _lgbm(p: Params, seed: int):
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=p["n_estimators"], learning_rate=p["learning_rate"],
                          num_leaves=p["num_leaves"], min_child_samples=p["min_child_samples"],
                          subsample=p["subsample"], subsample_freq=1, colsample_bytree=p["colsample_bytree"],
                          reg_lambda=p["reg_lambda"], n_jobs=p["n_jobs"], random_state=seed, verbose=-1)


def _xgb(p: Params, seed: int):
    from xgboost import XGBClassifier

    return XGBClassifier(n_estimators=p["n_estimators"], learning_rate=p["learning_rate"], max_depth=p["max_depth"],
                         min_child_weight=p["min_child_weight"], subsample=p["subsample"],
                         colsample_bytree=p["colsample_bytree"], reg_lambda=p["reg_lambda"], tree_method="hist",
                         n_jobs=p["n_jobs"], random_state=seed, verbosity=0)


# --------------------------------------------------------------------------------------------------
# search spaces: trial -> tunable params


def _suggest_logreg(t) -> Params:
    return {"C": t.suggest_float("C", 1e-3, 1e2, log=True), "scheme": t.suggest_categorical("scheme", ["multinomial", "ovr"])}


def _suggest_knn(t) -> Params:
    return {"n_neighbors": t.suggest_int("n_neighbors", 3, 60, log=True),
            "weights": t.suggest_categorical("weights", ["uniform", "distance"])}


def _suggest_tree(t) -> Params:
    return {"max_depth": t.suggest_int("max_depth", 2, 16), "min_samples_leaf": t.suggest_int("min_samples_leaf", 1, 50, log=True),
            "criterion": t.suggest_categorical("criterion", ["gini", "entropy"])}


def _suggest_forest(t) -> Params:
    return {"n_estimators": t.suggest_int("n_estimators", 100, 500, step=100),
            "max_features": t.suggest_float("max_features", 0.05, 0.8),
            "min_samples_leaf": t.suggest_int("min_samples_leaf", 1, 20, log=True)}


def _suggest_qda(t) -> Params:
    return {"shrinkage": t.suggest_float("shrinkage", 0.01, 1.0, log=True)}


def _suggest_svm(t) -> Params:
    return {"C": t.suggest_float("C", 0.1, 100.0, log=True), "gamma": t.suggest_float("gamma", 1e-3, 1.0, log=True)}


def _suggest_lgbm(t) -> Params:
    return {"n_estimators": t.suggest_int("n_estimators", 100, 600, step=50),
            "learning_rate": t.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "num_leaves": t.suggest_int("num_leaves", 7, 63, log=True),
            "min_child_samples": t.suggest_int("min_child_samples", 5, 60, log=True),
            "subsample": t.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": t.suggest_float("colsample_bytree", 0.3, 1.0),
            "reg_lambda": t.suggest_float("reg_lambda", 1e-3, 10.0, log=True)}


def _suggest_xgb(t) -> Params:
    return {"n_estimators": t.suggest_int("n_estimators", 100, 600, step=50),
            "learning_rate": t.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "max_depth": t.suggest_int("max_depth", 2, 8),
            "min_child_weight": t.suggest_float("min_child_weight", 0.5, 20.0, log=True),
            "subsample": t.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": t.suggest_float("colsample_bytree", 0.3, 1.0),
            "reg_lambda": t.suggest_float("reg_lambda", 1e-3, 10.0, log=True)}


# estimator key -> (factory, search space, defaults, scale the radiomic features?, whiten the PCA?, what it is)
ESTIMATORS: dict[str, tuple[Callable[[Params, int], Any], Callable[[Any], Params], Params, bool, bool, str]] = {
    "logreg": (_logreg, _suggest_logreg, {"C": 1.0, "scheme": "multinomial", "max_iter": 2000}, True, True,
               "logistic regression (multinomial, or the paper's one-vs-rest with scheme=ovr)"),
    "knn": (_knn, _suggest_knn, {"n_neighbors": 15, "weights": "distance"}, True, False, "k nearest neighbours"),
    "tree": (_tree, _suggest_tree, {"max_depth": 8, "min_samples_leaf": 5, "criterion": "gini"}, False, False,
             "decision tree"),
    "rf": (_forest, _suggest_forest, {"n_estimators": 300, "max_features": 0.3, "min_samples_leaf": 2, "n_jobs": 1},
           False, False, "random forest"),
    "qda": (_qda, _suggest_qda, {"shrinkage": 0.2}, True, True, "quadratic discriminant analysis"),
    "svm": (_svm, _suggest_svm, {"C": 3.0, "gamma": 0.02}, True, True, "RBF SVM with Platt-scaled probabilities"),
    "lgbm": (_lgbm, _suggest_lgbm, {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 10,
                                    "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 1.0, "n_jobs": 1},
             False, False, "LightGBM gradient-boosted trees"),
    "xgb": (_xgb, _suggest_xgb, {"n_estimators": 300, "learning_rate": 0.05, "max_depth": 4, "min_child_weight": 1.0,
                                 "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 1.0, "n_jobs": 1},
            False, False, "XGBoost gradient-boosted trees"),
}

FEATURE_SETS_BY_SUFFIX: dict[str, tuple[str, ...]] = {
    "pixels": ("pixels",), "pca_pixels": ("pixels",), "radiomic": ("radiomic",), "both": ("pixels", "radiomic"),
}

# every registered classical model: <estimator>_<feature suffix>
MODEL_NAMES: tuple[str, ...] = (
    "logreg_pixels", "logreg_radiomic", "logreg_both",
    "knn_pca_pixels", "knn_radiomic",
    "tree_pixels", "tree_radiomic",
    "rf_pixels", "rf_radiomic",
    "qda_pixels", "qda_radiomic",
    "svm_pixels", "svm_radiomic", "svm_both",
    "lgbm_radiomic", "lgbm_both",
    "xgb_radiomic", "xgb_both",
)


# --------------------------------------------------------------------------------------------------
# fitting one fold


CLASS_WEIGHTS: tuple[str, ...] = ("balanced", "none")


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
        raise ClassicalError(f"train.class_weight must be one of {CLASS_WEIGHTS}, got {class_weight!r}")
    if has_fit_parameter(estimator.steps[-1][1], "sample_weight"):
        return estimator.fit(X, y, clf__sample_weight=compute_sample_weight("balanced", y))
    rows = balanced_resample(y, seed)
    return estimator.fit(X.iloc[rows], y[rows])


class ClassicalError(IchkitError):
    """A classical model that cannot be fitted as configured."""


@dataclass
class FoldModel:
    """One fold's fitted model and everything needed to turn its output into the OOF contract columns."""

    name: str
    fold: int
    params: Params
    task: str
    classes: np.ndarray            # target values seen in training = the estimator's proba columns
    n_target: int                  # 7 (7class, 6class) or 2 (binary: any)
    estimator: Any
    target_prior: np.ndarray       # (n_target,) target frequencies of the training folds
    class_prior: np.ndarray        # (7,) class frequencies of the training folds
    multi_share: np.ndarray        # (5,) P(subtype | multi) of the training folds
    class_weight: str
    rsna_head: str
    rsna_estimators: list[Any] = field(default_factory=list)  # binary heads (RSNA_LABELS order)
    rsna_constants: dict[int, float] = field(default_factory=dict)  # label index -> constant prob

    def predict_target(self, X: pd.DataFrame) -> np.ndarray:
        p = np.zeros((len(X), self.n_target))
        if len(X):
            p[:, self.classes] = self.estimator.predict_proba(X)
        return p / p.sum(axis=1, keepdims=True).clip(min=1e-12)

    def predict_class7(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict(X)[0]

    def predict(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(p7 (n, 7), p6 (n, 6)) for the rows of X."""
        from ichkit.heads import class7_from_any, prior_correct, rsna_from_class7

        raw = corrected = self.predict_target(X)
        if self.rsna_head == "prior_corrected" and self.class_weight == "balanced":
            corrected = prior_correct(raw, self.target_prior)
        if self.task == "binary":
            p7, base = class7_from_any(raw[:, 1], self.class_prior), class7_from_any(corrected[:, 1], self.class_prior)
        else:
            p7, base = raw, corrected
        if self.rsna_head != "binary":
            return p7, rsna_from_class7(base, self.multi_share)
        p6 = np.zeros((len(X), len(RSNA_LABELS)))
        for j in range(len(RSNA_LABELS)):
            if j in self.rsna_constants:
                p6[:, j] = self.rsna_constants[j]
            elif len(X):
                p6[:, j] = self.rsna_estimators[j].predict_proba(X)[:, 1]
        return p7, p6


def _cap_pca(params: Params, n_rows: int, n_pixel_columns: int) -> Params:
    """PCA cannot have more components than training rows or pixel columns."""
    if "pca_components" not in params:
        return params
    cap = max(1, min(n_rows - 1, n_pixel_columns))
    if params["pca_components"] > cap:
        return {**params, "pca_components": cap}
    return params


def fit_fold_model(spec: ModelSpec, params: Params, X: pd.DataFrame, labels: pd.DataFrame, fold: int, seed: int,
                   class_weight: str, rsna_head: str, task: str = "7class") -> FoldModel:
    """Fit `spec` with `params` on the rows of X / labels (the training folds of `fold`) for `task`."""
    from ichkit.engine.tasks import task_target
    from ichkit.heads import check_head, class_prior, multi_share_from_labels

    check_head(rsna_head)
    params = _cap_pca(params, len(X), int(X.columns.str.startswith(PIXEL_PREFIX).sum()))
    y = task_target(labels, task)
    n_target = 2 if task == "binary" else len(CLASSES7)
    present = np.unique(y)
    # estimators see contiguous labels 0..m-1 (XGBoost requires it when a class is absent from the fold)
    y_encoded = np.searchsorted(present, y)
    estimator = fit_balanced(spec.build(params, seed), X, y_encoded, seed, class_weight)
    model = FoldModel(name=spec.name, fold=fold, params=params, task=task, classes=present, n_target=n_target,
                      estimator=estimator, target_prior=np.bincount(y, minlength=n_target) / len(y),
                      class_prior=class_prior(labels["y7"].to_numpy()),
                      multi_share=multi_share_from_labels(labels[list(SUBTYPES)]),
                      class_weight=class_weight, rsna_head=rsna_head)
    if rsna_head == "binary":
        for j, label in enumerate(RSNA_LABELS):
            yj = labels[label].to_numpy()
            if yj.min() == yj.max():  # a label the fold never (or always) has: a smoothed constant
                model.rsna_constants[j] = float((yj.sum() + 0.5) / (len(yj) + 1.0))
                model.rsna_estimators.append(None)
            else:
                model.rsna_estimators.append(spec.build(params, seed).fit(X, yj))
    return model


def compute_features(cfg: dict[str, Any], image_ids: list[str], feature_sets: tuple[str, ...], progress: bool) -> None:
    """Driver-side setup: compute (or find cached) every feature set the requested models read, once."""
    from ichkit.features import ensure_features

    ensure_features(cfg["paths"]["work"], image_ids, cfg, feature_sets, progress=progress)


MODEL_FILE = "model.joblib"


class ClassicalTrainer(FoldTrainer):
    """The classical family's FoldTrainer: a `FoldModel` fitted on the cached features."""

    code_version = "1"

    def __init__(self, spec: ModelSpec, params: Params, ctx: FoldContext) -> None:
        self.spec, self.params, self.ctx = spec, dict(params), ctx
        self.model: FoldModel | None = None

    def _features(self, ids: list[str]) -> pd.DataFrame:
        from ichkit.features import load_features

        return load_features(self.ctx.work, ids, self.ctx.cfg, self.spec.features, progress=False)

    def fit(self, train_ids: list[str], valid_ids: list[str], fold_dir: Path, resume: bool) -> None:
        import time

        t0 = time.perf_counter()
        # train + valid in folds.csv order (ctx.labels' order): no early stopping or thresholds to choose here
        labels = self.ctx.labels.loc[self.ctx.labels.index.isin(set(train_ids) | set(valid_ids))]
        o = self.ctx.options
        self.model = fit_fold_model(self.spec, self.params, self._features(list(labels.index)), labels,
                                    self.ctx.fold, self.ctx.seed, str(o["class_weight"]), str(o["rsna_head"]),
                                    self.ctx.task)
        log = pd.DataFrame([{"n_train": len(labels), "seconds": round(time.perf_counter() - t0, 3)}])
        with atomic_path(Path(fold_dir) / "log.csv") as tmp:
            log.to_csv(tmp, index=False)

    def predict(self, ids: list[str]) -> pd.DataFrame:
        from ichkit.oof import predictions_frame

        if self.model is None:
            raise ClassicalError(f"model {self.spec.name} fold {self.ctx.fold}: predict before fit")
        p7, p6 = self.model.predict(self._features(list(ids)))
        return predictions_frame(list(ids), self.ctx.fold, p7, p6)

    def save(self, fold_dir: Path) -> None:
        import joblib

        with atomic_path(Path(fold_dir) / MODEL_FILE) as tmp:
            joblib.dump(self.model, tmp)

    @classmethod
    def load(cls, fold_dir: Path, ctx: FoldContext) -> "ClassicalTrainer":
        import joblib

        from ichkit.models import get_model_spec

        path = Path(fold_dir) / MODEL_FILE
        if not path.is_file():
            raise ClassicalError(f"{path} not found: run `ichkit train --model {ctx.model} --fold {ctx.fold}`")
        model = joblib.load(path)
        trainer = cls(get_model_spec(ctx.model), model.params, ctx)
        trainer.model = model
        return trainer


def _make_spec(name: str) -> ModelSpec:
    key, suffix = name.split("_", 1)
    factory, suggest, defaults, scale, whiten, what = ESTIMATORS[key]
    features = FEATURE_SETS_BY_SUFFIX[suffix]
    uses_pca = "pixels" in features
    # pca_components: None here, filled from features.pca_components (default.yaml) by resolve_params
    all_defaults = {**defaults, **({"pca_components": None} if uses_pca else {})}

    def build(params: Params, seed: int):
        from sklearn.pipeline import Pipeline

        p = {**all_defaults, **params}
        if uses_pca and p.get("pca_components") is None:
            raise ValueError(f"model {name}: pca_components is not set (features.pca_components in the config)")
        pre = preprocessor(features, scale=scale, pca_components=p.get("pca_components"), whiten=whiten, seed=seed)
        return Pipeline([("features", pre), ("clf", factory(p, seed))])

    def search(trial) -> Params:
        p = suggest(trial)
        if uses_pca:
            p["pca_components"] = trial.suggest_int("pca_components", 16, 128, step=16)
        return p

    fed = " + ".join(("PCA of " if f == "pixels" else "") + f for f in features)
    return ModelSpec(name=name, family="classical", features=features, build=build, suggest=search,
                     defaults=all_defaults, description=f"{what} on {fed} features", trainer=ClassicalTrainer,
                     num_cpus=1.0, setup=compute_features)


for _name in MODEL_NAMES:
    register(_make_spec(_name))
