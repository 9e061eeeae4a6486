"""Stage `stack`: fit the meta-learner fold by fold, compare it with the best single model and the plain
mean of the models, and choose the ensemble the submission (and `predict`) uses.

``ichkit stack [--models a,b,...] [--force]``

1. The first-level models (`stack.models`; "all" = every model with a merged OOF file) are read
   (`models.stack.StackFeatures`).
2. For every fold k of folds.csv (the same patient-grouped folds as the first level) a `StackTrainer` is
   fitted on the other folds' OOF rows and predicts fold k and the test split; the parts are written and
   merged through the OOF contract as model ``stack_lgbm`` (`ichkit.oof`), so its score is out-of-fold.
   Finished folds are skipped unless the inputs changed (other first-level OOF files, folds, params or
   settings: `stack_fingerprint`) or ``--force``.
3. Three candidates are scored on the same OOF rows by `stack.select_by` (the RSNA log loss): the best
   single first-level model, the plain mean of the first-level models, the stacker. The winner (the
   stacker only if it beats both) and the gains go to ``<work>/stack/ensemble.json`` together with the
   run's settings, which is what `submit`, `report` and `predict` read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.files import write_text_atomic

ENSEMBLE_FILE = Path("stack") / "ensemble.json"
CANDIDATES = ("single", "mean", "stack")
LOWER_IS_BETTER = {"rsna_logloss"}


def ensemble_path(work: Path | str) -> Path:
    return Path(work) / ENSEMBLE_FILE


def read_ensemble(work: Path | str) -> dict[str, Any]:
    path = ensemble_path(work)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `ichkit stack` first (it chooses the ensemble)")
    return json.loads(path.read_text())


def mean_predictions(frames: list[pd.DataFrame], fold: int | None = None) -> pd.DataFrame:
    """The plain mean of contract frames over the same images (rows in the first frame's order)."""
    from ichkit.oof import PROB_COLUMNS, RSNA_COLUMNS, predictions_frame

    ids = frames[0]["image_id"].astype(str).tolist()
    aligned = [f.set_index(f["image_id"].astype(str)).loc[ids] for f in frames]
    p7 = np.mean([a[list(PROB_COLUMNS)].to_numpy() for a in aligned], axis=0)
    p6 = np.mean([a[list(RSNA_COLUMNS)].to_numpy() for a in aligned], axis=0)
    folds = frames[0]["fold"].to_numpy() if fold is None else fold
    out = predictions_frame(ids, 0, p7 / p7.sum(axis=1, keepdims=True), p6)
    out["fold"] = folds
    return out


def ensemble_test(work: Path | str, ensemble: dict[str, Any]) -> pd.DataFrame:
    """Test predictions of the chosen ensemble from the merged test files in `work`."""
    from ichkit import oof

    winner = ensemble["winner"]
    if winner == "mean":
        return mean_predictions([oof.read_test(work, m) for m in ensemble["first_level"]])
    return oof.read_test(work, ensemble["model"])


def stack_fingerprint(work: Path, models: list[str], params: dict[str, Any], stack_cfg: dict[str, Any],
                      folds_file: Path, seed: int) -> str:
    """Hash of everything the stacker's folds depend on: first-level OOF and test files, folds, settings."""
    from ichkit import oof
    from ichkit.models.stack import StackTrainer

    h = hashlib.sha256()
    h.update(json.dumps({"models": models, "params": params, "neighbours": stack_cfg["neighbours"],
                         "seed": seed, "code": StackTrainer.code_version}, sort_keys=True).encode())
    for m in models:
        for path in oof.merged_paths(work, m):
            h.update(path.read_bytes() if path.is_file() else b"-")
    h.update(Path(folds_file).read_bytes())
    return h.hexdigest()[:16]


def candidate_scores(oof_frames: dict[str, pd.DataFrame], stack_oof: pd.DataFrame | None, slices: pd.DataFrame,
                     select_by: str) -> dict[str, Any]:
    """Scores of every first-level model, their mean and the stacker on the same rows, and the winner."""
    from ichkit.metrics import SCORE_KEYS
    from ichkit.oof import score_oof

    if select_by not in SCORE_KEYS:
        raise ValueError(f"stack.select_by must be one of {list(SCORE_KEYS)}, got {select_by!r}")
    lower = select_by in LOWER_IS_BETTER
    singles = {m: score_oof(f, slices) for m, f in oof_frames.items()}
    best = sorted(singles, key=lambda m: singles[m][select_by] * (1 if lower else -1))[0]
    scores = {"single": singles[best], "mean": score_oof(mean_predictions(list(oof_frames.values())), slices)}
    if stack_oof is not None:
        scores["stack"] = score_oof(stack_oof, slices)
    key = {c: s[select_by] * (1 if lower else -1) for c, s in scores.items()}
    # ties go to the simpler candidate: single, then mean, then the stacker
    winner = min((c for c in CANDIDATES if c in scores), key=lambda c: (key[c], CANDIDATES.index(c)))
    gain = {}
    if "stack" in scores:
        for other in ("single", "mean"):
            diff = scores[other][select_by] - scores["stack"][select_by]
            gain[f"stack_vs_{other}"] = float(diff if lower else -diff)  # > 0: the stacker is better
    return {"select_by": select_by, "best_single": best, "singles": singles, "candidates": scores,
            "winner": winner, "gain": gain}


@dataclass
class StackData:
    """Everything the stacker's folds share: the table, folds, first-level models, features and labels."""

    cfg: dict[str, Any]
    work: Path
    slices: pd.DataFrame
    folds: pd.DataFrame
    names: list[str]
    seed: int
    features: Any = None               # models.stack.StackFeatures (built when a stacker is fitted)
    labels: pd.DataFrame | None = None  # index image_id: y7, RSNA_LABELS of the training images

    @classmethod
    def load(cls, cfg: dict[str, Any], models: list[str] | str = "all", with_features: bool = True) -> "StackData":
        from ichkit.folds import folds_path, read_folds
        from ichkit.models.stack import first_level_models
        from ichkit.table import read_table

        work = Path(cfg["paths"]["work"])
        stack_cfg = cfg["stack"]
        slices = read_table(work).slices
        folds = read_folds(folds_path(cfg), slices)
        names = first_level_models(work, models if models != "all" else stack_cfg["models"])
        seed = int(stack_cfg["seed"] if stack_cfg["seed"] is not None else cfg["train"]["seed"])
        data = cls(cfg=cfg, work=work, slices=slices, folds=folds, names=names, seed=seed)
        return data.with_features() if with_features else data

    def with_features(self) -> "StackData":
        """Build the stacker's features and the training labels (once)."""
        from ichkit import oof
        from ichkit.labels import RSNA_LABELS
        from ichkit.models.stack import StackFeatures

        if self.features is None:
            self.features = StackFeatures.build(self.work, self.names, self.slices, list(self.cfg["stack"]["neighbours"]))
            y7, y6 = oof.truth_for(self.folds, self.slices, what="training images of folds.csv")
            self.labels = pd.DataFrame({"y7": y7}, index=pd.Index(self.folds["image_id"].astype(str), name="image_id"))
            self.labels[list(RSNA_LABELS)] = y6
        return self

    @property
    def fold_ids(self) -> list[int]:
        return sorted(int(f) for f in self.folds["fold"].unique())

    @property
    def test_ids(self) -> list[str]:
        return [i for i in self.features.X.index if i not in self.labels.index]

    def fit_fold(self, params: dict[str, Any], k: int, progress: bool = False):
        """(fitted StackTrainer, held-out ids) of fold k: fitted on the other folds' OOF rows only."""
        from ichkit.engine.trainer import FoldContext
        from ichkit.models.stack import STACK_MODEL, StackTrainer

        held = self.folds["fold"] == k
        train_ids = self.folds.loc[~held, "image_id"].astype(str).tolist()
        ctx = FoldContext(cfg=self.cfg, work=self.work, model=STACK_MODEL, fold=k, seed=self.seed, task="7class",
                          slices=self.slices, labels=self.labels.loc[train_ids], progress=progress)
        trainer = StackTrainer(params, ctx, self.features)
        trainer.fit(train_ids, [], self.work / "models" / STACK_MODEL / f"fold{k}", resume=False)
        return trainer, self.folds.loc[held, "image_id"].astype(str).tolist()


def run_stack(cfg: dict[str, Any], models: list[str] | str = "all", force: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Fit the stacker on every fold, compare, write and return ensemble.json's content."""
    from ichkit import oof
    from ichkit.folds import folds_path
    from ichkit.models.stack import SPEC, STACK_MODEL
    from ichkit.train import resolve_params

    stack_cfg = cfg["stack"]
    use_tuned = bool(cfg["train"]["use_tuned"])
    params, source = resolve_params(SPEC, cfg, use_tuned=use_tuned)
    select_by = str(stack_cfg["select_by"])
    data = StackData.load(cfg, models, with_features=False)
    work, slices, folds, names, seed = data.work, data.slices, data.folds, data.names, data.seed

    oof_frames = {m: oof.read_oof(work, m) for m in names}
    use_stacker = len(names) >= int(stack_cfg["min_models"])
    stack_oof = None
    fingerprint = stack_fingerprint(work, names, params, stack_cfg, folds_path(cfg), seed)
    model_dir = work / "models" / STACK_MODEL
    if use_stacker:
        print(f"stack: {len(names)} first-level models ({', '.join(names)}); params from {source}")
        data.with_features()
        print(f"stack: {data.features.X.shape[1]} features per slice (models, their mean, context at offsets "
              f"+-{list(stack_cfg['neighbours'])} and series max/mean)")
        fp_path = model_dir / "fingerprint.json"
        recorded = json.loads(fp_path.read_text()).get("fingerprint") if fp_path.is_file() else None
        stale = recorded != fingerprint
        if stale and recorded is not None:
            print("stack: the first-level predictions, folds or settings changed since the last fit; refitting every fold")
        test_ids = data.test_ids
        for k in data.fold_ids:
            if oof.fold_done(work, STACK_MODEL, k) and not (force or stale):
                print(f"{STACK_MODEL} fold {k}: done already (--force to refit)")
                continue
            t0 = time.perf_counter()
            trainer, held_ids = data.fit_fold(params, k, progress)
            trainer.save(model_dir / f"fold{k}")
            oof.write_fold(work, STACK_MODEL, k, trainer.predict(held_ids), trainer.predict(test_ids))
            print(f"{STACK_MODEL} fold {k}: fitted on {len(folds) - len(held_ids)} slices, predicted "
                  f"{len(held_ids)} held-out + {len(test_ids)} test ({time.perf_counter() - t0:.1f} s)")
        stack_oof, _ = oof.merge(work, STACK_MODEL, folds)
        write_text_atomic(fp_path, json.dumps({"fingerprint": fingerprint, "models": names}, indent=2) + "\n")
    else:
        print(f"stack: only {len(names)} first-level model(s): no stacker (stack.min_models), "
              "the best single model is used")

    result = candidate_scores(oof_frames, stack_oof, slices, select_by)
    winner = result["winner"]
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if ensemble_path(work).is_file():  # the same inputs give the same run (id): a re-run writes no new files
        before = read_ensemble(work)
        if (before.get("fingerprint"), before.get("first_level"), before.get("select_by"), before.get("winner")) == \
                (fingerprint, names, select_by, winner):
            created = before["created"]
    ensemble = {
        "winner": winner,
        "model": {"single": result["best_single"], "mean": "mean", "stack": STACK_MODEL}[winner],
        "first_level": names,
        **result,
        "folds": sorted(int(f) for f in folds["fold"].unique()),
        "folds_file": str(folds_path(cfg)),
        "stack_params": params if use_stacker else None,
        "fingerprint": fingerprint,
        "created": created,
        "cfg": cfg,
    }
    text = json.dumps(ensemble, indent=2, default=str) + "\n"
    if not ensemble_path(work).is_file() or ensemble_path(work).read_text() != text:
        write_text_atomic(ensemble_path(work), text)
    print(format_comparison(ensemble))
    print(f"-> {ensemble_path(work)}")
    return ensemble


def tune_stack(cfg: dict[str, Any], n_trials: int, models: list[str] | str = "all", storage: str | None = None,
               seed: int | None = None) -> Path:
    """Optuna search of the stacker's parameters on its fold-CV RSNA log loss (pruned fold by fold), in
    the same study storage as `ichkit tune`; the best parameters go to ``<work>/params/stack_lgbm.json``,
    which the next `ichkit stack` uses (its inputs fingerprint then changes, so every fold is refitted)."""
    import optuna

    from ichkit.labels import RSNA_LABELS
    from ichkit.metrics import rsna_log_loss
    from ichkit.models.stack import SPEC, STACK_MODEL
    from ichkit.oof import RSNA_COLUMNS
    from ichkit.train import resolve_params
    from ichkit.tune import open_storage, open_study, storage_url, write_best_params

    data = StackData.load(cfg, models)
    base, _ = resolve_params(SPEC, cfg, use_tuned=False)
    tune_cfg = cfg["tune"]
    sampler_seed = int(seed if seed is not None else tune_cfg["seed"] if tune_cfg["seed"] is not None else data.seed)

    def objective(trial: optuna.Trial) -> float:
        suggested = SPEC.suggest(trial)
        trial.set_user_attr("suggested", suggested)
        losses = []
        for step, k in enumerate(data.fold_ids):
            trainer, held_ids = data.fit_fold(SPEC.params(base, suggested), k)
            pred = trainer.predict(held_ids)
            losses.append(rsna_log_loss(data.labels.loc[held_ids, list(RSNA_LABELS)].to_numpy(),
                                        pred[list(RSNA_COLUMNS)].to_numpy()))
            trial.report(float(np.mean(losses)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(losses))

    url = storage_url(cfg, storage)
    study = open_study(STACK_MODEL, open_storage(url), sampler_seed, int(tune_cfg["startup_trials"]),
                       int(tune_cfg["warmup_folds"]))
    study.optimize(objective, n_trials=n_trials)
    path = write_best_params(data.work, STACK_MODEL, study, url)
    print(f"stack: tuned {n_trials} trials; best fold-CV RSNA log loss {study.best_value:.4f} -> {path}")
    return path


def format_comparison(ensemble: dict[str, Any]) -> str:
    key = ensemble["select_by"]
    lines = [f"out-of-fold {key} of the candidates (same {len(ensemble['folds'])} patient-grouped folds):"]
    labels = {"single": f"best single model ({ensemble['best_single']})",
              "mean": f"plain mean of {len(ensemble['first_level'])} models", "stack": "stacker (stack_lgbm)"}
    for c in CANDIDATES:
        if c in ensemble["candidates"]:
            s = ensemble["candidates"][c]
            mark = "  <- used for the submission" if c == ensemble["winner"] else ""
            lines.append(f"  {labels[c]:<40} {key} {s[key]:.4f}  balanced acc {s['balanced_accuracy']:.3f}  "
                         f"any AUC {s['any_auc']:.3f}{mark}")
    for name, value in ensemble.get("gain", {}).items():
        lines.append(f"  gain {name.replace('_', ' ')}: {value:+.4f} {key} (> 0: the stacker is better)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="all",
                        help="first-level models (comma list; default stack.models: every merged OOF file)")
    parser.add_argument("--force", action="store_true", help="refit the stacker's folds even if they are done")
    parser.add_argument("--trials", type=int, default=0,
                        help="first run this many Optuna trials on the stacker's fold-CV RSNA log loss "
                             "(study in tune.storage; best params -> <work>/params/stack_lgbm.json)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL for --trials (default: tune.storage)")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from ichkit.folds import FoldsError
    from ichkit.models.stack import StackError
    from ichkit.oof import OOFError

    models = "all" if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        if args.trials:
            tune_stack(cfg, args.trials, models, args.storage)
        run_stack(cfg, models, force=args.force)
    except (StackError, OOFError, FoldsError, FileNotFoundError, ValueError) as exc:
        print(f"ichkit stack: error: {exc}", file=sys.stderr)
        return 1
    return 0
