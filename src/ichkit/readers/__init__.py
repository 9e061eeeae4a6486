"""Dataset readers: four on-disk layouts -> one `table.Dataset`, and loading one slice or mask of any of them.

Layouts (each module's docstring gives the files it expects and its rules):
- "rsna"    (rsna.py)    RSNA 2019 challenge: folders of DICOMs + the long label CSV + sample submission
- "renders" (renders.py) the reference dataset: renders/<class>/<window>/ID_*.jpg + hemorrhage-labels.csv
                         + Results_*.csv polygons
- "nifti"   (nifti.py)   PhysioNet CT-ICH: ct_scans/NNN.nii, masks/NNN.nii, hemorrhage_diagnosis_raw_ct.csv
- "images"  (images.py)  any folder of PNG/JPG slices + a labels CSV
- "dicoms"  (dicoms.py)  a bare folder of DICOMs without labels: an inference (test-only) dataset

Readers list files and read label files only; pixels are read later, one slice at a time, by `load_slice`.
An input that cannot be loaded raises `slicedata.BadInput` so that `prepare` quarantines it; a label file
that cannot be trusted raises `labels.LabelFileError` naming file and line. Problems that do not stop a
read (files no label mentions, labels without a file, ...) are logged as warnings with counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ichkit.errors import IchkitError
from ichkit.readers import dicoms, images, nifti, renders, rsna
from ichkit.readers.common import cell_text, is_private
from ichkit.slicedata import SliceData
from ichkit.table import Dataset


class DatasetError(IchkitError):
    """No usable dataset where one was asked for (none, several, an unknown layout); the message says which."""


# layout -> (recogniser, reader), in the order `detect_layout` tries them: the specific folder layouts
# first, the catch-all image folder last.
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], Dataset]]] = {
    "renders": (renders.looks_like_renders, renders.read_renders),
    "nifti": (nifti.looks_like_nifti, nifti.read_nifti),
    "rsna": (rsna.looks_like_rsna, rsna.read_rsna),
    "images": (images.looks_like_images, images.read_images),
    "dicoms": (dicoms.looks_like_dicoms, dicoms.read_dicoms),
}
# what each layout needs, for the message when none is found
LAYOUT_NEEDS: dict[str, str] = {
    "renders": "a renders/ folder",
    "nifti": "ct_scans/*.nii[.gz]",
    "rsna": "an ID,Label CSV beside DICOM files",
    "images": "a labels CSV (Image/ID/filename + labels) beside PNG/JPG files",
    "dicoms": "DICOM files (*.dcm or with the DICOM preamble: an unlabelled inference set)",
}


def describe_folder(folder: Path) -> str:
    """What a folder holds, by file kind, for a "no dataset found" message: `3 .csv, 0 .dcm, ...`."""
    from collections import Counter

    folder = Path(folder)
    if not folder.is_dir():
        return "it does not exist" if not folder.exists() else "it is a file, not a folder"
    kinds: Counter = Counter()
    for i, path in enumerate(p for p in folder.rglob("*") if p.is_file()):
        if i >= 100_000:
            break
        kinds[path.suffix.lower() or "(no suffix)"] += 1
    if not kinds:
        return "it is empty"
    return "it holds " + ", ".join(f"{n} {k}" for k, n in kinds.most_common(6))


def detect_layout(root: Path) -> str | None:
    """The layout of the dataset at `root`, or None if it holds none."""
    root = Path(root)
    if not root.is_dir():
        return None
    return next((name for name, (looks_like, _) in LAYOUTS.items() if looks_like(root)), None)


def find_dataset(input_dir: Path) -> Path | None:
    """`input_dir` if it holds a dataset, else its one subfolder that does (folders starting with _ or .
    skipped); None if there is none. Several candidate subfolders -> DatasetError listing them."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        return None
    if detect_layout(input_dir):
        return input_dir
    found = [p for p in sorted(input_dir.iterdir()) if p.is_dir() and not is_private(p.name) and detect_layout(p)]
    if len(found) > 1:
        listing = ", ".join(f"{p} ({detect_layout(p)})" for p in found)
        raise DatasetError(f"{input_dir} holds several datasets: {listing}; choose one with --data")
    return found[0] if found else None


def read_dataset(root: Path, layout: str | None = None) -> Dataset:
    """Read the dataset at `root`; `layout` (one of LAYOUTS) skips detection."""
    root = Path(root)
    if layout is None:
        layout = detect_layout(root)
        if layout is None:
            raise DatasetError(f"{root}: no dataset recognised; expected one of the layouts {', '.join(LAYOUTS)} "
                             "(see the module docstrings of ichkit.readers)")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout][1](root)


def load_slice(row: pd.Series, root: Path, channels: Sequence[str] = renders.RENDER_CHANNELS) -> SliceData:
    """Load the slice of a table row, dispatching on row["source"]. `channels` (the configured window
    names) orders the channels of a multi-window render; the other sources ignore it."""
    source = row["source"]
    if source == "dicom":
        from ichkit.dicom import load_dicom

        return load_dicom(Path(root) / str(row["path"]))
    if source == "image":
        return images.load_image_slice(row, root, channels)
    if source == "nifti":
        return nifti.load_nifti_slice(row, root)
    raise ValueError(f"{row['image_id']}: unknown source {source!r}; expected dicom, image or nifti")


def load_mask(row: pd.Series, root: Path, polygons: list[np.ndarray], height: int, width: int) -> np.ndarray | None:
    """The ground-truth mask of a row as uint8 0/1 (height, width): the union of its polygons if it has
    any, else its mask file in masks/ (which must be height x width: pass the slice's own size), else its
    NIfTI mask slice resized by nearest neighbour, else None."""
    from ichkit.readers.polygons import rasterize
    from ichkit.windows import resize

    if polygons:
        return rasterize(polygons, height, width)
    if cell_text(row, "mask_path"):
        if row["source"] != "nifti":  # a mask file in masks/ (see masks.py): must have the slice's size
            from ichkit.readers.masks import load_mask_file

            return load_mask_file(Path(root) / cell_text(row, "mask_path"), height, width)
        return resize(nifti.load_nifti_mask(row, root), (height, width), mask=True)
    return None
