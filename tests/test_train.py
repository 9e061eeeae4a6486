"""Stages train and evaluate on a small synthetic work folder: OOF files, folds, skipping, tuned params."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichkit import evaluate, oof, train
from ichkit.engine.driver import fold_dir_of
from ichkit.features import ensure_features
from ichkit.labels import CLASS7_INDEX, RSNA_LABELS
from ichkit.models.classical import MODEL_FILE, balanced_resample, fit_balanced
from ichkit.models import ModelError
from ichkit.train import TrainError
from synthetic_ct import config_for, make_work

K = 3


@pytest.fixture(scope="module")
def base_work(tmp_path_factory) -> Path:
    """A prepared work folder with its features cached, built once and copied by each test."""
    work = tmp_path_factory.mktemp("base") / "work"
    slices, folds = make_work(work, patients_per_class=3, slices_per_patient=2, test_patients=2, k=K)
    ensure_features(work, slices["image_id"], config_for(work, folds), progress=False)
    return work


@pytest.fixture()
def work(base_work: Path, tmp_path: Path) -> tuple[Path, dict]:
    dst = tmp_path / "work"
    shutil.copytree(base_work, dst)
    return dst, config_for(dst, dst / "folds.csv")


def model_path(work: Path, model: str, fold: int) -> Path:
    return fold_dir_of(work, model, fold) / MODEL_FILE


def load_fold_model(work: Path, model: str, fold: int):
    import joblib

    return joblib.load(model_path(work, model, fold))


def run_stage(module, argv: list[str], cfg: dict) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv), cfg)


def test_oof_and_test_files_cover_every_image_once(work, capsys):
    wdir, cfg = work
    assert run_stage(train, ["--model", "logreg_radiomic"], cfg) == 0
    out = capsys.readouterr().out
    for k in range(K):
        assert f"logreg_radiomic fold {k}: acc" in out
    assert "logreg_radiomic all folds (OOF)" in out

    folds = pd.read_csv(wdir / "folds.csv")
    merged = pd.read_parquet(wdir / "oof" / "logreg_radiomic.parquet")
    assert list(merged.columns) == list(oof.OOF_COLUMNS)
    assert sorted(merged["image_id"]) == sorted(folds["image_id"]) and not merged["image_id"].duplicated().any()
    fold_of = dict(zip(folds["image_id"], folds["fold"]))
    assert (merged["fold"] == merged["image_id"].map(fold_of)).all()
    probs = merged[list(oof.PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    rsna = merged[list(oof.RSNA_COLUMNS)].to_numpy()
    assert ((rsna >= 0) & (rsna <= 1)).all() and (rsna[:, 1:] <= rsna[:, [0]] + 1e-9).all()  # subtype <= any

    table = pd.read_parquet(wdir / "table.parquet")
    test_ids = set(table.loc[table["split"] == "test", "image_id"])
    test = pd.read_parquet(wdir / "test" / "logreg_radiomic.parquet")
    assert set(test["image_id"]) == test_ids and len(test) == len(test_ids)
    for k in range(K):
        part = pd.read_parquet(wdir / "oof" / "logreg_radiomic" / f"fold{k}.parquet")
        assert set(part["image_id"]) == {i for i, f in fold_of.items() if f == k}


def test_saved_fold_model_reproduces_its_oof_rows(work):
    wdir, cfg = work
    assert run_stage(train, ["--model", "lgbm_radiomic", "--fold", "1"], cfg) == 0
    model = load_fold_model(wdir, "lgbm_radiomic", 1)
    part = pd.read_parquet(wdir / "oof" / "lgbm_radiomic" / "fold1.parquet")
    X = ensure_features(wdir, part["image_id"], cfg, sets=("radiomic",), progress=False)["radiomic"]
    p7, p6 = model.predict(X.astype(np.float32))
    np.testing.assert_allclose(p7, part[list(oof.PROB_COLUMNS)].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(p6, part[list(oof.RSNA_COLUMNS)].to_numpy(), atol=1e-6)


def test_single_folds_merge_when_all_parts_exist_and_reruns_skip(work, capsys):
    wdir, cfg = work
    merged = wdir / "oof" / "tree_radiomic.parquet"
    assert run_stage(train, ["--model", "tree_radiomic", "--fold", "0"], cfg) == 0
    assert oof.fold_done(wdir, "tree_radiomic", 0) and not oof.fold_done(wdir, "tree_radiomic", 1)
    assert not merged.exists()
    assert "folds [1, 2] not trained yet" in capsys.readouterr().out
    assert run_stage(train, ["--model", "tree_radiomic", "--fold", "1", "--fold", "2"], cfg) == 0
    assert merged.is_file()

    before = {k: model_path(wdir, "tree_radiomic", k).stat().st_mtime_ns for k in range(K)}
    assert run_stage(train, ["--model", "tree_radiomic"], cfg) == 0
    assert "fold 0: done already" in capsys.readouterr().out
    assert {k: model_path(wdir, "tree_radiomic", k).stat().st_mtime_ns for k in range(K)} == before
    assert run_stage(train, ["--model", "tree_radiomic", "--fold", "2", "--force"], cfg) == 0
    after = model_path(wdir, "tree_radiomic", 2).stat().st_mtime_ns
    assert after != before[2] and model_path(wdir, "tree_radiomic", 0).stat().st_mtime_ns == before[0]


def test_tuned_params_are_used_unless_disabled(work, capsys):
    wdir, cfg = work
    params_file = wdir / "params" / "logreg_radiomic.json"
    params_file.parent.mkdir(parents=True)
    params_file.write_text(json.dumps({"model": "logreg_radiomic", "params": {"C": 0.0123}}))
    assert run_stage(train, ["--model", "logreg_radiomic", "--fold", "0"], cfg) == 0
    assert f"tuned {params_file}" in capsys.readouterr().out
    assert load_fold_model(wdir, "logreg_radiomic", 0).params["C"] == 0.0123
    assert run_stage(train, ["--model", "logreg_radiomic", "--fold", "0", "--force", "--no-tuned"], cfg) == 0
    assert load_fold_model(wdir, "logreg_radiomic", 0).params["C"] == 1.0

    params_file.write_text("{not json")
    with pytest.raises(ValueError, match=str(params_file)):
        run_stage(train, ["--model", "logreg_radiomic", "--fold", "0", "--force"], cfg)


def test_binary_rsna_heads(work):
    wdir, cfg = work
    cfg["train"]["rsna_head"] = "binary"
    assert run_stage(train, ["--model", "logreg_radiomic", "--fold", "0"], cfg) == 0
    model = load_fold_model(wdir, "logreg_radiomic", 0)
    assert len(model.rsna_estimators) == len(RSNA_LABELS)
    part = pd.read_parquet(wdir / "oof" / "logreg_radiomic" / "fold0.parquet")
    p7 = part[list(oof.PROB_COLUMNS)].to_numpy()
    any_from_class7 = 1.0 - p7[:, CLASS7_INDEX["normal"]]
    assert not np.allclose(part["rsna_any"], any_from_class7)  # a separate head, not the 7-class mapping


def test_prior_correction_calibrates_the_rsna_columns(work):
    wdir, cfg = work
    assert run_stage(train, ["--model", "logreg_radiomic", "--fold", "0"], cfg) == 0
    model = load_fold_model(wdir, "logreg_radiomic", 0)
    part = pd.read_parquet(wdir / "oof" / "logreg_radiomic" / "fold0.parquet")
    p7 = part[list(oof.PROB_COLUMNS)].to_numpy()
    corrected = p7 * model.class_prior
    corrected /= corrected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(part["rsna_any"], 1.0 - corrected[:, CLASS7_INDEX["normal"]], atol=1e-9)


def test_bad_requests_fail_with_a_message(work):
    _, cfg = work
    with pytest.raises(ModelError, match="lgbm_radiomic"):
        run_stage(train, ["--model", "no_such_model"], cfg)
    with pytest.raises(TrainError, match=r"folds \[7\] do not exist"):
        run_stage(train, ["--model", "logreg_radiomic", "--fold", "7"], cfg)


def test_balanced_resample_equalises_classes():
    y = np.array([0] * 20 + [1] * 5 + [3] * 2)
    rows = balanced_resample(y, seed=0)
    assert set(range(len(y))) <= set(rows)  # every original row kept
    assert np.bincount(y[rows]).tolist() == [20, 20, 0, 20]


@pytest.mark.parametrize("name", ["logreg_radiomic", "knn_radiomic"])  # sample weights / resampling
def test_balancing_raises_minority_probability(name):
    from ichkit.models import get_model_spec

    rng = np.random.default_rng(0)

    def draw(n0: int, n1: int) -> tuple[pd.DataFrame, np.ndarray]:
        y = np.array([0] * n0 + [1] * n1)
        return pd.DataFrame({"a": rng.normal(size=len(y)) + 0.8 * y, "b": rng.normal(size=len(y))}), y

    X, y = draw(180, 20)
    X_new, _ = draw(100, 100)
    spec = get_model_spec(name)
    plain = fit_balanced(spec.build(spec.params(), 0), X, y, 0, "none")
    balanced = fit_balanced(spec.build(spec.params(), 0), X, y, 0, "balanced")
    assert balanced.predict_proba(X_new)[:, 1].mean() > plain.predict_proba(X_new)[:, 1].mean() + 0.1


def test_evaluate_ranks_models_and_radiomic_lgbm_beats_pixel_logreg(work, capsys):
    wdir, cfg = work
    assert run_stage(train, ["--model", "logreg_pixels,lgbm_radiomic"], cfg) == 0
    capsys.readouterr()
    assert run_stage(evaluate, [], cfg) == 0
    out = capsys.readouterr().out
    assert "confusion matrix of" in out
    table = pd.read_csv(wdir / "evaluation.csv", index_col="model")
    assert set(table.index) == {"logreg_pixels", "lgbm_radiomic"}
    assert table["balanced_accuracy"].is_monotonic_decreasing
    assert table.loc["lgbm_radiomic", "balanced_accuracy"] > table.loc["logreg_pixels", "balanced_accuracy"]
    assert "| lgbm_radiomic |" in (wdir / "evaluation.md").read_text()

    assert run_stage(evaluate, ["--sort", "rsna_logloss"], cfg) == 0
    assert pd.read_csv(wdir / "evaluation.csv", index_col="model")["rsna_logloss"].is_monotonic_increasing
    with pytest.raises(oof.OOFError, match="xgb_radiomic"):
        run_stage(evaluate, ["--models", "xgb_radiomic"], cfg)
