"""Stage `tune`: Optuna search of a model's parameters, minimising the fold-CV RSNA log loss.

``ichkit tune --model NAME --trials N [--storage URL] [--study NAME] [--seed S]``

Each trial draws parameters from the model's search space (`ModelSpec.suggest`), trains fold by fold
exactly as `ichkit train` does (same imbalance handling and RSNA head), and reports the running mean of
the held-out folds' RSNA log loss after each fold, so the MedianPruner stops a hopeless trial early.
The study lives in ``sqlite:///<work>/optuna.db`` unless ``--storage`` / ``tune.storage`` names another
database (``postgresql://user:pass@host/db`` for workers on several machines); it is resumed when it
exists, so repeated or concurrent calls add trials to one study. The best trial's parameters are written
to ``<work>/params/<model>.json``, which `ichkit train` then uses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ichkit.files import write_text_atomic
from ichkit.errors import IchkitError

# SQLite serialises writers with a file lock; concurrent workers wait this long for it instead of failing
SQLITE_LOCK_TIMEOUT_S = 120


class TuneError(IchkitError):
    """A tuning request that cannot run; the message says what to do."""


def storage_url(cfg: dict[str, Any], override: str | None = None) -> str:
    """--storage, else tune.storage, else an SQLite file in the work folder."""
    url = override or cfg.get("tune", {}).get("storage")
    if url:
        return str(url)
    work = Path(cfg["paths"]["work"]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{work / 'optuna.db'}"


def redact(url: str) -> str:
    """The URL with any password hidden, for logs and the params file."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (Optuna also accepts storage objects); print it as is
        return url


def open_storage(url: str, attempts: int = 5):
    """An Optuna RDB storage; SQLite gets a lock timeout so parallel workers queue instead of failing.

    Workers started together on a new database race to create its tables ("table studies already
    exists"); the loser retries, and by then the schema is there.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}} if url.startswith("sqlite") else {}
    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (OperationalError, IntegrityError) as exc:
            if isinstance(exc, OperationalError) and "already exists" not in str(exc):
                raise
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def open_study(name: str, storage, seed: int, startup_trials: int = 5, warmup_folds: int = 1):
    """Create the study or load it if it exists (resumable, shared by concurrent workers)."""
    import optuna

    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_folds),
        direction="minimize",
        load_if_exists=True,
    )


def make_objective(spec, plan, base_params: dict[str, Any]):
    """Objective: mean over folds of the held-out RSNA log loss, reported fold by fold for pruning.

    Each fold runs through the fold driver's unit (`ichkit.engine.driver.evaluate_params`), exactly as
    `ichkit train` fits it (inner validation split, imbalance handling, RSNA head)."""
    import optuna

    from ichkit.engine.driver import evaluate_params

    def objective(trial: optuna.Trial) -> float:
        suggested = spec.suggest(trial)
        trial.set_user_attr("suggested", suggested)
        params = spec.params(base_params, suggested)
        losses, balanced = [], []
        for step, fold in enumerate(plan.fold_ids):
            scores = evaluate_params(spec, params, plan, fold)
            losses.append(scores["rsna_logloss"])
            balanced.append(scores["balanced_accuracy"])
            trial.report(float(np.mean(losses)), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"fold {fold}: mean RSNA log loss {np.mean(losses):.4f} above the median")
        trial.set_user_attr("fold_rsna_logloss", [float(v) for v in losses])
        trial.set_user_attr("balanced_accuracy", float(np.nanmean(balanced)))
        return float(np.mean(losses))

    return objective


def write_best_params(work: Path | str, model: str, study, storage: str) -> Path:
    """Save the best finished trial's suggested parameters where `ichkit train` looks for them."""
    from ichkit.engine.params import params_path

    best = study.best_trial
    path = params_path(work, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {
        "model": model,
        "params": best.user_attrs.get("suggested", best.params),
        "rsna_logloss": best.value,
        "balanced_accuracy": best.user_attrs.get("balanced_accuracy"),
        "trial": best.number,
        "study": study.study_name,
        "storage": redact(storage),
        "n_trials": len(study.trials),
    }
    write_text_atomic(path, json.dumps(saved, indent=2) + "\n")
    return path


def tune_model(model: str, cfg: dict[str, Any], n_trials: int, storage: str | None = None,
               study_name: str | None = None, seed: int | None = None, progress: bool = True,
               task: str | None = None):
    """Run `n_trials` more trials of `model`'s study; save and return (study, params file)."""
    import optuna
    from tqdm import tqdm

    from ichkit.engine.driver import _setup, make_plan
    from ichkit.engine.params import resolve_params
    from ichkit.models import get_model_spec

    if n_trials < 1:
        raise TuneError(f"--trials must be at least 1, got {n_trials}")
    spec = get_model_spec(model)
    if spec.suggest is None:
        raise TuneError(f"model {model} has no search space (its ModelSpec.suggest is not set)")
    tune_cfg = cfg["tune"]
    if seed is None:
        seed = tune_cfg["seed"]
    if seed is None:
        seed = int(cfg["train"]["seed"])
    url = storage_url(cfg, storage)
    work = Path(cfg["paths"]["work"])
    plan = make_plan(cfg, task)
    _setup([spec], plan, progress)
    # tuning starts from the defaults and config overrides, never from an earlier tuning result
    base_params, _ = resolve_params(spec, cfg, use_tuned=False)
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial below instead of Optuna's log
    try:
        study = open_study(study_name or model, open_storage(url), int(seed),
                           int(tune_cfg["startup_trials"]), int(tune_cfg["warmup_folds"]))
        print(f"study {study.study_name} in {redact(url)}: {len(study.trials)} trials so far; running {n_trials} "
              f"more (sampler seed {seed}, {len(plan.fold_ids)} folds, {len(plan.task_labels)} training images)")
        with tqdm(total=n_trials, desc=f"tune {model}", unit="trial", disable=not progress) as bar:

            def report(study_, trial) -> None:
                if trial.state == optuna.trial.TrialState.COMPLETE:
                    what = f"rsna_logloss {trial.value:.4f}"
                else:
                    what = trial.state.name.lower()
                suggested = trial.user_attrs.get("suggested", trial.params)
                tqdm.write(f"trial {trial.number}: {what}  {json.dumps(suggested)}")
                bar.update()

            study.optimize(make_objective(spec, plan, base_params), n_trials=n_trials, callbacks=[report])
    finally:
        optuna.logging.set_verbosity(previous)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TuneError(f"study {study.study_name}: no trial has completed yet (all pruned or failed)")
    path = write_best_params(work, model, study, url)
    best = study.best_trial
    print(f"best trial {best.number} of {len(study.trials)}: rsna_logloss {best.value:.4f} -> {path}")
    return study, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered model name, e.g. lgbm_radiomic")
    parser.add_argument("--trials", type=int, default=None, help="trials to run now (default tune.trials)")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL (default tune.storage, else sqlite:///<work>/optuna.db)")
    parser.add_argument("--study", default=None, help="study name (default: the model name)")
    parser.add_argument("--seed", type=int, default=None,
                        help="TPE sampler seed (default tune.seed, else train.seed); give parallel workers different seeds")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    trials = args.trials if args.trials is not None else int(cfg["tune"]["trials"])
    t0 = time.perf_counter()
    tune_model(args.model, cfg, trials, storage=args.storage, study_name=args.study, seed=args.seed)
    print(f"tuning took {time.perf_counter() - t0:.1f} s")
    return 0
