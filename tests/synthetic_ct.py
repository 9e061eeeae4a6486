"""Tiny synthetic head-CT slices and a prepared work folder, for the classical-track tests.

Each slice is a 256 x 256 HU map: air, scalp, a skull ring (bone), brain (~35 HU with noise), two CSF
ventricles, and for a hemorrhage class a +60..75 HU collection drawn with that class's geometry:
a biconvex lens against the skull (epidural), a thin crescent along it (subdural), thin sulcal / fissure
streaks (subarachnoid), a round deep clot (intraparenchymal), blood inside a ventricle (intraventricular).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ichkit.cache import ImageCache
from ichkit.labels import CLASSES7, SUBTYPES
from ichkit.slicedata import SliceData
from ichkit.table import Dataset, write_table
from ichkit.windows import apply_windows

SIZE = 256
WINDOWS = {"brain": (40, 80), "subdural": (80, 200), "bone": (600, 2800)}
CENTRE = (128.0, 128.0)
BRAIN_AXES = (100.0, 82.0)  # inner table semi-axes (rows, cols): the head is longer front-to-back
SKULL_PX = 7


def _ellipse(rr, cc, centre, axes) -> np.ndarray:
    return ((rr - centre[0]) / axes[0]) ** 2 + ((cc - centre[1]) / axes[1]) ** 2 <= 1.0


def _polar(rr, cc):
    """(normalised radius on the inner-table ellipse, angle) of every pixel."""
    dr, dc = (rr - CENTRE[0]) / BRAIN_AXES[0], (cc - CENTRE[1]) / BRAIN_AXES[1]
    return np.hypot(dr, dc), np.arctan2(dr, dc)


MULTI_SUBTYPES = ("subdural", "intraparenchymal")


def head_slice(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One int16 HU slice of 7-class `kind` (a CLASSES7 name)."""
    rr, cc = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    hu = np.full((SIZE, SIZE), -1000.0)
    outer = (BRAIN_AXES[0] + SKULL_PX + 5, BRAIN_AXES[1] + SKULL_PX + 5)
    skull = (BRAIN_AXES[0] + SKULL_PX, BRAIN_AXES[1] + SKULL_PX)
    hu[_ellipse(rr, cc, CENTRE, outer)] = 30.0                      # scalp
    hu[_ellipse(rr, cc, CENTRE, skull)] = 1200.0                    # skull
    brain = _ellipse(rr, cc, CENTRE, BRAIN_AXES)
    hu[brain] = 35.0
    for dc in (-12.0, 12.0):                                        # lateral ventricles
        hu[_ellipse(rr, cc, (122.0, 128.0 + dc), (18.0, 6.0))] = 8.0
    radius, angle = _polar(rr, cc)
    blood = np.zeros((SIZE, SIZE), dtype=bool)
    a0 = rng.uniform(-np.pi, np.pi)

    def arc(a_centre, half_width):
        return np.abs(np.angle(np.exp(1j * (angle - a_centre)))) <= half_width

    def epidural():
        # lens: the intersection of the brain with a disc whose centre lies outside the inner table
        a = a0
        cr, cc_ = CENTRE[0] + 1.25 * BRAIN_AXES[0] * np.sin(a), CENTRE[1] + 1.25 * BRAIN_AXES[1] * np.cos(a)
        return brain & (np.hypot(rr - cr, cc - cc_) <= 0.25 * BRAIN_AXES[0] + rng.uniform(10, 14))

    def subdural():
        return brain & (radius >= rng.uniform(0.90, 0.93)) & arc(a0, rng.uniform(0.9, 1.3))

    def subarachnoid():
        streaks = np.zeros_like(blood)
        for _ in range(3):  # thin sulcal streaks running in from the surface
            a = rng.uniform(-np.pi, np.pi)
            streaks |= brain & (radius >= 0.6) & (radius <= 0.95) & arc(a, 0.025)
        streaks |= brain & (np.abs(cc - CENTRE[1]) <= 1.5) & (rr < CENTRE[0] - 45)  # interhemispheric fissure
        return streaks

    def intraparenchymal():
        r = rng.uniform(0.35, 0.55)
        cr, cc_ = CENTRE[0] + r * BRAIN_AXES[0] * np.sin(a0), CENTRE[1] + r * BRAIN_AXES[1] * np.cos(a0)
        return np.hypot(rr - cr, cc - cc_) <= rng.uniform(9, 14)

    def intraventricular():
        side = rng.choice([-12.0, 12.0])
        return _ellipse(rr, cc, (130.0, 128.0 + side), (10.0, 5.0))

    draw = {"epidural": epidural, "subdural": subdural, "subarachnoid": subarachnoid,
            "intraparenchymal": intraparenchymal, "intraventricular": intraventricular}
    if kind == "multi":  # the two subtypes `subtypes_of("multi")` labels
        for sub in MULTI_SUBTYPES:
            blood |= draw[sub]()
    elif kind != "normal":
        blood |= draw[kind]()
    hu[blood] = rng.uniform(62, 75)
    hu[brain] += rng.normal(0.0, 3.0, size=int(brain.sum()))
    return np.round(hu).astype(np.int16)


def subtypes_of(kind: str) -> dict[str, int]:
    if kind == "normal":
        return {s: 0 for s in SUBTYPES}
    if kind == "multi":
        return {s: int(s in MULTI_SUBTYPES) for s in SUBTYPES}
    return {s: int(s == kind) for s in SUBTYPES}


def make_work(work: Path, patients_per_class: int = 3, slices_per_patient: int = 2, test_patients: int = 2,
              k: int = 3, seed: int = 0, normal_patients: int | None = None) -> tuple[pd.DataFrame, Path]:
    """Write a prepared work folder (table.parquet + cls/hu cache) and a folds.csv; return (slices, folds path).

    Patients carry one class each; patients of each class are spread round-robin over the k folds.
    `normal_patients` (default `patients_per_class`) makes the set imbalanced like real CT.
    """
    rng = np.random.default_rng(seed)
    cache = ImageCache(work)
    rows, fold_rows = [], []
    n = 0
    n_normal = patients_per_class if normal_patients is None else normal_patients
    plan = [(c, p) for c in CLASSES7 for p in range(n_normal if c == "normal" else patients_per_class)]
    plan += [("test", p) for p in range(test_patients)]
    for kind, p in plan:
        patient = f"P_{kind}_{p}"
        split = "test" if kind == "test" else "train"
        draw_kind = CLASSES7[p % len(CLASSES7)] if kind == "test" else kind
        for s in range(slices_per_patient):
            image_id = f"ID_{n:06x}{kind[:2]}"
            n += 1
            hu = head_slice(draw_kind, rng)
            cache.save("hu", image_id, hu)
            # the window channels exactly as prepare caches them (cls_size is 256, so no resize)
            cache.save("cls", image_id, apply_windows(SliceData(pixels=hu), list(WINDOWS.values())))
            row = {"image_id": image_id, "split": split, "status": "ok", "patient_id": patient,
                   "study_id": f"S_{patient}", "series_id": f"SE_{patient}", "z": float(s * 5), "pixel_spacing": 0.5}
            if split == "train":
                subs = subtypes_of(kind)
                row.update({"any": int(kind != "normal"), **subs, "label7": kind})
                fold_rows.append({"image_id": image_id, "patient_id": patient, "fold": p % k})
            rows.append(row)
    slices = pd.DataFrame(rows)
    write_table(Dataset(root=work, layout="synthetic", slices=slices), work)
    folds_path = work / "folds.csv"
    pd.DataFrame(fold_rows).to_csv(folds_path, index=False)
    return slices, folds_path


def config_for(work: Path, folds_path: Path) -> dict:
    """The packaged config pointed at `work`, with single-process feature extraction (fast for tiny sets)."""
    from ichkit.config import load_config

    cfg = load_config()
    cfg["paths"]["work"] = str(work)
    cfg["paths"]["folds"] = str(folds_path)
    cfg["prepare"]["windows"] = {k: list(v) for k, v in WINDOWS.items()}
    cfg["features"]["workers"] = 1
    return cfg

