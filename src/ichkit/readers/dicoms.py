"""A bare folder of DICOM files without labels (layout "dicoms"): an inference dataset.

    <root>/**/*.dcm       any folder structure (one folder per series, as PACS exports do); folders
                          and files starting with _ or . are skipped
    <root>/**/IM0001      files without a suffix, or named by their UID (`1.2.840.1234.5`), as PACS and
                          CD exports write them, are DICOM files when they carry the DICOM preamble
                          (128 bytes, then `DICM`); a file without it is not read (pydicom refuses it too)

Every slice is in the test split (there is nothing to train on; `folds` says so). Ids are `ID_<file stem>`
(the whole name for a file without a .dcm / .dicom suffix);
when two files share a stem (IM0001.dcm in every series folder) ids are made from the relative path
instead (`ID_series1_IM0001`), so no file is lost. patient / study / series / z come from the tags at
`prepare`, with the grouping fallbacks of prepare (PatientID -> patients.csv -> study -> series -> image).
This layout is tried last, after `rsna` (a folder with an `ID,Label` CSV is RSNA data); a folder holding
any CSV (but patients.csv), or a subfolder that is a labelled dataset, is not taken for one.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ichkit.labels import normalize_image_id
from ichkit.readers.common import PATIENTS_CSV, is_private, iter_files, log, relative
from ichkit.table import Dataset, conform

DICOM_SUFFIXES = (".dcm", ".dicom")
PREAMBLE = 128  # bytes before the b"DICM" magic of a DICOM file (PS3.10 7.1)


def has_dicom_suffix(name: str) -> bool:
    return name.lower().endswith(DICOM_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """A *.dcm / *.dicom file, or a file without a suffix (or named by a UID, `1.2.840.5`) that starts with
    the DICOM preamble. Files with another suffix (.png, .nii, .txt, ...) are never opened."""
    if has_dicom_suffix(path.name):
        return True
    suffix = path.suffix[1:]
    if suffix and not suffix.isdigit():
        return False
    try:
        with path.open("rb") as f:
            return f.read(PREAMBLE + 4)[PREAMBLE:] == b"DICM"
    except OSError:
        return False


def iter_dicom_files(root: Path) -> Iterator[Path]:
    """The DICOM files under `root` (see `is_dicom_file`), in a stable order, skipping private folders and
    files. Lazy, so `next(...)` answers "is there any?" cheaply."""
    files = iter_files(root, ("",))  # every non-private file; the suffix test is `is_dicom_file`'s
    return (p for p in files if is_dicom_file(p))


def dicom_image_id(name: str) -> str:
    """`ID_x.dcm` -> `ID_x`; a name without a DICOM suffix is kept whole (`1.2.840.5` -> `ID_1.2.840.5`)."""
    return normalize_image_id(name if has_dicom_suffix(name) else name + ".dcm")


def looks_like_dicoms(root: Path) -> bool:
    """DICOM files below `root`, no CSV in it (a label CSV the rsna layout does not recognise must be an
    error there, never a silently unlabelled dataset), and no subfolder that is a labelled dataset."""
    from ichkit.readers import LAYOUTS

    if any(p.name != PATIENTS_CSV for p in root.glob("*.csv")):
        return False
    for sub in (p for p in root.iterdir() if p.is_dir() and not is_private(p.name)):
        if any(looks(sub) for name, (looks, _) in LAYOUTS.items() if name != "dicoms"):
            return False
    return next(iter_dicom_files(root), None) is not None


def _path_id(rel: str) -> str:
    stem = os.path.splitext(rel)[0] if has_dicom_suffix(rel) else rel
    return "ID_" + re.sub(r"[^0-9A-Za-z]+", "_", stem).strip("_")


def read_dicoms(root: Path, files: list[Path] | None = None) -> Dataset:
    """Read a bare DICOM folder at `root` as an unlabelled (test) dataset; `files` (below `root`) instead
    of every DICOM file found there, e.g. the one file `ichkit predict` was given."""
    from tqdm import tqdm

    root = Path(root)
    listed = iter_dicom_files(root) if files is None else iter(files)
    rels = [relative(p, root) for p in tqdm(listed, desc="listing DICOM files", unit="file")]
    if not rels:
        raise ValueError(f"{root}: no DICOM files (*.dcm, *.dicom, or files with the DICOM preamble) found")
    stems = Counter(dicom_image_id(Path(r).name) for r in rels)
    ids = [dicom_image_id(Path(r).name) if stems[dicom_image_id(Path(r).name)] == 1 else _path_id(r) for r in rels]
    clashes = [i for i, n in Counter(ids).items() if n > 1]
    if clashes:
        raise ValueError(f"{root}: several files map to the image id {clashes[0]}; rename them")
    if len(set(stems)) < len(rels):
        log.warning("dicoms: %d file names occur in several folders; their ids are made from the path",
                    sum(n for n in stems.values() if n > 1))
    log.warning("dicoms: %s holds %d DICOM files and no label CSV: an inference dataset (every slice in the "
                "test split); for training add labels (see the rsna layout)", root, len(rels))
    slices = pd.DataFrame({"image_id": ids, "path": rels, "split": "test", "source": "dicom", "has_mask": False})
    return Dataset(root=root, layout="dicoms", slices=conform(slices))
