"""The on-disk image cache written by `prepare`, read by features and CNN loaders.

Layout under ``<work>/cache/`` (files sharded by the first two characters after ``ID_`` so no folder
grows to hundreds of thousands of entries):

- ``cls/<xx>/<id>.npy``  uint8 (cls_size, cls_size, 3): the configured windows as channels
- ``hu/<xx>/<id>.npy``   int16 (cls_size, cls_size): Hounsfield units (for radiomic features)
- ``seg/<xx>/<id>.npy``  uint8 (seg_size, seg_size, 3): windows at segmentation size
- ``mask/<xx>/<id>.png`` uint8 (seg_size, seg_size) 0/255 ground-truth mask, only where a mask exists
- ``manifest.parquet``   one row per image prepared (status ok), see prepare.MANIFEST_COLUMNS
- ``manifest.jsonl``     the same rows appended per chunk while `prepare` runs, folded into the parquet at its end
- ``quarantine.csv``     image_id, path, reason, detail for every input that could not be prepared
- ``cache.json``         the prepare settings the cache was built with (windows, sizes)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ichkit.files import atomic_path

KINDS = {"cls": ".npy", "hu": ".npy", "seg": ".npy", "mask": ".png"}


class ImageCache:
    def __init__(self, work: Path | str):
        self.root = Path(work) / "cache"

    def path(self, kind: str, image_id: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind {kind!r}; expected one of {sorted(KINDS)}")
        shard = image_id[3:5] if image_id.startswith("ID_") else image_id[:2]
        return self.root / kind / shard / f"{image_id}{KINDS[kind]}"

    def has(self, kind: str, image_id: str) -> bool:
        return self.path(kind, image_id).is_file()

    def save(self, kind: str, image_id: str, array: np.ndarray) -> Path:
        """Write atomically (temp file + rename) so an interrupted run never leaves a half file."""
        p = self.path(kind, image_id)
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            if kind == "mask":
                from PIL import Image

                Image.fromarray(np.where(array > 0, 255, 0).astype(np.uint8)).save(fh, format="PNG")
            else:
                np.save(fh, array)
        return p

    def load(self, kind: str, image_id: str) -> np.ndarray:
        p = self.path(kind, image_id)
        if not p.is_file():
            raise FileNotFoundError(f"{p} not in cache: run `ichkit prepare`")
        if kind == "mask":
            from PIL import Image

            return (np.asarray(Image.open(p)) > 0).astype(np.uint8)
        return np.load(p)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def manifest_log_path(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def quarantine_path(self) -> Path:
        return self.root / "quarantine.csv"

    @property
    def settings_path(self) -> Path:
        return self.root / "cache.json"
