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

import json
from pathlib import Path

import numpy as np

from ichkit.errors import IchkitError
from ichkit.files import atomic_path

KINDS = {"cls": ".npy", "hu": ".npy", "seg": ".npy", "mask": ".png"}
# kind -> (size setting in cache.json, channels or None, dtype): what a cached array must look like
LAYOUT: dict[str, tuple[str, int | None, str]] = {
    "cls": ("cls_size", 3, "uint8"),
    "hu": ("cls_size", None, "int16"),
    "seg": ("seg_size", 3, "uint8"),
    "mask": ("seg_size", None, "uint8"),
}


class CacheError(IchkitError):
    """A cached file that is damaged (truncated, wrong shape or type): names the image id and the path.

    `ichkit prepare` re-prepares such an entry (it checks every cached file before skipping its id)."""

    def __init__(self, image_id: str, path: Path, problem: str):
        super().__init__(f"{image_id}: damaged cache file {path}: {problem}; run `ichkit prepare` to prepare it again")
        self.image_id, self.path, self.problem = image_id, path, problem


class ImageCache:
    def __init__(self, work: Path | str):
        self.root = Path(work) / "cache"
        self._settings: dict | None = None

    def expected(self, kind: str) -> tuple[tuple[int, ...], str] | None:
        """(shape, dtype) a cached `kind` array has, from cache.json; None where no cache.json exists."""
        if self._settings is None:
            if not self.settings_path.is_file():
                return None
            self._settings = json.loads(self.settings_path.read_text())
        size_key, channels, dtype = LAYOUT[kind]
        size = int(self._settings[size_key])
        return ((size, size) if channels is None else (size, size, channels)), dtype

    def problem(self, kind: str, image_id: str) -> str | None:
        """None if the cached file is whole (its header and byte count match the shape cache.json gives),
        else what is wrong. Reads only the .npy header; a mask PNG is checked by its size on decode."""
        p = self.path(kind, image_id)
        try:
            size = p.stat().st_size
        except OSError as exc:
            return f"{type(exc).__name__}: {exc.strerror or exc}"
        if kind == "mask":
            return None if size > 8 else f"{size}-byte PNG"
        try:
            with open(p, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _fortran, dtype = read_header(fh)
                offset = fh.tell()
        except (ValueError, OSError, SyntaxError) as exc:
            return f"not a .npy file ({exc})"
        want = self.expected(kind)
        if want is not None and (tuple(shape) != want[0] or np.dtype(dtype) != np.dtype(want[1])):
            return f"holds {np.dtype(dtype)} {tuple(shape)}, the cache settings say {want[1]} {want[0]}"
        need = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size != need:
            return f"{size} bytes, a complete {np.dtype(dtype)} {tuple(shape)} array has {need} (truncated)"
        return None

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
        """The cached array; FileNotFoundError if absent, CacheError (id + path) if damaged."""
        p = self.path(kind, image_id)
        if not p.is_file():
            raise FileNotFoundError(f"{p} not in cache: run `ichkit prepare`")
        if kind == "mask":
            from PIL import Image

            try:
                mask = (np.asarray(Image.open(p)) > 0).astype(np.uint8)
            except (OSError, ValueError, SyntaxError) as exc:
                raise CacheError(image_id, p, f"PNG does not decode ({exc})") from None
            want = self.expected(kind)
            if want is not None and mask.shape != want[0]:
                raise CacheError(image_id, p, f"mask is {mask.shape}, the cache settings say {want[0]}")
            return mask
        problem = self.problem(kind, image_id)
        if problem:
            raise CacheError(image_id, p, problem)
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
