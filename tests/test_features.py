"""Features: brain mask, radiomic physics cues, pixel downsampling, the per-image feature cache."""

from __future__ import annotations

import json
from dataclasses import replace
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ichkit import features
from ichkit.cache import ImageCache
from ichkit.config import load_config
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

SETTINGS = replace(FeatureSettings.from_config(load_config()),
                   windows=tuple((k, float(c), float(w)) for k, (c, w) in WINDOWS.items()))
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
    masks = head_masks(hu, SETTINGS)
    assert not masks.from_hull
    assert not (masks.brain & (hu >= 300)).any(), "brain mask contains bone"
    assert not (masks.brain & (hu < -500)).any(), "brain mask contains air"
    expected = np.pi * (BRAIN_AXES[0] - 2) * (BRAIN_AXES[1] - 2)  # inner table ellipse eroded by 2 px
    assert abs(masks.brain.sum() - expected) / expected < 0.05
    assert masks.head.sum() > masks.intracranial.sum() > masks.brain.sum()
    # scalp soft tissue (30 HU, outside the skull) is not brain
    scalp = (hu == 30) & ~masks.head
    assert scalp.any() and not (scalp & masks.brain).any()


def test_a_gap_in_the_skull_is_closed_by_a_wider_closing_before_the_hull():
    hu = head_slice("normal", np.random.default_rng(0)).copy()
    hu[:, 124:132][hu[:, 124:132] >= 300] = 30  # an 8-px gap at the front and back (sutures, thin slices)
    masks = head_masks(hu, SETTINGS)
    assert not masks.from_hull and masks.closing_px > SETTINGS.skull_close_px[0]
    expected = np.pi * (BRAIN_AXES[0] - 2) * (BRAIN_AXES[1] - 2)
    assert abs(masks.brain.sum() - expected) / expected < 0.05
    f = radiomic_features(hu, SETTINGS)
    assert f["brain_mask_closing"] == masks.closing_px and f["brain_mask_from_hull"] == 0


def _open_ring(case: str) -> np.ndarray:
    """A slice whose skull ring no closing bridges, as at the skull base, the vertex or over a craniotomy."""
    hu = head_slice("normal", np.random.default_rng(0)).astype(np.float32)
    rr, cc = np.mgrid[0:256, 0:256]
    if case == "vertex":  # the skull cut tangentially: a solid bone plate under the scalp, no brain
        hu[(hu > -500)] = 30.0
        hu[((rr - 128) / 60.0) ** 2 + ((cc - 128) / 50.0) ** 2 <= 1] = 1200.0
        return hu
    band = slice(108, 148) if case == "craniotomy" else slice(100, 156)
    cut = hu[:, band]
    cut[cut >= 300] = 30.0  # the bone is gone front and back: scalp lies on the brain there
    # the CT table under the head, bone-dense, separated from it by air
    hu[(np.hypot(rr - 60, cc - 128) >= 190) & (np.hypot(rr - 60, cc - 128) <= 193) & (rr > 200)] = 1200.0
    if case == "skull_base":
        for c0 in (100, 156):  # air sinuses lined by bone partial volume, and a petrous ridge
            d = np.hypot(rr - 70, cc - c0)
            hu[d <= 13] = 150.0
            hu[d <= 10] = -1000.0
        hu[(np.abs(rr - 150) <= 3) & (np.abs(cc - 128) <= 40)] = 200.0
    return hu


@pytest.mark.parametrize("case", ["craniotomy", "skull_base", "vertex"])
def test_an_open_skull_ring_keeps_the_mask_to_brain_tissue_without_the_hull(case):
    hu = _open_ring(case)
    masks = head_masks(hu, SETTINGS)
    assert not masks.from_hull and masks.closing_px == 0
    if case == "vertex":
        assert masks.path == "no_brain" and masks.brain.sum() < SETTINGS.min_brain_px
        return
    assert masks.path == "soft_tissue"
    brain_hu = hu[masks.brain]
    assert brain_hu.min() >= SETTINGS.csf_hu[0] and brain_hu.max() <= SETTINGS.clot_hu[1], "bone, partial volume or air"
    inner = ((np.mgrid[0:256, 0:256][0] - 128) / BRAIN_AXES[0]) ** 2 + ((np.mgrid[0:256, 0:256][1] - 128) / BRAIN_AXES[1]) ** 2 <= 1
    # only along the hull's chord across the gap does a sliver of scalp stay in (under 1.5% of the mask)
    assert (masks.brain & ~inner).sum() < 0.015 * masks.brain.sum(), "the mask reaches into the scalp"
    expected = (inner & (hu >= SETTINGS.csf_hu[0]) & (hu <= SETTINGS.clot_hu[1])).sum()
    assert abs(masks.brain.sum() - expected) / expected < 0.12
    f = radiomic_features(hu, SETTINGS)
    assert f["brain_mask_soft_fill"] == 1 and f["brain_mask_from_hull"] == 0 and f["brain_mask_closing"] == 0


def test_the_brain_mask_report_counts_each_path():
    from ichkit.features.stage import brain_mask_report

    rows = [radiomic_features(head_slice("normal", np.random.default_rng(0)), SETTINGS)]
    rows += [radiomic_features(_open_ring(c), SETTINGS) for c in ("craniotomy", "vertex")]
    no_skull = np.full((256, 256), 35.0, dtype=np.float32)  # no bone at all: only the hull-like guess is left
    rows.append(radiomic_features(no_skull, SETTINGS))
    report = brain_mask_report(pd.DataFrame(rows), load_config())
    assert ("skull closed at 3 px on 25.0%, by a wider closing on 0.0%, soft-tissue fill of an open ring on 25.0%, "
            "no brain in view on 25.0%, convex-hull fallback on 25.0% of 4 slices") in report, report


def test_rendered_windows_give_a_brain_mask_from_the_bone_channel():
    from ichkit.features.analysis import composite_hu
    from ichkit.windows import hu_map  # noqa: F401  (the cached pseudo-HU of a render spans 0-80 HU only)

    hu = head_slice("normal", np.random.default_rng(0)).astype(np.float32)
    channels = [np.clip((hu - (c - w / 2)) / w * 255, 0, 255).round().astype(np.uint8) for _, c, w in SETTINGS.windows]
    render = np.stack(channels, axis=-1)
    pseudo = channels[0].astype(np.float32) / 255 * 80  # what a render's HU map is: the brain window only
    assert head_masks(pseudo, SETTINGS).from_hull  # the skull threshold never fires on it
    masks = head_masks(composite_hu(render, SETTINGS), SETTINGS)
    truth = head_masks(hu, SETTINGS)
    assert not masks.from_hull
    assert (masks.brain ^ truth.brain).sum() / truth.brain.sum() < 0.02
    no_bone = replace(SETTINGS, windows=(("brain", 40.0, 80.0), ("subdural", 80.0, 200.0), ("stroke", 40.0, 40.0)))
    with pytest.raises(FeatureError, match="bone-window"):
        composite_hu(render, no_bone)


def test_blood_candidates_are_the_hyperdense_brain_components_the_features_count():
    hu = head_slice("normal", np.random.default_rng(0)).astype(np.float32)
    brain = head_masks(hu, SETTINGS).brain
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

    def counting(work, image_id, settings, sets, hu_units=True):
        calls.append(f"{image_id}:{'+'.join(sets)}")
        return real(work, image_id, settings=settings, sets=sets, hu_units=hu_units)

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

    def dies_on_the_fifth(work_, image_id, settings, sets, hu_units=True):
        if len(done) == 4:
            raise MemoryError("killed")  # the run dies inside the third batch
        done.append(image_id)
        return real(work_, image_id, settings=settings, sets=sets, hu_units=hu_units)

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


def test_a_rendered_layout_measures_inside_the_bone_window_skull_or_is_refused(small_work):
    work, slices, cfg = small_work
    ids = slices["image_id"].tolist()
    meta = json.loads((work / "table.json").read_text())
    (work / "table.json").write_text(json.dumps({**meta, "layout": "renders"}))  # PNG windows: no HU
    cache = ImageCache(work)
    for image_id in ids:  # what a render's HU map is: the brain window mapped back, 0-80 HU
        cache.save("hu", image_id, (cache.load("cls", image_id)[..., 0].astype(np.int16) * 80 // 255))
    rendered = ensure_features(work, ids, cfg, sets=("radiomic",), progress=False)["radiomic"]
    assert (rendered["brain_mask_from_hull"] == 0).all()  # the bone window closes the skull
    from ichkit.features.analysis import composite_hu
    settings = FeatureSettings.from_config(cfg)
    expected = radiomic_features(composite_hu(cache.load("cls", ids[0]), settings), settings)
    assert rendered.loc[ids[0], "brain_area_frac"] == pytest.approx(expected["brain_area_frac"])
    # a bone channel that shows no skull (a render exported without it): every mask would be a guess
    (work / "features" / "radiomic.json").unlink()
    for image_id in ids:
        image = cache.load("cls", image_id)
        image[..., 2] = 0
        cache.save("cls", image_id, image)
    with pytest.raises(FeatureError, match="closes the skull on only 0%"):
        ensure_features(work, ids, cfg, sets=("radiomic",), progress=False)
    # windows without a bone window: no brain mask can be made, so the radiomic set is refused
    cfg = {**cfg, "prepare": {**cfg["prepare"], "windows": {"brain": [40, 80], "subdural": [80, 200],
                                                            "stroke": [40, 40]}}}
    with pytest.raises(FeatureError, match="bone-window"):
        ensure_features(work, ids, cfg, sets=("radiomic",), progress=False)
