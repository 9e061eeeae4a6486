"""Stage `predict`: apply a trained run's ensemble to new scans that have no labels.

``ichkit predict --data PATH --models WORK [--out DIR]``

- PATH: a folder of DICOM files (any names; ``*.dcm`` or files with the DICOM preamble: the readers'
  ``dicoms`` layout), a NIfTI volume (``.nii`` / ``.nii.gz``) or a folder of them, or a folder of PNG/JPG
  slices (`unlabelled_dataset`); every slice is a test image. A labelled dataset layout works too: its
  slices are all predicted.
- WORK: the work folder of a trained run (the one `ichkit stack` wrote ``stack/ensemble.json`` into); its
  settings (windows, image sizes, feature settings, folds) are the ones in that file, so the new data is
  prepared exactly as the training data was.
- The new data is prepared into its own work folder, ``WORK/predict/<name>-<hash of PATH>/`` (cache,
  table, features, quarantine: bad files are quarantined, never fatal), every first-level model of the
  ensemble predicts it with each of its fold models (mean over folds), the stacker is applied when it won,
  and the same files as the competition submission are written to DIR (default ``paths.submissions``):
  RSNA CSV, 7-class CSV, the masks / RLE / volumes of `seg.submit_model` when the run trained one
  (`predict_masks`), and the sidecar, whose run id carries ``predict-<name>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ichkit.errors import IchkitError
from ichkit.files import atomic_path


class PredictError(IchkitError):
    """Prediction cannot run as asked; the message says why."""


def unlabelled_dataset(path: Path):
    """A `table.Dataset` of every slice under `path`, all in the test split, without labels.

    A folder the readers recognise (`readers.find_dataset`: any labelled layout, or the `dicoms` layout of
    a bare DICOM folder) is read by its reader; a folder whose DICOM files no layout claims (suffix-less
    ones beside a CSV), or one DICOM file, by the `dicoms` reader too; NIfTI volumes and PNG/JPG slices
    without labels (no reader layout has them) by `_unlabelled_files`."""
    from ichkit import readers
    from ichkit.readers import dicoms
    from ichkit.table import Dataset, conform

    path = Path(path).resolve()
    if not path.exists():
        raise PredictError(f"--data {path}: no such file or folder")
    found = readers.find_dataset(path) if path.is_dir() else None
    if found is not None:
        ds = readers.read_dataset(found)
    elif path.is_dir() and next(dicoms.iter_dicom_files(path), None) is not None:
        ds = readers.read_dataset(path, layout="dicoms")
    elif path.is_file() and dicoms.is_dicom_file(path):
        ds = dicoms.read_dicoms(path.parent, [path])
    else:
        ds = _unlabelled_files(path)
    slices = ds.slices.assign(split="test")
    return Dataset(root=ds.root, layout=ds.layout, slices=conform(slices), polygons=ds.polygons)


def _unlabelled_files(path: Path):
    """The adapter for what no reader layout holds: NIfTI volumes (one slice per frame, a patient per
    volume) or else PNG/JPG slices, in the file or folder `path`, without labels."""
    from ichkit.labels import normalize_image_id
    from ichkit.readers.common import iter_files, relative
    from ichkit.readers.images import IMAGE_SUFFIXES
    from ichkit.readers.nifti import NIFTI_SUFFIXES, header_geometry
    from ichkit.table import Dataset, conform

    root = path.parent if path.is_file() else path

    def listing(suffixes: tuple[str, ...]) -> list[Path]:
        if path.is_file():
            return [path] if path.name.lower().endswith(suffixes) else []
        return list(iter_files(path, suffixes))

    nifti, images = listing(NIFTI_SUFFIXES), listing(IMAGE_SUFFIXES)
    rows: list[dict[str, Any]] = []
    if nifti:
        layout = "nifti volumes"
        for p in nifti:
            stem = p.name[: -len(".nii.gz")] if p.name.lower().endswith(".nii.gz") else p.stem
            try:
                n = header_geometry(p).n_slices
            except Exception as exc:  # BadInput: the volume cannot even be opened -> one quarantined row
                rows.append({"image_id": f"ID_{stem}_000", "source": "nifti", "path": relative(p, root),
                             "frame": 0, "patient_id": stem})
                print(f"predict: {p}: {exc}", file=sys.stderr)
                continue
            for f in range(n):
                rows.append({"image_id": f"ID_{stem}_{f:03d}", "source": "nifti", "frame": f,
                             "path": relative(p, root), "patient_id": stem, "study_id": stem,
                             "series_id": stem})
    elif images:
        layout = "image folder"
        for p in images:
            rows.append({"image_id": normalize_image_id(p.name), "source": "image", "path": relative(p, root)})
    else:
        looked_at = 1 if path.is_file() else sum(1 for _ in iter_files(path, ("",)))
        raise PredictError(f"--data {path}: found no DICOM (*.dcm or DICM preamble), NIfTI (.nii, .nii.gz) or "
                           f"PNG/JPG files ({looked_at} files looked at)")
    slices = pd.DataFrame(rows)
    dup = slices["image_id"].duplicated(keep=False)
    if dup.any():
        example = slices.loc[dup, "path"].head(2).tolist()
        raise PredictError(f"--data {path}: {int(dup.sum())} files map to the same image id (e.g. {example}); "
                           "rename them so their names are unique")
    return Dataset(root=root, layout=layout, slices=conform(slices))


def _write_test(work: Path, model: str, frame: pd.DataFrame) -> None:
    """The merged test file of `model` in the prediction work folder (mean over folds, fold -1)."""
    from ichkit.oof import merged_paths, validate_predictions

    frame = validate_predictions(frame, f"predictions of {model}")
    with atomic_path(merged_paths(work, model)[1]) as tmp:
        frame.to_parquet(tmp, index=False)


def predict_model(trained: Path, work: Path, cfg: dict[str, Any], slices: pd.DataFrame, model: str,
                  folds: list[int], ids: list[str]) -> pd.DataFrame:
    """Mean over the fold models of `model` (trained in `trained`) on `ids` (prepared in `work`): each fold
    restored with its family's `FoldTrainer.load`, so any registered family (classical, CNN, the stacker)
    predicts the same way."""
    from ichkit.engine.driver import fold_dir_of, train_settings
    from ichkit.engine.trainer import FoldContext
    from ichkit.models import get_model_spec
    from ichkit.outputs.ensemble import mean_predictions

    spec = get_model_spec(model)
    if spec.trainer is None:
        raise PredictError(f"model {model}: its family registered no FoldTrainer to load")
    if spec.setup is not None:  # e.g. the classical features of the new images, computed once with all cores
        spec.setup(cfg, ids, tuple(spec.features), True)
    parts = []
    for k in folds:
        ctx = FoldContext(cfg=cfg, work=work, model=model, fold=k, seed=int(cfg["train"]["seed"]), task="7class",
                          slices=slices, labels=pd.DataFrame(), options=train_settings(cfg, "7class"))
        parts.append(spec.trainer.load(fold_dir_of(trained, model, k), ctx).predict(ids))
    return mean_predictions(parts, fold=-1)


def predict_masks(trained: Path, work: Path, cfg: dict[str, Any], slices: pd.DataFrame, folds: list[int],
                  ids: list[str]) -> str | None:
    """Apply the segmentation model whose masks the submission carries (`seg.submit_model`) to the new
    images, fold by fold, into ``<work>/seg_test/<model>/fold<k>.parquet``: what the submission writer turns
    into mask PNGs, the RLE CSV and volumes (`ichkit.outputs.masks`). None (nothing written) where the
    segmentation family is not installed or that model was not trained in `trained`."""
    import importlib.util

    from ichkit.engine.driver import fold_dir_of
    from ichkit.engine.trainer import FoldContext
    from ichkit.models import get_model_spec

    if not cfg["submit"]["masks"] or "seg" not in cfg or importlib.util.find_spec("ichkit.models.seg.results") is None:
        return None
    from ichkit.models.seg import results

    model = cfg["seg"]["submit_model"]
    if not all((fold_dir_of(trained, model, k)).is_dir() for k in folds):
        return None
    spec = get_model_spec(model)
    for k in folds:
        ctx = FoldContext(cfg=cfg, work=work, model=model, fold=k, seed=int(cfg["train"]["seed"]), task="seg",
                          slices=slices, labels=pd.DataFrame())
        frame = results.validate(spec.trainer.load(fold_dir_of(trained, model, k), ctx).predict(ids),
                                 f"test masks of {model} fold {k} on {work}")
        with atomic_path(results.fold_paths(work, model, k)[1]) as tmp:
            frame.to_parquet(tmp, index=False)
    return model


def data_key(path: Path) -> str:
    path = Path(path).resolve()
    name = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem or "data"
    return f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def predict(data: Path, trained: Path, out_dir: Path | None = None, workers: int | None = None) -> dict[str, Any]:
    """Prepare `data`, apply `trained`'s ensemble, write the submission files; return the sidecar."""
    from ichkit.outputs.ensemble import read_ensemble
    from ichkit.outputs.submit import run_id_of, write_submission
    from ichkit.prepare import prepare_dataset
    from ichkit.table import read_table

    trained = Path(trained)
    ensemble = read_ensemble(trained)
    key = data_key(data)
    work = trained / "predict" / key
    cfg = json.loads(json.dumps(ensemble["cfg"]))  # the trained run's settings, a private copy
    cfg["paths"]["work"] = str(work)
    ds = unlabelled_dataset(data)
    print(f"predict: {len(ds.slices)} slices ({ds.layout}) from {ds.root}; preparing into {work} with the "
          "trained run's settings")
    summary = prepare_dataset(ds, work, cfg, workers=workers)
    if not summary["in_cache"]:
        raise PredictError(f"--data {data}: every input was quarantined (see {summary['paths']['quarantine']})")
    slices = read_table(work).slices
    ids = slices.loc[slices["status"] == "ok", "image_id"].astype(str).tolist()
    folds = [int(k) for k in ensemble["folds"]]
    needed = ensemble["first_level"] if ensemble["winner"] in ("mean", "stack") else [ensemble["model"]]
    if ensemble["winner"] == "stack":  # the stacker reads the first-level test files written before it
        needed = [*needed, ensemble["model"]]
    for m in needed:
        print(f"predict: {m} ({len(folds)} fold models, mean over folds)")
        _write_test(work, m, predict_model(trained, work, cfg, slices, m, folds, ids))

    seg_model = predict_masks(trained, work, cfg, slices, folds, ids)
    if seg_model:
        print(f"predict: masks of {seg_model} ({len(folds)} fold models, voted)")

    from ichkit.outputs.ensemble import ensemble_test

    train_table = read_table(trained).slices  # the fallback prior comes from the trained run's labels
    run_id = f"{run_id_of(ensemble)}_predict-{key}"
    out = Path(out_dir or ensemble["cfg"]["paths"]["submissions"])
    return write_submission(work, out, ensemble, ensemble_test(work, ensemble), slices, ds.root, ds.layout, cfg,
                            extra={"predict": {"data": str(Path(data).resolve()), "trained_run": str(trained),
                                               "work": str(work)}},
                            run_id=run_id, prior_table=train_table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True,
                        help="a folder of DICOMs, a NIfTI volume (or folder of them), or a folder of PNG/JPG slices")
    parser.add_argument("--models", type=Path, default=None,
                        help="work folder of the trained run (default: paths.work)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the run's paths.submissions)")
    parser.add_argument("--workers", type=int, default=None, help="prepare worker processes (default: prepare.workers)")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from ichkit.outputs.submit import format_sidecar

    sidecar = predict(args.data, args.models or Path(cfg["paths"]["work"]), args.out, args.workers)
    print(format_sidecar(sidecar))
    return 0
