"""Decode one CT DICOM file into a `SliceData`: stored pixels, rescale, position, and what was fixed.

The pixels stay in their stored integer dtype (uint16/int16): windowing goes through a lookup table in
`windows.py`, which is cheaper than converting every image to float Hounsfield units. Compressed transfer
syntaxes decode through pydicom's plug-ins (pylibjpeg-libjpeg: JPEG lossless / JPEG-LS, pylibjpeg-openjpeg:
JPEG 2000, pylibjpeg-rle: RLE Lossless).

Every input that cannot become a slice raises `BadInput(path, reason, detail)`, `reason` one of
`slicedata.REASONS`, so a quarantine file can be grouped and grepped by it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ichkit.frames import frame_problem
from ichkit.slicedata import BadInput, SliceData, implausible_hu

MIN_SIDE = 64        # smaller than this is a localizer thumbnail or an icon, not an axial CT slice
MAX_ASPECT = 2.0     # longer side / shorter side; axial head CT is square (512x512) or close to it

# The BitsStored-12 fix applies to files whose intercept is above this (the broken RSNA files have ~0).
_BITS12_INTERCEPT_LIMIT = -100.0


def load_dicom(path: Path | str) -> SliceData:
    """Read one DICOM file: stored pixels (integer dtype kept), slope/intercept, meta and notes.

    Fixes applied (each leaves a note in `SliceData.notes`):
    - missing RescaleSlope / RescaleIntercept -> 1 / 0;
    - multi-valued rescale tags -> the first value;
    - RSNA's BitsStored-12 files (unsigned, intercept > -100): pixels + 1000, values >= 4096 wrap by 4096,
      intercept -1000 -- the fix used by the public RSNA 2019 solutions;
    - no ImagePositionPatient -> z = InstanceNumber * slice spacing.
    Raises BadInput for anything that cannot become a slice (see slicedata.REASONS).

    Values are read without pydicom's standard-conformance validation: RSNA's files carry `ID_<hex>`
    where UIDs belong, which would otherwise warn and log several times per file. pydicom's remaining
    warnings are caught; the one that matters (end of file inside the pixel data) becomes `truncated`.
    """
    with _lenient_reading(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _load(Path(path), caught)
        except BadInput:
            raise
        except Exception as exc:  # pydicom parses elements lazily: a damaged one fails when first read
            raise BadInput(path, "bad_header", f"a header element does not parse: {type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def _lenient_reading() -> Iterator[None]:
    """pydicom's reading validation off for the duration (restored after, so other readers keep theirs)."""
    from pydicom import config

    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = previous


def _load(path: Path, caught: list[warnings.WarningMessage]) -> SliceData:
    ds = _read(path, caught)
    tsyntax = _transfer_syntax(ds, path)
    rows, cols = _check_geometry(ds, path)
    problem = _missing_decoder(str(tsyntax))
    if problem:
        raise BadInput(path, "no_decoder", problem)
    _check_pixel_data(ds, tsyntax, rows, cols, path)
    pixels = _decode(ds, path)
    if pixels.ndim != 2 or pixels.shape != (rows, cols):
        raise BadInput(path, "odd_shape", f"decoded array has shape {pixels.shape}, expected ({rows}, {cols})")

    notes: list[str] = []
    slope = _rescale_value(ds, "RescaleSlope", 1.0, notes)
    intercept = _rescale_value(ds, "RescaleIntercept", 0.0, notes)
    if slope == 0:
        raise BadInput(path, "bad_header", "RescaleSlope is 0: every pixel would be the intercept")
    if (
        ds.get("BitsStored") == 12
        and ds.get("PixelRepresentation") == 0
        and intercept > _BITS12_INTERCEPT_LIMIT
        and pixels.dtype == np.uint16
    ):
        pixels = _bits_stored_12_fix(pixels)
        notes.append(f"bits_stored_12_fix: pixels +1000 mod 4096, intercept {intercept:g} -> -1000")
        intercept = -1000.0

    meta = {
        "patient_id": _text(ds, "PatientID"),
        "study_id": _text(ds, "StudyInstanceUID"),
        "series_id": _text(ds, "SeriesInstanceUID"),
        "instance_number": _int_or_none(ds.get("InstanceNumber")),
        "pixel_spacing": _first_float(ds.get("PixelSpacing")),
        "slice_thickness": _first_float(ds.get("SliceThickness")),
        "sop_uid": _text(ds, "SOPInstanceUID"),
    }
    stem = path.name[:-4] if path.name.lower().endswith(".dcm") else path.name
    if meta["sop_uid"].startswith("ID_") and stem.startswith("ID_") and meta["sop_uid"] != stem:
        # RSNA-style files are named after their SOPInstanceUID; a mismatch means a renamed or copied file
        notes.append(f"name_mismatch: file {path.name}, SOPInstanceUID {meta['sop_uid']}")
    meta["z"] = _slice_z(ds, meta, notes)
    problem = implausible_hu(pixels, slope, intercept)
    if problem:
        raise BadInput(path, "implausible_hu", problem)
    return SliceData(pixels=pixels, slope=slope, intercept=intercept, meta=meta, notes=notes)


def _read(path: Path, caught: list[warnings.WarningMessage]) -> Any:
    """dcmread with every failure mapped to a quarantine reason."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise BadInput(path, "file_not_found", "no such file") from None
    except InvalidDicomError:
        return _read_without_preamble(path)
    except OSError as exc:
        raise BadInput(path, "unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from None
    except (EOFError, struct.error) as exc:
        raise BadInput(path, "truncated", f"file ends inside the header ({exc})") from None
    except Exception as exc:  # pydicom raises assorted errors on corrupt headers
        raise BadInput(path, "not_dicom", f"header does not parse: {type(exc).__name__}: {exc}") from None
    for w in caught:
        if "End of file reached" in str(w.message):
            raise BadInput(path, "truncated", "file ends inside the encapsulated pixel data")
    return ds


def _read_without_preamble(path: Path) -> Any:
    """Some archives strip the 128-byte preamble and 'DICM' prefix; accept those only if they hold an image."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        looks_like_image = "PixelData" in ds and "Rows" in ds and "Columns" in ds
    except Exception:
        looks_like_image = False
    if not looks_like_image:
        size = path.stat().st_size
        raise BadInput(path, "not_dicom", f"no 'DICM' prefix and no image data set ({size} bytes)")
    if "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, _little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _transfer_syntax(ds: Any, path: Path) -> Any:
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is None:
        raise BadInput(path, "truncated", "file ends inside the file meta header (no Transfer Syntax UID)")
    if "PixelData" not in ds:
        if len(ds) and _last_element_cut(ds):
            raise BadInput(path, "truncated", f"file ends inside element {list(ds.keys())[-1]}")
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        detail = f"only {other[0]}, not integer CT pixels" if other else "no (7FE0,0010) Pixel Data element"
        raise BadInput(path, "no_pixel_data", detail)
    return tsyntax


def _last_element_cut(ds: Any) -> bool:
    """True if the last element read holds fewer bytes than its header declares (the file was cut there)."""
    raw = ds.get_item(list(ds.keys())[-1])
    length, value = getattr(raw, "length", None), getattr(raw, "value", None)
    return isinstance(value, bytes) and length is not None and length != 0xFFFFFFFF and len(value) < length


def _check_geometry(ds: Any, path: Path) -> tuple[int, int]:
    """Reject multi-frame, colour, tiny and very elongated images from the tags, before decoding."""
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) is None]
    if missing:
        raise BadInput(path, "bad_header", f"missing {', '.join(missing)}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = _int_or_none(ds.get("NumberOfFrames")) or 1
    samples = int(ds.get("SamplesPerPixel") or 1)
    if frames != 1:
        raise BadInput(path, "odd_shape", f"{frames} frames, expected a single 2-D slice")
    if samples != 1:
        raise BadInput(path, "odd_shape", f"{samples} samples per pixel ({ds.get('PhotometricInterpretation')}), expected 1")
    if min(rows, cols) < MIN_SIDE:
        raise BadInput(path, "odd_shape", f"{rows}x{cols} pixels, smaller than {MIN_SIDE}")
    if max(rows, cols) / min(rows, cols) > MAX_ASPECT:
        raise BadInput(path, "odd_shape", f"{rows}x{cols} pixels, aspect beyond {MAX_ASPECT:g}:1")
    return rows, cols


@functools.cache
def _missing_decoder(tsyntax: str) -> str | None:
    """None if pydicom can decode `tsyntax` here, else which syntax it is and what would decode it."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(tsyntax)
    label = f"{uid.name} ({uid})" if uid.name != str(uid) else f"unknown transfer syntax {uid}"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"{label}: pydicom has no pixel decoder for it; convert it first, e.g. `gdcmconv --raw`"
    if not decoder.is_available:
        return f"{label}: install one of: {'; '.join(decoder.missing_dependencies)}"
    return None


def _check_pixel_data(ds: Any, tsyntax: Any, rows: int, cols: int, path: Path) -> None:
    """The pixel data fits the header: native data is Rows x Columns x BitsAllocated/8 bytes (a sheared
    image has other Rows/Columns), an encapsulated frame is one complete codestream (see frames.py)."""
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16, 32):
        raise BadInput(path, "bad_header", f"BitsAllocated {bits}, expected 8, 16 or 32 for CT")
    raw = ds.get_item("PixelData")
    length, value = getattr(raw, "length", None), getattr(raw, "value", None)
    if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) < length:
        raise BadInput(path, "truncated", f"file ends inside the pixel data ({len(value)} of {length} bytes)")
    elem = ds["PixelData"]
    if not tsyntax.is_encapsulated:
        # (a file cut inside the pixel data was caught above: here the element is whole but the tags disagree)
        have, want = len(ds.PixelData), rows * cols * bits // 8
        if have < want or have > want + 1:  # one pad byte makes an odd length even
            raise BadInput(path, "bad_header", f"Pixel Data holds {have} bytes, Rows x Columns x BitsAllocated/8 "
                                                f"= {rows}x{cols}x{bits // 8} = {want}: Rows/Columns do not match")
        return
    if not getattr(elem, "is_undefined_length", True):
        raise BadInput(path, "bad_header", "compressed transfer syntax but Pixel Data is not encapsulated")
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:
        raise BadInput(path, "decode_error", f"encapsulated Pixel Data does not split into frames: {exc}") from None
    problem = frame_problem(frame, str(tsyntax), segments_expected=bits // 8 * int(ds.get("SamplesPerPixel") or 1),
                            pixels=rows * cols)
    if problem:
        raise BadInput(path, "decode_error", problem)


# pydicom warns, and still returns an image, when a compressed frame decodes to more data than the image holds
_DECODED_LENGTH_WARNINGS = ("non-conformant padding", "doesn't match the expected")


def _decode(ds: Any, path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = ds.pixel_array
        for w in caught:
            if any(text in str(w.message) for text in _DECODED_LENGTH_WARNINGS):
                raise BadInput(path, "decode_error", f"frame decodes to the wrong length: {w.message}")
        return pixels
    except BadInput:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except ValueError as exc:
        if "less than expected" in str(exc):
            raise BadInput(path, "truncated", "pixel data shorter than Rows x Columns x BitsAllocated") from None
        raise BadInput(path, "decode_error", f"{type(exc).__name__}: {exc}") from None
    except BaseException as exc:  # compiled decoders raise their own types (pyo3's PanicException is a
        # BaseException that `except Exception` misses and that cannot be pickled back from a worker)
        raise BadInput(path, "decode_error", f"{type(exc).__name__}: {exc}") from None


def _bits_stored_12_fix(pixels: np.ndarray) -> np.ndarray:
    """RSNA 2019 files stored as 12-bit unsigned with two's-complement values: shift by 1000, wrap at 4096.

    The public solutions do `x = x + 1000; x[x >= 4096] -= 4096` in uint16. With the stored values in
    0..4095 (pydicom 3 masks the bits above BitsStored) that is exactly (x + 1000) mod 4096, computed here
    in place as an add and a 12-bit mask (two passes, no boolean indexing); for values with stray high
    bits, the mask applies DICOM's rule that bits above BitsStored carry no value.
    """
    fixed = pixels if pixels.flags.writeable else pixels.copy()
    np.add(fixed, np.uint16(1000), out=fixed)
    np.bitwise_and(fixed, np.uint16(0x0FFF), out=fixed)
    return fixed


def _rescale_value(ds: Any, keyword: str, default: float, notes: list[str]) -> float:
    raw = ds.get(keyword)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        notes.append(f"no_{_snake(keyword)}: {keyword} missing, using {default:g}")
        return default
    value = _first_float(raw)
    if value is None or not math.isfinite(value):
        notes.append(f"bad_{_snake(keyword)}: {keyword} {raw!r} does not parse, using {default:g}")
        return default
    if _is_multi(raw):
        notes.append(f"multivalue_{_snake(keyword)}: {keyword} {list(raw)!r}, using the first")
    return value


def _slice_z(ds: Any, meta: dict[str, Any], notes: list[str]) -> float:
    """Position along the slice normal: ImagePositionPatient . (row x column direction cosines)."""
    position = _floats(ds.get("ImagePositionPatient"), 3)
    if position is not None:
        orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        if orientation is None:
            notes.append("z_from_position: no ImageOrientationPatient, z = ImagePositionPatient[2]")
            return float(position[2])
        normal = np.cross(orientation[:3], orientation[3:])
        return float(np.dot(position, normal))
    spacing = _first_float(ds.get("SpacingBetweenSlices")) or meta.get("slice_thickness") or 1.0
    if meta.get("instance_number") is not None:
        notes.append(f"z_from_instance_number: no ImagePositionPatient, z = InstanceNumber x {spacing:g} mm")
        return float(meta["instance_number"]) * float(spacing)
    notes.append("no_z: neither ImagePositionPatient nor InstanceNumber")
    return math.nan


def _is_multi(value: Any) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")


def _first_float(value: Any) -> float | None:
    """DS strings, DSfloat, MultiValue ('1\\1' read as two values) and raw backslash strings -> first float."""
    if value is None:
        return None
    if _is_multi(value):
        if len(value) == 0:
            return None
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        value = value.split("\\")[0].strip()
        if not value:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> np.ndarray | None:
    if value is None or not _is_multi(value) or len(value) != n:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if np.all(np.isfinite(out)) else None


def _int_or_none(value: Any) -> int | None:
    f = _first_float(value)
    return int(f) if f is not None and math.isfinite(f) else None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _snake(keyword: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in keyword).lstrip("_")
