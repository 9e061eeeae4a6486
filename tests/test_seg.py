"""Segmentation family: losses, overlap metrics, post-processing, both segmenters through the fold driver
on a tiny synthetic work folder (64-px slices with a known blood blob), the held-out fold never seen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichkit.cache import ImageCache
from ichkit.labels import SUBTYPES
from ichkit.metrics import mask_scores, segmentation_summary
from ichkit.models.seg import postprocess
from ichkit.slicedata import SliceData
from ichkit.table import Dataset, write_table
from ichkit.windows import apply_windows

SIZE = 64
WINDOWS = {"brain": (40, 80), "subdural": (80, 200), "bone": (600, 2800)}


# --------------------------------------------------------------------------------------------------
# losses and metrics on hand-made masks


def _masks():
    t = np.zeros((2, 8, 8, 1), np.float32)
    p = np.zeros((2, 8, 8, 1), np.float32)
    t[0, 1:5, 1:5] = 1          # 16 px
    p[0, 3:7, 3:7] = 1          # 16 px, overlap 2 x 2 = 4 -> Dice 8 / 32 = 0.25
    t[1, 0:2, 0:8] = 1          # 16 px
    p[1, 0:2, 0:4] = 1          # 8 px inside it -> Dice 16 / 24
    return t, p


def test_soft_dice_loss_is_one_minus_dice():
    from ichkit.models.seg.losses import focal_tversky_loss, get_loss, soft_dice_loss

    t, p = _masks()
    dice = np.array([0.25, 16 / 24])
    assert np.allclose(np.asarray(soft_dice_loss(t, p, smooth=0.0)), 1 - dice, atol=1e-6)
    # the paper's smoothing: (2 TP + 1) / (|T| + |P| + 1)
    assert np.allclose(np.asarray(soft_dice_loss(t, p)), 1 - np.array([9 / 33, 17 / 25]), atol=1e-6)
    # an empty truth with an empty prediction is a perfect "no blood"
    z = np.zeros((1, 8, 8, 1), np.float32)
    assert float(np.asarray(soft_dice_loss(z, z))[0]) == pytest.approx(0.0)
    # focal Tversky with alpha = beta = 0.5 and gamma = 1 is the Dice loss
    assert np.allclose(np.asarray(focal_tversky_loss(t, p, 0.5, 0.5, 1.0, smooth=0.0)), 1 - dice, atol=1e-6)
    bce_dice = np.asarray(get_loss("bce_dice")(t, np.clip(p, 0.01, 0.99)))
    assert (bce_dice > np.asarray(soft_dice_loss(t, np.clip(p, 0.01, 0.99)))).all()
    with pytest.raises(ValueError, match="unknown segmentation loss"):
        get_loss("jaccard")


def test_unknown_truths_are_left_out_of_the_loss():
    from ichkit.models.seg.losses import bce_dice_loss, ignoring_unknown

    t, p = _masks()
    truth = np.concatenate([t[:1], np.full_like(t[:1], -1)])
    pred = np.concatenate([p[:1], p[:1]]) * 0.9 + 0.05
    loss = np.asarray(ignoring_unknown(bce_dice_loss)(truth, pred))
    assert loss[1] == 0.0                                    # all -1: no truth, no loss
    assert loss[0] == pytest.approx(float(np.asarray(bce_dice_loss(truth[:1], pred[:1]))[0]), rel=1e-6)


def test_overlap_metrics_on_hand_made_masks():
    t, p = _masks()
    s = mask_scores(p[0, ..., 0], t[0, ..., 0])
    assert s == pytest.approx({"dice": 0.25, "iou": 4 / 28, "precision": 0.25, "recall": 0.25})
    s = mask_scores(p[1, ..., 0], t[1, ..., 0])
    assert s["precision"] == 1.0 and s["recall"] == 0.5
    empty = np.zeros((8, 8))
    assert mask_scores(empty, empty)["dice"] == 1.0 and np.isnan(mask_scores(empty, empty)["recall"])
    # two blood slices and two normal ones, one of which has a false positive
    summary = segmentation_summary(tp=[4, 8, 0, 0], n_pred=[16, 8, 3, 0], n_true=[16, 16, 0, 0],
                                   normal=[False, False, True, True])
    assert summary["mean_dice"] == pytest.approx((0.25 + 16 / 24) / 2)
    assert summary["pooled_dice"] == pytest.approx(2 * 12 / (27 + 32))
    assert summary["normal_fp_rate"] == 0.5


def test_postprocess_drops_small_components_and_outside_brain():
    prob = np.zeros((16, 16), np.float32)
    prob[2:6, 2:6] = 0.9       # 16 px blob inside the brain
    prob[10, 10] = 0.9         # a 1-px speck
    prob[0:2, 12:16] = 0.8     # outside the brain
    brain = np.zeros((16, 16), np.uint8)
    brain[1:14, 1:14] = 1
    out = postprocess.PostProcess(0.5, 4, True).apply(prob, brain)
    expected = np.zeros((16, 16), np.uint8)
    expected[2:6, 2:6] = 1
    assert np.array_equal(out, expected)
    truth = expected
    chosen, score = postprocess.choose([prob], [truth], [brain], [postprocess.PostProcess(0.5, 0, False),
                                                                  postprocess.PostProcess(0.5, 4, True)])
    assert chosen == postprocess.PostProcess(0.5, 4, True) and score == 1.0


def test_postprocess_choice_scores_every_candidate_as_apply_does():
    """`choose` labels once per (threshold, brain) and reuses it for every minimum size: its scores must be
    those of `PostProcess.apply` candidate by candidate (random smooth maps, blobs of many sizes)."""
    from scipy import ndimage as ndi

    from ichkit.metrics import dice

    rng = np.random.default_rng(5)
    probs = [ndi.gaussian_filter(rng.random((48, 48)), 1.5).astype(np.float32) for _ in range(6)]
    probs = [(p - p.min()) / (p.max() - p.min()) for p in probs]
    truths = [(ndi.gaussian_filter(rng.random((48, 48)), 2.0) > 0.52).astype(np.uint8) for _ in range(6)]
    truths[0][:] = 0                                     # a normal slice: empty truth
    blobs = np.zeros((48, 48), np.float32)              # components of exactly the grid's minimum sizes
    blobs[5, 5:10], blobs[10:14, 10:15], blobs[20:26, 20:30] = 0.9, 0.9, 0.9   # 5, 20 and 60 px
    probs.append(blobs)
    truths.append((blobs > 0).astype(np.uint8))
    brains = [np.pad(np.ones((40, 40), np.uint8), 4) for _ in range(len(probs))]
    grid = [postprocess.PostProcess(t, m, b) for t in (0.4, 0.5, 0.6) for m in (0, 1, 5, 20, 60) for b in (True, False)]
    brute = {pp: float(np.mean([dice(pp.apply(p, br), t) for p, br, t in zip(probs, brains, truths)])) for pp in grid}
    for pp in grid:                                      # every candidate's own score
        assert postprocess.choose(probs, truths, brains, [pp])[1] == pytest.approx(brute[pp], abs=1e-12), pp
    chosen, score = postprocess.choose(probs, truths, brains, grid)
    best = max(grid, key=lambda pp: (brute[pp], -grid.index(pp)))
    assert chosen == best and score == pytest.approx(brute[best], abs=1e-12)
    assert len(set(brute.values())) > 5                  # the grid really discriminates


# --------------------------------------------------------------------------------------------------
# a tiny work folder: 64-px head slices, a 70-HU blob with its mask on positive slices


def _slice(rng, blood: bool):
    rr, cc = np.mgrid[:SIZE, :SIZE]
    r = np.hypot((rr - 32) / 26.0, (cc - 32) / 22.0)
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[r <= 1.12] = 1000.0                  # skull
    hu[r <= 1.0] = 34.0                     # brain
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if blood:
        cy, cx = rng.integers(22, 42, size=2)
        mask = ((rr - cy) ** 2 + (cc - cx) ** 2 <= rng.integers(4, 7) ** 2).astype(np.uint8)
        hu[mask > 0] = 70.0
    hu += rng.normal(0, 2.0, hu.shape)
    return hu.astype(np.int16), mask


def make_seg_work(work: Path, k: int = 3, patients_per_fold: int = 2, slices_per_patient: int = 4,
                  test_slices: int = 4) -> tuple[pd.DataFrame, Path]:
    rng = np.random.default_rng(0)
    cache = ImageCache(work)
    rows, fold_rows, manifest = [], [], []
    n = 0
    plan = [(f, p) for f in range(k) for p in range(patients_per_fold)] + [("test", 0)]
    for fold, p in plan:
        patient = f"P{fold}_{p}"
        count = test_slices if fold == "test" else slices_per_patient
        for s in range(count):
            image_id = f"ID_{n:04x}"
            n += 1
            blood = s % 2 == 0
            hu, mask = _slice(rng, blood)
            cache.save("hu", image_id, hu)
            windows = apply_windows(SliceData(pixels=hu), list(WINDOWS.values()))
            cache.save("cls", image_id, windows)
            cache.save("seg", image_id, windows)
            row = {"image_id": image_id, "split": "test" if fold == "test" else "train", "status": "ok",
                   "source": "dicom", "patient_id": patient, "study_id": f"S_{patient}", "series_id": f"SE_{patient}",
                   "z": float(s * 5), "pixel_spacing": 0.5, "slice_thickness": 5.0, "has_mask": blood}
            if blood:
                cache.save("mask", image_id, mask)
            if fold != "test":
                kind = "intraparenchymal" if blood else "normal"
                row.update({"any": int(blood), **{st: int(blood and st == kind) for st in SUBTYPES}, "label7": kind})
                fold_rows.append({"image_id": image_id, "patient_id": patient, "fold": fold})
            rows.append(row)
            manifest.append({"image_id": image_id, "height": 128, "width": 128})
    slices = pd.DataFrame(rows)
    write_table(Dataset(root=work, layout="synthetic", slices=slices), work)
    pd.DataFrame(manifest).to_parquet(cache.manifest_path, index=False)
    folds_path = work / "folds.csv"
    pd.DataFrame(fold_rows).to_csv(folds_path, index=False)
    return slices, folds_path


@pytest.fixture()
def seg_work(tmp_path: Path):
    from ichkit.config import load_config

    slices, folds_path = make_seg_work(tmp_path / "work")
    cfg = load_config()
    cfg["paths"]["work"] = str(tmp_path / "work")
    cfg["paths"]["folds"] = str(folds_path)
    cfg["prepare"]["windows"] = {k: list(v) for k, v in WINDOWS.items()}
    cfg["prepare"]["cls_size"] = cfg["prepare"]["seg_size"] = SIZE
    cfg["train"]["inner_valid_fraction"] = 0.34
    cfg["seg"]["hu_threshold"]["fit_images"] = 12
    cfg["seg"]["hu_threshold"]["min_px"] = [4, 12]
    return cfg, slices, pd.read_csv(folds_path)


def _spy_truth(monkeypatch):
    """Record every image whose truth mask a trainer's `fit` reads (post-processing and HU-threshold
    choices read it through SegData.truth; the U-Net's training masks come through the input pipeline)."""
    from ichkit.models.seg.data import SegData
    from ichkit.models.seg.trainers import HUThresholdSeg, ResNet50UNetSeg

    seen: list[str] = []
    calls: dict[tuple[str, int], dict] = {}
    truth = SegData.truth
    monkeypatch.setattr(SegData, "truth", lambda self, i: (seen.append(i), truth(self, i))[1])
    for cls in (HUThresholdSeg, ResNet50UNetSeg):
        def fit(self, train_ids, valid_ids, fold_dir, resume, _fit=cls.fit):
            seen.clear()
            _fit(self, train_ids, valid_ids, fold_dir, resume)
            calls[(self.ctx.model, self.ctx.fold)] = {"truth": set(seen), "train": set(train_ids),
                                                      "valid": set(valid_ids), "labels": set(self.ctx.labels.index)}
        monkeypatch.setattr(cls, "fit", fit)
    return calls


def test_hu_threshold_seg_through_the_folds_and_the_table(seg_work, monkeypatch, tmp_path):
    from ichkit.models.seg.evaluate import seg_table
    from ichkit.models.seg.results import read_oof, read_oof_masks
    from ichkit.models.seg.run import segment
    from ichkit.outputs.masks import write_submission_masks

    cfg, slices, folds = seg_work
    calls = _spy_truth(monkeypatch)
    segment(["hu_threshold_seg"], cfg, progress=False)
    # through the fold driver: an unchanged re-run trains nothing, a changed seg setting retrains every fold
    calls.clear()
    segment(["hu_threshold_seg"], cfg, progress=False)
    assert not calls
    cfg["seg"]["hu_threshold"]["min_px"] = [4, 8]
    segment(["hu_threshold_seg"], cfg, progress=False)
    assert sorted(calls) == [("hu_threshold_seg", k) for k in range(3)]
    for k in range(3):
        c = calls[("hu_threshold_seg", k)]
        heldout = set(folds.loc[folds["fold"] == k, "image_id"])
        assert c["truth"] and not c["truth"] & heldout          # thresholds chosen on the training folds
        assert not c["labels"] & heldout and not (c["train"] | c["valid"]) & heldout
    oof = read_oof(cfg["paths"]["work"], "hu_threshold_seg")
    assert sorted(oof["image_id"]) == sorted(folds["image_id"])
    blood = oof[oof["truth"] == "mask"]
    assert blood["dice"].mean() > 0.8                          # a 36-HU step over 2-HU noise
    assert (oof.loc[oof["truth"] == "normal", "pred_area_px"] == 0).all()
    assert set(read_oof_masks(cfg["paths"]["work"], "hu_threshold_seg")) == set(oof.loc[oof["pred_area_px"] > 0, "image_id"])

    table = seg_table(cfg)
    assert list(table.index) == ["hu_threshold_seg", "baseline_all_brain", "baseline_empty"]
    assert table.loc["baseline_empty", "mean_dice"] == 0.0
    assert table.loc["baseline_all_brain", "normal_fp_rate"] == 1.0
    assert table.loc["hu_threshold_seg", "mean_dice"] == pytest.approx(blood["dice"].mean())
    # the all-brain baseline's brain masks are measured once: the next table reads them back
    from ichkit.models.seg.data import SegData

    def no_brain(self, image_id):
        raise AssertionError("brain mask recomputed for an unchanged table")

    with monkeypatch.context() as m:
        m.setattr(SegData, "brain", no_brain)
        pd.testing.assert_frame_equal(seg_table(cfg), table)

    files = write_submission_masks(cfg["paths"]["work"], tmp_path / "sub", "run1", cfg, model="hu_threshold_seg")
    pngs = sorted(files["mask_pngs"].glob("*.png"))
    assert len(pngs) == 2                                       # the positive test slices only
    from PIL import Image

    assert all(np.asarray(Image.open(p)).shape == (128, 128) for p in pngs)   # the original size
    rle = pd.read_csv(files["mask_rle"], keep_default_na=False)
    assert len(rle) == 4 and (rle["EncodedPixels"] != "").sum() == 2
    vol = pd.read_csv(files["volumes"])
    assert len(vol) == 1 and vol.loc[0, "volume_ml"] > 0

    # positives called by a classifier's test predictions instead: only its positive slices keep a mask
    from ichkit import oof as oof_files

    positive = sorted(p.stem for p in pngs)
    test_ids = slices.loc[slices["split"] == "test", "image_id"].tolist()
    p_any = np.array([0.9 if i == positive[0] else 0.1 for i in test_ids])
    p7 = np.column_stack([np.tile(p_any[:, None] / 6, (1, 6)), 1 - p_any])
    p6 = np.column_stack([p_any, np.tile(p_any[:, None] / 5, (1, 5))])
    called = oof_files.predictions_frame(test_ids, oof_files.MERGED_TEST_FOLD, p7, p6)
    path = oof_files.merged_paths(cfg["paths"]["work"], "some_classifier")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    called.to_parquet(path, index=False)
    cfg["seg"]["positive_from"] = "some_classifier"
    files = write_submission_masks(cfg["paths"]["work"], tmp_path / "sub2", "run2", cfg, model="hu_threshold_seg")
    assert [p.stem for p in files["mask_pngs"].glob("*.png")] == positive[:1]


def test_resnet50_unet_seg_fold_never_sees_the_heldout_fold(seg_work, monkeypatch):
    from ichkit.models.seg.results import fold_paths, read_test_masks
    from ichkit.models.seg.run import segment
    from ichkit.models.seg.trainers import ResNet50UNetSeg

    cfg, slices, folds = seg_work
    # the smallest legal U-Net (ResNet50 needs 32 px), one epoch of one batch, a tiny decoder, no graph
    # tracing (tracing the ~500-variable train and predict graphs took minutes on 2 loaded cores)
    cfg["seg"]["profiles"]["quick"].update(size=32, epochs=1, samples_per_class=1, batch=4, run_eagerly=True,
                                           decoder_filters=[8, 8, 8, 8, 8])
    cfg["seg"]["postprocess"].update(thresholds=[0.5], min_sizes=[0, 10])
    calls = _spy_truth(monkeypatch)
    segment(["resnet50_unet_seg"], cfg, folds_wanted=[1], progress=False)
    c = calls[("resnet50_unet_seg", 1)]
    heldout = set(folds.loc[folds["fold"] == 1, "image_id"])
    assert c["truth"] and c["truth"] <= c["valid"]             # post-processing chosen on valid_ids only
    assert not c["labels"] & heldout and not (c["train"] | c["valid"]) & heldout
    work = Path(cfg["paths"]["work"])
    oof = pd.read_parquet(fold_paths(work, "resnet50_unet_seg", 1)[0])
    assert sorted(oof["image_id"]) == sorted(heldout)
    assert set(oof["mask_height"]) == {SIZE}                   # predictions come back at seg_size
    fold_dir = work / "models" / "resnet50_unet_seg" / "fold1"
    assert len(pd.read_csv(fold_dir / "log.csv")) == 1 and (fold_dir / "postprocess.json").is_file()
    # a reloaded fold model predicts what the trained one did
    from ichkit.engine.trainer import FoldContext

    ctx = FoldContext(cfg=cfg, work=work, model="resnet50_unet_seg", fold=1, seed=42, task="seg", slices=slices,
                      labels=pd.DataFrame())
    loaded = ResNet50UNetSeg.load(fold_dir, ctx)
    assert loaded.model.output_shape == (None, 32, 32, 1)        # the decoder returns to the input resolution
    again = loaded.predict(sorted(heldout))
    assert again.set_index("image_id")["area_px"].to_dict() == oof.set_index("image_id")["area_px"].to_dict()
    masks, areas = read_test_masks(work, "resnet50_unet_seg", cfg)
    assert len(masks) == 4 and list(areas.columns[:4]) == ["image_id", "area_px", "mask_height", "mask_width"]


def test_unet_size_must_allow_five_downsamplings():
    from ichkit.models.seg.unet import build_resnet50_unet

    with pytest.raises(ValueError, match="multiple of 32"):
        build_resnet50_unet(48)


def test_unet_starts_at_the_blood_prior_with_a_full_resolution_input_skip():
    import math

    from keras import layers

    from ichkit.models.seg.unet import build_resnet50_unet

    model = build_resnet50_unet(32, decoder_filters=[8, 8, 8, 8, 8], bn_momentum=0.9, init_prior=0.01)
    # the output starts at the prior: bias = logit(0.01), not 0 (a 0.5 start that ~100 CPU steps unlearn)
    bias = model.get_layer("mask").get_weights()[1]
    assert bias[0] == pytest.approx(math.log(0.01 / 0.99), rel=1e-6)
    # the last decoder step concatenates the input windows (full resolution) with the upsampled map
    last = model.get_layer("dec4_concat")
    assert any(t is model.inputs[0] or t.name == model.inputs[0].name for t in last.input)
    assert last.output.shape[1:3] == (32, 32)
    # every BatchNormalization (encoder and decoder) uses the profile's momentum
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    assert bns and {round(b.momentum, 6) for b in bns} == {0.9}


def test_unet_flip_tta_maps_the_mirror_back(seg_work):
    """With `tta` the probability map is the mean of the image's and its mirror's, the mirror's flipped back:
    for a pixel-wise (flip-equivariant) network that mean is the plain map itself."""
    import keras

    from ichkit.engine.trainer import FoldContext
    from ichkit.models.seg.trainers import ResNet50UNetSeg

    cfg, slices, folds = seg_work
    work = Path(cfg["paths"]["work"])
    ctx = FoldContext(cfg=cfg, work=work, model="resnet50_unet_seg", fold=1, seed=42, task="seg", slices=slices,
                      labels=pd.DataFrame())
    trainer = ResNet50UNetSeg(None, {"size": 32, "batch": 4, "tta": False}, ctx)
    inputs = keras.Input((32, 32, 3))
    pick = keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant([1.0, 0.0, 0.0]))
    trainer.model = keras.Model(inputs, pick(inputs))   # the first window, pixel for pixel
    ids = sorted(folds["image_id"])[:6]
    plain = np.stack(trainer.probabilities(ids)).astype(int)
    assert (plain != plain[:, :, ::-1]).any()            # the images are not mirror-symmetric: the check means something
    trainer.params["tta"] = True
    tta = np.stack(trainer.probabilities(ids)).astype(int)
    assert np.abs(tta - plain).max() <= 1                # uint8 rounding of the mean
