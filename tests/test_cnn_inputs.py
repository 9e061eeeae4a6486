"""The shared CNN input pipeline and class-specific augmentation, on a tiny hand-written cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichkit.cache import ImageCache
from ichkit.config import load_config
from ichkit.labels import CLASS7_INDEX, CLASSES7
from ichkit.models.cnn.augment import ClassAugmenter
from ichkit.models.cnn.inputs import CacheSequence, epoch_order, neighbour_table
from ichkit.windows import resize, window_hu

WINDOWS = {"brain": (40.0, 80.0), "subdural": (80.0, 200.0), "bone": (600.0, 2800.0)}
SIZE = 32


def _slices() -> pd.DataFrame:
    """Series A: z 0,5,10,20,35,40 present (15, 25, 30 missing), 45 quarantined; B: one slice; C: no z."""
    rows = [("a40", "A", 40.0, "ok"), ("a0", "A", 0.0, "ok"), ("a10", "A", 10.0, "ok"), ("a5", "A", 5.0, "ok"),
            ("a20", "A", 20.0, "ok"), ("a35", "A", 35.0, "ok"), ("a45", "A", 45.0, "quarantined"),
            ("b0", "B", 3.0, "ok"), ("c0", "C", np.nan, "ok"), ("c1", "C", np.nan, "ok")]
    return pd.DataFrame(rows, columns=["image_id", "series_id", "z", "status"])


def test_neighbours_repeat_at_edges_and_bridge_only_small_gaps():
    nb = neighbour_table(_slices(), max_gap=2.5)
    assert "a45" not in nb.index                        # quarantined: not in the cache
    expect = {
        "a0": ("a0", "a5"),     # first slice repeats itself
        "a5": ("a0", "a10"),
        "a10": ("a5", "a20"),   # one missing slice (15): bridged, 10 mm <= 2.5 x 5 mm
        "a20": ("a10", "a20"),  # 15 mm hole to 35: too far, the slice itself
        "a35": ("a35", "a40"),
        "a40": ("a35", "a40"),  # 45 quarantined: a40 is the end of the series
        "b0": ("b0", "b0"),
        "c0": ("c0", "c0"),     # no z: no neighbours
    }
    for image_id, pair in expect.items():
        assert tuple(nb.loc[image_id]) == pair, image_id
    # a tighter rule refuses the one-slice gap as well
    assert tuple(neighbour_table(_slices(), max_gap=1.5).loc["a10"]) == ("a5", "a10")


def _value(image_id: str, channel: int) -> int:
    return (sum(map(ord, image_id)) * 7 + channel * 40) % 250


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A cache where every pixel of channel c of image i is _value(i, c), plus HU maps and one mask."""
    cache = ImageCache(tmp_path)
    for image_id in _slices()["image_id"]:
        img = np.stack([np.full((64, 64), _value(image_id, c), np.uint8) for c in range(3)], axis=-1)
        cache.save("cls", image_id, img)
        cache.save("seg", image_id, img)
        rng = np.random.default_rng(len(image_id))
        cache.save("hu", image_id, rng.integers(0, 90, (64, 64)).astype(np.int16))
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 20:44] = 1
    cache.save("mask", "a10", mask)
    return tmp_path


def test_subdural3_and_all9_channels_are_the_neighbours(work):
    ids = ["a0", "a10", "a20"]
    seq = CacheSequence(work, ids, size=SIZE, batch_size=3, context="subdural3", slices=_slices(), windows=WINDOWS)
    (x,) = seq[0]
    assert x.shape == (3, SIZE, SIZE, 3) and x.dtype == np.float32
    for k, trio in enumerate([("a0", "a0", "a5"), ("a5", "a10", "a20"), ("a10", "a20", "a20")]):
        got = np.rint(x[k, 0, 0] * 255).astype(int).tolist()
        assert got == [_value(n, 1) for n in trio], ids[k]
    seq9 = CacheSequence(work, ids, size=SIZE, batch_size=3, context="all9", slices=_slices(), windows=WINDOWS)
    (x9,) = seq9[0]
    assert x9.shape == (3, SIZE, SIZE, 9)
    got = np.rint(x9[1, 5, 5] * 255).astype(int).tolist()
    assert got == [_value(n, c) for n in ("a5", "a10", "a20") for c in range(3)]


def test_validation_batches_are_the_cached_images_untouched(work):
    ids = ["a0", "a5", "a10"]
    targets = {"class7": np.eye(7, dtype=np.float32)[[6, 1, 5]]}
    seq = CacheSequence(work, ids, size=SIZE, batch_size=2, targets=targets, windows=WINDOWS)
    assert len(seq) == 2
    x, y = seq[0]
    cache = ImageCache(work)
    for k, image_id in enumerate(ids[:2]):
        np.testing.assert_array_equal(x[k], resize(cache.load("cls", image_id), SIZE) / np.float32(255))
    np.testing.assert_array_equal(y, targets["class7"][:2])
    x2, _ = seq[1]
    assert x2.shape[0] == 1                                  # last, partial batch


def test_masks_of_positive_slices_without_truth_are_marked_unknown(work):
    ids = ["a0", "a5", "a10"]
    seq = CacheSequence(work, ids, size=SIZE, batch_size=3, masks=True, unknown_masks=["a5"], windows=WINDOWS)
    _, y = seq[0]
    assert y.shape == (3, SIZE, SIZE, 1)
    assert (y[0] == 0).all()                                 # no mask file, not unknown: a normal slice, empty
    assert (y[1] == -1).all()                                # no pixel truth: left out of the mask loss
    assert set(np.unique(y[2])) == {0.0, 1.0}                # the cached mask


def test_balanced_epochs_draw_equal_counts_and_change_every_epoch(work):
    labels = np.array([6] * 20 + [1] * 3 + [5] * 7)
    order = epoch_order(labels, len(labels), 5, True, np.random.default_rng(0))
    counts = pd.Series(labels[order]).value_counts()
    assert counts.to_dict() == {6: 5, 1: 5, 5: 5}
    ids = _slices()["image_id"].tolist()[:8]
    seq = CacheSequence(work, ids, size=SIZE, batch_size=4, labels7=np.array([6, 6, 6, 6, 6, 1, 1, 5]),
                        samples_per_class=2, shuffle=True, windows=WINDOWS)
    first = seq.order.copy()
    assert len(first) == 6 and len(seq) == 2
    seq.on_epoch_end()
    assert seq.epoch == 1 and not np.array_equal(first, seq.order)


@pytest.fixture(scope="module")
def augmenter() -> ClassAugmenter:
    return ClassAugmenter.from_config(load_config(), SIZE)


def test_class_policy_picks_the_configured_transforms(augmenter):
    cfg = load_config()["cnn"]["augment"]
    names = {c: [type(t).__name__ for t in augmenter.compose_for(c).transforms] for c in CLASSES7}
    assert names["normal"] == ["Affine", "HorizontalFlip"]
    assert names["multi"] == ["Affine", "HorizontalFlip", "RandomResizedCrop", "RandomBrightnessContrast", "GaussNoise"]
    assert names["epidural"] == names["multi"] and names["subarachnoid"] == names["multi"]
    assert "GaussNoise" not in names["subdural"] and "RandomBrightnessContrast" in names["subdural"]
    for c in CLASSES7:
        assert augmenter.policy_name(c) == cfg["by_class"][c] == augmenter.policy_name(CLASS7_INDEX[c])
    strong = augmenter.compose_for("multi").transforms[0]
    assert strong.rotate == (-30.0, 30.0)
    with pytest.raises(ValueError, match="no policy for classes"):
        ClassAugmenter(cfg["policies"], {"normal": "light"}, SIZE)
    with pytest.raises(ValueError, match="unknown keys"):
        ClassAugmenter({"light": {"shear": 3}}, {c: "light" for c in CLASSES7}, SIZE)


def test_augmentation_keeps_image_and_mask_aligned(augmenter):
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:14, 8:27] = 1
    mask[20:28, 3:9] = 1
    image = np.repeat((mask * 255)[..., None], 3, axis=-1)
    mask = mask * 3                      # a label value: linear resampling would invent 1s and 2s
    changed = 0
    for seed in range(12):
        out, out_mask = augmenter(image, mask, label="normal", seed=seed)  # geometry only: no intensity change
        assert out.shape == image.shape and out_mask.shape == mask.shape
        assert set(np.unique(out_mask)) <= {0, 3}                           # nearest for masks
        inside = out[..., 0] > 127
        union = (inside | (out_mask == 3)).sum()
        assert (inside & (out_mask == 3)).sum() / union > 0.85, seed
        changed += not np.array_equal(out_mask, mask)
    assert changed >= 6


def test_draws_are_seeded_per_image_not_per_worker(work, augmenter):
    ids = ["a0", "a5", "a10", "a20"]
    kwargs = dict(size=SIZE, batch_size=4, labels7=np.full(4, CLASS7_INDEX["multi"]), augmenter=augmenter,
                  windows=WINDOWS, hu_ids=ids, seed=3)
    seq = CacheSequence(work, ids, **kwargs)
    batch = seq[0][0]
    clone = pickle.loads(pickle.dumps(seq))              # what a forked / spawned worker holds
    np.testing.assert_array_equal(clone[0][0], batch)    # same (seed, epoch, position) -> same draw
    seq.on_epoch_end()
    assert not np.array_equal(seq[0][0], batch)          # a new epoch draws new transforms
    same_image = CacheSequence(work, ["a5"] * 4, **kwargs)[0][0]
    assert len({same_image[k].tobytes() for k in range(4)}) == 4   # each position its own draw


def test_window_jitter_rewindows_the_hu_map(work):
    policies = {"jit": {"window_jitter": {"center": 10, "width": 0.2, "p": 1.0}}}
    aug = ClassAugmenter(policies, {c: "jit" for c in CLASSES7}, SIZE)
    seq = CacheSequence(work, ["a5"], size=SIZE, batch_size=1, labels7=[6], augmenter=aug, windows=WINDOWS,
                        hu_ids=["a5"])
    x = seq[0][0][0]
    from ichkit.models.cnn.inputs import item_seed

    draw = item_seed(0, 0, 0)
    jittered = aug.jitter_windows(6, list(WINDOWS.values()), np.random.default_rng(draw))
    assert jittered is not None and jittered[0] != WINDOWS["brain"]
    hu = ImageCache(work).load("hu", "a5")
    expected = resize(np.stack([window_hu(hu, c, w) for c, w in jittered], axis=-1), SIZE)
    np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8), expected)
    # no real HU for this id (a rendered image): the cached windows, unjittered
    plain = CacheSequence(work, ["a5"], size=SIZE, batch_size=1, labels7=[6], augmenter=aug, windows=WINDOWS)
    np.testing.assert_array_equal(plain[0][0][0], resize(ImageCache(work).load("cls", "a5"), SIZE) / np.float32(255))


def test_segmentation_pairs_come_from_the_seg_and_mask_caches(work, augmenter):
    ids = ["a10", "a5"]
    seq = CacheSequence(work, ids, size=SIZE, batch_size=2, kind="seg", masks=True, windows=WINDOWS)
    x, y = seq[0]
    assert x.shape == (2, SIZE, SIZE, 3) and y.shape == (2, SIZE, SIZE, 1)
    expected = resize(ImageCache(work).load("mask", "a10"), SIZE, mask=True)
    np.testing.assert_array_equal(y[0, ..., 0], expected)
    assert y[1].sum() == 0                                   # no mask file: all background
    aug_seq = CacheSequence(work, ids, size=SIZE, batch_size=2, kind="seg", masks=True, windows=WINDOWS,
                            labels7=[5, 6], augmenter=augmenter, targets={"rsna": np.zeros((2, 6))})
    xa, ya = aug_seq[0]
    assert set(ya) == {"rsna", "mask"} and ya["mask"].shape == (2, SIZE, SIZE, 1)
