"""Stage `train`: every requested model on every fold through the fold driver (`ichkit.engine.driver`).

``ichkit train --model NAME [--fold K] [--task 7class|6class|binary] [--force] [--executor local|ray
[--ray-address ADDR]]``; ``--model all`` trains the list in ``train.models``.

Per (model, fold k): fit on the other folds (the family's trainer; a patient-grouped inner validation
split inside them for early stopping and choices), predict the held-out fold and every test image, write
``<work>/oof/<run>/fold<k>.parquet`` and ``<work>/test/<run>/fold<k>.parquet`` (`ichkit.oof`) and the fold
folder ``<work>/models/<run>/fold<k>/`` (fitted model or checkpoints, ``log.csv``, ``fingerprint.json``);
``<run>`` is the model name, with ``.<task>`` appended for the 6class and binary tasks.

A fold is skipped only when its parts exist and its fingerprint (params, feature settings, folds.csv,
seed / class_weight / rsna_head / task, code version) matches; otherwise it is retrained and the changed
fields are printed. ``--force`` retrains regardless; ``--fold K`` trains one fold (so folds can run on
different machines), and the parts are merged as soon as every fold is current. Parameters: the model's
defaults < ``features.pca_components`` / ``train.n_jobs`` < ``models.<name>`` < the tuned file
``<work>/params/<name>.json`` (unless ``--no-tuned`` / ``train.use_tuned: false``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ichkit.engine.driver import TrainError, fold_dir_of, train_models
from ichkit.engine.executors import EXECUTORS
from ichkit.engine.params import params_path, read_tuned_params, resolve_params
from ichkit.engine.tasks import TASKS, run_name

__all__ = ["TrainError", "train_models", "model_names", "load_fold_trainer", "params_path", "read_tuned_params",
           "resolve_params", "run_name"]


def model_names(requested: list[str], cfg: dict[str, Any]) -> list[str]:
    """Expand `all` to train.models and check every name against the registry."""
    from ichkit.models import get_model_spec

    names: list[str] = []
    for item in requested:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                names += list(cfg["train"]["models"] or [])
            else:
                names.append(name)
    for name in names:
        get_model_spec(name)
    return list(dict.fromkeys(names))


def load_fold_trainer(cfg: dict[str, Any], model: str, fold: int, task: str | None = None):
    """The fitted trainer of (model, fold, task) from its fold folder (for predict on new scans)."""
    from ichkit.engine.driver import make_plan
    from ichkit.models import get_model_spec

    spec = get_model_spec(model)
    plan = make_plan(cfg, task)
    folder = fold_dir_of(plan.work, run_name(model, plan.task), fold)
    if not folder.is_dir():
        raise TrainError(f"{folder} not found: run `ichkit train --model {model} --fold {fold} --task {plan.task}`")
    train_ids, valid_ids, _ = plan.split(fold)
    return spec.trainer.load(folder, plan.context(spec, fold, train_ids, valid_ids, progress=False))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=None, metavar="NAME",
                        help="model to train (repeatable or comma-separated); 'all' = train.models (default)")
    parser.add_argument("--fold", type=int, action="append", default=None, metavar="K",
                        help="train only this fold (repeatable); the merge happens when every fold is current")
    parser.add_argument("--task", choices=TASKS, default=None, help="what to predict (default train.task)")
    parser.add_argument("--force", action="store_true", help="retrain folds even when their fingerprint matches")
    parser.add_argument("--no-tuned", dest="use_tuned", action="store_false", default=None,
                        help="ignore <work>/params/<model>.json written by `ichkit tune`")
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="where the (model, fold) units run (default train.executor)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address for --executor ray (e.g. auto, or ray://head:10001; default: a local Ray)")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    use_tuned = bool(cfg["train"]["use_tuned"]) if args.use_tuned is None else args.use_tuned
    names = model_names(args.model or ["all"], cfg)
    if not names:
        raise TrainError("no models to train: pass --model NAME or set train.models")
    train_models(names, cfg, folds=args.fold, force=args.force, use_tuned=use_tuned, executor=args.executor,
                 ray_address=args.ray_address, task=args.task)
    return 0
