"""Test-set mask outputs: Kaggle RLE, PNGs at the original size, volumes in mL (ichkit.outputs.masks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ichkit.outputs.masks import (MaskOutputError, rle_decode, rle_encode, slice_spacing_mm, study_volumes,
                                  volume_agreement, write_mask_pngs, write_rle_csv)


def test_rle_known_example_is_column_major_and_one_indexed():
    m = np.zeros((4, 4), dtype=np.uint8)
    m[1:3, 1] = 1      # column 1, rows 1-2: column-major 0-based positions 5, 6 -> "6 2"
    m[0, 3] = 1        # column 3, row 0: position 12 -> 13
    m[3, 3] = 1        # position 15 -> 16 (a run ending on the last pixel)
    assert rle_encode(m) == "6 2 13 1 16 1"
    assert np.array_equal(rle_decode("6 2 13 1 16 1", (4, 4)), m)


@pytest.mark.parametrize("shape", [(5, 7), (64, 48)])
def test_rle_round_trip_including_empty_and_full(shape):
    rng = np.random.default_rng(0)
    empty, full = np.zeros(shape, np.uint8), np.ones(shape, np.uint8)
    assert rle_encode(empty) == ""
    assert np.array_equal(rle_decode("", shape), empty)
    assert np.array_equal(rle_decode(float("nan"), shape), empty)
    assert rle_encode(full) == f"1 {shape[0] * shape[1]}"
    assert np.array_equal(rle_decode(rle_encode(full), shape), full)
    for _ in range(5):
        m = (rng.random(shape) > 0.6).astype(np.uint8)
        assert np.array_equal(rle_decode(rle_encode(m), shape), m)


def test_rle_decode_rejects_bad_strings():
    with pytest.raises(MaskOutputError, match="odd number"):
        rle_decode("1 2 3", (4, 4))
    with pytest.raises(MaskOutputError, match="outside"):
        rle_decode("15 5", (4, 4))
    with pytest.raises(MaskOutputError, match="integers"):
        rle_decode("a b", (4, 4))


def test_mask_pngs_and_rle_csv_at_the_original_size(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 30:50] = 1
    sizes = {"ID_a": (512, 512), "ID_b": (300, 200)}
    paths = write_mask_pngs({"ID_a": mask, "ID_b": mask}, sizes, tmp_path / "png")
    assert [p.name for p in paths] == ["ID_a.png", "ID_b.png"]
    a = np.asarray(Image.open(paths[0]))
    b = np.asarray(Image.open(paths[1]))
    assert a.shape == (512, 512) and b.shape == (300, 200)
    assert a.dtype == np.uint8 and set(np.unique(a)) == {0, 255}
    assert (a > 0).sum() == 80 * 160            # 10 x 20 px scaled by 8 in both directions
    csv = write_rle_csv({"ID_a": mask}, sizes, tmp_path / "m.csv", image_ids=["ID_a", "ID_b"])
    df = pd.read_csv(csv, keep_default_na=False)
    assert list(df.columns) == ["ImageId", "EncodedPixels"]
    assert df.loc[1, "EncodedPixels"] == ""
    assert np.array_equal(rle_decode(df.loc[0, "EncodedPixels"], (512, 512)), (a > 0).astype(np.uint8))


def test_volume_of_a_cuboid_with_known_spacing():
    # 10 slices 2.5 mm apart (SliceThickness says 5: the z positions must win), 0.5 mm pixels of a
    # 512-px image, masks at 256 px (a mask pixel is 1 mm x 1 mm); a 20 x 30 px cuboid on 6 slices
    ids = [f"ID_{i:02d}" for i in range(10)]
    slices = pd.DataFrame({"image_id": ids, "study_id": "S1", "series_id": "SE1",
                           "z": [100.0 - 2.5 * i for i in range(10)][::-1], "pixel_spacing": 0.5,
                           "slice_thickness": 5.0, "height": 512, "width": 512}).sample(frac=1, random_state=0)
    areas = pd.DataFrame({"image_id": ids, "area_px": [600 if 2 <= i < 8 else 0 for i in range(10)],
                          "mask_height": 256, "mask_width": 256})
    vol = study_volumes(areas, slices)
    assert vol.loc[0, "slice_spacing_mm"] == pytest.approx(2.5)
    assert vol.loc[0, "volume_ml"] == pytest.approx(6 * 20 * 30 * 1.0 * 2.5 / 1000.0)   # 9.0 mL


def test_slice_spacing_ignores_missing_slices_and_falls_back():
    assert slice_spacing_mm([0.0, 5.0, 10.0, 20.0, 25.0]) == pytest.approx(5.0)   # one slice missing
    assert slice_spacing_mm([3.0], fallback=5.0) == 5.0


def test_volume_agreement():
    pred = pd.DataFrame({"study_id": ["a", "b", "c"], "volume_ml": [1.0, 2.0, 4.0]})
    truth = pd.DataFrame({"study_id": ["a", "b", "c", "d"], "volume_ml": [2.0, 2.0, 5.0, 9.0]})
    out = volume_agreement(pred, truth)
    assert out["volume_mae_ml"] == pytest.approx(2 / 3) and out["n_studies"] == 3
    assert out["volume_corr"] == pytest.approx(np.corrcoef([1, 2, 4], [2, 2, 5])[0, 1])
