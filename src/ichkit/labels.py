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
        i = np.flatnonzero(bad)[0]
        first = df["image_id"].iloc[i] if "image_id" in df.columns else df.index[i]
        state = "any=0 but a subtype is set" if anyv[i] == 0 else "any=1 but no subtype is set"
        raise ValueError(f"{int(bad.sum())} images with `any` inconsistent with the subtypes (first: {first}: {state})")
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


def detect_encoding(path: Path) -> str:
    """`utf-16` for a file starting with a UTF-16 byte-order mark, else `utf-8-sig` (UTF-8 with or without BOM).

    UTF-16 without a BOM is refused: it cannot be told from binary data reliably; the error says so.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if len(head) >= 4 and head[1::2].count(0) > len(head) // 4 and not head.startswith(b"\xef\xbb\xbf"):
        raise LabelFileError(path, 1, "looks like UTF-16 without a byte-order mark; save it as UTF-8 "
                                      "(or UTF-16 with a BOM)")
    return "utf-8-sig"


def _decoded_lines(fh, path: Path, encoding: str) -> Iterator[str]:
    line = 0
    while True:
        try:
            text = fh.readline()
        except UnicodeDecodeError as exc:
            raise LabelFileError(path, line + 1, f"not valid {encoding} text ({exc.reason} at byte {exc.start} of the block)") from None
        if not text:
            return
        line += text.count("\n") or 1
        yield text


@contextmanager
def open_label_csv(path: Path | str) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
    """Open a label-like CSV: yields (header, rows); rows gives (line number, fields) per data row.

    The header is stripped; blank rows are skipped; a row whose field count differs from the header's
    raises LabelFileError. Line numbers are the line a row starts on, also after quoted cells that span
    lines. The encoding is detected (`detect_encoding`: UTF-8 with or without BOM, UTF-16 with BOM); a
    byte sequence that does not decode raises LabelFileError naming the file and line.

        with open_label_csv(path) as (header, rows):
            ...check header...
            for line, fields in rows: ...
    """
    path = Path(path)
    encoding = detect_encoding(path)
    with open(path, newline="", encoding=encoding) as fh:
        reader = csv.reader(_decoded_lines(fh, path, encoding))
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
    first_line: dict[str, int] = {}
    for lineno, image_id, subtype, value in iter_long_rows(path):
        labels = rows.setdefault(image_id, {})
        first_line.setdefault(image_id, lineno)
        if subtype in labels:
            raise LabelFileError(path, lineno, f"duplicate row for {image_id}_{subtype}")
        labels[subtype] = parse_binary(value, path, lineno)
    for image_id, labels in rows.items():
        missing = set(RSNA_LABELS) - labels.keys()
        if missing:
            raise LabelFileError(path, first_line[image_id], f"image {image_id} lacks labels {sorted(missing)}")
        _check_consistent([labels[c] for c in RSNA_LABELS], image_id, path, first_line[image_id])
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
            values = [parse_binary(rec[pos[c]], path, lineno) for c in RSNA_LABELS]
            _check_consistent(values, image_id, path, lineno)
            out[image_id] = values
    df = pd.DataFrame.from_dict(out, orient="index", columns=list(RSNA_LABELS)).astype("int8")
    df.index.name = "image_id"
    return df.reset_index()


def _check_consistent(values: list[int], image_id: str, path: Path, line: int | None) -> None:
    """`any` (values[0]) agrees with the five subtypes, else LabelFileError naming file:line and the id."""
    n_sub = sum(values[1:])
    if values[0] == 0 and n_sub:
        raise LabelFileError(path, line, f"{image_id}: any=0 but subtypes {[s for s, v in zip(SUBTYPES, values[1:]) if v]} are set")
    if values[0] == 1 and not n_sub:
        raise LabelFileError(path, line, f"{image_id}: any=1 but no subtype is set (for any-only labels, give the "
                                         "file only an id column and `any` or `hemorrhage`: the binary task)")


# value columns of a binary label file (public image sets): one hemorrhage yes/no per image
BINARY_COLUMNS: tuple[str, ...] = ("hemorrhage", "any")


def read_binary_labels(path: Path | str, id_column: str, value_column: str) -> pd.DataFrame:
    """A binary label CSV (`id,hemorrhage` or `Image,any`) -> image_id, RSNA_LABELS (Int8), label7.

    `any` is the file's value; the five subtypes are unknown (<NA>, not 0); label7 is `normal` where any
    is 0 and <NA> (a bleed of unknown subtype) where it is 1: such data serves the binary task. Errors name
    file:line and the image id.
    """
    path = Path(path)
    out: dict[str, int] = {}
    with open_label_csv(path) as (header, rows):
        i_id, i_value = header.index(id_column), header.index(value_column)
        for lineno, rec in rows:
            if not rec[i_id].strip():
                raise LabelFileError(path, lineno, f"empty {id_column}")
            image_id = normalize_image_id(Path(rec[i_id].strip()).name)
            if image_id in out:
                raise LabelFileError(path, lineno, f"{image_id}: duplicate image")
            try:
                out[image_id] = parse_binary(rec[i_value], path, lineno)
            except LabelFileError as exc:
                raise LabelFileError(path, lineno, f"{image_id}: {exc.problem}") from None
    df = pd.DataFrame({"image_id": list(out), "any": pd.array(list(out.values()), dtype="Int8")})
    for s in SUBTYPES:
        df[s] = pd.array([pd.NA] * len(df), dtype="Int8")
    df["label7"] = pd.array(np.where(df["any"].to_numpy(dtype=np.int64) == 0, "normal", None), dtype="string")
    return df


def normalize_image_id(raw: str) -> str:
    """`ID_abc.jpg`, `abc.png`, ` ID_abc ` -> `ID_abc`."""
    s = raw.strip()
    for ext in (".dcm", ".jpg", ".jpeg", ".png"):
        if s.lower().endswith(ext):
            s = s[: -len(ext)]
            break
    return s if s.startswith("ID_") else f"ID_{s}"
