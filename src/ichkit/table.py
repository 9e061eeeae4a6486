"""The slice table: one row per image, written by the readers + prepare, read by every later stage.

Stored as ``<work>/table.parquet`` with a ``<work>/table.json`` sidecar (data root, layout). Polygon
ground truth, where a layout has it, is stored beside it as ``<work>/polygons.parquet``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ichkit.files import atomic_path, write_text_atomic
from ichkit.labels import RSNA_LABELS

# column -> pandas dtype. Readers fill what their format knows; `prepare` fills patient/study/series/z,
# spacing and status from the DICOM tags (or the layout's documented fallback).
COLUMNS: dict[str, str] = {
    "image_id": "string",        # ID_<hex>, unique
    "split": "string",           # train | test
    "source": "string",          # dicom | image | nifti
    "path": "string",            # relative to the data root (NIfTI: the volume file)
    "frame": "int64",            # slice index inside a NIfTI volume, -1 otherwise
    "extra_paths": "string",     # JSON {window: relative path} for multi-file renders, "{}" otherwise
    "mask_path": "string",       # NIfTI mask volume (same frame), "" otherwise; polygons live in polygons.parquet
    "has_mask": "bool",          # a ground-truth mask exists (polygons or mask volume)
    "patient_id": "string",
    "patient_source": "string",  # where patient_id came from: file (PatientID) | reader | patients.csv | study | series | image
    "study_id": "string",
    "series_id": "string",
    "z": "float64",              # position along the slice normal, mm (ImagePositionPatient), NaN if unknown
    "instance_number": "Int64",
    "pixel_spacing": "float64",  # mm per pixel (row spacing) of the original image, NaN if unknown
    "slice_thickness": "float64",
    **{name: "Int8" for name in RSNA_LABELS},  # 0/1, <NA> on the test split
    "label7": "string",          # one of labels.CLASSES7, <NA> on the test split
    "status": "string",          # pending (read, not prepared) | ok (in the cache) | quarantined
}

POLYGON_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "points": "string",          # JSON [[x, y], ...], normalised to [0, 1] of width/height
    "source": "string",          # file:line the polygon came from
}


@dataclass
class Dataset:
    """What a reader returns: the slice table, polygons (may be empty), where it came from."""

    root: Path
    layout: str
    slices: pd.DataFrame
    polygons: pd.DataFrame = field(default_factory=lambda: empty_frame(POLYGON_COLUMNS))


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


def conform(df: pd.DataFrame, columns: dict[str, str] = COLUMNS) -> pd.DataFrame:
    """Add missing optional columns with their empty value, order and type every column, check ids.

    `image_id` is required; everything else defaults (strings "", numbers NaN/-1, labels <NA>).
    """
    if "image_id" not in df.columns:
        raise ValueError("table has no image_id column")
    out = pd.DataFrame(index=df.index)
    defaults = {"string": "", "float64": np.nan, "int64": -1, "bool": False}
    for col, dtype in columns.items():
        if col in df.columns:
            out[col] = df[col]
        elif col == "extra_paths":
            out[col] = "{}"
        elif col == "status":
            out[col] = "pending"
        elif dtype in ("Int8", "Int64"):
            out[col] = pd.NA
        else:
            out[col] = defaults[dtype]
        out[col] = out[col].astype(dtype)
    if columns is COLUMNS:
        dup = out["image_id"].duplicated()
        if dup.any():
            raise ValueError(f"duplicate image ids in table, e.g. {out.loc[dup, 'image_id'].iloc[0]}")
    return out.reset_index(drop=True)


def table_path(work: Path | str) -> Path:
    return Path(work) / "table.parquet"


def write_table(ds: Dataset, work: Path | str) -> Path:
    work = Path(work)
    with atomic_path(table_path(work)) as tmp:
        conform(ds.slices).to_parquet(tmp, index=False)
    with atomic_path(work / "polygons.parquet") as tmp:
        conform(ds.polygons, POLYGON_COLUMNS).to_parquet(tmp, index=False)
    meta = {"root": str(Path(ds.root).resolve()), "layout": ds.layout}
    write_text_atomic(work / "table.json", json.dumps(meta, indent=2))  # read back by table_meta
    return table_path(work)


def table_meta(work: Path | str) -> dict | None:
    """The table's sidecar ({"root": data root, "layout": ...}), or None where no table was written yet."""
    path = Path(work) / "table.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_table(work: Path | str) -> Dataset:
    work = Path(work)
    path = table_path(work)
    meta = table_meta(work)
    if not path.is_file() or meta is None:
        raise FileNotFoundError(f"{path} not found: run `ichkit prepare` first")
    slices = conform(pd.read_parquet(path))
    poly_path = work / "polygons.parquet"
    polygons = conform(pd.read_parquet(poly_path), POLYGON_COLUMNS) if poly_path.is_file() else empty_frame(POLYGON_COLUMNS)
    return Dataset(root=Path(meta["root"]), layout=meta["layout"], slices=slices, polygons=polygons)
