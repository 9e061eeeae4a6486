"""A folder of PNG/JPG slices with a labels CSV (layout "images"), and loading any rendered image slice.

    <root>/labels.csv      any name; an id column (Image, image, ID, id or filename) and either the six RSNA
                           columns (any, epidural, ...), a `label` column holding a 7-class name, or only
                           `hemorrhage` / `any` (binary labels: subtypes unknown, for the binary task)
    <root>/**/*.png|jpg    the slices, found recursively (folders starting with _ or . skipped), any size
    <root>/masks/          optional: a mask file per slice, same stem (.dcm, .png, .nii[.gz]; see masks.py)
    <root>/patients.csv    optional: image,patient; without it each image is its own patient group,
                           exactly as for the renders layout (see renders.py)

Ids are matched on the file name without extension, with the `ID_` prefix added when missing. A `label`
of `multi` sets `any` = 1 but leaves the five subtype columns <NA>: the 7-class name does not say which
subtypes are present.

Pixel rules of `load_image_slice` (the result is always uint8 HxWx3):
- grey (L, 1-bit, grey + alpha) is replicated to the three channels;
- RGB is kept as is; the alpha channel of RGBA (or of a palette with transparency) is dropped;
- 16-bit grey is scaled to 8 bits as round(v / 257), which maps 0..65535 onto 0..255 for every image
  alike (no per-image stretching, so intensities stay comparable between images);
- float images are refused (BadInput, quarantined): their scale is unknown.
A render of the renders layout instead stacks its window files as the channels (see renders.py); a
missing window is replaced by the brain one, with a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ichkit.labels import (BINARY_COLUMNS, CLASSES7, RSNA_LABELS, SUBTYPES, LabelFileError, normalize_image_id,
                           open_label_csv, read_binary_labels, read_wide_labels)
from ichkit.readers import renders
from ichkit.readers.masks import MASKS_DIR, attach_mask_files
from ichkit.readers.common import (assign_patients, cell_text, csv_header, examples, index_by_image_id, iter_files,
                                   log, with_label7)
from ichkit.slicedata import BadInput, SliceData
from ichkit.table import Dataset, conform

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ID_COLUMNS: tuple[str, ...] = ("Image", "image", "ID", "id", "filename")
CLASS_COLUMNS: tuple[str, ...] = ("label", "label7")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def label_csv_kind(path: Path) -> tuple[str, str] | None:
    """(id column, "rsna" | "class") if `path` is a labels CSV of this layout, else None."""
    header = csv_header(path)
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None:
        return None
    if all(c in header for c in RSNA_LABELS):
        return id_column, "rsna"
    if any(c in header for c in CLASS_COLUMNS):
        return id_column, "class"
    if not any(c in header for c in SUBTYPES) and any(c in header for c in BINARY_COLUMNS):
        return id_column, "binary"
    return None


def find_label_csv(root: Path) -> tuple[Path, str, str] | None:
    """The one labels CSV directly in `root`: (path, id column, kind). Several -> ValueError."""
    found = [(p, *kind) for p in sorted(root.glob("*.csv")) if p.name != "patients.csv" and (kind := label_csv_kind(p))]
    if len(found) > 1:
        raise ValueError(f"{root}: several label CSVs, cannot tell which to use: {', '.join(p.name for p, *_ in found)}")
    return found[0] if found else None


def looks_like_images(root: Path) -> bool:
    return find_label_csv(root) is not None and next(iter_files(root, IMAGE_SUFFIXES), None) is not None


def read_class_labels(path: Path, id_column: str) -> pd.DataFrame:
    """A CSV with an id column and a 7-class `label` -> image_id, RSNA_LABELS (Int8), label7."""
    labels: dict[str, str] = {}
    with open_label_csv(path) as (header, rows):
        class_column = next(c for c in CLASS_COLUMNS if c in header)
        i_id, i_class = header.index(id_column), header.index(class_column)
        for lineno, rec in rows:
            if not rec[i_id].strip():
                raise LabelFileError(path, lineno, f"empty {id_column}")
            image_id = normalize_image_id(Path(rec[i_id].strip()).name)
            name = rec[i_class].strip().lower()
            if name not in CLASSES7:
                raise LabelFileError(path, lineno, f"unknown class {rec[i_class]!r}; expected one of {', '.join(CLASSES7)}")
            if image_id in labels:
                raise LabelFileError(path, lineno, f"duplicate image {image_id}")
            labels[image_id] = name
    label7 = pd.Series(labels, dtype="string")
    out = pd.DataFrame({"image_id": label7.index, "label7": label7.to_numpy()})
    out["any"] = (out["label7"] != "normal").astype("Int8")
    for s in SUBTYPES:
        out[s] = (out["label7"] == s).astype("Int8")
        out.loc[out["label7"] == "multi", s] = pd.NA  # which subtypes a 'multi' slice has is not known
    return out


def read_images(root: Path) -> Dataset:
    """Read the image-folder layout at `root` (see the module docstring)."""
    from tqdm import tqdm

    root = Path(root)
    found = find_label_csv(root)
    if found is None:
        raise ValueError(f"{root}: no labels CSV with an id column ({', '.join(ID_COLUMNS)}) and either the six "
                         f"RSNA columns or a {' / '.join(CLASS_COLUMNS)} column")
    label_csv, id_column, kind = found
    if kind == "rsna":
        labels = read_wide_labels(label_csv, id_column=id_column)
        labels["label7"] = with_label7(labels, label_csv)
    elif kind == "binary":
        labels = read_binary_labels(label_csv, id_column, next(c for c in BINARY_COLUMNS if c in csv_header(label_csv)))
    else:
        labels = read_class_labels(label_csv, id_column)

    listed = (p for p in iter_files(root, IMAGE_SUFFIXES) if p.relative_to(root).parts[0] != MASKS_DIR)
    files = index_by_image_id(tqdm(listed, desc="listing images", unit="file"), root)
    slices = labels.copy()
    slices["path"] = slices["image_id"].map(files).fillna("")
    missing = slices["path"] == ""
    if missing.any():
        log.warning("images: %d ids of %s have no image file (e.g. %s); prepare will quarantine them",
                    int(missing.sum()), label_csv.name, examples(slices.loc[missing, "image_id"]))
    unlisted = sorted(set(files) - set(slices["image_id"]))
    if unlisted:
        log.warning("images: %d image files are not in %s (e.g. %s); not added",
                    len(unlisted), label_csv.name, examples(files[i] for i in unlisted))
    slices["patient_id"] = assign_patients(slices["image_id"], root, "images")
    slices["split"] = "train"
    slices["source"] = "image"
    slices["has_mask"] = False
    slices = attach_mask_files(slices, root, "images")
    return Dataset(root=root, layout="images", slices=conform(slices))


# --- loading ---------------------------------------------------------------------------------------------

def _open(path: Path) -> PILImage:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise BadInput(path, "file_not_found", "no such image file")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadInput(path, "decode_error", f"not a readable image: {exc}") from None
    return img


def read_uint8(path: Path) -> tuple[np.ndarray, list[str]]:
    """An image file as uint8, HxW (grey) or HxWx3 (colour), by the module's pixel rules, plus notes
    (`slug: detail`, like dicom.py's, so prepare can count them by slug)."""
    img = _open(path)
    notes: list[str] = []
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append(f"alpha_dropped: {mode} image")
        img = img.convert("RGB" if mode.startswith(("RGB", "P")) else "L")
        mode = img.mode
    if mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit grey) and I (32-bit int, 16-bit PNGs often load so)
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BadInput(path, "decode_error", f"{mode} image with values outside 0..65535")
        notes.append("scaled_16_to_8_bit: round(v / 257)")
        return np.rint(values / 257.0).astype(np.uint8), notes
    if mode == "F":
        raise BadInput(path, "decode_error", "floating-point image: its intensity scale is unknown")
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8), notes
    if mode != "RGB":
        notes.append(f"converted_to_rgb: {mode} image")
    return np.asarray(img.convert("RGB"), dtype=np.uint8), notes


def _grey(path: Path) -> tuple[np.ndarray, list[str]]:
    """One window render as a single uint8 channel (a colour render is reduced to its luma)."""
    from PIL import Image

    arr, notes = read_uint8(path)
    if arr.ndim == 3:
        arr = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.uint8)
    return arr, notes


def _load_render(row: pd.Series, root: Path, channels: Sequence[str]) -> SliceData:
    path = cell_text(row, "path")
    files = renders.channel_files(path, cell_text(row, "extra_paths"))
    unknown = [c for c in channels if c not in files]
    if unknown:
        raise ValueError(f"the renders layout has windows for channels {', '.join(renders.RENDER_CHANNELS)}; "
                         f"cannot supply {', '.join(unknown)} (check prepare.windows)")
    brain, notes = _grey(root / path)
    planes = []
    for channel in channels:
        rel = files[channel]
        if rel is None:  # never for brain: `path` is the brain render
            notes.append(f"window_missing: no {channel} window, brain window replicated")
            planes.append(brain)
        elif rel == path:  # brain_bone_window feeding both brain and bone
            planes.append(brain)
        else:
            plane, more = _grey(root / rel)
            if plane.shape != brain.shape:
                raise BadInput(root / rel, "odd_shape", f"window is {plane.shape[1]}x{plane.shape[0]}, "
                                                         f"the brain window {brain.shape[1]}x{brain.shape[0]}")
            notes += more
            planes.append(plane)
    return SliceData(windows=np.stack(planes, axis=-1), notes=notes)


def load_image_slice(row: pd.Series, root: Path, channels: Sequence[str] = renders.RENDER_CHANNELS) -> SliceData:
    """A rendered slice as SliceData(windows=uint8 HxWx3).

    A render of the renders layout stacks its window files in `channels` order (the configured windows,
    each one of renders.RENDER_CHANNELS); any other image follows the module's pixel rules and keeps its
    own channels.
    """
    root = Path(root)
    rel = cell_text(row, "path")
    if not rel:
        raise BadInput(str(row["image_id"]), "file_not_found", f"no image file for this id under {root}")
    if renders.is_render_path(rel):
        return _load_render(row, root, channels)
    arr, notes = read_uint8(root / rel)
    if arr.ndim == 2:
        notes.append("grey_to_rgb: grey replicated to 3 channels")
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return SliceData(windows=np.ascontiguousarray(arr), notes=notes)
