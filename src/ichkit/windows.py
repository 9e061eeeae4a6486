"""CT windowing: Hounsfield units -> uint8 channels, the image resizes of the cache, and the HU map.

Stored integer pixels are windowed through a lookup table: every possible stored value (65,536 for
16-bit data) is mapped once per (slope, intercept, dtype, windows) to its uint8 value in each window,
so windowing an image is one table look-up per pixel instead of a float rescale plus three clips.
`window_hu` is the reference formula the table is built from and checked against in the tests.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ichkit.slicedata import SliceData

Window = tuple[float, float]  # (center, width) in HU

HU_MIN, HU_MAX = -1024, 3071  # the range of 12-bit CT; the int16 HU map is clipped to it


def window_hu(hu: np.ndarray | float, center: float, width: float) -> np.ndarray:
    """Reference windowing: (hu - (center - width/2)) / width * 255, clipped to [0, 255].

    Rounding: to the nearest integer, halves to even (`np.rint`), computed in float64. So for the brain
    window (40, 80) HU 0 -> 0, HU 40 -> 128 (127.5 rounds to even 128), HU 80 -> 255.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    scaled = (np.asarray(hu, dtype=np.float64) - (center - width / 2.0)) * (255.0 / width)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def as_windows(windows: Sequence[Sequence[float]] | dict[str, Sequence[float]]) -> tuple[Window, ...]:
    """Config windows ({name: [center, width]} or [[center, width], ...]) -> a hashable tuple of pairs."""
    items = windows.values() if isinstance(windows, dict) else windows
    out = []
    for pair in items:
        if len(pair) != 2:
            raise ValueError(f"a window is [center, width], got {pair!r}")
        out.append((float(pair[0]), float(pair[1])))
    if not out:
        raise ValueError("at least one window is needed")
    return tuple(out)


def window_lut(slope: float, intercept: float, windows: Sequence[Window], dtype: np.dtype | str) -> np.ndarray:
    """Lookup table (2**bits, n_windows) uint8 for stored pixels of integer `dtype` (8 or 16 bits).

    Row `i` is the stored value whose bit pattern, read as the unsigned type of the same size, is `i`;
    so a signed image is looked up through `pixels.view(unsigned)` (see `apply_windows`). Cached per
    (slope, intercept, dtype, windows) and returned read-only.
    """
    return _window_lut(float(slope), float(intercept), as_windows(windows), np.dtype(dtype).newbyteorder("=").str)


@functools.lru_cache(maxsize=64)
def _packed_lut(slope: float, intercept: float, windows: tuple[Window, ...], dtype_str: str) -> np.ndarray:
    """The table with each row's 1-4 channel bytes packed into one uint8/16/32 (3 channels padded to 4).

    Gathering one 4-byte word per pixel is about three times faster than gathering a 3-byte row.
    """
    lut = _window_lut(slope, intercept, windows, dtype_str)
    width = {1: 1, 2: 2, 3: 4, 4: 4}[lut.shape[1]]
    padded = np.zeros((lut.shape[0], width), dtype=np.uint8)
    padded[:, : lut.shape[1]] = lut
    packed = padded.view(f"u{width}").ravel()
    packed.setflags(write=False)
    return packed


@functools.lru_cache(maxsize=64)
def _window_lut(slope: float, intercept: float, windows: tuple[Window, ...], dtype_str: str) -> np.ndarray:
    """The (2**bits, n_windows) table behind `window_lut` (normalised, hashable arguments)."""
    dtype = np.dtype(dtype_str)
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        raise ValueError(f"lookup tables are for 8- and 16-bit integer pixels, not {dtype}")
    unsigned = np.dtype(f"u{dtype.itemsize}")
    stored = np.arange(2 ** (8 * dtype.itemsize), dtype=np.int64).astype(unsigned).view(dtype.newbyteorder("="))
    hu = stored.astype(np.float64) * slope + intercept
    lut = np.stack([window_hu(hu, c, w) for c, w in windows], axis=-1)
    lut.setflags(write=False)
    return lut


def apply_windows(sl: SliceData, windows: Sequence[Window]) -> np.ndarray:
    """The slice as a uint8 HxWxC image, one channel per window (C = len(windows)).

    Integer pixels of 8 or 16 bits go through `window_lut`; float pixels (NIfTI scaled data) and wider
    integers are windowed with the vectorised reference formula; a rendered slice (`sl.windows`) is
    returned as it is, after checking it has one channel per window.
    """
    windows = as_windows(windows)
    if sl.windows is not None:
        img = sl.windows
        if img.ndim != 3 or img.shape[2] != len(windows) or img.dtype != np.uint8:
            raise ValueError(f"rendered slice is {img.dtype} {img.shape}, expected uint8 HxWx{len(windows)}")
        return img
    if sl.pixels is None:
        raise ValueError("slice has neither pixels nor a rendered image")
    pixels = sl.pixels
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2:
        index = pixels.view(f"u{pixels.dtype.itemsize}") if pixels.dtype.kind == "i" else pixels
        key = (float(sl.slope), float(sl.intercept), windows, pixels.dtype.newbyteorder("=").str)
        if len(windows) > 4:
            return np.take(_window_lut(*key), index, axis=0)
        packed = _packed_lut(*key)
        img = np.take(packed, index).view(np.uint8).reshape(*index.shape, packed.itemsize)
        if len(windows) == 3:
            import cv2

            img = cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)  # drops the padding byte (no channel reordering)
        return img
    hu = pixels.astype(np.float64) * sl.slope + sl.intercept
    return np.stack([window_hu(hu, c, w) for c, w in windows], axis=-1)


def letterbox(img: np.ndarray, fill: float | int = 0) -> np.ndarray:
    """Pad `img` (HxW or HxWxC) to a square, centred, with `fill` (air: the darkest value) so that
    resizing keeps its aspect."""
    h, w = img.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.full((side, side, *img.shape[2:]), fill, dtype=img.dtype)
    out[top : top + h, left : left + w] = img
    return out


def resize(img: np.ndarray, size: int | tuple[int, int], mask: bool = False) -> np.ndarray:
    """Resize to size x size (or to (height, width)): a non-square image is first letterboxed to a square
    (`letterbox`: its aspect kept, never squashed); area averaging for images (no aliasing when
    shrinking); for masks the nearest pixel centre (INTER_NEAREST_EXACT: plain INTER_NEAREST samples each
    block's first pixel, which shifts the mask by up to half a pixel)."""
    import cv2

    if np.isscalar(size) and img.shape[0] != img.shape[1]:
        img = letterbox(img, 0 if mask else img.min())
    height, width = (size, size) if np.isscalar(size) else size
    if img.shape[:2] == (height, width):
        return img
    if mask:
        return cv2.resize(img.astype(np.uint8, copy=False), (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def hu_map(sl: SliceData, size: int, brain_window: Window = (40.0, 80.0), brain_channel: int = 0) -> np.ndarray:
    """int16 size x size Hounsfield units, clipped to [-1024, 3071], for the radiomic features.

    Resampled before the rescale (area averaging is linear, so this equals resampling the HU image up to
    rounding). A rendered slice has no HU; its map is a pseudo-HU: the brain channel mapped back through
    the brain window, v / 255 * width + (center - width / 2), so it spans only that window (0..80 HU for
    the default) and everything outside the window is flattened to its ends.
    """
    if sl.pixels is not None:
        pixels = sl.pixels
        # 16-bit stored values resample as they are (OpenCV area-averages 16U/16S with rounding): converting
        # the full-size image to float first costs more than the whole resize
        if not (pixels.dtype.kind in "iu" and pixels.dtype.itemsize == 2 and pixels.dtype.isnative):
            pixels = pixels.astype(np.float32)
        small = resize(pixels, size).astype(np.float32)
        hu = small * np.float32(sl.slope) + np.float32(sl.intercept)
    elif sl.windows is not None:
        center, width = brain_window
        small = resize(sl.windows[..., brain_channel].astype(np.float32), size)
        hu = small * np.float32(width / 255.0) + np.float32(center - width / 2.0)
    else:
        raise ValueError("slice has neither pixels nor a rendered image")
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
