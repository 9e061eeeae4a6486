"""The PhysioNet CT-ICH layout of NIfTI volumes (layout "nifti").

    <root>/ct_scans/NNN.nii[.gz]                 one CT volume per patient, in Hounsfield units
    <root>/masks/NNN.nii[.gz]                    the hemorrhage mask volume, same grid (optional)
    <root>/hemorrhage_diagnosis_raw_ct.csv       PatientNumber, SliceNumber (1-based), Intraventricular,
                                                 Intraparenchymal, Subarachnoid, Epidural, Subdural,
                                                 No_Hemorrhage [, Fracture_Yes_No]

One row per CSV line: image_id `ID_ctich_<patient:03d>_<slice:03d>`, patient/study/series = the patient
number (one scan per patient), frame = SliceNumber - 1, any = 1 - No_Hemorrhage (a row whose subtypes
contradict it is an error naming file and line). z, pixel_spacing and slice_thickness come from the
volume header; slice_thickness is the spacing between slices, since NIfTI does not record a thickness.

Orientation. A slice is the plane of voxel axes perpendicular to the axis that `nibabel.orientations.
io_orientation` maps to the patient's superior-inferior axis; `frame` indexes that axis as stored. The
plane is then turned into the radiological view that DICOM axial slices have (and the RSNA models were
trained on): rows run anterior -> posterior (the face at the top), columns run patient right -> left (the
patient's right on the image's left). The same is done to the mask slice with the mask's own affine, so
image and mask stay aligned whatever each file's storage order.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.labels import SUBTYPES, LabelFileError, open_label_csv, parse_binary
from ichkit.readers.common import examples, log, relative, with_label7
from ichkit.slicedata import BadInput, SliceData, implausible_hu
from ichkit.table import Dataset, conform

CT_DIR = "ct_scans"
MASK_DIR = "masks"
LABELS_CSV = "hemorrhage_diagnosis_raw_ct.csv"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# CSV column -> RSNA subtype
SUBTYPE_COLUMNS: dict[str, str] = {
    "Epidural": "epidural",
    "Intraparenchymal": "intraparenchymal",
    "Intraventricular": "intraventricular",
    "Subarachnoid": "subarachnoid",
    "Subdural": "subdural",
}
NO_HEMORRHAGE = "No_Hemorrhage"
# (world axis, direction) for the slice's rows and columns, in nibabel's RAS terms: rows along y towards
# posterior (-A), columns along x towards patient left (-R)
RADIOLOGICAL_AXIAL = np.array([[1, -1], [0, -1]])
_OPEN_VOLUMES = 8  # per process: prepare walks a volume's slices in order, so a few open files suffice


def image_id_for(patient: int, slice_number: int) -> str:
    return f"ID_ctich_{patient:03d}_{slice_number:03d}"


def looks_like_nifti(root: Path) -> bool:
    ct = root / CT_DIR
    return ct.is_dir() and any(p.name.lower().endswith(NIFTI_SUFFIXES) for p in ct.iterdir())


def _volume_number(path: Path) -> int | None:
    m = re.fullmatch(r"(\d+)\.nii(\.gz)?", path.name.lower())
    return int(m.group(1)) if m else None


def index_volumes(folder: Path) -> dict[int, Path]:
    """Patient number -> volume file in `folder` (`049.nii` -> 49); other names are warned about."""
    out: dict[int, Path] = {}
    if not folder.is_dir():
        return out
    odd = []
    for path in sorted(folder.iterdir()):
        if not path.name.lower().endswith(NIFTI_SUFFIXES):
            continue
        number = _volume_number(path)
        if number is None:
            odd.append(path.name)
        elif number in out:
            raise ValueError(f"{folder}: patient {number} has two volumes: {out[number].name} and {path.name}")
        else:
            out[number] = path
    if odd:
        log.warning("nifti: %s: %d volumes are not named by patient number (e.g. %s); ignored", folder, len(odd), examples(odd))
    return out


def read_ctich_labels(path: Path) -> pd.DataFrame:
    """hemorrhage_diagnosis_raw_ct.csv -> patient, slice_number, any + SUBTYPES (int8), one row per slice."""
    required = ["PatientNumber", "SliceNumber", *SUBTYPE_COLUMNS, NO_HEMORRHAGE]
    rows = []
    seen: set[tuple[int, int]] = set()
    with open_label_csv(path) as (header, rows_in):
        missing = [c for c in required if c not in header]
        if missing:
            raise LabelFileError(path, 1, f"header lacks columns {missing}")
        pos = {c: header.index(c) for c in required}
        for lineno, rec in rows_in:
            try:
                patient, slice_number = int(rec[pos["PatientNumber"]]), int(rec[pos["SliceNumber"]])
            except ValueError:
                raise LabelFileError(path, lineno, "PatientNumber and SliceNumber must be integers") from None
            if slice_number < 1:
                raise LabelFileError(path, lineno, f"SliceNumber {slice_number} is not 1-based")
            if (patient, slice_number) in seen:
                raise LabelFileError(path, lineno, f"duplicate row for patient {patient} slice {slice_number}")
            seen.add((patient, slice_number))
            subtypes = {s: parse_binary(rec[pos[c]], path, lineno) for c, s in SUBTYPE_COLUMNS.items()}
            any_ = 1 - parse_binary(rec[pos[NO_HEMORRHAGE]], path, lineno)
            if any_ != int(any(subtypes.values())):
                raise LabelFileError(path, lineno, f"{NO_HEMORRHAGE}={1 - any_} contradicts the subtype columns "
                                                   f"({', '.join(c for c, s in SUBTYPE_COLUMNS.items() if subtypes[s]) or 'none set'})")
            rows.append({"patient": patient, "slice_number": slice_number, "any": any_, **subtypes})
    df = pd.DataFrame(rows, columns=["patient", "slice_number", "any", *SUBTYPES])
    return df.astype({c: "int8" for c in ("any", *SUBTYPES)})


@dataclass(frozen=True)
class SliceGeometry:
    """How a volume's voxel axes map onto axial slices (see the module docstring)."""

    slice_axis: int            # voxel axis along the patient's superior-inferior axis
    to_radiological: np.ndarray  # nibabel orientation transform from the stored plane to the radiological view
    n_slices: int
    affine: np.ndarray
    row_spacing: float         # mm between rows of the oriented slice
    slice_spacing: float       # mm between slices

    def z(self, frame: int) -> float:
        """Superior coordinate (mm) of the slice's first stored voxel, like DICOM ImagePositionPatient[2]."""
        index = np.zeros(4)
        index[self.slice_axis], index[3] = frame, 1.0
        return float((self.affine @ index)[2])


def volume_geometry(img: Any, path: Path | str) -> SliceGeometry:
    from nibabel.orientations import io_orientation, ornt_transform

    if len(img.shape) < 3 or any(n != 1 for n in img.shape[3:]):
        raise BadInput(path, "odd_shape", f"expected a 3-D volume, got shape {tuple(img.shape)}")
    affine = np.asarray(img.affine, dtype=np.float64)
    ornt = io_orientation(affine[:4, :4])[:3]
    if np.isnan(ornt).any():
        raise BadInput(path, "bad_header", "the affine is degenerate; cannot tell the slice axis")
    slice_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    in_plane = [a for a in range(3) if a != slice_axis]
    zooms = img.header.get_zooms()[:3]
    row_axis = in_plane[int(np.flatnonzero(ornt[in_plane, 0] == 1)[0])]
    return SliceGeometry(
        slice_axis=slice_axis,
        to_radiological=ornt_transform(ornt[in_plane], RADIOLOGICAL_AXIAL),
        n_slices=int(img.shape[slice_axis]),
        affine=affine,
        row_spacing=float(zooms[row_axis]),
        slice_spacing=float(zooms[slice_axis]),
    )


def _load(path: str, **kwargs: Any) -> Any:
    import nibabel as nib

    try:
        return nib.load(path, **kwargs)
    except FileNotFoundError:
        raise BadInput(path, "file_not_found", "no such volume file") from None
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, OSError, ...
        raise BadInput(path, "unreadable", f"not a readable NIfTI volume: {exc}") from None


def header_geometry(path: Path) -> SliceGeometry:
    """A volume's geometry from its header alone (no voxel data read, no file left open)."""
    return volume_geometry(_load(str(path)), path)


@functools.lru_cache(maxsize=_OPEN_VOLUMES)
def _open_volume(path: str) -> tuple[Any, SliceGeometry]:
    """An opened volume and its geometry, cached per process. The file stays open so that a gzipped volume
    read slice after slice continues decompressing where it stopped. Only loaders call this, never the
    reader, so no open file is inherited by forked workers."""
    img = _load(path, keep_file_open=True)
    return img, volume_geometry(img, path)


def read_oriented_slice(path: Path, frame: int) -> tuple[np.ndarray, SliceGeometry]:
    """One axial slice of a volume, oriented radiologically, read alone through the array proxy."""
    from nibabel.orientations import apply_orientation

    img, geom = _open_volume(str(path))
    if not 0 <= frame < geom.n_slices:
        raise BadInput(path, "odd_shape", f"frame {frame} is outside the volume's {geom.n_slices} slices")
    index: list[Any] = [slice(None)] * len(img.shape)
    index[geom.slice_axis] = frame
    for extra in range(3, len(img.shape)):
        index[extra] = 0
    try:
        plane = np.asanyarray(img.dataobj[tuple(index)])
    except Exception as exc:  # truncated or corrupt data block
        raise BadInput(path, "truncated", f"cannot read slice {frame}: {exc}") from None
    return np.ascontiguousarray(apply_orientation(plane, geom.to_radiological)), geom


def _as_stored_integers(hu: np.ndarray) -> np.ndarray:
    """Integral HU held as float (a volume with scl_slope set) -> int16, so windowing can use its lookup
    table; genuinely fractional or out-of-range values stay float32."""
    if hu.dtype.kind == "f" and np.array_equal(hu, np.round(hu)) and hu.size and -32768 <= hu.min() and hu.max() <= 32767:
        return hu.astype(np.int16)
    return hu.astype(np.float32) if hu.dtype.kind == "f" else hu


def load_nifti_slice(row: pd.Series, root: Path) -> SliceData:
    """The row's slice in HU (slope 1, intercept 0), oriented radiologically; meta from the header."""
    path = Path(root) / str(row["path"])
    frame = int(row["frame"])
    hu, geom = read_oriented_slice(path, frame)
    notes = []
    if not (hu.dtype.kind in "iu" or hu.dtype == np.float32):
        notes.append(f"nifti_dtype: data stored as {hu.dtype}")
    problem = implausible_hu(hu, 1.0, 0.0)
    if problem:
        raise BadInput(path, "implausible_hu", f"slice {frame}: {problem}")
    return SliceData(
        pixels=_as_stored_integers(hu),
        slope=1.0,
        intercept=0.0,
        meta={
            "z": geom.z(frame),
            "pixel_spacing": geom.row_spacing,
            "slice_thickness": geom.slice_spacing,
            "instance_number": frame + 1,
        },
        notes=notes,
    )


def load_nifti_mask(row: pd.Series, root: Path) -> np.ndarray:
    """The row's mask slice (uint8 0/1) from `mask_path`, oriented like `load_nifti_slice`."""
    mask, _ = read_oriented_slice(Path(root) / str(row["mask_path"]), int(row["frame"]))
    return (mask > 0).astype(np.uint8)


def read_nifti(root: Path) -> Dataset:
    """Read the CT-ICH layout at `root` (see the module docstring)."""
    from tqdm import tqdm

    root = Path(root)
    labels_csv = root / LABELS_CSV
    if not labels_csv.is_file():
        raise ValueError(f"{root}: no {LABELS_CSV} (PatientNumber, SliceNumber, subtype columns, No_Hemorrhage)")
    labels = read_ctich_labels(labels_csv)
    volumes, masks = index_volumes(root / CT_DIR), index_volumes(root / MASK_DIR)

    parts = []
    for patient, rows in tqdm(labels.groupby("patient", sort=True), desc="reading NIfTI headers", unit="volume"):
        rows = rows.sort_values("slice_number").copy()
        frames = rows["slice_number"].to_numpy() - 1
        rows["image_id"] = [image_id_for(patient, n) for n in rows["slice_number"]]
        rows["frame"] = frames
        rows["instance_number"] = rows["slice_number"]
        rows["patient_id"] = rows["study_id"] = rows["series_id"] = f"ctich_{patient:03d}"
        volume = volumes.get(patient)
        rows["path"] = relative(volume, root) if volume else f"{CT_DIR}/{patient:03d}.nii"
        rows["mask_path"] = relative(masks[patient], root) if patient in masks else ""
        rows["has_mask"] = patient in masks
        if volume is None:
            log.warning("nifti: patient %d has no volume in %s; prepare will quarantine its %d slices", patient, CT_DIR, len(rows))
        else:
            try:
                geom = header_geometry(volume)
            except BadInput as exc:
                log.warning("nifti: %s; prepare will quarantine its slices", exc)
            else:
                rows["z"] = [geom.z(f) for f in frames]
                rows["pixel_spacing"] = geom.row_spacing
                rows["slice_thickness"] = geom.slice_spacing
                if frames.max() >= geom.n_slices:
                    log.warning("nifti: patient %d: %s lists slices up to %d but the volume has %d; "
                                "prepare will quarantine the extra ones", patient, LABELS_CSV, frames.max() + 1, geom.n_slices)
                elif len(frames) < geom.n_slices:
                    log.warning("nifti: patient %d: %d of the volume's %d slices have no row in %s; not added",
                                patient, geom.n_slices - len(frames), geom.n_slices, LABELS_CSV)
        parts.append(rows)
    if not parts:
        raise ValueError(f"{labels_csv}: no slices listed")
    slices = pd.concat(parts, ignore_index=True)
    unlisted = sorted(set(volumes) - set(labels["patient"]))
    if unlisted:
        log.warning("nifti: %d volumes have no rows in %s (patients %s); not added", len(unlisted), LABELS_CSV, examples(map(str, unlisted)))
    slices["label7"] = with_label7(slices, labels_csv)
    slices["split"] = "train"
    slices["source"] = "nifti"
    return Dataset(root=root, layout="nifti", slices=conform(slices))
