"""The embedded synthetic head-CT phantom dataset (`ichkit demo-data`).

`generate_dataset(out, patients, seed, ...)` writes DICOM slices, label CSVs and polygon ground truth in the
real RSNA 2019 / reference-dataset formats, so every reader and stage runs on it as on the real data.
Modules: anatomy (the head), hemorrhage (the bleeds), scanner (geometry, blur, noise), study (one slice),
writer (DICOM encoding), label_files (label and polygon CSVs), dataset (the whole set), cli.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cached_dataset", "generate_dataset"]


def __getattr__(name: str) -> Any:
    # imported on first use so that `ichkit --help` does not load numpy, scipy, skimage and pydicom
    if name in __all__:
        from ichkit.phantom import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
