"""The fold driver: runs (model, fold) units of any model family and writes the OOF contract.

``ichkit train`` and ``ichkit tune`` both go through here. For every requested model and fold k of
folds.csv the driver

1. resolves the parameters (`ichkit.engine.params.resolve_params`: defaults < config < tuned file) and the
   fold fingerprint (`ichkit.engine.fingerprint`); a fold whose parts exist and whose ``fingerprint.json``
   matches is "done already", any other is (re)trained and the changed fields are printed (``--force``
   retrains regardless);
2. splits the other folds' images into ``train_ids`` and a patient-grouped inner ``valid_ids``
   (`ichkit.engine.validation`); the held-out fold is never seen in fit, and `FoldContext.labels` holds the
   labels of train + valid only;
3. runs the unit on an executor (`ichkit.engine.executors`: ``local`` in this process, or ``ray``: one Ray
   task per unit with the family's resources); the unit builds the trainer, calls
   ``fit(train_ids, valid_ids, fold_dir, resume)``, ``save(fold_dir)`` and ``predict`` on the held-out and
   test images, and returns the two prediction frames (and, on Ray, the fold folder's files);
4. writes the parts through the family's output contract (``ModelSpec.outputs``: `ichkit.oof` for the
   classifiers, `ichkit.models.seg.results` for the segmenters), then ``fingerprint.json`` last (a part
   without a matching fingerprint is never taken as done), and merges once every fold is current.

An output contract is a module with ``fold_done(work, run, fold)``, ``write_fold(work, run, fold, oof,
test)`` (validates, then writes atomically), ``fold_summary(plan, frame) -> str`` (the held-out fold's
scores line) and ``merge_run(plan, run) -> (merged frame, summary line)``.

Folders: ``<work>/models/<run>/fold<k>/`` holds the trainer's files (fitted model or ``latest``/``best``
checkpoints, ``log.csv``), ``run.json`` (the fingerprint of the run in progress: a killed run with the
same fingerprint resumes from the trainer's checkpoints, another fingerprint starts afresh) and
``fingerprint.json``. ``<run>`` is the model name for the 7-class task and ``<model>.<task>`` otherwise
(`ichkit.engine.tasks`).

How a family registers
----------------------
A family module (listed in ``ichkit.models.FAMILY_MODULES``) subclasses `ichkit.engine.trainer.FoldTrainer`
and registers one `ichkit.models.ModelSpec` per model at import time::

    class MyTrainer(FoldTrainer):
        code_version = "1"                    # bump when a code change changes outputs
        def __init__(self, spec, params, ctx): ...
        def fit(self, train_ids, valid_ids, fold_dir, resume): ...   # early stopping on valid_ids
        def predict(self, ids): return predictions_frame(ids, self.ctx.fold, p7, p6)
        def save(self, fold_dir): ...         # atomic writes keeping the suffix (ichkit.files.atomic_path)
        @classmethod
        def load(cls, fold_dir, ctx): ...

    register(ModelSpec(name="cnn_resnet50", family="cnn", features=(), trainer=MyTrainer,
                       defaults={"epochs": 4, ...}, suggest=my_search_space,
                       num_cpus=2, num_gpus=1,                    # one Ray task's resources
                       config_keys=("prepare.cls_size", "cnn"),   # config values that enter the fingerprint
                       setup=None))                               # optional: run once on the driver first

The trainer reads images from ``ctx.work`` (the cache) and labels from ``ctx.labels``; ``ctx.task``
says what to predict (`ichkit.engine.tasks.task_target`). Tune calls `evaluate_params` with the same units.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.engine.fingerprint import (FINGERPRINT_FILE, changes, file_digest, make_fingerprint, read_fingerprint,
                                       write_fingerprint)
from ichkit.engine.tasks import DEFAULT_TASK, check_task, run_name, task_rows, task_target
from ichkit.engine.trainer import FoldContext
from ichkit.errors import IchkitError
from ichkit.labels import RSNA_LABELS

RUN_FILE = "run.json"


class TrainError(IchkitError):
    """A training request that cannot run; the message says what to do."""


# --------------------------------------------------------------------------------------------------
# what a run trains on


@dataclass
class TrainingPlan:
    """The fixed inputs of a run: table, folds.csv, labels, test ids, task and the settings of train."""

    cfg: dict[str, Any]
    work: Path
    task: str
    slices: pd.DataFrame
    folds: pd.DataFrame            # folds.csv as read (every training image)
    labels: pd.DataFrame           # index image_id (folds.csv order): patient_id, fold, y7, RSNA_LABELS
    test_ids: list[str]
    folds_digest: str
    settings: dict[str, Any]       # the train settings that change outputs (in the fingerprint)

    @property
    def fold_ids(self) -> list[int]:
        return sorted(int(f) for f in self.folds["fold"].unique())

    @property
    def task_labels(self) -> pd.DataFrame:
        """The labelled rows this task trains and scores on (6class: no multi slices)."""
        return self.labels[task_rows(self.labels, self.task)]

    def task_folds(self) -> pd.DataFrame:
        """folds.csv restricted to the task's images: what the merged OOF must cover."""
        keep = set(self.task_labels.index)
        return self.folds[self.folds["image_id"].isin(keep)].reset_index(drop=True)

    def split(self, fold: int) -> tuple[list[str], list[str], list[str]]:
        """(train_ids, valid_ids, heldout_ids) of `fold`, each in folds.csv order."""
        from ichkit.engine.validation import inner_split

        labels = self.task_labels
        held = (labels["fold"] == fold).to_numpy()
        if not held.any():
            raise TrainError(f"fold {fold} has no {self.task} images in folds.csv (folds: {self.fold_ids})")
        rest = labels[~held]
        train_ids, valid_ids = inner_split(rest.index.to_numpy(), rest["patient_id"].to_numpy(),
                                           task_target(rest, self.task), float(self.settings["inner_valid_fraction"]),
                                           seed=int(self.settings["seed"]) * 1000 + int(fold))
        return train_ids, valid_ids, list(labels.index[held])

    def context(self, spec, fold: int, train_ids: list[str], valid_ids: list[str], progress: bool) -> FoldContext:
        seen = self.labels.index.isin(set(train_ids) | set(valid_ids))
        # the table without its label columns: a trainer gets labels from ctx.labels (training images) only
        unlabelled = self.slices.drop(columns=[c for c in (*RSNA_LABELS, "label7") if c in self.slices.columns])
        return FoldContext(cfg=self.cfg, work=self.work, model=spec.name, fold=int(fold),
                           seed=int(self.settings["seed"]), task=self.task, slices=unlabelled,
                           labels=self.labels[seen].copy(), options=dict(self.settings), progress=progress)


def train_settings(cfg: dict[str, Any], task: str) -> dict[str, Any]:
    t = cfg["train"]
    return {"seed": int(t["seed"]), "class_weight": str(t["class_weight"]), "rsna_head": str(t["rsna_head"]),
            "task": task, "inner_valid_fraction": float(t["inner_valid_fraction"])}


def make_plan(cfg: dict[str, Any], task: str | None = None) -> TrainingPlan:
    """Read the table and folds.csv; labels of every training image, the ok test images."""
    from ichkit.folds import folds_path, read_folds
    from ichkit.oof import truth_for
    from ichkit.table import read_table

    task = check_task(task or cfg["train"]["task"])
    work = Path(cfg["paths"]["work"])
    slices = read_table(work).slices
    path = folds_path(cfg)
    folds = read_folds(path, slices)
    y7, y6 = truth_for(folds, slices, what="training images of folds.csv", remedy="re-run `ichkit prepare`")
    labels = pd.DataFrame({"patient_id": folds["patient_id"].astype(str).to_numpy(),
                           "fold": folds["fold"].astype(int).to_numpy(), "y7": y7},
                          index=pd.Index(folds["image_id"].astype(str), name="image_id"))
    labels[list(RSNA_LABELS)] = y6
    test_ids = slices.loc[(slices["split"] == "test") & (slices["status"] == "ok"), "image_id"].astype(str).tolist()
    return TrainingPlan(cfg=cfg, work=work, task=task, slices=slices, folds=folds, labels=labels, test_ids=test_ids,
                        folds_digest=file_digest(path), settings=train_settings(cfg, task))


# --------------------------------------------------------------------------------------------------
# one unit


@dataclass
class UnitJob:
    """Everything one (model, fold) unit needs; picklable, so a Ray worker can run it."""

    spec: Any                      # ModelSpec (cloudpickled to Ray workers)
    params: dict[str, Any]
    ctx: FoldContext
    run: str
    train_ids: list[str]
    valid_ids: list[str]
    heldout_ids: list[str]
    test_ids: list[str]
    fingerprint: dict[str, Any]
    fold_dir: Path
    resume: bool
    ship_files: bool = False       # run in a temporary folder and return its files (no shared filesystem)
    files: dict[str, bytes] = field(default_factory=dict)  # with ship_files: the fold folder to resume from

    @property
    def fold(self) -> int:
        return self.ctx.fold


@dataclass
class UnitResult:
    run: str
    fold: int
    oof: pd.DataFrame
    test: pd.DataFrame | None
    seconds: float
    files: dict[str, bytes] | None = None


def _read_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    from ichkit.files import atomic_path

    for rel, data in files.items():
        with atomic_path(folder / rel) as tmp:
            tmp.write_bytes(data)


def _predict(trainer, ids: list[str], fold: int, what: str) -> pd.DataFrame:
    """The trainer's predictions of `ids` (the contract itself is checked when the part is written)."""
    frame = trainer.predict(list(ids))
    if not isinstance(frame, pd.DataFrame) or "image_id" not in frame.columns:
        raise TrainError(f"{what}: the trainer must return a frame with image_id (oof.predictions_frame)")
    if frame["image_id"].astype(str).tolist() != [str(i) for i in ids]:
        raise TrainError(f"{what}: the trainer returned other ids or another order than asked")
    return frame


def run_unit(job: UnitJob) -> UnitResult:
    """Fit, save and predict one (model, fold); the executors call this (in-process or in a Ray task)."""
    t0 = time.perf_counter()
    scratch = None
    fold_dir = job.fold_dir
    if job.ship_files:
        scratch = Path(tempfile.mkdtemp(prefix=f"ichkit-{job.run}-fold{job.fold}-"))
        fold_dir = scratch
        _write_files(fold_dir, job.files)
    try:
        fold_dir.mkdir(parents=True, exist_ok=True)
        trainer = job.spec.make_trainer(job.params, job.ctx)
        trainer.fit(list(job.train_ids), list(job.valid_ids), fold_dir, job.resume)
        trainer.save(fold_dir)
        what = f"{job.run} fold {job.fold}"
        oof = _predict(trainer, job.heldout_ids, job.fold, f"OOF predictions of {what}")
        test = _predict(trainer, job.test_ids, job.fold, f"test predictions of {what}") if job.test_ids else None
        files = _read_files(fold_dir) if scratch is not None else None
        return UnitResult(run=job.run, fold=job.fold, oof=oof, test=test, seconds=time.perf_counter() - t0, files=files)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# scores


def task_scores(task: str, y7: np.ndarray, p7: np.ndarray, y6: np.ndarray, p6: np.ndarray) -> dict[str, float]:
    """`metrics.score_predictions`; a binary model knows no subtype, so its 7-class scores are NaN."""
    from ichkit.metrics import score_predictions

    scores = score_predictions(y7, p7, y6, p6)
    if task == "binary":
        scores = {k: (v if k.startswith("any_") or k == "rsna_logloss" else float("nan")) for k, v in scores.items()}
    return scores


def score_frame(plan: TrainingPlan, frame: pd.DataFrame) -> dict[str, float]:
    from ichkit.oof import PROB_COLUMNS, RSNA_COLUMNS

    rows = plan.labels.loc[frame["image_id"].astype(str)]
    return task_scores(plan.task, rows["y7"].to_numpy(), frame[list(PROB_COLUMNS)].to_numpy(),
                       rows[list(RSNA_LABELS)].to_numpy(), frame[list(RSNA_COLUMNS)].to_numpy())


def score_line(scores: dict[str, float]) -> str:
    return (f"acc {scores['accuracy']:.3f}  bal_acc {scores['balanced_accuracy']:.3f}  "
            f"macro_f1 {scores['macro_f1']:.3f}  rsna_logloss {scores['rsna_logloss']:.4f}  any_auc {scores['any_auc']:.3f}")


# --------------------------------------------------------------------------------------------------
# the driver


def fold_dir_of(work: Path | str, run: str, fold: int) -> Path:
    return Path(work) / "models" / run / f"fold{int(fold)}"


def output_contract(spec) -> Any:
    """The module that validates, writes and merges `spec`'s fold parts (``ModelSpec.outputs``)."""
    import importlib

    return importlib.import_module(getattr(spec, "outputs", "ichkit.oof"))


def fold_current(work: Path | str, run: str, fold: int, fingerprint: dict[str, Any], outputs: Any = None) -> bool:
    """The fold's parts exist and were made with exactly this fingerprint."""
    if outputs is None:
        from ichkit import oof as outputs

    return outputs.fold_done(work, run, fold) and read_fingerprint(fold_dir_of(work, run, fold)) == fingerprint


def _setup(specs: list, plan: TrainingPlan, progress: bool) -> None:
    """Run each family's driver-side setup once (e.g. compute the features every classical model reads)."""
    by_setup: dict[Any, list[str]] = {}
    for spec in specs:
        if spec.setup is not None:
            by_setup.setdefault(spec.setup, [])
            by_setup[spec.setup] += [s for s in spec.features if s not in by_setup[spec.setup]]
    ids = plan.labels.index.tolist() + plan.test_ids
    for setup, sets in by_setup.items():
        setup(plan.cfg, ids, tuple(sets), progress)


def train_models(names: list[str], cfg: dict[str, Any], folds: list[int] | None = None, force: bool = False,
                 use_tuned: bool = True, executor: str | None = None, ray_address: str | None = None,
                 task: str | None = None, progress: bool = True) -> dict[str, pd.DataFrame | None]:
    """Train `names` on `folds` (all by default) for `task`; return each run's merged OOF (None if incomplete)."""
    from tqdm import tqdm

    from ichkit.engine.executors import make_executor
    from ichkit.engine.params import check_model_overrides, resolve_params
    from ichkit.models import get_model_spec

    plan = make_plan(cfg, task)
    specs = [get_model_spec(n) for n in names]
    check_model_overrides(cfg)
    fold_ids = plan.fold_ids if not folds else list(dict.fromkeys(int(f) for f in folds))
    unknown = sorted(set(fold_ids) - set(plan.fold_ids))
    if unknown:
        raise TrainError(f"folds {unknown} do not exist; folds.csv has {plan.fold_ids}")
    runner = make_executor(executor or cfg["train"]["executor"], ray_address)
    _setup(specs, plan, progress)

    jobs: list[UnitJob] = []
    fingerprints: dict[str, dict[int, dict[str, Any]]] = {}
    contracts: dict[str, Any] = {}
    for spec in specs:
        run = run_name(spec.name, plan.task)
        outputs = contracts[run] = output_contract(spec)
        params, source = resolve_params(spec, cfg, use_tuned)
        print(f"{run}: {spec.description}; params from {source}: {json.dumps(params, sort_keys=True)}", flush=True)
        fingerprints[run] = {}
        for k in plan.fold_ids:
            fp = make_fingerprint(spec=spec, params=params, cfg=cfg, folds_digest=plan.folds_digest,
                                  test_ids=plan.test_ids, settings={**plan.settings, "fold": k})
            fingerprints[run][k] = fp
            if k not in fold_ids:
                continue
            fold_dir = fold_dir_of(plan.work, run, k)
            if fold_current(plan.work, run, k, fp, outputs) and not force:
                print(f"{run} fold {k}: done already (--force to retrain)", flush=True)
                continue
            if outputs.fold_done(plan.work, run, k) and not force:
                why = "; ".join(changes(read_fingerprint(fold_dir), fp))
                print(f"{run} fold {k}: retraining, its fingerprint changed: {why}", flush=True)
            in_progress = read_fingerprint(fold_dir, RUN_FILE)
            resume = not force and in_progress == fp
            if not resume and fold_dir.exists():
                shutil.rmtree(fold_dir)  # checkpoints of other settings must not be resumed
            if resume:
                print(f"{run} fold {k}: resuming the interrupted run from {fold_dir}", flush=True)
            write_fingerprint(fold_dir, fp, RUN_FILE)
            train_ids, valid_ids, heldout_ids = plan.split(k)
            ctx = plan.context(spec, k, train_ids, valid_ids, progress)
            jobs.append(UnitJob(spec=spec, params=params, ctx=ctx, run=run, train_ids=train_ids, valid_ids=valid_ids,
                                heldout_ids=heldout_ids, test_ids=plan.test_ids, fingerprint=fp, fold_dir=fold_dir,
                                resume=resume))

    bar = tqdm(total=len(jobs), desc=f"train ({runner.name})", unit="fold", disable=not progress or not jobs)
    by_key = {(j.run, j.fold): j for j in jobs}
    for result in runner.map(jobs):
        job = by_key[(result.run, result.fold)]
        if result.files is not None:
            _write_files(job.fold_dir, result.files)
        outputs = contracts[result.run]
        outputs.write_fold(plan.work, result.run, result.fold, result.oof, result.test)
        write_fingerprint(job.fold_dir, job.fingerprint)
        (job.fold_dir / RUN_FILE).unlink(missing_ok=True)
        tqdm.write(f"{result.run} fold {result.fold}: {outputs.fold_summary(plan, result.oof)}  "
                   f"(n={len(result.oof)}, {result.seconds:.1f} s)")
        bar.update()
    bar.close()
    return {run: _merge_if_complete(plan, run, fps, contracts[run]) for run, fps in fingerprints.items()}


def _merge_if_complete(plan: TrainingPlan, run: str, fingerprints: dict[int, dict[str, Any]],
                       outputs: Any) -> pd.DataFrame | None:
    missing = [k for k, fp in fingerprints.items() if not fold_current(plan.work, run, k, fp, outputs)]
    if missing:
        print(f"{run}: folds {missing} not trained yet (or made with other settings); "
              "the merge runs once every fold is current", flush=True)
        return None
    frame, line = outputs.merge_run(plan, run)
    print(f"{run} all folds (OOF): {line}", flush=True)
    return frame


# --------------------------------------------------------------------------------------------------
# tune


def evaluate_params(spec, params: dict[str, Any], plan: TrainingPlan, fold: int) -> dict[str, float]:
    """Held-out scores of `spec` with `params` on `fold`, through the same unit as `train` (nothing kept)."""
    train_ids, valid_ids, heldout_ids = plan.split(fold)
    ctx = plan.context(spec, fold, train_ids, valid_ids, progress=False)
    with tempfile.TemporaryDirectory(prefix=f"ichkit-tune-{spec.name}-") as scratch:
        job = UnitJob(spec=spec, params=params, ctx=ctx, run=spec.name, train_ids=train_ids, valid_ids=valid_ids,
                      heldout_ids=heldout_ids, test_ids=[], fingerprint={}, fold_dir=Path(scratch), resume=False)
        result = run_unit(job)
    from ichkit.oof import validate_predictions

    return score_frame(plan, validate_predictions(result.oof, f"OOF predictions of {spec.name} fold {fold}", fold=fold))


__all__ = ["TrainError", "TrainingPlan", "UnitJob", "UnitResult", "make_plan", "run_unit", "train_models",
           "evaluate_params", "fold_dir_of", "fold_current", "output_contract", "task_scores", "score_line", "FINGERPRINT_FILE",
           "DEFAULT_TASK"]
