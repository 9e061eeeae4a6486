"""Masks as image files beside the slices (the rsna and images layouts): `<root>/masks/`.

    <root>/masks/**/<stem>.dcm | .png | .nii | .nii.gz    one mask per slice, same stem as the slice's file

A pixel > 0 is blood. The mask must have the size of its slice (checked when `prepare` loads it; a
mismatch quarantines the slice as `odd_shape`, naming both sizes), and it is letterboxed and resized
exactly like the slice. A NIfTI mask file here holds one 2-D slice (a trailing axis of length 1 is
allowed) in the slice's own row/column order. Polygon CSVs, where present, win over a mask file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ichkit.labels import normalize_image_id
from ichkit.readers.common import examples, iter_files, log, relative
from ichkit.slicedata import BadInput

MASKS_DIR = "masks"
MASK_SUFFIXES = (".dcm", ".png", ".nii", ".nii.gz")


def _mask_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return normalize_image_id(name)


def attach_mask_files(slices: pd.DataFrame, root: Path, layout: str) -> pd.DataFrame:
    """Set `mask_path` and `has_mask` for the slices that have a file in `<root>/masks/`."""
    folder = Path(root) / MASKS_DIR
    if not folder.is_dir():
        return slices
    index: dict[str, str] = {}
    for path in iter_files(folder, MASK_SUFFIXES):
        image_id = _mask_id(path)
        if image_id in index:
            raise ValueError(f"{folder}: two mask files for {image_id}: {index[image_id]} and {relative(path, root)}")
        index[image_id] = relative(path, root)
    out = slices.copy()
    found = out["image_id"].map(index)
    out["mask_path"] = found.fillna("").astype("string")
    out["has_mask"] = out["has_mask"].astype(bool) | found.notna().to_numpy()
    stray = sorted(set(index) - set(out["image_id"]))
    if stray:
        log.warning("%s: %d mask files in %s match no slice (e.g. %s); ignored", layout, len(stray), folder,
                    examples(index[i] for i in stray))
    return out


def load_mask_file(path: Path, height: int, width: int) -> np.ndarray:
    """A mask file as uint8 0/1 of exactly (height, width), else BadInput naming both sizes."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(path, "file_not_found", "no such mask file")
    name = path.name.lower()
    try:
        if name.endswith(".dcm"):
            import pydicom

            values = pydicom.dcmread(path).pixel_array
        elif name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            values = np.squeeze(np.asarray(nib.load(path).dataobj))
        else:
            from PIL import Image

            values = np.asarray(Image.open(path).convert("L"))
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(path, "decode_error", f"mask does not decode: {type(exc).__name__}: {exc}") from None
    if values.ndim != 2:
        raise BadInput(path, "odd_shape", f"mask has shape {values.shape}, expected one 2-D slice")
    if values.shape != (height, width):
        raise BadInput(path, "odd_shape", f"mask is {values.shape[1]}x{values.shape[0]}, its slice {width}x{height}")
    return (values > 0).astype(np.uint8)
