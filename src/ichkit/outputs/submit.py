"""Stage `submit`: the competition files of the chosen ensemble -> ``submissions/``.

``ichkit submit [--out DIR]`` reads ``<work>/stack/ensemble.json`` (written by `ichkit stack`) and the
merged test predictions of the winner, and writes, each name starting with the run id
(``<UTC time>_<ensemble model>_<fingerprint>``):

- ``<run>_rsna.csv``     the RSNA 2019 format: ``ID,Label``, six rows per test image (``ID_<sop>_<label>``)
                         in the order of the sample submission (the table's test order where the dataset
                         has none); validated before it is written (`validate_rsna_submission`)
- ``<run>_7class.csv``   image_id, predicted class and the seven class probabilities
- ``<run>_masks/`` ...   test masks, the RLE CSV and the per-study volumes, when a segmentation model has
                         test predictions and `ichkit.outputs.masks` exists (branch seg)
- ``<run>.json``         the sidecar: run id, files, models, folds, OOF scores of the candidates, task, git
                         commit, settings, and the test images that got the fallback

A test image that was quarantined (unreadable file) has no prediction; it still gets its rows, filled with
the documented fallback `submit.fallback` = ``prior``: the training images' label frequencies (each RSNA
label's mean, and the 7-class frequencies), and it is listed in the sidecar with its quarantine reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.errors import IchkitError
from ichkit.files import atomic_path, write_text_atomic
from ichkit.labels import CLASSES7, RSNA_LABELS

FALLBACKS = ("prior",)


class SubmissionError(IchkitError):
    """A submission that would be rejected; the message names the problem and example ids."""


def _examples(values, n: int = 3) -> str:
    values = list(values)
    more = f" and {len(values) - n} more" if len(values) > n else ""
    return ", ".join(str(v) for v in values[:n]) + more


def expected_row_ids(image_ids: list[str]) -> list[str]:
    """The six RSNA row ids of each image (RSNA_LABELS order within an image)."""
    return [f"{i}_{label}" for i in image_ids for label in RSNA_LABELS]


def sample_row_order(sample: Path | None, test_ids: list[str]) -> list[str]:
    """Row ids in the sample submission's order; without a sample, `expected_row_ids(test_ids)`."""
    from ichkit.labels import iter_long_rows

    if sample is None:
        return expected_row_ids(test_ids)
    return [f"{image_id}_{subtype}" for _, image_id, subtype, _ in iter_long_rows(sample)]


def validate_rsna_submission(sub: pd.DataFrame, expected_ids: list[str], what: str = "submission") -> None:
    """Raise SubmissionError unless `sub` is `ID,Label` with every expected row id exactly once, nothing
    else, and every Label a number in [0, 1]."""
    if list(sub.columns) != ["ID", "Label"]:
        raise SubmissionError(f"{what}: columns must be ['ID', 'Label'], got {list(sub.columns)}")
    ids = sub["ID"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise SubmissionError(f"{what}: {dup.nunique()} ids appear more than once (e.g. {_examples(dup.unique())})")
    expected = set(expected_ids)
    missing = [i for i in expected_ids if i not in set(ids)]
    if missing:
        raise SubmissionError(f"{what}: {len(missing)} of {len(expected_ids)} expected ids are missing "
                              f"(e.g. {_examples(missing)})")
    unknown = [i for i in ids if i not in expected]
    if unknown:
        raise SubmissionError(f"{what}: {len(unknown)} ids are not in the sample submission (e.g. {_examples(unknown)})")
    labels = pd.to_numeric(sub["Label"], errors="coerce")
    nan = ids[labels.isna()]
    if len(nan):
        raise SubmissionError(f"{what}: {len(nan)} labels are NaN or not numbers (e.g. {_examples(nan)})")
    outside = ids[(labels < 0) | (labels > 1)]
    if len(outside):
        first = labels[(labels < 0) | (labels > 1)].iloc[0]
        raise SubmissionError(f"{what}: {len(outside)} labels are outside [0, 1] (e.g. {outside.iloc[0]} = {first:g})")


def rsna_submission(pred: pd.DataFrame, row_order: list[str]) -> pd.DataFrame:
    """`ID,Label` rows in `row_order` from a frame with image_id and rsna_<label> columns."""
    from ichkit.oof import RSNA_COLUMNS

    long = pred.set_index(pred["image_id"].astype(str))[list(RSNA_COLUMNS)]
    long.columns = list(RSNA_LABELS)
    values = long.stack()
    values.index = [f"{i}_{label}" for i, label in values.index]
    sub = pd.DataFrame({"ID": row_order, "Label": values.reindex(row_order).to_numpy()})
    validate_rsna_submission(sub, row_order)
    return sub


def class7_submission(pred: pd.DataFrame) -> pd.DataFrame:
    from ichkit.oof import PROB_COLUMNS

    p7 = pred[list(PROB_COLUMNS)].to_numpy()
    return pd.DataFrame({"image_id": pred["image_id"].astype(str),
                         "predicted_class": np.asarray(CLASSES7)[p7.argmax(axis=1)],
                         **{c: p7[:, j] for j, c in enumerate(CLASSES7)}})


def prior_fallback(slices: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """Contract rows for `ids` holding the training images' label frequencies (fold -1)."""
    from ichkit.metrics import as_class_index
    from ichkit.oof import MERGED_TEST_FOLD, predictions_frame

    train = slices[(slices["split"] == "train") & (slices["status"] == "ok")]
    if not len(train):
        raise SubmissionError("no labelled training images in the table: the prior fallback needs them")
    p6 = train[list(RSNA_LABELS)].astype(float).mean().to_numpy()
    p7 = np.bincount(as_class_index(train["label7"].to_numpy()), minlength=len(CLASSES7)) / len(train)
    return predictions_frame(ids, MERGED_TEST_FOLD, np.tile(p7, (len(ids), 1)), np.tile(p6, (len(ids), 1)))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_id_of(ensemble: dict[str, Any]) -> str:
    stamp = ensemble["created"].replace("-", "").replace(":", "").split("+")[0]
    return f"{stamp}_{ensemble['model']}_{ensemble['fingerprint'][:8]}"


def sample_submission_path(root: Path, layout: str) -> Path | None:
    """The dataset's sample submission (RSNA layout), else None."""
    if layout != "rsna":
        return None
    from ichkit.readers.rsna import is_sample_submission, long_label_csvs

    samples = [p for p in long_label_csvs(root) if is_sample_submission(p)]
    return sorted(samples)[-1] if samples else None


def test_predictions_with_fallback(pred: pd.DataFrame, slices: pd.DataFrame, test_ids: list[str],
                                   fallback: str, reasons: dict[str, str] | None = None,
                                   prior_table: pd.DataFrame | None = None,
                                   ) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """`pred` completed to every id of `test_ids` (fallback rows for the others), and the fallback list
    (image id, table status, quarantine reason from `reasons`)."""
    if fallback not in FALLBACKS:
        raise SubmissionError(f"submit.fallback must be one of {FALLBACKS}, got {fallback!r}")
    have = set(pred["image_id"].astype(str))
    lacking = [i for i in test_ids if i not in have]
    by_id = slices.set_index(slices["image_id"].astype(str))
    listed = [{"image_id": i, "status": str(by_id["status"].get(i, "not in table")),
               "reason": (reasons or {}).get(i, ""), "fallback": fallback} for i in lacking]
    if lacking:
        prior = prior_fallback(slices if prior_table is None else prior_table, lacking)
        pred = pd.concat([pred, prior], ignore_index=True)
    return pred, listed


def write_submission(work: Path, out_dir: Path, ensemble: dict[str, Any], pred: pd.DataFrame,
                     slices: pd.DataFrame, root: Path, layout: str, cfg: dict[str, Any],
                     extra: dict[str, Any] | None = None, run_id: str | None = None,
                     prior_table: pd.DataFrame | None = None) -> dict[str, Any]:
    """Validate and write the RSNA CSV, the 7-class CSV, masks (when available) and the sidecar.

    `pred` holds the ensemble's test predictions (contract columns); every test image of `slices` gets
    rows, the ones without a prediction via the fallback, whose prior comes from the training images of
    `prior_table` (default `slices`). `run_id` defaults to `run_id_of(ensemble)`. Returns the sidecar.
    """
    from ichkit.cache import ImageCache

    test = slices[slices["split"] == "test"]
    test_ids = test["image_id"].astype(str).tolist()
    if not test_ids:
        raise SubmissionError("the table has no test images: nothing to submit")
    pred, fallback = test_predictions_with_fallback(pred, slices, test_ids, cfg["submit"]["fallback"],
                                                    read_quarantine_reasons(ImageCache(work).quarantine_path),
                                                    prior_table)
    sample = sample_submission_path(root, layout)
    row_order = sample_row_order(sample, test_ids)
    expected_images = {r.rpartition("_")[0] for r in row_order}
    unpredicted = sorted(expected_images - set(pred["image_id"].astype(str)))
    if unpredicted:
        raise SubmissionError(f"{len(unpredicted)} images of {sample} are not test images of the table "
                              f"(e.g. {_examples(unpredicted)}): re-run `ichkit prepare`")
    rsna = rsna_submission(pred, row_order)
    class7 = class7_submission(pred.set_index(pred["image_id"].astype(str)).loc[test_ids].reset_index(drop=True))

    run_id = run_id or run_id_of(ensemble)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"rsna": out_dir / f"{run_id}_rsna.csv", "class7": out_dir / f"{run_id}_7class.csv"}
    with atomic_path(files["rsna"]) as tmp:
        rsna.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(files["class7"]) as tmp:
        class7.to_csv(tmp, index=False, float_format="%.6f")
    files.update(write_masks(work, out_dir, run_id, cfg))
    sidecar = {
        "run_id": run_id,
        "files": {k: str(v) for k, v in files.items()},
        "task": "7class + rsna",
        "ensemble": {k: ensemble[k] for k in ("winner", "model", "first_level", "best_single", "select_by", "gain")},
        "oof_scores": ensemble["candidates"],
        "first_level_oof_scores": ensemble["singles"],
        "folds": ensemble["folds"],
        "n_test_images": len(test_ids),
        "n_rows": len(rsna),
        "row_order": str(sample) if sample else "table test order (no sample submission)",
        "fallback": {"method": cfg["submit"]["fallback"], "images": fallback},
        "git_commit": git_commit(),
        "data": {"root": str(root), "layout": layout},
        "settings": ensemble.get("cfg", cfg),
        **(extra or {}),
    }
    files["sidecar"] = out_dir / f"{run_id}.json"
    sidecar["files"]["sidecar"] = str(files["sidecar"])
    write_text_atomic(files["sidecar"], json.dumps(sidecar, indent=2, default=str) + "\n")
    return sidecar


def read_quarantine_reasons(path: Path) -> dict[str, str]:
    """image id -> quarantine reason from a quarantine.csv ({} when there is none)."""
    if not path.is_file():
        return {}
    q = pd.read_csv(path, dtype=str, keep_default_na=False)
    return dict(zip(q["image_id"], q["reason"])) if "reason" in q.columns else {}


def write_masks(work: Path, out_dir: Path, run_id: str, cfg: dict[str, Any]) -> dict[str, Path]:
    """Test masks, RLE CSV and volumes through `ichkit.outputs.masks` (branch seg) when it and a
    segmentation model's test predictions exist; {} otherwise."""
    import importlib.util

    if not cfg["submit"]["masks"] or importlib.util.find_spec("ichkit.outputs.masks") is None:
        return {}
    from ichkit.outputs import masks

    writer = getattr(masks, "write_submission_masks", None)
    if writer is None:
        return {}
    return {k: Path(v) for k, v in writer(work=work, out_dir=out_dir, run_id=run_id, cfg=cfg).items()}


def submit(cfg: dict[str, Any], out_dir: Path | None = None, force: bool = False) -> dict[str, Any]:
    """Write the submission files of the ensemble `ichkit stack` chose; an existing complete set of the
    same run id is kept (unless `force`)."""
    from ichkit.outputs.ensemble import ensemble_test, read_ensemble
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    ensemble = read_ensemble(work)
    ds = read_table(work)
    out_dir = Path(out_dir or cfg["paths"]["submissions"])
    done = out_dir / f"{run_id_of(ensemble)}.json"
    if done.is_file() and not force:
        sidecar = json.loads(done.read_text())
        if all(Path(p).exists() for p in sidecar["files"].values()):
            print(f"submission {sidecar['run_id']}: done already (--force to rewrite)")
            return sidecar
    sidecar = write_submission(work, out_dir, ensemble, ensemble_test(work, ensemble), ds.slices, ds.root,
                               ds.layout, cfg)
    print(format_sidecar(sidecar))
    return sidecar


def format_sidecar(sidecar: dict[str, Any]) -> str:
    e = sidecar["ensemble"]
    lines = [f"submission {sidecar['run_id']}: {sidecar['n_test_images']} test images, {sidecar['n_rows']} RSNA rows "
             f"(validated), ensemble = {e['winner']} ({e['model']})"]
    fb = sidecar["fallback"]["images"]
    if fb:
        lines.append(f"  {len(fb)} test images without a prediction got the {sidecar['fallback']['method']} fallback: "
                     + _examples(f"{i['image_id']} ({i['reason'] or i['status']})" for i in fb))
    lines += [f"  wrote {k}: {v}" for k, v in sidecar["files"].items()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: paths.submissions)")
    parser.add_argument("--force", action="store_true", help="rewrite the files of a run id that exist already")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    submit(cfg, args.out, args.force)
    return 0
