"""ichkit.windows: the lookup-table windowing equals the reference formula; resize and the HU map."""

from __future__ import annotations

import numpy as np
import pytest

from ichkit.slicedata import SliceData
from ichkit.windows import apply_windows, hu_map, resize, window_hu, window_lut

WINDOWS = [(40.0, 80.0), (80.0, 200.0), (600.0, 2800.0)]


def every_stored_value(dtype) -> np.ndarray:
    """All values of an integer dtype as a square image (256x256 for 16-bit, 16x16 for 8-bit)."""
    info = np.iinfo(dtype)
    values = np.arange(info.min, info.max + 1, dtype=np.int64).astype(dtype)
    side = int(np.sqrt(values.size))
    return values.reshape(side, side)


def test_window_hu_reference_values():
    # brain window 40/80 spans 0..80 HU: (hu - 0) / 80 * 255, rounded half to even
    hu = np.array([-1000.0, 0.0, 20.0, 40.0, 79.0, 80.0, 2000.0])
    assert window_hu(hu, 40, 80).tolist() == [0, 0, 64, 128, 252, 255, 255]
    assert window_hu(hu, 40, 80).dtype == np.uint8
    with pytest.raises(ValueError, match="width"):
        window_hu(hu, 40, 0)


@pytest.mark.parametrize(
    "dtype, slope, intercept",
    [
        (np.uint16, 1.0, -1024.0),   # the usual unsigned CT storage
        (np.int16, 1.0, 0.0),        # signed storage of HU
        (np.int16, 0.5, -1000.5),    # non-trivial rescale
        (np.uint8, 8.0, -1024.0),
        (np.int8, 10.0, 0.0),
    ],
)
def test_lookup_table_equals_reference_for_every_stored_value(dtype, slope, intercept):
    pixels = every_stored_value(dtype)
    img = apply_windows(SliceData(pixels=pixels, slope=slope, intercept=intercept), WINDOWS)
    assert img.shape == pixels.shape + (3,) and img.dtype == np.uint8
    hu = pixels.astype(np.float64) * slope + intercept
    for channel, (center, width) in enumerate(WINDOWS):
        np.testing.assert_array_equal(img[..., channel], window_hu(hu, center, width))


@pytest.mark.parametrize("n_windows", [1, 2, 3, 4, 5])
def test_any_number_of_windows_gives_one_channel_each(n_windows):
    windows = (WINDOWS + [(-600.0, 1500.0), (20.0, 40.0)])[:n_windows]
    pixels = every_stored_value(np.int16)
    img = apply_windows(SliceData(pixels=pixels, slope=1.0, intercept=-1024.0), windows)
    assert img.shape == pixels.shape + (n_windows,) and img.flags.c_contiguous
    hu = pixels.astype(np.float64) - 1024.0
    for channel, (center, width) in enumerate(windows):
        np.testing.assert_array_equal(img[..., channel], window_hu(hu, center, width))


def test_float_and_wide_integer_pixels_use_the_formula():
    rng = np.random.default_rng(1)
    for pixels in (rng.uniform(-1100, 3100, (64, 64)).astype(np.float32),
                   rng.integers(-1100, 3100, (64, 64)).astype(np.int32)):
        img = apply_windows(SliceData(pixels=pixels, slope=1.0, intercept=0.0), WINDOWS)
        for channel, (center, width) in enumerate(WINDOWS):
            np.testing.assert_array_equal(img[..., channel], window_hu(pixels.astype(np.float64), center, width))


def test_big_endian_pixels_window_like_native():
    pixels = every_stored_value(np.int16)
    native = apply_windows(SliceData(pixels=pixels, slope=1.0, intercept=0.0), WINDOWS)
    swapped = apply_windows(SliceData(pixels=pixels.astype(">i2"), slope=1.0, intercept=0.0), WINDOWS)
    np.testing.assert_array_equal(native, swapped)


def test_lut_is_cached_and_read_only():
    a = window_lut(1.0, -1024.0, WINDOWS, np.uint16)
    b = window_lut(1, -1024, [list(w) for w in WINDOWS], "uint16")
    assert a is b and a.shape == (65536, 3) and not a.flags.writeable
    assert window_lut(1.0, -1000.0, WINDOWS, np.uint16) is not a
    with pytest.raises(ValueError, match="8- and 16-bit"):
        window_lut(1.0, 0.0, WINDOWS, np.int32)


def test_rendered_slices_pass_through_and_are_checked():
    render = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert apply_windows(SliceData(windows=render), WINDOWS) is render
    with pytest.raises(ValueError, match="HxWx2"):
        apply_windows(SliceData(windows=render), WINDOWS[:2])


def test_resize_area_for_images_nearest_for_masks():
    checker = (np.indices((512, 512)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=2)
    small = resize(image, 256)
    assert small.shape == (256, 256, 3) and small.dtype == np.uint8
    assert np.all(np.abs(small.astype(int) - 128) <= 1)  # area averaging: 2x2 blocks of 0/255 -> mid grey
    mask = np.zeros((512, 512), np.uint8)
    mask[100:300, 50:90] = 1
    small_mask = resize(mask, 128, mask=True)
    assert small_mask.shape == (128, 128) and set(np.unique(small_mask)) == {0, 1}
    assert small_mask.sum() == pytest.approx(mask.sum() / 16, rel=0.05)
    assert resize(image, 512) is image


def test_hu_map_values_and_clipping():
    pixels = np.full((512, 512), 1064, np.uint16)  # 40 HU with intercept -1024
    pixels[:, :256] = 0                            # -1024 HU
    pixels[:8, :] = 65000                          # far above 3071 HU: clipped
    hu = hu_map(SliceData(pixels=pixels, slope=1.0, intercept=-1024.0), 256)
    assert hu.shape == (256, 256) and hu.dtype == np.int16
    assert hu[:4].max() == 3071 and hu[:4].min() == 3071
    assert np.all(hu[10:, :128] == -1024) and np.all(hu[10:, 128:] == 40)


def test_hu_map_of_rendered_slice_is_brain_window_pseudo_hu():
    render = np.zeros((64, 64, 3), np.uint8)
    render[:, 32:, 0] = 255   # brain channel at the top of the window
    render[..., 1] = 200      # other channels are ignored
    hu = hu_map(SliceData(windows=render), 32, brain_window=(40.0, 80.0), brain_channel=0)
    assert hu.dtype == np.int16
    assert np.all(hu[:, :16] == 0) and np.all(hu[:, 16:] == 80)
