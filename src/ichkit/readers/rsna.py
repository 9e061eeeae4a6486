"""The RSNA 2019 Intracranial Hemorrhage Detection layout (layout "rsna").

    <root>/stage_2_train.csv               long labels: ID,Label with rows ID_<sop>_<subtype>
    <root>/stage_2_sample_submission.csv   test ids (same form, Label 0.5); optional
    <root>/stage_2_train/ID_<sop>.dcm      any folder of *.dcm works; folders starting with _ or . are skipped
    <root>/stage_2_test/ID_<sop>.dcm
    <root>/Results_*.csv                   optional polygon ground truth (see polygons.py)
    <root>/masks/ID_<sop>.dcm|png|nii[.gz] optional mask files, same stem as the slice (see masks.py)

Train rows are the ids of the label CSV, test rows those of the sample submission. The DICOMs are only
listed, never opened: `prepare` reads their tags (patient, study, series, z) while decoding them. An id
whose file is missing keeps the path it would have (its split's folder), so that `prepare` quarantines it
as "file not found" instead of it vanishing; DICOMs that no CSV mentions are reported, not added.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path, PurePosixPath

import pandas as pd

from ichkit.labels import RSNA_LABELS, LabelFileError, iter_long_rows, read_rsna_long_labels
from ichkit.readers.common import PATIENTS_CSV, csv_header, examples, index_by_image_id, iter_files, log, with_label7
from ichkit.readers.masks import MASKS_DIR, attach_mask_files
from ichkit.readers.polygons import RESULTS_GLOB, keep_known_images, read_polygon_files
from ichkit.table import Dataset, conform

LONG_HEADER = ["ID", "Label"]
TRAIN_FOLDER_GLOB = "stage_*_train*"
TEST_FOLDER_GLOB = "stage_*_test*"


def is_sample_submission(path: Path) -> bool:
    return "sample_submission" in path.name.lower()


def long_label_csvs(root: Path) -> list[Path]:
    """CSV files directly in `root` whose header is `ID,Label` (label files and sample submissions)."""
    return [path for path in sorted(root.glob("*.csv")) if csv_header(path) == LONG_HEADER]


def looks_like_rsna(root: Path) -> bool:
    """A CSV in the root (an `ID,Label` one, or any other but patients.csv: a label file this reader will
    then refuse by name instead of the folder passing for an unlabelled one), and DICOMs (a stage folder,
    or any *.dcm below the root)."""
    if not long_label_csvs(root) and not any(p.name != PATIENTS_CSV for p in root.glob("*.csv")):
        return False
    if any(p.is_dir() for p in (*root.glob(TRAIN_FOLDER_GLOB), *root.glob(TEST_FOLDER_GLOB))):
        return True
    return next(iter_files(root, (".dcm",)), None) is not None


def _latest_stage(paths: list[Path], kind: str) -> Path | None:
    """One file of a kind; with several (stage_1_ and stage_2_ copies) the highest stage, else an error."""
    if len(paths) <= 1:
        return paths[0] if paths else None
    stages = [re.search(r"stage_(\d+)", p.name) for p in paths]
    if not all(stages):
        raise ValueError(f"several {kind} files, cannot tell which to use: {', '.join(p.name for p in paths)}")
    chosen = max(zip(paths, stages), key=lambda ps: int(ps[1].group(1)))[0]
    log.warning("rsna: several %s files; using %s, ignoring %s", kind, chosen.name,
                ", ".join(p.name for p in paths if p != chosen))
    return chosen


def read_submission_ids(path: Path) -> list[str]:
    """Image ids of a sample submission (`ID_<sop>_<subtype>,Label` rows), in file order, once each."""
    return list(dict.fromkeys(image_id for _, image_id, _, _ in iter_long_rows(path)))


def _default_folder(found: list[str], root: Path, folder_glob: str) -> PurePosixPath:
    """Where a split's missing files would be: the folder holding most of its files, else its stage
    folder, else the root."""
    parents = Counter(PurePosixPath(p).parent for p in found)
    if parents:
        return parents.most_common(1)[0][0]
    folders = sorted(p for p in root.glob(folder_glob) if p.is_dir())
    return PurePosixPath(folders[0].name) if folders else PurePosixPath(".")


def _paths(image_ids: list[str], dicoms: dict[str, str], root: Path, folder_glob: str, split: str) -> list[str]:
    found = [dicoms[i] for i in image_ids if i in dicoms]
    missing = [i for i in image_ids if i not in dicoms]
    if missing:
        log.warning("rsna: %d %s ids have no DICOM file (e.g. %s); prepare will quarantine them as file not found",
                    len(missing), split, examples(missing))
    folder = _default_folder(found, root, folder_glob)
    return [dicoms.get(i) or (folder / f"{i}.dcm").as_posix() for i in image_ids]


def _refuse_unrecognised_label_files(root: Path, recognised: list[Path]) -> None:
    """A CSV in the root that is neither a sample submission nor another known file, while no label CSV
    was recognised, is a label file this reader cannot read: an error, never a silently test-only dataset."""
    known = {p.name for p in recognised} | {PATIENTS_CSV}
    # the likeliest label file first: a name that says train or label
    candidates = sorted(root.glob("*.csv"), key=lambda p: (not any(w in p.name.lower() for w in ("train", "label")), p.name))
    for path in candidates:
        if path.name in known or path.match(RESULTS_GLOB):
            continue
        header = csv_header(path)
        what = "an empty file" if not header else f"header {','.join(header)!r}"
        raise LabelFileError(path, 1, f"{what}; an RSNA label CSV has the header 'ID,Label' (exactly, case included) "
                                      "and rows ID_<sop>_<subtype>,<0|1>. Without it the dataset has no training images")


def read_rsna(root: Path) -> Dataset:
    """Read the RSNA layout at `root` (see the module docstring)."""
    from tqdm import tqdm

    root = Path(root)
    csvs = long_label_csvs(root)
    label_file = _latest_stage([p for p in csvs if not is_sample_submission(p)], "label CSV")
    submission = _latest_stage([p for p in csvs if is_sample_submission(p)], "sample submission")
    if label_file is None:
        _refuse_unrecognised_label_files(root, csvs)
    if label_file is None and submission is None:
        raise ValueError(f"{root}: no RSNA label CSV (header ID,Label) and no sample submission")

    labels = read_rsna_long_labels(label_file) if label_file is not None else pd.DataFrame(columns=["image_id", *RSNA_LABELS])
    if label_file is not None and labels.empty:
        raise LabelFileError(label_file, None, "no label rows: expected lines ID_<sop>_<subtype>,<0|1> after the "
                                               "header ID,Label, so the dataset would have no training images")
    test_ids = read_submission_ids(submission) if submission is not None else []
    both = set(labels["image_id"]) & set(test_ids)
    if both:
        raise ValueError(f"{root}: {len(both)} ids are both labelled in {label_file.name} and test ids in "
                         f"{submission.name} (e.g. {examples(sorted(both))})")

    listed = (p for p in iter_files(root, (".dcm",)) if p.relative_to(root).parts[0] != MASKS_DIR)
    dicoms = index_by_image_id(tqdm(listed, desc="listing DICOM files", unit="file"), root)

    train = labels.copy()
    train["split"] = "train"
    train["label7"] = with_label7(labels, label_file) if len(labels) else pd.Series(dtype="string")
    train["path"] = _paths(list(labels["image_id"]), dicoms, root, TRAIN_FOLDER_GLOB, "train")
    test = pd.DataFrame({"image_id": test_ids, "split": "test", "label7": pd.NA})
    test["path"] = _paths(test_ids, dicoms, root, TEST_FOLDER_GLOB, "test")
    slices = pd.concat([train, test], ignore_index=True) if len(test) else train
    slices["source"] = "dicom"

    unlisted = sorted(set(dicoms) - set(slices["image_id"]))
    if unlisted:
        log.warning("rsna: %d DICOM files are in no label CSV or sample submission (e.g. %s); not added",
                    len(unlisted), examples(dicoms[i] for i in unlisted))

    polygons = read_polygon_files(sorted(root.glob(RESULTS_GLOB)))
    polygons = keep_known_images(polygons, slices["image_id"], "rsna")
    slices["has_mask"] = slices["image_id"].isin(set(polygons["image_id"]))
    slices = attach_mask_files(slices, root, "rsna")
    return Dataset(root=root, layout="rsna", slices=conform(slices), polygons=polygons)
