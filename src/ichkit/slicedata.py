"""What loading one slice yields, whatever its format, and the error that sends an input to quarantine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class BadInput(Exception):
    """An input that cannot be prepared. `prepare` quarantines it (file + reason) and the run goes on."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


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
