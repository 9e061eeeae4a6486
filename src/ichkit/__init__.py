"""ichkit: intracranial hemorrhage classification and segmentation on head CT.

Pipeline (one module per stage): data in (``readers``, ``phantom``) -> ``prepare`` (DICOM -> HU -> windows ->
cache) -> ``folds`` -> ``features`` / ``models`` -> OOF files (``oof``) -> stack -> submit.
"""

__version__ = "0.1.0"
