"""ichkit.dicom.load_dicom on DICOM files written here with pydicom: values, tag quirks, codecs, bad input."""

from __future__ import annotations


import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    MPEG2MPML,
    RLELossless,
    generate_uid,
)

from ct_files import ct_dataset, head_pixels, write_ct

from ichkit.dicom import load_dicom
from ichkit.slicedata import REASONS
from ichkit.slicedata import BadInput

def reason_of(exc: pytest.ExceptionInfo) -> str:
    return exc.value.reason


# ----------------------------------------------------------------------------------------------- values
def test_native_values_meta_and_dtype(tmp_path):
    pixels = head_pixels(dtype=np.int16)
    study, series = generate_uid(), generate_uid()
    path = write_ct(tmp_path / "a.dcm", pixels, patient="ID_p7", study=study, series=series, instance=12,
                    position=(-125.0, -120.0, 42.5))
    sl = load_dicom(path)
    assert sl.pixels.dtype == np.int16  # stored integers kept, no float conversion
    np.testing.assert_array_equal(sl.pixels, pixels)
    assert (sl.slope, sl.intercept) == (1.0, -1024.0)
    np.testing.assert_allclose(sl.hu(), pixels.astype(np.float32) - 1024)
    assert sl.meta == {
        "patient_id": "ID_p7", "study_id": study, "series_id": series, "instance_number": 12,
        "pixel_spacing": 0.48828125, "slice_thickness": 5.0, "z": 42.5, "sop_uid": pydicom.dcmread(path).SOPInstanceUID,
    }
    assert sl.notes == []


def test_rsna_style_ids_read_without_warnings(tmp_path, recwarn):
    # RSNA writes ID_<hex> where UIDs belong; pydicom warns about each such value unless they are caught
    path = write_ct(tmp_path / "ids.dcm", head_pixels(64), study="ID_5a1b2c", series="ID_9f8e7d")
    recwarn.clear()
    sl = load_dicom(path)
    assert (sl.meta["study_id"], sl.meta["series_id"]) == ("ID_5a1b2c", "ID_9f8e7d")
    assert [str(w.message) for w in recwarn] == []


def test_unsigned_pixels_stay_uint16(tmp_path):
    pixels = head_pixels(dtype=np.uint16)
    sl = load_dicom(write_ct(tmp_path / "u.dcm", pixels))
    assert sl.pixels.dtype == np.uint16
    np.testing.assert_array_equal(sl.pixels, pixels)


def test_z_is_position_along_the_slice_normal_for_oblique_slices(tmp_path):
    tilt = np.deg2rad(20)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    normal = np.cross(row, col)
    # a point 37.5 mm along the normal, moved within the slice plane: z must still be 37.5
    position = 37.5 * normal + 80.0 * row - 64.0 * col
    sl = load_dicom(write_ct(tmp_path / "o.dcm", head_pixels(), position=tuple(position),
                             orientation=list(row) + list(col)))
    assert sl.meta["z"] == pytest.approx(37.5, abs=1e-4)
    assert position[2] != pytest.approx(37.5, abs=1)  # the plain IPP[2] would have been wrong


@pytest.mark.parametrize(
    "slope, intercept, expected",
    [
        (" 1.0 ", "-1024.00", (1.0, -1024.0)),       # DS strings with padding
        ("0.5", "-1000.5", (0.5, -1000.5)),
        (["1", "1"], ["-1024", "-1000"], (1.0, -1024.0)),  # multi-valued: the first value
    ],
)
def test_rescale_strings_and_multivalue(tmp_path, slope, intercept, expected):
    sl = load_dicom(write_ct(tmp_path / "r.dcm", head_pixels(), slope=slope, intercept=intercept))
    assert (sl.slope, sl.intercept) == expected
    multi = isinstance(slope, list)
    assert any(n.startswith("multivalue_rescale_intercept") for n in sl.notes) == multi


def test_missing_rescale_tags_default_to_identity_with_notes(tmp_path):
    sl = load_dicom(write_ct(tmp_path / "m.dcm", head_pixels(), slope=None, intercept=None))
    assert (sl.slope, sl.intercept) == (1.0, 0.0)
    slugs = {n.split(":")[0] for n in sl.notes}
    assert slugs == {"no_rescale_slope", "no_rescale_intercept"}


def test_bits_stored_12_fix_recovers_hu(tmp_path):
    # the broken RSNA files: 12-bit unsigned storage of two's-complement values, intercept near 0
    hu = np.array([-1000, -500, -1, 0, 40, 80, 1000, 3000], dtype=np.int64)
    stored = np.resize(hu % 4096, (64, 64)).astype(np.uint16)
    sl = load_dicom(write_ct(tmp_path / "b12.dcm", stored, bits_stored=12, slope="1", intercept="0"))
    assert sl.intercept == -1000.0 and sl.pixels.dtype == np.uint16
    np.testing.assert_array_equal(sl.hu(), np.resize(hu, (64, 64)).astype(np.float32))
    assert [n.split(":")[0] for n in sl.notes] == ["bits_stored_12_fix"]


@pytest.mark.parametrize("intercept, signed", [("-1024", False), ("0", True)])
def test_bits_stored_12_fix_only_where_it_applies(tmp_path, intercept, signed):
    # signed storage holds HU directly (-1024..~1060, inside 12-bit signed); unsigned holds HU + 1024
    pixels = head_pixels(64) - 1024 if signed else head_pixels(64, dtype=np.uint16)
    sl = load_dicom(write_ct(tmp_path / "n.dcm", pixels, bits_stored=12, intercept=intercept))
    np.testing.assert_array_equal(sl.pixels, pixels)
    assert sl.intercept == float(intercept) and sl.notes == []


def test_missing_position_orders_by_instance_number(tmp_path):
    paths = [write_ct(tmp_path / f"s{i}.dcm", head_pixels(64, seed=i), position=None, instance=i, thickness="2.5")
             for i in (3, 1, 2)]
    slices = [load_dicom(p) for p in paths]
    assert [s.meta["z"] for s in slices] == [7.5, 2.5, 5.0]
    order = sorted(range(3), key=lambda k: slices[k].meta["z"])
    assert [slices[k].meta["instance_number"] for k in order] == [1, 2, 3]
    assert all(n.startswith("z_from_instance_number") for s in slices for n in s.notes)


def test_file_without_preamble_still_reads(tmp_path):
    pixels = head_pixels(64)
    path = write_ct(tmp_path / "p.dcm", pixels)
    stripped = tmp_path / "stripped.dcm"
    stripped.write_bytes(path.read_bytes()[132:])  # drop the 128-byte preamble and "DICM"
    np.testing.assert_array_equal(load_dicom(stripped).pixels, pixels)


# ------------------------------------------------------------------------------------------------ codecs
def _encodable(uid) -> bool:
    from pydicom.pixels import get_encoder

    try:
        return get_encoder(uid).is_available
    except NotImplementedError:
        return False


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
@pytest.mark.parametrize(
    "syntax",
    [
        RLELossless,
        JPEG2000Lossless,
        pytest.param(JPEGLSLossless, marks=pytest.mark.skipif(
            not _encodable(JPEGLSLossless), reason="no JPEG-LS encoder (pyjpegls) installed to write the test file")),
    ],
    ids=["rle", "jpeg2000", "jpegls"],
)
def test_compressed_files_decode_to_the_original_pixels(tmp_path, syntax, dtype):
    pixels = head_pixels(128, seed=3, dtype=dtype)
    path = write_ct(tmp_path / "c.dcm", pixels, transfer_syntax=syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    sl = load_dicom(path)
    assert sl.pixels.dtype == pixels.dtype
    np.testing.assert_array_equal(sl.pixels, pixels)


# --------------------------------------------------------------------------------------------- bad input
def test_not_a_dicom(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(BadInput) as exc:
        load_dicom(path)
    assert reason_of(exc) == "not_dicom" and exc.value.path == str(path)


@pytest.mark.parametrize("keep", [200, 0.5], ids=["in_file_meta", "in_pixel_data"])
def test_truncated(tmp_path, keep):
    data = write_ct(tmp_path / "full.dcm", head_pixels()).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(BadInput) as exc:
        load_dicom(path)
    assert reason_of(exc) == "truncated"


def test_truncated_inside_compressed_pixel_data(tmp_path):
    data = write_ct(tmp_path / "full.dcm", head_pixels(), transfer_syntax=RLELossless).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput) as exc:
        load_dicom(path)
    assert reason_of(exc) == "truncated"


def test_no_pixel_data(tmp_path):
    ds = ct_dataset(head_pixels(64))
    del ds.PixelData
    path = tmp_path / "np.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(BadInput) as exc:
        load_dicom(path)
    assert reason_of(exc) == "no_pixel_data"


@pytest.mark.parametrize("syntax", [MPEG2MPML, "1.2.826.0.1.3680043.9.9999.1"], ids=["mpeg2", "private"])
def test_compressed_syntax_without_decoder_names_it(tmp_path, syntax):
    path = write_ct(tmp_path / "c.dcm", head_pixels(64), transfer_syntax=RLELossless)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax  # same encapsulated bytes, a syntax nothing here decodes
    ds.save_as(path)
    with pytest.raises(BadInput) as exc:
        load_dicom(path)
    assert reason_of(exc) == "no_decoder"
    assert str(syntax) in exc.value.detail


@pytest.mark.parametrize(
    "pixels, photometric, fragment",
    [
        (np.zeros((32, 32), np.int16), "MONOCHROME2", "smaller than 64"),
        (np.zeros((512, 128), np.int16), "MONOCHROME2", "aspect"),
        (np.zeros((2, 128, 128), np.int16), "MONOCHROME2", "2 frames"),
        (np.zeros((128, 128, 3), np.uint8), "RGB", "3 samples per pixel"),
    ],
    ids=["tiny", "elongated", "multiframe", "rgb"],
)
def test_odd_shapes(tmp_path, pixels, photometric, fragment):
    ds = ct_dataset(head_pixels(64))
    ds.set_pixel_data(pixels, photometric, 8 * pixels.dtype.itemsize)
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(BadInput) as exc:
        load_dicom(path)
    assert reason_of(exc) == "odd_shape" and fragment in exc.value.detail


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(BadInput) as exc:
        load_dicom(tmp_path / "nope.dcm")
    assert reason_of(exc) == "file_not_found"
    with pytest.raises(BadInput) as exc:
        load_dicom(tmp_path)
    assert reason_of(exc) == "unreadable"
    assert set(REASONS) >= {"file_not_found", "unreadable"}


def test_padding_outside_the_field_of_view_is_plausible_but_float_bytes_are_not(tmp_path):
    from ichkit.slicedata import BadInput

    pixels = head_pixels(dtype=np.int16)
    pixels[:10] = -32768  # a padding value far below the CT scale, as some scanners store it
    assert load_dicom(write_ct(tmp_path / "pad.dcm", pixels)).pixels.min() == -32768
    noise = np.random.default_rng(0).normal(0, 1, (128, 64)).astype(np.float32)
    fake = noise.view(np.int16).reshape(128, 128)  # float bytes read as 16-bit integers
    with pytest.raises(BadInput, match="implausible_hu"):
        load_dicom(write_ct(tmp_path / "float.dcm", fake))
