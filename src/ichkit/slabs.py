"""Thin-slice series (0.625-1.25 mm) averaged into thicker slabs (e.g. 5 mm, what RSNA-style models expect).

Set `prepare.slab_mm` (default.yaml: null = off). After every slice is prepared, `prepare` plans slabs
per series from the slices' z (their position along the slice normal, `ImagePositionPatient .
(row x column cosines)`, so gantry tilt is taken into account) and caches one averaged image per slab:

- a series whose median z spacing is already >= slab_mm / 2 is kept as it is (nothing to average);
- otherwise its ok slices, sorted by z, are cut into consecutive runs spanning about `slab_mm` each
  (round(slab_mm / spacing) slices; a short last run is merged into the one before it);
- a slab's pixels are the mean of its members' Hounsfield units (float32), windowed and resized like any
  slice; its labels are the union of its members' (a subtype present in any member is present in the slab),
  so label7 follows the 7-class rule; its mask is the union of its members' masks.

The table gains one row per slab (image id `<first member>_slab<k>mm`, `source` "slab", `extra_paths`
JSON {"members": [...]}) and each member's status becomes `in_slab`, so the later stages, which take
status ok, train and predict on slabs while every input id stays accounted for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ichkit.labels import RSNA_LABELS
from ichkit.slicedata import SliceData

SLAB_SOURCE = "slab"
IN_SLAB = "in_slab"


def series_spacing(z: Sequence[float]) -> float:
    """Median gap between consecutive distinct z positions (mm), NaN with fewer than two."""
    values = np.unique(np.asarray([v for v in z if v is not None and math.isfinite(v)], dtype=np.float64))
    return float(np.median(np.diff(values))) if len(values) >= 2 else math.nan


def slab_id(first_member: str, slab_mm: float) -> str:
    return f"{first_member}_slab{slab_mm:g}mm"


def plan_slabs(slices: pd.DataFrame, slab_mm: float) -> pd.DataFrame:
    """Slabs for the thin series of `slices` (ok rows with series_id and z): image_id, members (list),
    series_id, z (mean of the members), split. Series already thick enough, or without z, get none."""
    if slab_mm is None or slab_mm <= 0:
        return pd.DataFrame(columns=["image_id", "members", "series_id", "z", "split"])
    ok = slices[(slices["status"] == "ok") & (slices["series_id"].fillna("") != "") & slices["z"].notna()]
    out = []
    for series, rows in ok.groupby("series_id", sort=True):
        rows = rows.sort_values(["z", "image_id"], kind="stable")
        spacing = series_spacing(rows["z"].tolist())
        if not math.isfinite(spacing) or spacing <= 0 or spacing >= slab_mm / 2:
            continue
        per_slab = max(2, round(slab_mm / spacing))
        ids, zs, splits = rows["image_id"].tolist(), rows["z"].tolist(), rows["split"].tolist()
        starts = list(range(0, len(ids), per_slab))
        if len(starts) > 1 and len(ids) - starts[-1] < per_slab / 2:
            starts.pop()  # a short last run joins the slab before it
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(ids)
            members = ids[start:end]
            out.append({"image_id": slab_id(members[0], slab_mm), "members": members, "series_id": series,
                        "z": float(np.mean(zs[start:end])), "split": splits[start]})
    return pd.DataFrame(out, columns=["image_id", "members", "series_id", "z", "split"])


def average_slices(members: Sequence[SliceData]) -> SliceData:
    """One slice whose pixels are the members' mean HU (float32, slope 1, intercept 0)."""
    if not members:
        raise ValueError("a slab needs at least one slice")
    shapes = {m.pixels.shape for m in members if m.pixels is not None}
    if len(shapes) != 1 or any(m.pixels is None for m in members):
        raise ValueError(f"slab members differ in size or lack Hounsfield units: {sorted(shapes)}")
    total = np.zeros(next(iter(shapes)), dtype=np.float32)
    for m in members:
        total += m.hu()
    meta = dict(members[0].meta)
    zs = [m.meta.get("z") for m in members if m.meta.get("z") is not None]
    if zs:
        meta["z"] = float(np.mean(zs))
    return SliceData(pixels=total / np.float32(len(members)), slope=1.0, intercept=0.0, meta=meta,
                     notes=[f"slab: mean of {len(members)} slices"])


def slab_rows(plan: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Table rows for the planned slabs: members' union of labels, has_mask if any member has one."""
    by_id = table.set_index("image_id")
    rows = []
    for rec in plan.to_dict("records"):
        members = by_id.loc[rec["members"]]
        first = members.iloc[0]
        row = {col: first[col] for col in ("patient_id", "patient_source", "study_id", "series_id", "pixel_spacing")}
        labels = {}
        for label in RSNA_LABELS:
            values = members[label]
            labels[label] = pd.NA if values.isna().all() else int(values.fillna(0).max())
        thickness = (members["z"].max() - members["z"].min()) + (first["slice_thickness"] if pd.notna(first["slice_thickness"]) else 0)
        rows.append({
            "image_id": rec["image_id"], "split": rec["split"], "source": SLAB_SOURCE, "path": first["path"],
            "extra_paths": json.dumps({"members": list(rec["members"])}), "has_mask": bool(members["has_mask"].any()),
            "z": rec["z"], "slice_thickness": float(thickness), **row, **labels, "status": "pending",
        })
    return pd.DataFrame(rows)


def members_of(row: dict | pd.Series) -> list[str]:
    return list(json.loads(str(row["extra_paths"]))["members"])
