"""A seeded corpus of valid, damaged and odd CT DICOM files across the transfer syntaxes, for the
bad-input tests: `write_corpus(folder, seed)` -> {image id: expected outcome}, where the outcome is "ok"
(cached) or the quarantine reason. Images are 64x64 so the whole corpus prepares in about a second."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, MPEG2MPML, ExplicitVRLittleEndian,
                         RLELossless)
from ct_files import ct_dataset

SIZE = 64
SYNTAXES = {"native": None, "rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless,
            "jpegll": JPEGLosslessSV1}


def head(seed: int, size: int = SIZE) -> np.ndarray:
    """Stored uint16 values of a small head (intercept -1024): air, a skull ring, brain with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    img = np.where(r < 0.8, 1064, 24) + np.where((r > 0.7) & (r < 0.8), 1000, 0)
    return (img + rng.integers(-20, 21, img.shape)).astype(np.uint16)


def encode(ds: pydicom.Dataset, syntax: str | None) -> pydicom.Dataset:
    """Compress `ds` in place with `syntax` (pydicom's encoders; JPEG lossless through imagecodecs)."""
    if syntax is None:
        return ds
    if syntax == JPEGLosslessSV1:
        import imagecodecs

        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(ds.pixel_array, lossless=True, predictor=1,
                                                              bitspersample=16)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        return ds
    ds.compress(syntax, generate_instance_uid=False)
    return ds


def frame_of(ds: pydicom.Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def with_frame(ds: pydicom.Dataset, frame: bytes) -> pydicom.Dataset:
    ds.PixelData = encapsulate([frame])
    return ds


def write_corpus(folder: Path, seed: int) -> dict[str, str]:
    """Write the corpus into `folder`; returns {image id: "ok" or the expected quarantine reason}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    n = [0]

    def fresh(pixels: np.ndarray | None = None, **tags) -> pydicom.Dataset:
        n[0] += 1
        return ct_dataset(head(seed * 1000 + n[0]) if pixels is None else pixels, patient=f"ID_p{n[0] % 4}", **tags)

    def save(name: str, outcome: str, ds: pydicom.Dataset | None = None, raw: bytes | None = None,
             make: Callable[[Path], None] | None = None) -> None:
        path = folder / f"ID_{name}.dcm"
        if make is not None:
            make(path)
        elif raw is not None:
            path.write_bytes(raw)
        else:
            ds.save_as(path, enforce_file_format=ds.file_meta.get("TransferSyntaxUID") is not None)
        expected[f"ID_{name}"] = outcome

    def to_bytes(ds: pydicom.Dataset) -> bytes:
        from io import BytesIO

        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    # every syntax: a valid file, a frame cut short, garbage in the frame, a frame followed by another
    for key, syntax in SYNTAXES.items():
        save(f"{key}_ok", "ok", encode(fresh(), syntax))
        if syntax is None:
            continue
        frame = frame_of(encode(fresh(), syntax))
        cut = int(len(frame) * rng.uniform(0.4, 0.9))
        save(f"{key}_cut_frame", "decode_error", with_frame(encode(fresh(), syntax), frame[:cut]))
        junk = frame[:24] + rng.integers(0, 256, len(frame) - 24, dtype=np.uint8).tobytes()
        save(f"{key}_garbage_frame", "decode_error", with_frame(encode(fresh(), syntax), junk))
        save(f"{key}_long_frame", "decode_error", with_frame(encode(fresh(), syntax), frame + frame))

    # RLE: a header declaring other segments than BitsAllocated needs (what broke the compiled decoder)
    ds = encode(fresh(), RLELossless)
    f = bytearray(frame_of(ds))
    f[0:4] = (3).to_bytes(4, "little")
    save("rle_bad_segments", "decode_error", with_frame(ds, bytes(f)))

    data = to_bytes(fresh())
    save("cut_in_header", "truncated", raw=data[:200])
    save("cut_in_pixels", "truncated", raw=data[: len(data) - SIZE * SIZE])
    save("not_dicom", "not_dicom", raw=b"plain text, not DICOM\n" * 40)
    save("empty_file", "not_dicom", raw=b"")
    ds = fresh()
    del ds.PixelData
    save("no_pixel_data", "no_pixel_data", ds)
    ds = encode(fresh(), RLELossless)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    save("no_decoder", "no_decoder", ds)
    save("tiny", "odd_shape", fresh(head(seed, 32)))
    ds = fresh()
    ds.Columns = SIZE + 8  # sheared: rows x columns no longer match the pixel bytes
    save("sheared", "bad_header", ds)
    ds = fresh()
    del ds.Rows
    save("no_rows", "bad_header", ds)
    save("slope_zero", "bad_header", fresh(slope="0"))
    ds = fresh()  # 32-bit float bytes in integer PixelData
    hu = head(seed).astype(np.float32) - 1024
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 1
    ds.PixelData = hu.tobytes()
    save("float_bytes", "implausible_hu", ds)
    save("constant", "implausible_hu", fresh(np.full((SIZE, SIZE), 1000, np.uint16)))
    ds = fresh(head(seed, SIZE * 2))
    frames = np.stack([head(seed), head(seed + 1)])
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    save("two_frames", "odd_shape", ds)
    save("no_rescale", "ok", fresh(slope=None, intercept=None))
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buf, fresh())  # the bare data set: no preamble, no DICM, no file meta
    save("no_preamble", "ok", raw=buf.getvalue())
    # duplicates: a byte-identical copy, and a re-encoded copy with the same SOPInstanceUID
    original = fresh()
    save("dup_a", "ok", original)
    save("dup_b_copy", "duplicate", raw=(folder / "ID_dup_a.dcm").read_bytes())
    same_uid = encode(fresh(), JPEGLSLossless)
    same_uid.SOPInstanceUID = original.SOPInstanceUID
    save("dup_c_same_uid", "duplicate", same_uid)
    # paths that are not files
    expected["ID_missing"] = "file_not_found"
    save("link_loop", "unreadable", make=lambda p: (os.symlink(p.name + ".b", p), os.symlink(p.name, str(p) + ".b")))
    save("a_folder", "unreadable", make=lambda p: p.mkdir())
    assert ExplicitVRLittleEndian  # the native files' syntax (ct_dataset's default)
    return expected
