"""The model registry and every classical model: build, fit, 7-class probabilities, search spaces."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from ichkit.features import PIXEL_PREFIX
from ichkit.models import ModelSpec, get_model_spec, list_models, register
from ichkit.models.classical import MODEL_NAMES

N_CLASSES = 7
# keep the ensembles small so fitting every model stays fast
FAST = {"n_estimators": 20, "pca_components": 8}


def _toy_features(n_per_class: int = 12, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Pixel-like and radiomic-like columns whose class means differ, 7 classes."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(N_CLASSES), n_per_class)
    pixels = rng.integers(0, 256, size=(len(y), 3 * 4 * 4)).astype(np.float32)
    pixels[:, :N_CLASSES] += 60.0 * np.eye(N_CLASSES)[y]
    radiomic = rng.normal(size=(len(y), 10)).astype(np.float32)
    radiomic[:, :N_CLASSES] += 3.0 * np.eye(N_CLASSES)[y]
    cols = [f"{PIXEL_PREFIX}{i}" for i in range(pixels.shape[1])] + [f"r{i}" for i in range(radiomic.shape[1])]
    X = pd.DataFrame(np.hstack([pixels, radiomic]), columns=cols)
    order = rng.permutation(len(y))
    return X.iloc[order].reset_index(drop=True), y[order]


def _fast_params(spec: ModelSpec) -> dict:
    return spec.params({k: v for k, v in FAST.items() if k in spec.defaults})


def test_registry_lists_and_finds_models():
    names = list_models("classical")
    assert names == sorted(MODEL_NAMES)
    assert set(names) <= set(list_models())
    for expected in ("logreg_pixels", "logreg_radiomic", "lgbm_radiomic", "xgb_radiomic", "rf_radiomic",
                     "knn_pca_pixels", "tree_radiomic", "qda_radiomic", "svm_radiomic", "lgbm_both"):
        assert expected in names
    spec = get_model_spec("lgbm_both")
    assert spec.family == "classical" and spec.features == ("pixels", "radiomic")
    assert get_model_spec("logreg_pixels").features == ("pixels",)
    assert get_model_spec("knn_pca_pixels").features == ("pixels",)


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match="lgbm_radiomic"):
        get_model_spec("no_such_model")
    with pytest.raises(ValueError, match="classical"):
        list_models("no_such_family")
    with pytest.raises(ValueError, match="unknown params"):
        get_model_spec("logreg_radiomic").params({"num_leaves": 3})
    spec = get_model_spec("logreg_radiomic")
    with pytest.raises(ValueError, match="registered twice"):
        register(ModelSpec(name=spec.name, family="classical", features=spec.features, build=spec.build,
                           suggest=spec.suggest))


def test_defaults_are_read_only():
    spec = get_model_spec("lgbm_radiomic")
    with pytest.raises(TypeError):
        spec.defaults["num_leaves"] = 3  # type: ignore[index]
    assert spec.params({"num_leaves": 3})["num_leaves"] == 3 and spec.defaults["num_leaves"] != 3


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_fits_and_predicts_a_distribution(name):
    X, y = _toy_features()
    spec = get_model_spec(name)
    model = spec.build(_fast_params(spec), 0)
    assert model.steps[-1][0] == "clf"  # train passes clf__sample_weight
    half = len(y) // 2
    model.fit(X.iloc[:half], y[:half])
    p = model.predict_proba(X.iloc[half:])
    assert p.shape == (len(y) - half, N_CLASSES)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert (p >= 0).all()
    # the feature sets a model names are the ones it reads
    n_in = model.named_steps["features"].transform(X.iloc[:3]).shape[1]
    expected = (FAST["pca_components"] if "pixels" in spec.features else 0) + (10 if "radiomic" in spec.features else 0)
    assert n_in == expected


def test_radiomic_models_learn_the_toy_problem():
    X, y = _toy_features(n_per_class=30)
    for name in ("logreg_radiomic", "lgbm_radiomic", "svm_radiomic"):
        spec = get_model_spec(name)
        model = spec.build(_fast_params(spec), 0).fit(X.iloc[:150], y[:150])
        accuracy = (model.predict_proba(X.iloc[150:]).argmax(axis=1) == y[150:]).mean()
        assert accuracy > 0.8, f"{name}: accuracy {accuracy:.2f} on separable classes"


def test_logreg_one_vs_rest_scheme():
    from sklearn.multiclass import OneVsRestClassifier

    X, y = _toy_features()
    spec = get_model_spec("logreg_radiomic")
    model = spec.build(spec.params({"scheme": "ovr"}), 0).fit(X, y)
    assert isinstance(model.named_steps["clf"], OneVsRestClassifier)
    np.testing.assert_allclose(model.predict_proba(X).sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="scheme"):
        spec.build(spec.params({"scheme": "bogus"}), 0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_search_space_gives_buildable_params(name):
    spec = get_model_spec(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    suggested = spec.suggest(trial)
    assert suggested and set(suggested) <= set(spec.defaults)
    assert set(trial.params) == set(suggested)
    params = spec.params(suggested)  # unknown keys would raise
    deep = spec.build(params, 0).get_params(deep=True)
    # every suggested value reaches the pipeline (scheme picks the wrapper; pca_components is PCA's n_components)
    renamed = {"pca_components": "n_components"}
    for key, value in suggested.items():
        if key == "scheme":
            continue
        leaf = renamed.get(key, key)
        assert any(k.split("__")[-1] == leaf and v == value for k, v in deep.items()), \
            f"{name}: suggested {key}={value} does not reach the estimator"
