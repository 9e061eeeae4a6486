"""What loading one slice yields, whatever its format, and the error that sends an input to quarantine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


# Why an input was quarantined: the `reason` column of quarantine.csv, one slug per kind of problem, so the
# file can be grouped and grepped. Every loader (DICOM, NIfTI, images) raises BadInput with one of these.
REASONS: dict[str, str] = {
    "file_not_found": "the path does not exist",
    "unreadable": "the path exists but cannot be read (permissions, a folder, an I/O error)",
    "not_dicom": "no DICOM preamble/'DICM' prefix and no readable data set",
    "truncated": "the file ends before its header or pixel data is complete",
    "no_pixel_data": "a DICOM file without a (7FE0,0010) Pixel Data element",
    "no_decoder": "compressed transfer syntax that no installed pydicom plug-in decodes",
    "decode_error": "the pixel data does not decode",
    "bad_header": "image pixel tags (Rows, Columns, Bits Allocated) missing or inconsistent",
    "odd_shape": "not a single 2-D grey-level frame of a usable size and aspect",
    "implausible_hu": "decodes, but its Hounsfield units cannot be a head CT (a constant image, values far outside the CT scale)",
    "duplicate": "the same image as another input (same SOPInstanceUID, or byte-identical); the other is kept",
}

# The CT number scale runs from about -1024 (air) to 3071 HU, extended scales to ~30,000 (metal), and the
# padding outside the field of view is one constant, often -2000, -3024 or even -32768 stored; values beyond
# these bounds on more than a sliver of the image (padding, the minimum value, aside) mean the bytes are not
# CT numbers at all (float bytes read as integers, a wrong BitsAllocated).
HU_BOUNDS = (-3100.0, 32767.0)
MAX_OUT_OF_SCALE = 0.01  # share of pixels


def implausible_hu(pixels: np.ndarray, slope: float, intercept: float) -> str | None:
    """Why stored `pixels` with this rescale cannot be a CT slice in HU, or None if they can.

    Costs two reductions (min, max) on a plausible image; the share outside the scale is computed only
    when the extremes are out of bounds.
    """
    lo_raw, hi_raw = float(pixels.min()), float(pixels.max())
    if not (np.isfinite(lo_raw) and np.isfinite(hi_raw)):
        return f"{int(np.count_nonzero(~np.isfinite(pixels)))} pixels are NaN or infinite"
    lo, hi = sorted((lo_raw * slope + intercept, hi_raw * slope + intercept))
    if hi == lo:
        return f"constant image: every pixel is {lo:g} HU"
    if lo >= HU_BOUNDS[0] and hi <= HU_BOUNDS[1]:
        return None
    values = pixels[pixels != pixels.min()]  # padding is one constant at the bottom of the range
    if values.size == 0:
        return None
    hu = values.astype(np.float64) * slope + intercept
    share = float(np.mean((hu < HU_BOUNDS[0]) | (hu > HU_BOUNDS[1])))
    if share > MAX_OUT_OF_SCALE:
        return (f"{share:.0%} of pixels outside {HU_BOUNDS[0]:g}..{HU_BOUNDS[1]:g} HU (range {lo:.3g}..{hi:.3g}): "
                "not CT numbers")
    return None


class BadInput(Exception):
    """An input that cannot be prepared. `prepare` quarantines it (file, reason, detail) and the run goes on."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}; expected one of {sorted(REASONS)}")
        super().__init__(f"{path}: {reason}: {detail}" if detail else f"{path}: {reason}")
        self.path, self.reason, self.detail = str(path), reason, detail


@dataclass
class SliceData:
    """One decoded slice.

    Either `pixels` (stored values; HU = pixels * slope + intercept: DICOM, NIfTI) or `windows` (an already
    windowed uint8 HxWx3 render, channel order = the configured windows: the image layouts) is set.
    Keeping stored integers plus slope/intercept lets `windows.py` window through a lookup table.
    """

    pixels: np.ndarray | None = None
    slope: float = 1.0
    intercept: float = 0.0
    windows: np.ndarray | None = None
    # what the file itself says: patient_id, study_id, series_id, z, instance_number, pixel_spacing, slice_thickness
    meta: dict[str, Any] = field(default_factory=dict)
    # fixes applied on the way, for the manifest, e.g. "no RescaleSlope/RescaleIntercept: slope 1, intercept 0"
    notes: list[str] = field(default_factory=list)

    def hu(self) -> np.ndarray:
        if self.pixels is None:
            raise ValueError("this slice is a rendered image; it has no Hounsfield units")
        return self.pixels.astype(np.float32) * np.float32(self.slope) + np.float32(self.intercept)
