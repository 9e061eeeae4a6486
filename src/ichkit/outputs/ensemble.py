"""Stage `stack`: fit the meta-learner fold by fold, compare it with the best single model and the plain
mean of the models, and choose the ensemble the submission (and `predict`) uses.

``ichkit stack [--models a,b,...] [--force] [--trials N]``

1. The first-level models (`stack.models`; "all" = every 7-class model with a merged OOF file) are checked
   against the current folds.csv (`oof.check_current`: a model made with other folds is refused).
2. ``stack.inputs`` is set to those models and a digest of their OOF and test files, and the fold driver
   (`ichkit.engine.driver.train_models`) fits `models.stack.StackTrainer` on every fold of folds.csv (the
   same patient-grouped folds as the first level): fitted on the other folds' OOF rows, it predicts fold k
   and the test split, and the parts merge through the OOF contract as model ``stack_lgbm``, so its score
   is out-of-fold. The inputs are in the fold fingerprint: new first-level predictions refit every fold,
   a re-run with the same inputs skips them. ``--trials N`` first runs `ichkit tune` on the stacker.
3. Three candidates are scored on the same OOF rows by `stack.select_by` (the RSNA log loss): the best
   single first-level model, the plain mean of the first-level models, the stacker. The winner (the
   stacker only if it beats both) and the gains go to ``<work>/stack/ensemble.json`` together with the
   run's settings, which is what `submit`, `report` and `predict` read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


def inputs_digest(work: Path, models: list[str]) -> str:
    """Digest of the first-level models' merged OOF and test files: what the stacker is fitted on."""
    from ichkit import oof

    h = hashlib.sha256()
    for m in models:
        for path in oof.merged_paths(work, m):
            h.update(m.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return h.hexdigest()[:16]


def candidate_scores(oof_frames: dict[str, pd.DataFrame], stack_oof: pd.DataFrame | None, slices: pd.DataFrame,
                     select_by: str) -> dict[str, Any]:
    """Scores of every first-level model, their mean and the stacker on the same rows, and the winner."""
    from ichkit.metrics import SCORE_KEYS
    from ichkit.oof import score_oof

    if select_by not in SCORE_KEYS:
        from ichkit.models.stack import StackError

        raise StackError(f"stack.select_by must be one of {list(SCORE_KEYS)}, got {select_by!r}")
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


def run_stack(cfg: dict[str, Any], models: list[str] | str = "all", force: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Fit the stacker on every fold (through the fold driver), compare, write and return ensemble.json's
    content (which includes the settings with ``stack.inputs`` filled in)."""
    import copy

    from ichkit import oof
    from ichkit.engine.driver import train_models
    from ichkit.engine.fingerprint import digest, file_digest
    from ichkit.engine.params import resolve_params
    from ichkit.folds import folds_path, read_folds
    from ichkit.models.stack import SPEC, STACK_MODEL, first_level_models
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    stack_cfg = cfg["stack"]
    slices = read_table(work).slices
    folds = read_folds(folds_path(cfg), slices)
    names = first_level_models(work, models if models != "all" else stack_cfg["models"], folds_path(cfg))
    select_by = str(stack_cfg["select_by"])
    cfg = copy.deepcopy(cfg)
    cfg["stack"]["inputs"] = {"models": names, "digest": inputs_digest(work, names)}
    params, source = resolve_params(SPEC, cfg, use_tuned=bool(cfg["train"]["use_tuned"]))
    fingerprint = digest({"inputs": cfg["stack"]["inputs"], "params": params, "folds": file_digest(folds_path(cfg)),
                          "neighbours": stack_cfg["neighbours"], "seed": cfg["train"]["seed"]})

    oof_frames = {m: oof.read_oof(work, m) for m in names}
    use_stacker = len(names) >= int(stack_cfg["min_models"])
    stack_oof = None
    if use_stacker:
        print(f"stack: {len(names)} first-level models ({', '.join(names)}); slice context at offsets "
              f"+-{list(stack_cfg['neighbours'])} and series max/mean; params from {source}")
        stack_oof = train_models([STACK_MODEL], cfg, force=force, task="7class", progress=progress)[STACK_MODEL]
        if stack_oof is None:
            raise oof.OOFError(f"{STACK_MODEL}: not every fold was fitted; run `ichkit stack` again")
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
        "stack_source": source if use_stacker else None,
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
                        help="first run this many Optuna trials of the stacker (= `ichkit tune --model stack_lgbm`; "
                             "best params -> <work>/params/stack_lgbm.json, used by the fit)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL for --trials (default: tune.storage)")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    models = "all" if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    if args.trials:  # the stacker is a model like the others: tune's study, pruning and params file
        import copy

        from ichkit.models.stack import STACK_MODEL, first_level_models
        from ichkit.tune import tune_model

        tune_cfg = copy.deepcopy(cfg)
        names = first_level_models(Path(cfg["paths"]["work"]), models if models != "all" else cfg["stack"]["models"])
        tune_cfg["stack"]["inputs"] = {"models": names}
        tune_model(STACK_MODEL, tune_cfg, args.trials, storage=args.storage, task="7class")
    run_stack(cfg, models, force=args.force)
    return 0
