"""Features: brain mask, radiomic physics cues, pixel downsampling, the per-image feature cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ichkit import features
from ichkit.cache import ImageCache
from ichkit.features import (
    FeatureError,
    FeatureSettings,
    blood_candidates,
    ensure_features,
    head_masks,
    load_features,
    pixel_features,
    radiomic_columns,
    radiomic_features,
)
from synthetic_ct import BRAIN_AXES, WINDOWS, config_for, head_slice, make_work

SETTINGS = FeatureSettings(windows=tuple((k, float(c), float(w)) for k, (c, w) in WINDOWS.items()))
REPO = Path(__file__).resolve().parents[1]


def _features_of(kind: str, draws: int = 4, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame([radiomic_features(head_slice(kind, rng), SETTINGS) for _ in range(draws)])


@pytest.fixture(scope="module")
def by_class() -> dict[str, pd.DataFrame]:
    return {k: _features_of(k) for k in ("epidural", "subdural", "subarachnoid", "intraparenchymal",
                                        "intraventricular", "normal")}


def test_brain_mask_is_the_inside_of_the_skull():
    hu = head_slice("normal", np.random.default_rng(0))
    masks = head_masks(hu, bone_hu=300, erode_px=2)
    assert not masks.from_hull
    assert not (masks.brain & (hu >= 300)).any(), "brain mask contains bone"
    assert not (masks.brain & (hu < -500)).any(), "brain mask contains air"
    expected = np.pi * (BRAIN_AXES[0] - 2) * (BRAIN_AXES[1] - 2)  # inner table ellipse eroded by 2 px
    assert abs(masks.brain.sum() - expected) / expected < 0.05
    assert masks.head.sum() > masks.intracranial.sum() > masks.brain.sum()
    # scalp soft tissue (30 HU, outside the skull) is not brain
    scalp = (hu == 30) & ~masks.head
    assert scalp.any() and not (scalp & masks.brain).any()


def test_open_skull_falls_back_to_the_convex_hull():
    hu = head_slice("normal", np.random.default_rng(0)).copy()
    hu[:, 120:136][hu[:, 120:136] >= 300] = 30  # a 16-px gap at the front and back: fill_holes leaks
    masks = head_masks(hu)
    assert masks.from_hull
    expected = np.pi * (BRAIN_AXES[0] - 2) * (BRAIN_AXES[1] - 2)
    assert abs(masks.brain.sum() - expected) / expected < 0.1


def test_blood_candidates_are_the_hyperdense_brain_components_the_features_count():
    hu = head_slice("normal", np.random.default_rng(0)).astype(np.float32)
    brain = head_masks(hu).brain
    rr, cc = np.mgrid[:256, :256]
    clot = (rr - 128) ** 2 + (cc - 110) ** 2 <= 36           # 113 px at 60 HU: kept
    speck = (rr - 100) ** 2 + (cc - 150) ** 2 <= 2            # 9 px: below min_blood_px, dropped
    calcification = (rr - 150) ** 2 + (cc - 150) ** 2 <= 16   # 49 px at 250 HU: above clot_hu, dropped
    hu[clot | speck] = 60
    hu[calcification] = 250
    outside = (rr < 20) & (cc > 100) & (cc < 140)             # scalp / air region outside the brain
    hu[outside] = 60
    mask = blood_candidates(hu, brain, SETTINGS)
    assert mask.dtype == bool and mask.shape == hu.shape
    assert mask[clot & brain].mean() > 0.9 and (mask & ~ndimage.binary_dilation(clot, iterations=1)).sum() == 0
    assert not (mask & ~brain).any()
    assert not blood_candidates(hu, brain, SETTINGS, min_px=200).any()
    f = radiomic_features(hu, SETTINGS)
    assert f["blood_count"] == 1 and f["blood_area_frac"] == pytest.approx(mask.sum() / brain.sum())


def test_radiomic_features_are_named_finite_and_zero_without_blood(by_class):
    for df in by_class.values():
        assert list(df.columns) == radiomic_columns(SETTINGS)
        assert np.isfinite(df.to_numpy()).all()
    normal = by_class["normal"]
    assert (normal["blood_count"] == 0).all() and (normal["largest_area_frac"] == 0).all()
    for kind, df in by_class.items():
        if kind != "normal":
            assert (df["blood_count"] >= 1).all(), f"{kind}: no hyperdense component found"
    # the histogram bins are fractions of the brain, within the blood range
    hist = normal[[c for c in normal.columns if c.startswith("blood_hist_")]]
    assert ((hist >= 0) & (hist <= 1)).all().all() and (hist.sum(axis=1) < 1).all()


def test_extra_axial_geometry_separates_lens_from_crescent(by_class):
    epi, sub = by_class["epidural"].mean(), by_class["subdural"].mean()
    assert epi["largest_solidity"] > sub["largest_solidity"] + 0.3      # lens convex, crescent concave
    assert sub["largest_concavity"] > epi["largest_concavity"]
    assert sub["largest_arc_span"] > 2 * epi["largest_arc_span"]         # crescent spans a long arc
    assert epi["largest_thickness_ratio"] > 3 * sub["largest_thickness_ratio"]
    assert sub["largest_depth_uniformity"] > epi["largest_depth_uniformity"]  # lens tapers to its tips
    for df in (by_class["epidural"], by_class["subdural"]):
        assert (df["largest_table_contact"] > 0.3).all()
        assert (df["blood_dist_table_mean"] < 0.15).all()


def test_intra_axial_blood_lies_deep(by_class):
    iph, ivh = by_class["intraparenchymal"], by_class["intraventricular"]
    periph = pd.concat([by_class["epidural"], by_class["subdural"]])
    assert iph["blood_dist_table_mean"].min() > periph["blood_dist_table_mean"].max()
    assert (iph["largest_table_contact"] == 0).all() and (iph["largest_compactness"] > 0.7).all()
    assert (ivh["blood_near_ventricle_frac"] > 0).all()
    assert ivh["blood_dist_centre_mean"].mean() < iph["blood_dist_centre_mean"].mean()
    sah = by_class["subarachnoid"]
    assert sah["largest_compactness"].mean() < iph["largest_compactness"].mean()  # thin streaks


def test_pixel_features_are_block_means_channel_major():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    vec = pixel_features(image, 32)
    assert vec.dtype == np.uint8 and vec.shape == (3 * 32 * 32,)
    block = image.reshape(32, 8, 32, 8, 3).mean(axis=(1, 3))  # (32, 32, 3)
    np.testing.assert_allclose(vec.reshape(3, 32, 32), block.transpose(2, 0, 1), atol=1.0)
    with pytest.raises(ValueError, match="H, W, 3"):
        pixel_features(image[..., 0], 32)


@pytest.fixture()
def small_work(tmp_path: Path):
    slices, folds = make_work(tmp_path, patients_per_class=1, slices_per_patient=2, test_patients=1, k=1)
    return tmp_path, slices, config_for(tmp_path, folds)


def _count_computations(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = features.pool._compute_one

    def counting(work, image_id, settings, sets):
        calls.append(f"{image_id}:{'+'.join(sets)}")
        return real(work, image_id, settings=settings, sets=sets)

    monkeypatch.setattr(features.pool, "_compute_one", counting)
    return calls


def test_cache_computes_only_missing_ids_and_redoes_changed_settings(small_work, monkeypatch):
    work, slices, cfg = small_work
    ids = slices["image_id"].tolist()
    calls = _count_computations(monkeypatch)
    first = ensure_features(work, ids[:-1], cfg, progress=False)
    assert len(calls) == len(ids) - 1
    assert list(first["radiomic"].index) == ids[:-1]
    assert first["pixels"].shape == (len(ids) - 1, 3 * 32 * 32)

    calls.clear()
    again = ensure_features(work, ids[::-1], cfg, progress=False)   # one new id; order follows the request
    assert calls == [f"{ids[-1]}:pixels+radiomic"]
    assert list(again["pixels"].index) == ids[::-1]
    pd.testing.assert_frame_equal(again["radiomic"].loc[ids[:-1]], first["radiomic"])

    calls.clear()
    ensure_features(work, ids, cfg, progress=False)
    assert calls == []
    stored = pd.read_parquet(work / "features" / "radiomic.parquet")
    assert sorted(stored["image_id"]) == sorted(ids)

    # a radiomic setting changes: the radiomic set is redone for every id, the pixels are kept
    cfg["features"]["clot_hu"] = [55, 100]
    calls.clear()
    ensure_features(work, ids, cfg, progress=False)
    assert sorted(calls) == sorted(f"{i}:radiomic" for i in ids)
    meta = json.loads((work / "features" / "radiomic.json").read_text())
    assert meta["settings"]["clot_hu"] == [55.0, 100.0]


def test_an_interrupted_run_keeps_the_batches_it_finished(small_work, monkeypatch):
    work, slices, cfg = small_work
    ids = slices["image_id"].tolist()
    assert len(ids) >= 5
    cfg["features"]["save_every"] = 2
    cfg["features"]["workers"] = 1
    real = features.pool._compute_one
    done: list[str] = []

    def dies_on_the_fifth(work_, image_id, settings, sets):
        if len(done) == 4:
            raise MemoryError("killed")  # the run dies inside the third batch
        done.append(image_id)
        return real(work_, image_id, settings=settings, sets=sets)

    monkeypatch.setattr(features.pool, "_compute_one", dies_on_the_fifth)
    with pytest.raises(MemoryError):
        ensure_features(work, ids, cfg, progress=False)
    stored = pd.read_parquet(work / "features" / "radiomic.parquet")
    assert sorted(stored["image_id"]) == sorted(ids[:4])  # two saved batches of two

    monkeypatch.setattr(features.pool, "_compute_one", real)  # the machine is back
    calls = _count_computations(monkeypatch)
    ensure_features(work, ids, cfg, progress=False)
    assert sorted(c.split(":")[0] for c in calls) == sorted(ids[4:])  # only what was still missing


def test_load_features_concatenates_sets_as_float32(small_work):
    work, slices, cfg = small_work
    ids = slices["image_id"].tolist()
    X = load_features(work, ids, cfg, ("pixels", "radiomic"), progress=False)
    assert list(X.index) == ids
    assert X.shape[1] == 3 * 32 * 32 + len(radiomic_columns(FeatureSettings.from_config(cfg)))
    assert (X.dtypes == np.float32).all()


def test_parallel_extraction_matches_inline(small_work):
    work, slices, cfg = small_work
    ids = slices["image_id"].tolist()
    inline = ensure_features(work, ids, cfg, sets=("radiomic",), progress=False)["radiomic"]
    other = work / "parallel"
    other.mkdir()
    (other / "cache").symlink_to(work / "cache")
    cfg = {**cfg, "features": {**cfg["features"], "workers": 2, "chunksize": 2}}
    parallel = ensure_features(other, ids, cfg, sets=("radiomic",), progress=False)["radiomic"]
    pd.testing.assert_frame_equal(inline, parallel)


def test_bad_cache_entries_name_the_file(small_work):
    work, slices, cfg = small_work
    image_id = slices["image_id"].iloc[0]
    cache = ImageCache(work)
    cache.path("hu", image_id).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(cache.path("hu", image_id)))):
        ensure_features(work, [image_id], cfg, sets=("radiomic",), progress=False)
    cache.save("cls", image_id, np.zeros((256, 256), dtype=np.uint8))  # a grey image, not 3 windows
    with pytest.raises(FeatureError, match=re.escape(str(cache.path("cls", image_id)))):
        ensure_features(work, [image_id], cfg, sets=("pixels",), progress=False)


def test_bad_settings_are_reported():
    from ichkit.config import load_config

    cfg = load_config()
    cfg["features"]["blood_hu"] = [100, 40]
    with pytest.raises(FeatureError, match="blood_hu"):
        FeatureSettings.from_config(cfg)


def test_every_radiomic_feature_is_documented():
    doc = (REPO / "README.md").read_text()
    for name, (definition, why) in features.RADIOMIC_DOC.items():
        # the README row is the code's own text (RADIOMIC_DOC), so the two cannot drift apart
        assert f"| `{name}` | {definition} | {why} |" in doc, f"{name}: README feature table differs from RADIOMIC_DOC"
