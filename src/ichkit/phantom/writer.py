"""Write one slice as a CT DICOM file the way the RSNA 2019 files are written, quirks included.

Pixel encodings (one per study, as they come from one scanner):

- ``standard``: signed int16, BitsStored 16, RescaleSlope 1, RescaleIntercept -1024; outside the
  reconstruction circle -2000 (HU -3024) with PixelPaddingValue -2000.
- ``unsigned``: uint16 (PixelRepresentation 0), BitsStored 16, intercept -1024; padding 0.
- ``bits_stored_12``: uint16, BitsStored 12 / HighBit 11, intercept -1024; padding 0.
- ``bad_intercept``: the broken RSNA files: uint16, BitsStored 12, RescaleIntercept 0, and the stored
  values are HU in 12-bit two's complement (HU mod 4096). Read naively, air comes out at +3096. The public
  fix restores HU = ((stored + 1000) mod 4096) - 1000. Outside the circle: air, no PixelPaddingValue.
- ``rescale_decimal_strings``: as standard, but slope and intercept written as "1.000000" / "-1024.000000".
- ``rescale_multivalue``: as standard, but slope and intercept written with two values ("1\\1").

Orthogonal to those: WindowCenter / WindowWidth written with two values, Implicit VR Little Endian for a
few studies, and RLE Lossless compression for a few files.

All ids follow RSNA's anonymisation: PatientID, StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID are
`ID_<hex>` strings, and a file is named after its SOPInstanceUID. These are not valid DICOM UIDs (real RSNA
files are the same); pydicom warns about them when reading unless value validation is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

PIXEL_ENCODINGS: tuple[str, ...] = (
    "standard",
    "unsigned",
    "bits_stored_12",
    "bad_intercept",
    "rescale_decimal_strings",
    "rescale_multivalue",
)
# deterministic (hash of fixed text), so files are byte-identical across runs and pydicom versions
IMPLEMENTATION_UID = generate_uid(entropy_srcs=["ichkit", "phantom", "writer"])
SIGNED_PADDING = -2000
STANDARD_INTERCEPT = -1024


@dataclass(frozen=True)
class FileEncoding:
    """How one file is encoded."""

    pixels: str = "standard"          # one of PIXEL_ENCODINGS
    implicit_vr: bool = False
    rle: bool = False
    window_multivalue: bool = False

    def __post_init__(self) -> None:
        if self.pixels not in PIXEL_ENCODINGS:
            raise ValueError(f"unknown pixel encoding {self.pixels!r}; expected one of {PIXEL_ENCODINGS}")
        if self.rle and self.implicit_vr:
            raise ValueError("RLE Lossless is an explicit-VR transfer syntax; it cannot be combined with implicit VR")


@dataclass(frozen=True)
class SliceHeader:
    """The identifying and geometric tags of one slice."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int
    series_number: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: float
    slice_thickness: float
    window: tuple[float, float]        # brain window (center, width) the scanner suggests
    manufacturer: str
    model: str
    kvp: float


def encode_pixels(hu: np.ndarray, fov: np.ndarray, encoding: str) -> tuple[np.ndarray, dict]:
    """HU image -> (stored pixel array, pixel-module tags). `fov` is True inside the reconstruction circle."""
    hu_int = np.rint(hu).astype(np.int32)
    tags: dict = {"RescaleSlope": "1", "RescaleIntercept": str(STANDARD_INTERCEPT)}
    if encoding in ("standard", "rescale_decimal_strings", "rescale_multivalue"):
        stored = np.clip(hu_int - STANDARD_INTERCEPT, -32768, 32767)
        stored[~fov] = SIGNED_PADDING
        pixels = stored.astype(np.int16)
        tags.update(BitsStored=16, PixelRepresentation=1, PixelPaddingValue=SIGNED_PADDING)
        if encoding == "rescale_decimal_strings":
            tags.update(RescaleSlope="1.000000", RescaleIntercept=f"{STANDARD_INTERCEPT:.6f}")
        elif encoding == "rescale_multivalue":
            tags.update(RescaleSlope=["1", "1"], RescaleIntercept=[str(STANDARD_INTERCEPT)] * 2)
    elif encoding in ("unsigned", "bits_stored_12"):
        bits = 16 if encoding == "unsigned" else 12
        stored = np.clip(hu_int - STANDARD_INTERCEPT, 0, 2 ** bits - 1)
        stored[~fov] = 0
        pixels = stored.astype(np.uint16)
        tags.update(BitsStored=bits, PixelRepresentation=0, PixelPaddingValue=0)
    elif encoding == "bad_intercept":
        # -1000..3095 is what 12-bit two's complement with the +1000 shift can hold
        true_hu = np.clip(hu_int, -1000, 3095)
        true_hu[~fov] = -1000
        pixels = np.mod(true_hu, 4096).astype(np.uint16)
        tags.update(BitsStored=12, PixelRepresentation=0, RescaleIntercept="0")
    else:
        raise ValueError(f"unknown pixel encoding {encoding!r}")
    tags["HighBit"] = tags["BitsStored"] - 1
    return pixels, tags


def build_dataset(pixels: np.ndarray, pixel_tags: dict, header: SliceHeader, encoding: FileEncoding) -> Dataset:
    """The pydicom dataset of one slice: file meta, the tags RSNA's files carry, pixels (RLE if asked)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = header.sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if encoding.implicit_vr else ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ICHKIT_PHANTOM"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = header.sop_uid
    ds.Modality = "CT"
    ds.Manufacturer = header.manufacturer
    ds.ManufacturerModelName = header.model
    ds.PatientID = header.patient_id
    ds.KVP = f"{header.kvp:g}"
    ds.SliceThickness = f"{header.slice_thickness:g}"
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = header.series_number
    ds.InstanceNumber = header.instance_number
    ds.ImagePositionPatient = [f"{x:.6f}" for x in header.position]
    ds.ImageOrientationPatient = [f"{x:.6f}" for x in header.orientation]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [f"{header.pixel_spacing:.6f}"] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = pixel_tags["BitsStored"]
    ds.HighBit = pixel_tags["HighBit"]
    ds.PixelRepresentation = pixel_tags["PixelRepresentation"]
    if "PixelPaddingValue" in pixel_tags:
        ds.PixelPaddingValue = pixel_tags["PixelPaddingValue"]
        # the VR of PixelPaddingValue follows PixelRepresentation
        ds["PixelPaddingValue"].VR = "SS" if pixel_tags["PixelRepresentation"] == 1 else "US"
    center, width = header.window
    if encoding.window_multivalue:  # brain and bone windows, as some scanners export them
        ds.WindowCenter = [f"{center:g}", "600"]
        ds.WindowWidth = [f"{width:g}", "2800"]
    else:
        ds.WindowCenter = f"{center:g}"
        ds.WindowWidth = f"{width:g}"
    ds.RescaleIntercept = pixel_tags["RescaleIntercept"]
    ds.RescaleSlope = pixel_tags["RescaleSlope"]
    ds.PixelData = pixels.tobytes()
    if encoding.rle:
        ds.compress(RLELossless, pixels, generate_instance_uid=False)
    return ds


def write_slice(path: Path, hu: np.ndarray, fov: np.ndarray, header: SliceHeader, encoding: FileEncoding) -> None:
    """Encode `hu` (float HU image) and write it as a DICOM file at `path`."""
    pixels, tags = encode_pixels(hu, fov, encoding.pixels)
    with pydicom.config.disable_value_validation():  # the RSNA-style `ID_` UIDs are not valid UI values
        ds = build_dataset(pixels, tags, header, encoding)
        ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------------------------------- broken inputs
CORRUPTIONS: tuple[str, ...] = ("truncated", "no_pixel_data", "not_dicom")


def corrupt_file(path: Path, kind: str) -> None:
    """Break a written file the way real downloads break.

    truncated: cut inside the pixel data (pydicom reads the header, then fails to decode the pixels);
    no_pixel_data: a valid DICOM file whose PixelData element is missing;
    not_dicom: an HTML error page saved under the .dcm name.
    """
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
    elif kind == "no_pixel_data":
        with pydicom.config.disable_value_validation():
            ds = pydicom.dcmread(path)
            del ds.PixelData
            ds.save_as(path, enforce_file_format=True)
    elif kind == "not_dicom":
        path.write_bytes(b"<html><body><h1>503 Service Unavailable</h1></body></html>\n")
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
