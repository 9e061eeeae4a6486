"""What the dataset readers share: file discovery that skips private folders, id indexing, the patient map,
and the 7-class column with the label file named on error."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from ichkit.labels import LabelFileError, normalize_image_id, open_label_csv, seven_class_column

log = logging.getLogger("ichkit.readers")

PATIENTS_CSV = "patients.csv"


def is_private(name: str) -> bool:
    """Folders and files starting with `_` or `.` are not data (the demo keeps test truth in `_truth/`)."""
    return name.startswith(("_", "."))


def iter_files(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files under `root` whose name ends with one of `suffixes` (case-insensitive), in a stable order,
    never descending into private folders. Lazy, so `next(...)` answers "is there any?" cheaply."""
    suffixes = tuple(s.lower() for s in suffixes)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_private(d))
        for name in sorted(filenames):
            if not is_private(name) and name.lower().endswith(suffixes):
                yield Path(dirpath) / name


def csv_header(path: Path) -> list[str]:
    """The stripped header row of a CSV (used to tell which kind of CSV a file is)."""
    with open_label_csv(path) as (header, _):
        return header


def relative(path: Path, root: Path) -> str:
    """`path` relative to the data root, with forward slashes (the table is shared across machines)."""
    return path.relative_to(root).as_posix()


def index_by_image_id(files: Iterable[Path], root: Path) -> dict[str, str]:
    """image id (`ID_<stem>`) -> path relative to `root`. Two files with one id make the id ambiguous."""
    index: dict[str, str] = {}
    for path in files:
        image_id = normalize_image_id(path.name)
        rel = relative(path, root)
        if image_id in index:
            raise ValueError(f"{root}: image {image_id} is there twice: {index[image_id]} and {rel}")
        index[image_id] = rel
    return index


def cell_text(row: pd.Series, key: str) -> str:
    """A text cell of a table row, "" where the row lacks it or holds <NA>."""
    value = row.get(key)
    return "" if value is None or pd.isna(value) else str(value)


def examples(items: Iterable[str], n: int = 3) -> str:
    """The first `n` items for a message: `a, b, c, ...`."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (", ..." if len(items) > n else "")


def with_label7(labels: pd.DataFrame, source: Path | str) -> pd.Series:
    """`labels.seven_class_column`, with the label file named when `any` contradicts the subtypes."""
    try:
        return seven_class_column(labels)
    except ValueError as exc:
        raise LabelFileError(source, None, str(exc)) from None


def read_patient_map(path: Path) -> dict[str, str]:
    """`patients.csv` (columns image, patient) -> {image id: patient id}."""
    out: dict[str, str] = {}
    with open_label_csv(path) as (header, rows):
        if "image" not in header or "patient" not in header:
            raise LabelFileError(path, 1, f"expected columns 'image' and 'patient', got {header!r}")
        i_image, i_patient = header.index("image"), header.index("patient")
        for lineno, rec in rows:
            image_id, patient = normalize_image_id(rec[i_image]), rec[i_patient].strip()
            if not patient:
                raise LabelFileError(path, lineno, f"image {image_id} has an empty patient")
            if out.get(image_id, patient) != patient:
                raise LabelFileError(path, lineno, f"image {image_id} is given two patients: {out[image_id]} and {patient}")
            out[image_id] = patient
    return out


def assign_patients(image_ids: pd.Series, root: Path, layout: str) -> pd.Series:
    """Patient per image for the image layouts, which carry no patient ids in their files.

    With `<root>/patients.csv` (image, patient) the patients come from there; an image it does not list
    is its own group (with a warning). Without it every image is its own group, patient_id = image_id,
    and a warning says that folds can then only be grouped per image: slices of one patient may land in
    different folds, which makes cross-validation optimistic.
    """
    path = root / PATIENTS_CSV
    if not path.is_file():
        log.warning(
            "%s: no %s, so every image is its own patient group; folds can then only be grouped per image "
            "(slices of one patient may fall in different folds). Add %s (columns image, patient) to group them.",
            layout, PATIENTS_CSV, path,
        )
        return image_ids.astype("string").copy()
    mapping = read_patient_map(path)
    patients = image_ids.map(mapping)
    unlisted = patients.isna()
    if unlisted.any():
        log.warning("%s: %d images are not in %s and are their own patient group (e.g. %s)",
                    layout, int(unlisted.sum()), path, examples(image_ids[unlisted]))
    return patients.fillna(image_ids).astype("string")
