"""Polygon ground truth of the reference dataset (`Results_*.csv`) and its rasterisation to masks.

Each `Results_<task>_<date>.csv` has one row per annotated image and round of reading: `Origin` is the
image file (`ID_<hex>.jpg`), and the label columns hold the regions drawn on it as a Python literal with
single quotes, a list of regions, each a list of points with x, y normalised to [0, 1] of width and height:

    [[{'x': 0.41, 'y': 0.22}, {'x': 0.43, 'y': 0.25}, ...], [...second region...]]

Which cell a row's regions come from: `Correct Label` (the adjudicated answer) if it holds any region,
else `Majority Label` (the readers' consensus), else the row is skipped; skipped rows are counted and
reported with a warning. A file that has neither column (the tracing task's export) is skipped whole,
with a warning. Several rows, or several regions, for one image union into one mask.

Accepted variants, since copies of the files differ: points as `{'x': .., 'y': ..}` or `[x, y]`; a bare
region (a list of points) instead of a list of regions; a region list wrapped in a string once more
(`["[{'x': ..}]"]`). Anything else, or a coordinate that is not a finite number or lies far outside [0, 1]
(a pixel coordinate, not a normalised one), raises `LabelFileError` naming file and line. Regions of fewer
than three points enclose nothing; they are dropped with a counted warning.

In the slice table's `polygons` frame each region is one row: `points` as JSON `[[x, y], ...]`.
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.labels import LabelFileError, normalize_image_id, open_label_csv
from ichkit.readers.common import examples
from ichkit.table import POLYGON_COLUMNS, conform, empty_frame

log = logging.getLogger(__name__)

ORIGIN_COLUMN = "Origin"
# label columns in order of trust: the adjudicated answer first, then the readers' majority
LABEL_COLUMNS: tuple[str, ...] = ("Correct Label", "Majority Label")
RESULTS_GLOB = "Results_*.csv"
# Annotation tools let a vertex slip a little past the image border (clipped when rasterised); a value
# further out than this is a pixel coordinate, which would silently give an empty or full mask.
COORDINATE_SLACK = 0.5
_MAX_STRING_NESTING = 3
_JSON_DECIMALS = 6  # 1e-6 of 512 px: far below a pixel, keeps polygons.parquet small


def parse_points(text: Any) -> list[np.ndarray]:
    """One label cell -> its regions, each an (n, 2) float array of normalised x, y.

    An empty cell (blank, NaN, `[]`) gives `[]`. Raises ValueError on anything malformed.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    if not text.strip():
        return []
    regions = _as_regions(_literal(text), nesting=0)
    return [_to_array(region) for region in regions]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        snippet = text.strip()[:60]
        raise ValueError(f"not a list of points: {snippet!r} ({type(exc).__name__})") from None


def _is_point(value: Any) -> bool:
    if isinstance(value, dict):
        return "x" in value and "y" in value
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _as_regions(value: Any, nesting: int) -> list[list[Any]]:
    if isinstance(value, str):
        if nesting >= _MAX_STRING_NESTING:
            raise ValueError("regions nested in strings too deeply")
        return _as_regions(_literal(value), nesting + 1) if value.strip() else []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of regions, found {type(value).__name__} {value!r:.60}")
    if value and all(_is_point(v) for v in value):
        return [list(value)]
    regions: list[list[Any]] = []
    for item in value:
        regions.extend(_as_regions(item, nesting))
    return regions


def _to_array(region: list[Any]) -> np.ndarray:
    pts = np.array([(p["x"], p["y"]) if isinstance(p, dict) else tuple(p) for p in region], dtype=object)
    try:
        arr = pts.astype(np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise ValueError(f"a point coordinate is not a number in {region!r:.80}") from None
    if not np.isfinite(arr).all():
        raise ValueError("a point coordinate is not finite")
    if arr.size and (arr.min() < -COORDINATE_SLACK or arr.max() > 1 + COORDINATE_SLACK):
        raise ValueError(f"coordinate {arr.max() if arr.max() > 1 else arr.min():g} is far outside [0, 1]: "
                         "points must be normalised x, y, not pixels")
    return arr


def points_to_json(points: np.ndarray) -> str:
    """(n, 2) normalised x, y -> the table's `points` JSON `[[x, y], ...]`."""
    return json.dumps(np.round(np.asarray(points, dtype=np.float64), _JSON_DECIMALS).tolist())


def points_from_json(text: str) -> np.ndarray:
    """The table's `points` JSON -> (n, 2) float array."""
    arr = np.asarray(json.loads(text), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"points must be [[x, y], ...], got shape {arr.shape}")
    return arr


def read_polygon_csv(path: Path | str) -> pd.DataFrame:
    """One `Results_*.csv` -> a frame with `table.POLYGON_COLUMNS`, one row per region.

    `source` is `<file name>:<line>` of the row the region came from (the line where that CSV record
    starts; quoted cells may span lines).
    """
    path = Path(path)
    rows: list[tuple[str, str, str]] = []
    skipped = degenerate = 0
    with open_label_csv(path) as (header, records):
        if ORIGIN_COLUMN not in header:
            raise LabelFileError(path, 1, f"no {ORIGIN_COLUMN!r} column (the image file) in header {header[:8]!r}")
        label_idx = [(c, header.index(c)) for c in LABEL_COLUMNS if c in header]
        i_origin = header.index(ORIGIN_COLUMN)
        for line, rec in records:
            origin = rec[i_origin].strip()
            if not origin:
                raise LabelFileError(path, line, f"empty {ORIGIN_COLUMN}")
            regions = _first_labelled(rec, label_idx, path, line)
            if not regions:
                skipped += 1
                continue
            image_id = normalize_image_id(Path(origin).name)
            for region in regions:
                if len(np.unique(region, axis=0)) < 3:
                    degenerate += 1
                    continue
                rows.append((image_id, points_to_json(region), f"{path.name}:{line}"))
    if not label_idx:
        log.warning("%s: neither %s column; its %d rows give no polygons", path, " nor ".join(LABEL_COLUMNS), skipped)
    elif skipped:
        log.warning("%s: %d rows have no region in %s; skipped", path, skipped, " or ".join(LABEL_COLUMNS))
    if degenerate:
        log.warning("%s: %d regions have fewer than 3 distinct points and enclose nothing; dropped", path, degenerate)
    if not rows:
        return empty_frame(POLYGON_COLUMNS)
    return conform(pd.DataFrame(rows, columns=list(POLYGON_COLUMNS)), POLYGON_COLUMNS)


def _first_labelled(rec: list[str], label_idx: list[tuple[str, int]], path: Path, line: int) -> list[np.ndarray]:
    for column, i in label_idx:
        try:
            regions = parse_points(rec[i])
        except ValueError as exc:
            raise LabelFileError(path, line, f"{column}: {exc}") from None
        if regions:
            return regions
    return []


def read_polygon_files(paths: Iterable[Path]) -> pd.DataFrame:
    """Several `Results_*.csv` files -> one polygon frame (files in the given order)."""
    from tqdm import tqdm

    paths = list(paths)
    frames = [read_polygon_csv(p) for p in tqdm(paths, desc="polygon files", unit="file", disable=len(paths) < 2)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame(POLYGON_COLUMNS)
    return conform(pd.concat(frames, ignore_index=True), POLYGON_COLUMNS)


def polygons_by_image(polygons: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    """A polygon frame -> {image id: [(n, 2) arrays]}, the form `rasterize` and `readers.load_mask` take."""
    out: dict[str, list[np.ndarray]] = {}
    for image_id, text in zip(polygons["image_id"], polygons["points"]):
        out.setdefault(str(image_id), []).append(points_from_json(text))
    return out


def keep_known_images(polygons: pd.DataFrame, image_ids: Iterable[str], where: str) -> pd.DataFrame:
    """Drop polygons of images the table does not have, with a warning counting them."""
    known = polygons["image_id"].isin(set(image_ids))
    if not known.all():
        stray = polygons.loc[~known, "image_id"].unique()
        log.warning("%s: %d polygons belong to %d images that are not in the dataset (e.g. %s); ignored",
                    where, int((~known).sum()), len(stray), examples(stray))
    return polygons.loc[known].reset_index(drop=True)


def rasterize(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """The union of `polygons` (each (n, 2) normalised x, y) as a uint8 0/1 mask of (height, width).

    Normalised coordinates are continuous: pixel column i spans [i, i + 1) / width. A pixel is inside when
    its centre is (skimage.draw.polygon), so coordinates are shifted by half a pixel to put centres at
    i + 0.5; a square from 0.25 to 0.75 then fills exactly the middle half of the pixels.
    """
    from skimage.draw import polygon as fill_polygon

    mask = np.zeros((height, width), dtype=np.uint8)
    for pts in polygons:
        pts = np.asarray(pts, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"a polygon is an (n, 2) array of x, y; got shape {pts.shape}")
        rr, cc = fill_polygon(pts[:, 1] * height - 0.5, pts[:, 0] * width - 0.5, shape=(height, width))
        mask[rr, cc] = 1
    return mask
