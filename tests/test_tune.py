"""Stage tune: resumable Optuna studies, concurrent workers on one SQLite study, params used by train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from ichkit.features import ensure_features
from ichkit.train import load_fold_trainer, train_models
from ichkit.tune import redact, storage_url, tune_model
from synthetic_ct import config_for, make_work

MODEL = "tree_radiomic"  # the fastest model to fit: the tests are about the study, not the model


@pytest.fixture()
def work(tmp_path: Path) -> tuple[Path, dict]:
    wdir = tmp_path / "work"
    slices, folds = make_work(wdir, patients_per_class=2, slices_per_patient=2, test_patients=1, k=2)
    cfg = config_for(wdir, folds)
    ensure_features(wdir, slices["image_id"], cfg, progress=False)
    return wdir, cfg


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def test_tuning_resumes_the_study_and_train_uses_the_best_params(work, capsys):
    wdir, cfg = work
    study, params_file = tune_model(MODEL, cfg, n_trials=3, progress=False)
    url = storage_url(cfg)
    assert url == f"sqlite:///{wdir.resolve() / 'optuna.db'}"
    assert len(_trials(url, MODEL)) == 3
    tune_model(MODEL, cfg, n_trials=2, progress=False)
    trials = _trials(url, MODEL)
    assert len(trials) == 5 and sorted(t.number for t in trials) == list(range(5))
    assert "3 trials so far" in capsys.readouterr().out

    saved = json.loads(params_file.read_text())
    best = optuna.load_study(study_name=MODEL, storage=url).best_trial
    assert saved["trial"] == best.number and saved["rsna_logloss"] == pytest.approx(best.value)
    assert saved["params"] == best.params  # only the searched params, so config overrides still apply
    train_models([MODEL], cfg, folds=[0], progress=False)
    fitted = load_fold_trainer(cfg, MODEL, 0).model
    assert {k: fitted.params[k] for k in saved["params"]} == saved["params"]


def test_trials_are_pruned_on_the_fold_reports(work):
    wdir, cfg = work
    cfg["tune"]["startup_trials"] = 1
    cfg["tune"]["warmup_folds"] = 0
    study, _ = tune_model(MODEL, cfg, n_trials=8, progress=False)
    states = [t.state for t in study.trials]
    # the pruner must actually stop trials on their first fold's report (a broken report never prunes)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and states.count(optuna.trial.TrialState.COMPLETE) >= 1
    assert all(set(t.intermediate_values) == {0} for t in pruned)
    for t in study.trials:
        assert set(t.intermediate_values) <= {0, 1}  # one report per fold (k = 2)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(sum(t.user_attrs["fold_rsna_logloss"]) / 2)
            assert t.intermediate_values[1] == pytest.approx(t.value)


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """A throwaway PostgreSQL server (initdb + pg_ctl in a temp folder, a free port), like a shared study
    server for several tuning machines. Skipped where the PostgreSQL server binaries are not installed."""
    import shutil
    import socket
    import tempfile

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
    # not under pytest's tmp folder: that is private to this user, and the server may run as another
    root = Path(tempfile.mkdtemp(prefix="ichkit-pg-"))
    data = root / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # PostgreSQL refuses to run as root: run the server as the `postgres` system user where we are root
    as_user = ["su", "postgres", "-c"] if os.geteuid() == 0 else ["sh", "-c"]
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")

    def sh(cmd: str) -> None:
        subprocess.run([*as_user, cmd], check=True, capture_output=True, timeout=60)

    sh(f"{initdb} -D {data} -A trust -U postgres")
    sh(f"{pg_ctl} -D {data} -o '-p {port} -k {root} -c listen_addresses=127.0.0.1' -l {root / 'log'} -w start")
    sh(f"psql -h 127.0.0.1 -p {port} -U postgres -c 'create database optuna'")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        sh(f"{pg_ctl} -D {data} -m immediate stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_share_one_study(work, backend, request):
    wdir, cfg = work
    folds = cfg["paths"]["folds"]
    storage = [] if backend == "sqlite" else ["--storage", request.getfixturevalue("postgres_url")]
    url = storage_url(cfg) if backend == "sqlite" else storage[1]
    requested = (3, 4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ichkit", "tune", "--work", str(wdir), "--set", f"paths.folds={folds}",
             "--model", MODEL, "--trials", str(n), "--seed", str(seed), *storage],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for seed, n in enumerate(requested)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    trials = _trials(url, MODEL)
    numbers = [t.number for t in trials]
    assert len(trials) == sum(requested)
    assert sorted(numbers) == list(range(sum(requested)))  # every trial recorded exactly once
    assert all(t.state.is_finished() for t in trials)
    assert all(t.state != optuna.trial.TrialState.FAIL for t in trials)
    assert (wdir / "params" / f"{MODEL}.json").is_file()


def test_bad_requests_and_redaction(work, capsys):
    wdir, cfg = work
    from ichkit.tune import TuneError

    with pytest.raises(TuneError, match="at least 1"):
        tune_model(MODEL, cfg, n_trials=0, progress=False)
    from ichkit.models import ModelError

    with pytest.raises(ModelError, match="lgbm_radiomic"):
        tune_model("no_such_model", cfg, n_trials=1, progress=False)
    assert redact("postgresql://ich:secret@db.example/optuna") == "postgresql://ich:***@db.example/optuna"
    assert storage_url(cfg, "postgresql://u:p@h/db") == "postgresql://u:p@h/db"
