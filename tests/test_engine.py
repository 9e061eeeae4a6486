"""The fold driver: fingerprints, leak-free inner validation, resume after SIGKILL, task variants."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine_doubles import register_doubles
from ichkit import evaluate, oof
from ichkit.engine.driver import fold_dir_of, make_plan, train_models
from ichkit.engine.tasks import run_name, split_run_name
from ichkit.engine.validation import inner_split
from ichkit.features import ensure_features
from ichkit.labels import CLASS7_INDEX, CLASSES7
from synthetic_ct import config_for, make_work

K = 3
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def base_work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("engine") / "work"
    slices, folds = make_work(work, patients_per_class=3, slices_per_patient=2, test_patients=2, k=K)
    ensure_features(work, slices["image_id"], config_for(work, folds), sets=("radiomic",), progress=False)
    return work


@pytest.fixture()
def work(base_work: Path, tmp_path: Path) -> tuple[Path, dict]:
    dst = tmp_path / "work"
    shutil.copytree(base_work, dst)
    register_doubles()
    return dst, config_for(dst, dst / "folds.csv")


def part_mtimes(wdir: Path, run: str) -> dict[int, int]:
    return {k: oof.fold_part_paths(wdir, run, k)[0].stat().st_mtime_ns for k in range(K)}


# --------------------------------------------------------------------------------------------------
# fingerprints


def test_fingerprints_retrain_exactly_what_changed(work, capsys):
    wdir, cfg = work
    models = ["tree_radiomic", "memorise"]
    train_models(models, cfg, progress=False)
    before = {m: part_mtimes(wdir, m) for m in models}
    fp = json.loads((fold_dir_of(wdir, "tree_radiomic", 0) / "fingerprint.json").read_text())
    assert fp["params"]["max_depth"] == 8 and fp["settings"]["task"] == "7class" and fp["folds"]
    capsys.readouterr()

    train_models(models, cfg, progress=False)  # unchanged: nothing trains
    out = capsys.readouterr().out
    assert out.count("done already") == 2 * K and "acc " not in out.split("all folds")[0]
    assert {m: part_mtimes(wdir, m) for m in models} == before

    cfg["models"] = {"tree_radiomic": {"max_depth": 3}}  # one model's param: only that model retrains
    train_models(models, cfg, progress=False)
    out = capsys.readouterr().out
    assert out.count("tree_radiomic fold 0: retraining, its fingerprint changed: params.max_depth: 8 -> 3") == 1
    assert part_mtimes(wdir, "memorise") == before["memorise"]
    assert all(part_mtimes(wdir, "tree_radiomic")[k] != before["tree_radiomic"][k] for k in range(K))

    # other folds: evaluate refuses the stale merged OOF, and a re-run retrains every model's every fold
    folds = pd.read_csv(wdir / "folds.csv")
    patients = sorted(folds["patient_id"].unique())
    folds["fold"] = folds["patient_id"].map({p: (i + 1) % K for i, p in enumerate(patients)})
    folds.to_csv(wdir / "folds.csv", index=False)
    with pytest.raises(oof.OOFError, match="stale"):
        evaluate.evaluate_models(wdir, make_plan(cfg).slices, folds_file=wdir / "folds.csv")
    capsys.readouterr()
    train_models(models, cfg, progress=False)
    out = capsys.readouterr().out
    assert out.count("its fingerprint changed: folds:") == 2 * K
    table = evaluate.evaluate_models(wdir, make_plan(cfg).slices, folds_file=wdir / "folds.csv")
    assert set(table.index) == set(models)


# --------------------------------------------------------------------------------------------------
# inner validation and leaks


def _prior_level_logloss(plan) -> float:
    """The 7-class log loss of predicting each fold's training prior: what an honest memoriser scores."""
    losses = []
    for k in plan.fold_ids:
        train = plan.labels[plan.labels["fold"] != k]
        held = plan.labels[plan.labels["fold"] == k]
        prior = np.bincount(train["y7"], minlength=len(CLASSES7)) / len(train)
        losses += list(-np.log(np.clip(prior[held["y7"].to_numpy()], 1e-15, 1)))
    return float(np.mean(losses))


def _logloss7(frame: pd.DataFrame, plan) -> float:
    y = plan.labels.loc[frame["image_id"].astype(str), "y7"].to_numpy()
    p = frame[list(oof.PROB_COLUMNS)].to_numpy()
    return float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1))))


def test_inner_split_is_patient_grouped_inside_the_training_folds(work):
    _, cfg = work
    plan = make_plan(cfg)
    for k in plan.fold_ids:
        train_ids, valid_ids, held = plan.split(k)
        assert valid_ids and not set(valid_ids) & set(train_ids) and not (set(valid_ids) | set(train_ids)) & set(held)
        patients = plan.labels["patient_id"]
        assert not set(patients[valid_ids]) & set(patients[train_ids])
        assert set(plan.labels.index[plan.labels["fold"] != k]) == set(train_ids) | set(valid_ids)
    ids = np.array([f"i{n}" for n in range(40)])
    assert inner_split(ids, np.repeat(np.arange(10), 4), np.zeros(40, int), 0.0, 0) == (list(ids), [])


def test_a_memorising_trainer_scores_at_the_prior_level_out_of_fold(work):
    wdir, cfg = work
    plan = make_plan(cfg)
    merged = train_models(["memorise"], cfg, progress=False)["memorise"]
    level = _prior_level_logloss(plan)
    assert _logloss7(merged, plan) == pytest.approx(level, rel=1e-9)
    # the planted leak works where it should: on its own training images it is certain
    from ichkit.engine.driver import run_unit, UnitJob
    from ichkit.models import get_model_spec

    spec = get_model_spec("memorise")
    train_ids, valid_ids, _ = plan.split(0)
    job = UnitJob(spec=spec, params={}, ctx=plan.context(spec, 0, train_ids, valid_ids, False), run="memorise",
                  train_ids=train_ids, valid_ids=valid_ids, heldout_ids=train_ids, test_ids=[], fingerprint={},
                  fold_dir=wdir / "scratch", resume=False)
    assert _logloss7(run_unit(job).oof, plan) < 1e-9


def test_tune_sees_no_held_out_labels(work):
    import optuna

    from ichkit.tune import tune_model

    _, cfg = work
    study, _ = tune_model("memorise", cfg, n_trials=2, progress=False)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # a leak would give the memoriser a near-zero RSNA log loss; honest, it is far from it
    from ichkit.engine.driver import evaluate_params
    from ichkit.models import get_model_spec

    plan = make_plan(cfg)
    honest = np.mean([evaluate_params(get_model_spec("memorise"), {"smoothing": 0.0}, plan, k)["rsna_logloss"]
                      for k in plan.fold_ids])
    assert complete and all(t.value == pytest.approx(honest) for t in complete) and honest > 0.2


def test_a_prior_shift_only_in_the_held_out_fold_is_not_learned(work):
    wdir, cfg = work
    # every normal patient in fold 0: the training folds of fold 0 hold no normal slice at all
    folds = pd.read_csv(wdir / "folds.csv")
    normal = folds["patient_id"].str.startswith("P_normal")
    folds.loc[normal, "fold"] = 0
    folds.to_csv(wdir / "folds.csv", index=False)
    plan = make_plan(cfg)
    train_models(["memorise", "logreg_radiomic"], cfg, folds=[0], progress=False)
    part = pd.read_parquet(oof.fold_part_paths(wdir, "memorise", 0)[0])
    assert (part["prob_normal"] == 0).all()  # the prior of folds 1, 2 only
    import joblib

    fitted = joblib.load(fold_dir_of(wdir, "logreg_radiomic", 0) / "model.joblib")
    train = plan.labels[plan.labels["fold"] != 0]
    np.testing.assert_allclose(fitted.class_prior, np.bincount(train["y7"], minlength=7) / len(train))
    assert fitted.class_prior[CLASS7_INDEX["normal"]] == 0


# --------------------------------------------------------------------------------------------------
# resume inside a fold


def test_a_fold_killed_mid_run_resumes_from_its_checkpoint(work, capsys):
    wdir, cfg = work
    cfg_file = wdir.parent / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    script = ("import json, sys; from engine_doubles import register_doubles; register_doubles(); "
              "from ichkit.engine.driver import train_models; "
              "train_models(['epochs'], json.load(open(sys.argv[1])), folds=[0], progress=False)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    latest = fold_dir_of(wdir, "epochs", 0) / "latest.json"
    proc = subprocess.Popen([sys.executable, "-c", script, str(cfg_file)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if json.loads(latest.read_text())["epoch"] >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = json.loads(latest.read_text())["epoch"]
    assert 2 <= killed_at < 6 and not oof.fold_done(wdir, "epochs", 0)

    capsys.readouterr()
    train_models(["epochs"], cfg, folds=[0], progress=False)  # the next run, here in-process
    assert "epochs fold 0: resuming the interrupted run" in capsys.readouterr().out
    log = pd.read_csv(fold_dir_of(wdir, "epochs", 0) / "log.csv", header=None, names=["epoch", "draw", "resumed"])
    assert log["epoch"].tolist() == list(range(1, 7))  # no epoch repeated, none skipped
    assert log.loc[log["epoch"] > killed_at, "resumed"].eq(1).all() and log.loc[log["epoch"] <= killed_at, "resumed"].eq(0).all()
    rng = np.random.default_rng(cfg["train"]["seed"])  # the RNG continued where the checkpoint left it
    np.testing.assert_allclose(log["draw"], [rng.random() for _ in range(6)], atol=1e-11)
    assert oof.fold_done(wdir, "epochs", 0) and (fold_dir_of(wdir, "epochs", 0) / "fingerprint.json").is_file()


# --------------------------------------------------------------------------------------------------
# tasks


def test_tasks_keep_their_outputs_apart(work):
    wdir, cfg = work
    cfg["train"]["rsna_head"] = "class7"  # rsna_any is then exactly the binary model's p(any)
    out = {t: train_models(["logreg_radiomic"], cfg, task=t, progress=False) for t in ("6class", "binary")}
    six = out["6class"][run_name("logreg_radiomic", "6class")]
    plan = make_plan(cfg)
    multi = set(plan.labels.index[plan.labels["y7"] == CLASS7_INDEX["multi"]])
    assert len(six) == len(plan.labels) - len(multi) and not set(six["image_id"]) & multi
    assert (six["prob_multi"] == 0).all()
    binary = out["binary"]["logreg_radiomic.binary"]
    assert len(binary) == len(plan.labels)
    np.testing.assert_allclose(binary["rsna_any"], 1 - binary["prob_normal"], atol=1e-9)
    assert split_run_name("logreg_radiomic.binary") == ("logreg_radiomic", "binary")
    assert not (wdir / "oof" / "logreg_radiomic.parquet").exists()  # the 7class outputs are untouched
    table = evaluate.evaluate_models(wdir, plan.slices, folds_file=wdir / "folds.csv")
    assert table["task"].tolist() == ["6class", "binary"]
    assert np.isnan(table.loc["logreg_radiomic.binary", "balanced_accuracy"])
    assert table.loc["logreg_radiomic.binary", "any_auc"] > 0.8


# --------------------------------------------------------------------------------------------------
# Ray


def test_ray_executor_gives_the_local_oof_and_no_leak(work, tmp_path, monkeypatch):
    """Classical models and the memoriser through a local Ray instance (2 CPUs): the OOF equals the local
    executor's exactly, the fold folders come back to the driver's work folder, and nothing leaks."""
    ray = pytest.importorskip("ray")
    wdir, cfg = work
    models = ["tree_radiomic", "memorise"]
    local = train_models(models, cfg, progress=False)
    local_dir = tmp_path / "local"
    shutil.copytree(wdir / "oof", local_dir / "oof")
    shutil.rmtree(wdir / "oof"), shutil.rmtree(wdir / "test"), shutil.rmtree(wdir / "models")
    # the workers import the test doubles like the driver does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = train_models(models, cfg, executor="ray", progress=False)
    finally:
        ray.shutdown()
    for m in models:
        pd.testing.assert_frame_equal(remote[m], local[m])
        for k in range(K):
            pd.testing.assert_frame_equal(pd.read_parquet(oof.fold_part_paths(wdir, m, k)[0]),
                                          pd.read_parquet(local_dir / "oof" / m / f"fold{k}.parquet"))
            assert (fold_dir_of(wdir, m, k) / "fingerprint.json").is_file()
    assert (fold_dir_of(wdir, "tree_radiomic", 0) / "model.joblib").is_file()
    assert _logloss7(remote["memorise"], make_plan(cfg)) == pytest.approx(_prior_level_logloss(make_plan(cfg)))
