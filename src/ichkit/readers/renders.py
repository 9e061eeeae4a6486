"""The reference dataset of rendered JPG windows (layout "renders").

    <root>/renders/<class>/<window>/ID_<hex>.jpg   one file per window of each slice
    <root>/hemorrhage-labels.csv                    wide labels: Image,any,epidural,... (may sit one folder down)
    <root>/Results_*.csv                            polygon ground truth (see polygons.py; may sit one folder down)
    <root>/patients.csv                             optional: image,patient (see below)

Class folders are matched to `labels.CLASSES7` by name similarity (difflib, cutoff 0.75), because copies of
the dataset misspell them (`itroventricular`); a folder that matches no class is an error. Window folders
vary between copies too and are matched case-insensitively to `WINDOW_FOLDERS`. The three channels of the
cache (brain, subdural, bone) come from these windows by `CHANNEL_SOURCES`: brain <- brain_window, else
brain_bone_window; subdural <- subdural_window; bone <- bone_window, else brain_bone_window.
max_contrast_window is kept in `extra_paths` but is no channel. `path` is the brain-channel file,
`extra_paths` JSON {window folder: path} of the other windows of the slice.

Labels come from hemorrhage-labels.csv; where an image's class folder disagrees with its CSV row the CSV
wins (counted in a warning). An image with no CSV row takes the label of its class folder, unless that
folder is `multi`, which does not say which subtypes: then reading stops with an error.

Patients: the renders carry no patient or study ids, only the image id. If `patients.csv` (columns image,
patient) is present it groups the images; otherwise each image is its own group (patient_id = image_id)
and a warning says that folds can then only be grouped per image, so neighbouring slices of one patient
may be split between training and validation folds. study_id and series_id stay empty, z stays NaN.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path, PurePosixPath

import pandas as pd

from ichkit.labels import CLASSES7, SUBTYPES, LabelFileError, normalize_image_id, read_wide_labels
from ichkit.readers.common import assign_patients, examples, is_private, log, relative, with_label7
from ichkit.readers.polygons import RESULTS_GLOB, keep_known_images, read_polygon_files
from ichkit.table import Dataset, conform

RENDERS_DIR = "renders"
LABELS_CSV = "hemorrhage-labels.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WINDOW_FOLDERS: tuple[str, ...] = (
    "brain_window", "brain_bone_window", "bone_window", "subdural_window", "max_contrast_window",
)
# cache channel -> window folders that can supply it, in order of preference
CHANNEL_SOURCES: dict[str, tuple[str, ...]] = {
    "brain": ("brain_window", "brain_bone_window"),
    "subdural": ("subdural_window",),
    "bone": ("bone_window", "brain_bone_window"),
}
RENDER_CHANNELS: tuple[str, ...] = tuple(CHANNEL_SOURCES)
CLASS_MATCH_CUTOFF = 0.75


def looks_like_renders(root: Path) -> bool:
    return (root / RENDERS_DIR).is_dir()


def match_class_folder(folder: Path) -> str:
    """The 7-class name a class folder stands for (`itroventricular` -> `intraventricular`)."""
    name = folder.name.lower().strip()
    match = difflib.get_close_matches(name, CLASSES7, n=1, cutoff=CLASS_MATCH_CUTOFF)
    if not match:
        raise ValueError(f"{folder}: class folder name {folder.name!r} matches none of {', '.join(CLASSES7)}")
    return match[0]


def window_of(rel_path: str) -> str:
    """The window a render file belongs to: its folder's name, lower-cased."""
    return PurePosixPath(rel_path).parent.name.lower()


def is_render_path(rel_path: str) -> bool:
    return window_of(rel_path) in WINDOW_FOLDERS


def channel_files(path: str, extra_paths: str | dict[str, str]) -> dict[str, str | None]:
    """channel -> the render file that supplies it (None if the slice has no such window)."""
    extra = json.loads(extra_paths or "{}") if isinstance(extra_paths, str) else dict(extra_paths)
    windows = {window_of(path): path, **extra}
    return {ch: next((windows[w] for w in sources if w in windows), None) for ch, sources in CHANNEL_SOURCES.items()}


def find_near_root(root: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` in `root` or one folder down (not in renders/ or private folders)."""
    found = sorted(root.glob(pattern))
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if not is_private(sub.name) and sub.name != RENDERS_DIR:
            found += sorted(sub.glob(pattern))
    return [p for p in found if p.is_file()]


def _list_renders(root: Path) -> pd.DataFrame:
    """One row per slice: image_id, folder_class, windows ({window: rel path})."""
    from tqdm import tqdm

    renders = root / RENDERS_DIR
    slices: dict[str, dict] = {}
    doubled: list[str] = []
    loose = 0
    class_dirs = sorted(p for p in renders.iterdir() if p.is_dir() and not is_private(p.name))
    for class_dir in tqdm(class_dirs, desc="listing renders", unit="class"):
        cls = match_class_folder(class_dir)
        loose += sum(1 for p in class_dir.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        for window_dir in sorted(p for p in class_dir.iterdir() if p.is_dir() and not is_private(p.name)):
            window = window_dir.name.lower()
            if window not in WINDOW_FOLDERS:
                raise ValueError(f"{window_dir}: unknown window folder {window_dir.name!r}; "
                                 f"expected one of {', '.join(WINDOW_FOLDERS)}")
            for file in sorted(window_dir.iterdir()):
                if is_private(file.name) or not file.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                image_id = normalize_image_id(file.name)
                entry = slices.setdefault(image_id, {"folder": class_dir.name, "folder_class": cls, "windows": {}})
                if entry["folder"] != class_dir.name:
                    doubled.append(image_id)  # first class folder (sorted) wins; labels come from the CSV anyway
                    continue
                entry["windows"][window] = relative(file, root)
    if loose:
        log.warning("renders: %d image files lie directly in a class folder, outside any window folder; ignored", loose)
    if doubled:
        log.warning("renders: %d images are in two class folders (e.g. %s); the first folder's files are used",
                    len(set(doubled)), examples(sorted(set(doubled))))
    return pd.DataFrame(
        [(i, e["folder"], e["folder_class"], e["windows"]) for i, e in slices.items()],
        columns=["image_id", "folder", "folder_class", "windows"],
    )


def _brain_and_extras(image_id: str, folder: str, windows: dict[str, str]) -> tuple[str, str]:
    brain = next((windows[w] for w in CHANNEL_SOURCES["brain"] if w in windows), None)
    if brain is None:
        # keep the path the brain render would have, so prepare quarantines it as file not found
        suffix = PurePosixPath(next(iter(windows.values()))).suffix
        brain = f"{RENDERS_DIR}/{folder}/{CHANNEL_SOURCES['brain'][0]}/{image_id}{suffix}"
    extras = {w: p for w, p in sorted(windows.items()) if p != brain}
    return brain, json.dumps(extras)


def _labels_from_folders(folder_class: pd.Series) -> pd.DataFrame:
    """RSNA labels implied by single-class folders (normal -> all 0; a subtype -> any + that subtype)."""
    out = pd.DataFrame({"any": (folder_class != "normal").astype("int8")}, index=folder_class.index)
    for s in SUBTYPES:
        out[s] = (folder_class == s).astype("int8")
    return out


def _attach_labels(slices: pd.DataFrame, labels_csv: Path | None) -> pd.DataFrame:
    rsna_cols = ["any", *SUBTYPES]
    if labels_csv is not None:
        labels = read_wide_labels(labels_csv).set_index("image_id")
        in_csv = slices["image_id"].isin(labels.index)
        merged = labels.reindex(slices["image_id"]).reset_index(drop=True)
        merged.index = slices.index
    else:
        log.warning("renders: no %s; labels come from the class folders", LABELS_CSV)
        in_csv = pd.Series(False, index=slices.index)
        merged = pd.DataFrame(index=slices.index, columns=rsna_cols)

    no_row = ~in_csv
    if no_row.any():
        multi = no_row & (slices["folder_class"] == "multi")
        if multi.any():
            raise LabelFileError(labels_csv or LABELS_CSV, None,
                                 f"{int(multi.sum())} images in the 'multi' folder have no row, and 'multi' does not "
                                 f"say which subtypes (e.g. {examples(slices.loc[multi, 'image_id'])})")
        if labels_csv is not None:
            log.warning("renders: %d images have no row in %s; labelled from their class folder (e.g. %s)",
                        int(no_row.sum()), labels_csv.name, examples(slices.loc[no_row, "image_id"]))
        merged.loc[no_row, rsna_cols] = _labels_from_folders(slices.loc[no_row, "folder_class"])
    merged = merged[rsna_cols].astype("int8")
    out = pd.concat([slices, merged], axis=1)
    out["label7"] = with_label7(out, labels_csv or LABELS_CSV)

    disagree = in_csv & (out["label7"] != out["folder_class"])
    if disagree.any():
        pairs = (out.loc[disagree, "folder_class"] + " -> " + out.loc[disagree, "label7"]).value_counts()
        log.warning("renders: %d images sit in a class folder that disagrees with %s; the CSV wins (folder -> CSV: %s)",
                    int(disagree.sum()), labels_csv.name, ", ".join(f"{k} x{v}" for k, v in pairs.items()))
    return out


def read_renders(root: Path) -> Dataset:
    """Read the reference renders layout at `root` (see the module docstring)."""
    root = Path(root)
    slices = _list_renders(root)
    if slices.empty:
        raise ValueError(f"{root / RENDERS_DIR}: no rendered images (expected renders/<class>/<window>/ID_*.jpg)")
    brain_extra = [_brain_and_extras(i, f, w) for i, f, w in zip(slices["image_id"], slices["folder"], slices["windows"])]
    slices["path"] = [b for b, _ in brain_extra]
    slices["extra_paths"] = [e for _, e in brain_extra]
    no_brain = [i for i, w in zip(slices["image_id"], slices["windows"]) if not any(s in w for s in CHANNEL_SOURCES["brain"])]
    if no_brain:
        log.warning("renders: %d images have neither brain_window nor brain_bone_window (e.g. %s); "
                    "prepare will quarantine them as file not found", len(no_brain), examples(no_brain))

    candidates = find_near_root(root, LABELS_CSV)
    if len(candidates) > 1:
        raise ValueError(f"{root}: several {LABELS_CSV} files: {', '.join(relative(p, root) for p in candidates)}")
    slices = _attach_labels(slices, candidates[0] if candidates else None)

    slices["patient_id"] = assign_patients(slices["image_id"], root, "renders")
    slices["split"] = "train"
    slices["source"] = "image"
    slices = slices.sort_values("image_id", kind="stable").reset_index(drop=True)

    polygons = read_polygon_files(find_near_root(root, RESULTS_GLOB))
    polygons = keep_known_images(polygons, slices["image_id"], "renders")
    slices["has_mask"] = slices["image_id"].isin(set(polygons["image_id"]))
    return Dataset(root=root, layout="renders", slices=conform(slices), polygons=polygons)
