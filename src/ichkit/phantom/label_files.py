"""Ground truth in the real files' formats: RSNA label CSVs, the reference dataset's polygon CSV.

- `stage_2_train.csv` (RSNA long): `ID,Label`, six rows per image `ID_<sop>_<subtype>` in RSNA order
  (epidural, intraparenchymal, intraventricular, subarachnoid, subdural, any), images sorted by id.
- `hemorrhage-labels.csv` (wide): `Image,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural`.
- `stage_2_sample_submission.csv`: the long layout with every label 0.5.
- `Results_*.csv` (polygons): `Origin` (`ID_<sop>.jpg`), `Correct Label`, `Majority Label`,
  `Labeling State`, `Number of ROIs`; one row per connected region, its outline a single-quoted list
  `[{'x': 0.31, 'y': 0.45}, ...]`, x and y continuous fractions of width and height: pixel column i spans
  [i, i + 1) / width, as `ichkit.readers.polygons.rasterize` reads them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure

from ichkit.labels import RSNA_LABELS, SUBTYPES

# RSNA lists an image's six rows with `any` last
LONG_ORDER: tuple[str, ...] = SUBTYPES + ("any",)
WIDE_COLUMNS: tuple[str, ...] = ("Image",) + RSNA_LABELS
POLYGON_COLUMNS: tuple[str, ...] = ("Origin", "Correct Label", "Majority Label", "Labeling State", "Number of ROIs")
# Douglas-Peucker tolerance (px) when turning a mask outline into a polygon: keeps the outline within a
# pixel of the mask with a fraction of the vertices
POLYGON_TOLERANCE = 0.75


def mask_polygons(mask: np.ndarray, tolerance: float = POLYGON_TOLERANCE) -> list[np.ndarray]:
    """Outline every 8-connected region of a boolean mask: a list of (n, 2) arrays of (row, col) vertices.

    Only the outer boundary of each region is kept (holes filled), as an annotator draws it; regions too
    small to enclose anything after simplification are dropped.
    """
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    polygons: list[np.ndarray] = []
    for index, box in enumerate(ndimage.find_objects(labelled), start=1):
        region = ndimage.binary_fill_holes(labelled[box] == index)
        # pad so the contour closes around regions touching the crop's edge
        padded = np.pad(region.astype(np.float32), 1)
        contours = measure.find_contours(padded, 0.5, fully_connected="high")
        outline = max(contours, key=len)
        simple = measure.approximate_polygon(outline, tolerance)
        if len(simple) > 1 and np.allclose(simple[0], simple[-1]):
            simple = simple[:-1]  # annotation tools do not repeat the first vertex
        if len(simple) < 3:
            continue
        simple = simple + np.array([box[0].start - 1, box[1].start - 1], dtype=np.float64)
        polygons.append(simple)
    return polygons


def normalise(polygon_rc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(row, col) vertices in pixel indices (pixel centres at integers, as `mask_polygons` gives them) ->
    (x, y) in [0, 1] of width and height, where pixel i spans [i, i + 1): the centre of pixel i is at
    (i + 0.5) / size, the convention `ichkit.readers.polygons.rasterize` reads back."""
    rows, cols = shape
    return np.column_stack([(polygon_rc[:, 1] + 0.5) / cols, (polygon_rc[:, 0] + 0.5) / rows])


def format_points(points_xy: np.ndarray) -> str:
    """(n, 2) normalised x, y -> the reference files' text: `[{'x': 0.31, 'y': 0.45}, ...]`."""
    return str([{"x": round(float(x), 5), "y": round(float(y), 5)} for x, y in points_xy])


@dataclass(frozen=True)
class PolygonRow:
    image_id: str
    points: str | None          # formatted outline; None for a junk row with no region
    adjudicated: bool           # True: in `Correct Label` (and `Majority Label`); False: `Majority Label` only
    regions_in_image: int


def write_long_labels(path: Path, labels: dict[str, dict[str, int]]) -> None:
    """`labels`: image id -> {label: 0/1}. Images sorted by id, as RSNA ships them."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["ID", "Label"])
        for image_id in sorted(labels):
            for name in LONG_ORDER:
                out.writerow([f"{image_id}_{name}", labels[image_id][name]])


def write_wide_labels(path: Path, labels: dict[str, dict[str, int]]) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(WIDE_COLUMNS)
        for image_id in sorted(labels):
            out.writerow([image_id] + [labels[image_id][name] for name in RSNA_LABELS])


def write_sample_submission(path: Path, image_ids: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["ID", "Label"])
        for image_id in sorted(image_ids):
            for name in LONG_ORDER:
                out.writerow([f"{image_id}_{name}", 0.5])


def write_polygons(path: Path, rows: list[PolygonRow]) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(POLYGON_COLUMNS)
        for row in rows:
            if row.points is None:
                out.writerow([f"{row.image_id}.jpg", "", "", "Labeling", 0])
                continue
            correct = row.points if row.adjudicated else ""
            out.writerow([f"{row.image_id}.jpg", correct, row.points, "Labeled", row.regions_in_image])
