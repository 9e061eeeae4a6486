"""A bare folder of DICOM files without labels (layout "dicoms"): an inference dataset.

    <root>/**/*.dcm       any folder structure (one folder per series, as PACS exports do); folders
                          starting with _ or . are skipped

Every slice is in the test split (there is nothing to train on; `folds` says so). Ids are `ID_<file stem>`;
when two files share a stem (IM0001.dcm in every series folder) ids are made from the relative path
instead (`ID_series1_IM0001`), so no file is lost. patient / study / series / z come from the tags at
`prepare`, with the grouping fallbacks of prepare (PatientID -> patients.csv -> study -> series -> image).
This layout is tried last, after `rsna` (a folder with an `ID,Label` CSV is RSNA data); a folder holding
any CSV (but patients.csv), or a subfolder that is a labelled dataset, is not taken for one.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd

from ichkit.labels import normalize_image_id
from ichkit.readers.common import PATIENTS_CSV, is_private, iter_files, log, relative
from ichkit.table import Dataset, conform

DICOM_SUFFIXES = (".dcm", ".dicom")


def looks_like_dicoms(root: Path) -> bool:
    """DICOM files below `root`, no CSV in it (a label CSV the rsna layout does not recognise must be an
    error there, never a silently unlabelled dataset), and no subfolder that is a labelled dataset."""
    from ichkit.readers import LAYOUTS

    if any(p.name != PATIENTS_CSV for p in root.glob("*.csv")):
        return False
    for sub in (p for p in root.iterdir() if p.is_dir() and not is_private(p.name)):
        if any(looks(sub) for name, (looks, _) in LAYOUTS.items() if name != "dicoms"):
            return False
    return next(iter_files(root, DICOM_SUFFIXES), None) is not None


def _path_id(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0]
    return "ID_" + re.sub(r"[^0-9A-Za-z]+", "_", stem).strip("_")


def read_dicoms(root: Path) -> Dataset:
    """Read a bare DICOM folder at `root` as an unlabelled (test) dataset."""
    from tqdm import tqdm

    root = Path(root)
    rels = [relative(p, root) for p in tqdm(iter_files(root, DICOM_SUFFIXES), desc="listing DICOM files", unit="file")]
    if not rels:
        raise ValueError(f"{root}: no DICOM files (*.dcm, *.dicom) found")
    stems = Counter(normalize_image_id(Path(r).name) for r in rels)
    ids = [normalize_image_id(Path(r).name) if stems[normalize_image_id(Path(r).name)] == 1 else _path_id(r) for r in rels]
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
