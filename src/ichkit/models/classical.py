"""The classical model family: scikit-learn pipelines over the cached pixel and radiomic features.

Every model is ``Pipeline([("features", ColumnTransformer), ("clf", estimator)])`` fed a DataFrame whose
columns are the feature sets it names (`ichkit.features.load_features`). The ColumnTransformer picks the
columns of each set by name: pixel columns (``px_*``) go through PCA fitted on the training folds only,
radiomic columns through a StandardScaler for scale-sensitive models (linear, kernel, distance, QDA) and
untouched for trees. The final step is always named ``clf``, so `train` can pass balanced sample weights
as ``clf__sample_weight`` to every estimator that accepts them.

LightGBM and XGBoost are imported inside their factories, so registering the models stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ichkit.features import PIXEL_PREFIX
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
DEFAULT_PCA_COMPONENTS = 64

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


def _make_spec(name: str) -> ModelSpec:
    key, suffix = name.split("_", 1)
    factory, suggest, defaults, scale, whiten, what = ESTIMATORS[key]
    features = FEATURE_SETS_BY_SUFFIX[suffix]
    uses_pca = "pixels" in features
    all_defaults = {**defaults, **({"pca_components": DEFAULT_PCA_COMPONENTS} if uses_pca else {})}

    def build(params: Params, seed: int):
        from sklearn.pipeline import Pipeline

        p = {**all_defaults, **params}
        pre = preprocessor(features, scale=scale, pca_components=p.get("pca_components"), whiten=whiten, seed=seed)
        return Pipeline([("features", pre), ("clf", factory(p, seed))])

    def search(trial) -> Params:
        p = suggest(trial)
        if uses_pca:
            p["pca_components"] = trial.suggest_int("pca_components", 16, 128, step=16)
        return p

    fed = " + ".join(("PCA of " if f == "pixels" else "") + f for f in features)
    return ModelSpec(name=name, family="classical", features=features, build=build, suggest=search,
                     defaults=all_defaults, description=f"{what} on {fed} features")


for _name in MODEL_NAMES:
    register(_make_spec(_name))
