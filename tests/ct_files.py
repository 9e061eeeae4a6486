"""CT DICOM files for the tests, written with pydicom: a data set builder, a writer (optionally
compressed with pydicom's encoders) and a crude head phantom in stored values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = [1, 0, 0, 0, 1, 0]


def ct_dataset(
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    slope: object = "1",
    intercept: object = "-1024",
    position: object = (-125.0, -125.0, 10.0),
    orientation: object = AXIAL,
    instance: int | None = 1,
    patient: str = "ID_patient0",
    study: str | None = None,
    series: str | None = None,
    thickness: str | None = "5",
) -> Dataset:
    """A CT image data set holding `pixels` (uint16 or int16); None leaves a tag out."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = patient
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PixelSpacing = ["0.48828125", "0.48828125"]
    if thickness is not None:
        ds.SliceThickness = thickness
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.set_pixel_data(pixels, "MONOCHROME2", bits_stored or 8 * pixels.dtype.itemsize)
    return ds


def write_ct(path: Path, pixels: np.ndarray, *, transfer_syntax: str | None = None, **tags) -> Path:
    """Write a CT DICOM file (optionally compressed with pydicom's encoders) and return its path."""
    ds = ct_dataset(pixels, **tags)
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def head_pixels(size: int = 128, seed: int = 0, dtype=np.int16) -> np.ndarray:
    """Stored values of a crude head: air 0, skull ring ~2000, brain ~1060 plus noise (intercept -1024)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    img = np.where(r < 0.8, 1064, 24) + np.where((r > 0.7) & (r < 0.8), 1000, 0)
    return (img + rng.integers(-20, 21, img.shape)).astype(dtype)
