"""Writers of small real datasets in the four reader layouts, for tests/test_readers.py.

Every file is written with the library that real data is made with (pydicom, PIL, nibabel, csv), in the
real format: RSNA long labels, the reference dataset's single-quoted polygon cells, CT-ICH's CSV columns.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichkit.labels import RSNA_LABELS

from ct_files import write_ct

RESULTS_HEADER = ["Origin", "Case ID", "Labeling State", "Correct Label", "Majority Label", "Agreement"]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def region_cell(*regions: Sequence[tuple[float, float]]) -> str:
    """Regions in the reference dataset's cell format: a Python literal with single quotes."""
    return repr([[{"x": x, "y": y} for x, y in region] for region in regions])


def square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def write_results_csv(path: Path, rows: Sequence[tuple[str, str, str]]) -> Path:
    """rows: (origin, correct label cell, majority label cell)."""
    return write_csv(path, RESULTS_HEADER,
                     [(origin, f"case{i}", "Gold Standard", correct, majority, "0.8")
                      for i, (origin, correct, majority) in enumerate(rows)])


# --- RSNA -------------------------------------------------------------------------------------------------

def write_dicom(path: Path, pixels: np.ndarray, z: float = 0.0, patient: str = "ID_patient0") -> Path:
    """A complete CT DICOM file (explicit VR little endian, signed 16-bit, intercept -1024)."""
    return write_ct(path, pixels.astype(np.int16), position=(-125.0, -125.0, z), patient=patient)


def write_rsna_labels(path: Path, labels: dict[str, dict[str, int]]) -> Path:
    """The long label CSV: one `ID_<sop>_<label>,<0|1>` row per image and label."""
    rows = [(f"{image_id}_{name}", values.get(name, 0)) for image_id, values in labels.items() for name in RSNA_LABELS]
    return write_csv(path, ["ID", "Label"], rows)


def write_sample_submission(path: Path, image_ids: Sequence[str]) -> Path:
    return write_csv(path, ["ID", "Label"], [(f"{i}_{name}", 0.5) for i in image_ids for name in RSNA_LABELS])


# --- images -----------------------------------------------------------------------------------------------

def write_image(path: Path, array: np.ndarray) -> Path:
    """Saved by PIL in the format of the suffix; the mode follows the array (uint16 -> 16-bit grey PNG)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_jpg(path: Path, value: int, size: tuple[int, int] = (64, 64), rgb: bool = True) -> Path:
    """A constant render (JPEG keeps a flat image within a grey level); RGB like the reference renders."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((*size, 3) if rgb else size, value, dtype=np.uint8)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cv2 could not write {path}")
    return path


# --- NIfTI ------------------------------------------------------------------------------------------------

def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(volume, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def ctich_row(patient: int, slice_number: int, subtypes: Sequence[str] = (), fracture: int = 0) -> list[int]:
    """A hemorrhage_diagnosis_raw_ct.csv row; columns as in CTICH_HEADER."""
    flags = [int(name in subtypes) for name in ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")]
    return [patient, slice_number, *flags, int(not subtypes), fracture]


CTICH_HEADER = ["PatientNumber", "SliceNumber", "Intraventricular", "Intraparenchymal", "Subarachnoid",
                "Epidural", "Subdural", "No_Hemorrhage", "Fracture_Yes_No"]
