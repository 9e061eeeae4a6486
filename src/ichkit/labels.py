"""Label vocabulary shared by every stage: the RSNA 6-label target, the 7-class target, and label CSV parsing."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from ichkit.errors import IchkitError

# The five subtypes in the order RSNA lists them in its label and sample-submission files.
SUBTYPES: tuple[str, ...] = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
# The RSNA multi-label target: `any` first (it carries weight 2 in the competition metric).
RSNA_LABELS: tuple[str, ...] = ("any",) + SUBTYPES
# The 7-class target of the reference paper.
CLASSES7: tuple[str, ...] = (
    "epidural",
    "subdural",
    "subarachnoid",
    "intraparenchymal",
    "intraventricular",
    "multi",
    "normal",
)
CLASS7_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES7)}


class LabelFileError(IchkitError):
    """A label CSV that cannot be trusted: names the file and line."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


def seven_class(any_: int, subtypes: dict[str, int] | pd.Series) -> str:
    """The 7-class rule: normal if any=0; multi if two or more subtypes; else the single subtype.

    A slice flagged `any` with no subtype set is inconsistent; it is called normal only if `any` is 0,
    so such a slice raises instead of being guessed.
    """
    positives = [s for s in SUBTYPES if int(subtypes[s]) == 1]
    if int(any_) == 0:
        if positives:
            raise ValueError(f"any=0 but subtypes {positives} are set")
        return "normal"
    if not positives:
        raise ValueError("any=1 but no subtype is set")
    return "multi" if len(positives) >= 2 else positives[0]


def seven_class_column(df: pd.DataFrame) -> pd.Series:
    """Vectorised `seven_class` over a frame with the six RSNA label columns (0/1 ints)."""
    sub = df[list(SUBTYPES)].to_numpy(dtype=np.int64)
    anyv = df["any"].to_numpy(dtype=np.int64)
    n_pos = sub.sum(axis=1)
    bad = ((anyv == 0) & (n_pos > 0)) | ((anyv == 1) & (n_pos == 0))
    if bad.any():
        first = df.index[np.flatnonzero(bad)[0]]
        raise ValueError(f"{int(bad.sum())} rows with `any` inconsistent with the subtypes (first: {first})")
    out = np.full(len(df), "normal", dtype=object)
    single = n_pos == 1
    out[single] = np.asarray(SUBTYPES, dtype=object)[sub[single].argmax(axis=1)]
    out[n_pos >= 2] = "multi"
    return pd.Series(out, index=df.index, name="label7")


def parse_binary(value: str, path: Path, line: int) -> int:
    """A 0/1 label cell (`1`, `0`, `1.0`), else LabelFileError naming file and line."""
    v = value.strip()
    try:
        f = float(v)
    except ValueError:
        raise LabelFileError(path, line, f"label value {value!r} is not 0 or 1") from None
    if f not in (0.0, 1.0):
        raise LabelFileError(path, line, f"label value {value!r} is not 0 or 1")
    return int(f)


@contextmanager
def open_label_csv(path: Path | str) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
    """Open a label-like CSV: yields (header, rows); rows gives (line number, fields) per data row.

    The header is stripped; blank rows are skipped; a row whose field count differs from the header's
    raises LabelFileError. Line numbers are the line a row starts on, also after quoted cells that span
    lines. A UTF-8 byte-order mark (spreadsheet exports) is ignored.

        with open_label_csv(path) as (header, rows):
            ...check header...
            for line, fields in rows: ...
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]

        def rows() -> Iterator[tuple[int, list[str]]]:
            start = reader.line_num + 1
            for rec in reader:
                line, start = start, reader.line_num + 1
                if not rec or all(not x.strip() for x in rec):
                    continue
                if len(rec) != len(header):
                    raise LabelFileError(path, line, f"expected {len(header)} fields, got {len(rec)}")
                yield line, rec

        yield header, rows()


def iter_long_rows(path: Path | str) -> Iterator[tuple[int, str, str, str]]:
    """Rows of an RSNA long-format file (`ID,Label`, ids `ID_<sop>_<subtype>`: the label CSV and the sample
    submission) as (line number, image id, subtype, raw value). Blank lines are skipped; a bad header, a
    row without two fields, a malformed id or an unknown subtype raise LabelFileError naming file:line.
    """
    path = Path(path)
    known = set(RSNA_LABELS)
    with open_label_csv(path) as (header, rows):
        if header != ["ID", "Label"]:
            raise LabelFileError(path, 1, f"expected header 'ID,Label', got {header!r}")
        for lineno, rec in rows:
            rid = rec[0].strip()
            image_id, sep, subtype = rid.rpartition("_")
            if not sep or not image_id.startswith("ID_") or image_id == "ID":
                raise LabelFileError(path, lineno, f"id {rid!r} is not of the form ID_<sop>_<subtype>")
            if subtype not in known:
                raise LabelFileError(path, lineno, f"unknown subtype {subtype!r} in {rid!r}")
            yield lineno, image_id, subtype, rec[1]


def read_rsna_long_labels(path: Path | str) -> pd.DataFrame:
    """Read the RSNA long label CSV (`ID,Label`, rows `ID_<sop>_<subtype>`) into one row per image.

    Returns columns image_id + RSNA_LABELS (int8). Stops with LabelFileError naming file and line on a
    malformed row, an unknown subtype, a non-binary label, a duplicate row or an image missing a label.
    """
    path = Path(path)
    rows: dict[str, dict[str, int]] = {}
    for lineno, image_id, subtype, value in iter_long_rows(path):
        labels = rows.setdefault(image_id, {})
        if subtype in labels:
            raise LabelFileError(path, lineno, f"duplicate row for {image_id}_{subtype}")
        labels[subtype] = parse_binary(value, path, lineno)
    for image_id, labels in rows.items():
        missing = set(RSNA_LABELS) - labels.keys()
        if missing:
            raise LabelFileError(path, None, f"image {image_id} lacks labels {sorted(missing)}")
    df = pd.DataFrame.from_dict(rows, orient="index", columns=list(RSNA_LABELS)).astype("int8")
    df.index.name = "image_id"
    return df.reset_index()


def read_wide_labels(path: Path | str, id_column: str = "Image") -> pd.DataFrame:
    """Read a wide label CSV (`Image,any,epidural,...`, the reference dataset's hemorrhage-labels.csv).

    Image ids may carry a file extension or lack the `ID_` prefix; both are normalised to `ID_<hex>`.
    """
    path = Path(path)
    with open_label_csv(path) as (header, rows):
        if not header:
            raise LabelFileError(path, 1, "empty file")
        if id_column not in header:
            raise LabelFileError(path, 1, f"no {id_column!r} column in header {header!r}")
        missing = [c for c in RSNA_LABELS if c not in header]
        if missing:
            raise LabelFileError(path, 1, f"header lacks label columns {missing}")
        unknown = [c for c in header if c not in RSNA_LABELS and c != id_column and c and not c.startswith("Unnamed")]
        if unknown:
            raise LabelFileError(path, 1, f"unknown label columns {unknown}")
        pos = {c: header.index(c) for c in (id_column,) + RSNA_LABELS}
        out: dict[str, list[int]] = {}
        for lineno, rec in rows:
            image_id = normalize_image_id(rec[pos[id_column]])
            if image_id in out:
                raise LabelFileError(path, lineno, f"duplicate image {image_id}")
            out[image_id] = [parse_binary(rec[pos[c]], path, lineno) for c in RSNA_LABELS]
    df = pd.DataFrame.from_dict(out, orient="index", columns=list(RSNA_LABELS)).astype("int8")
    df.index.name = "image_id"
    return df.reset_index()


def normalize_image_id(raw: str) -> str:
    """`ID_abc.jpg`, `abc.png`, ` ID_abc ` -> `ID_abc`."""
    s = raw.strip()
    for ext in (".dcm", ".jpg", ".jpeg", ".png"):
        if s.lower().endswith(ext):
            s = s[: -len(ext)]
            break
    return s if s.startswith("ID_") else f"ID_{s}"
