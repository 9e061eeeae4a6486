"""The two segmenters as `FoldTrainer`s: `hu_threshold_seg` (classical) and `resnet50_unet_seg` (CNN).

Both return the seg output contract from `predict` (`results.predictions_frame`: a post-processed mask
at seg_size per image, its area and a slice score) and choose their settings without the held-out fold:

- hu_threshold_seg: the clot HU range and minimum component size of `features.blood_candidates` (the same
  function the radiomic features measure) are chosen on the training folds (train_ids + valid_ids);
- resnet50_unet_seg: trained on the masked slices of train_ids plus sampled normal slices (balanced per
  7-class label by the shared input pipeline, with the class-specific augmentation of `cnn.augment`
  applied to image and mask together); threshold, minimum component size and brain masking are chosen on
  valid_ids (the inner validation split) only.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.engine.trainer import FoldContext, FoldTrainer
from ichkit.files import write_text_atomic
from ichkit.models.cnn.trainer import load_weights, save_weights_atomic
from ichkit.models.seg import postprocess
from ichkit.models.seg.data import SegData, truth_kind
from ichkit.models.seg.results import SegError, predictions_frame
from ichkit.windows import resize


def _known_truth(ctx: FoldContext, ids: list[str]) -> tuple[list[str], list[str]]:
    """(masked ids, normal ids) among `ids`, by the trainer's own labels (ctx.labels)."""
    kind = truth_kind(ctx.slices[ctx.slices["image_id"].isin(ids)], ctx.labels)
    return [i for i in ids if kind.get(i) == "mask"], [i for i in ids if kind.get(i) == "normal"]


def _sample(masked: list[str], normal: list[str], n: int, seed: int) -> list[str]:
    """Up to n ids: two thirds masked slices, the rest normal slices, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    n_masked = min(len(masked), max(1, (2 * n) // 3))
    n_normal = min(len(normal), n - n_masked)
    pick = lambda ids, k: [ids[i] for i in sorted(rng.choice(len(ids), k, replace=False))] if k else []  # noqa: E731
    return pick(masked, n_masked) + pick(normal, n_normal)


# --------------------------------------------------------------------------------------------------
# hu_threshold_seg

# (cache root, image id, clot range, min size, feature settings) -> packed candidate mask (per process)
_CANDIDATES: dict[tuple, tuple[np.ndarray, tuple[int, int]]] = {}


class HUThresholdSeg(FoldTrainer):
    """Blood = `features.blood_candidates` on the HU map (brain mask, clot HU range, opening, minimum
    component size); the range and size are picked on the training folds from `seg.hu_threshold`."""

    code_version = "1"

    def __init__(self, spec: Any, params: dict[str, Any], ctx: FoldContext):
        self.spec, self.params, self.ctx = spec, dict(params or {}), ctx
        self.data = SegData(ctx.work, ctx.cfg)
        self.chosen: dict[str, Any] = {}

    def _settings(self, low: float, high: float):
        return dataclasses.replace(self.data.features, clot_hu=(float(low), float(high)))

    def _candidates(self, image_id: str, low: float, high: float, min_px: int) -> np.ndarray:
        """`features.blood_candidates` of one image (bool, HU-map grid), memoised per process: the folds
        of one run score the same images with the same settings again."""
        from ichkit.features import blood_candidates

        key = (str(self.data.cache.root), image_id, float(low), float(high), int(min_px), self.data.features)
        hit = _CANDIDATES.get(key)
        if hit is None:
            m = blood_candidates(self.data.hu(image_id), self.data.brain_small(image_id), self._settings(low, high),
                                 min_px=int(min_px))
            hit = _CANDIDATES[key] = (np.packbits(m.ravel()), m.shape)
        bits, shape = hit
        return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape)

    def fit(self, train_ids: list[str], valid_ids: list[str], fold_dir: Path, resume: bool) -> None:
        grid = self.ctx.cfg["seg"]["hu_threshold"]
        masked, normal = _known_truth(self.ctx, list(train_ids) + list(valid_ids))
        ids = _sample(masked, normal, int(grid["fit_images"]), self.ctx.seed)
        truths = []
        for image_id in ids:  # choose on the HU map's grid (the candidates' own resolution)
            truths.append(resize(self.data.truth(image_id), self.data.hu(image_id).shape, mask=True))
        min_sizes = sorted(int(m) for m in grid["min_px"])
        best, best_score = None, -1.0
        for low, high in itertools.product(grid["clot_low"], grid["clot_high"]):
            if low >= high:
                continue
            # one candidate mask per image at the smallest size; larger minimum sizes only drop components
            base = [self._candidates(i, low, high, min_sizes[0]) for i in ids]
            for m, score in zip(min_sizes, postprocess.mean_dice_by_min_size(base, truths, min_sizes)):
                if score > best_score + 1e-12:
                    best, best_score = {"clot_low": float(low), "clot_high": float(high), "min_px": m}, score
        if best is None:
            raise SegError("seg.hu_threshold: no clot_low < clot_high pair in the grid")
        self.chosen = {**best, "train_mean_dice": best_score, "fit_images": len(ids)}

    def predict(self, ids: list[str]) -> pd.DataFrame:
        c = self.chosen
        masks, scores = [], []
        for image_id in ids:
            m = self._candidates(image_id, c["clot_low"], c["clot_high"], c["min_px"])
            m = resize(m.astype(np.uint8), self.data.size, mask=True)
            masks.append(m)
            scores.append(float(m.any()))
        return predictions_frame(ids, masks, scores)

    def save(self, fold_dir: Path) -> None:
        write_text_atomic(Path(fold_dir) / "params.json", json.dumps(self.chosen, indent=2))

    @classmethod
    def load(cls, fold_dir: Path, ctx: FoldContext) -> "HUThresholdSeg":
        self = cls(None, {}, ctx)
        self.chosen = json.loads((Path(fold_dir) / "params.json").read_text())
        return self


# --------------------------------------------------------------------------------------------------
# resnet50_unet_seg


def profile(cfg: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    section = cfg["seg"]
    name = name or section["profile"]
    if name not in section["profiles"]:
        raise SegError(f"seg.profile {name!r} is not one of seg.profiles: {sorted(section['profiles'])}")
    return dict(section["profiles"][name])


class ResNet50UNetSeg(FoldTrainer):
    """ResNet50 U-Net, trained through the shared input pipeline; post-processing chosen on valid_ids."""

    code_version = "2"   # 2: input skip at full resolution, prior-initialised output, profile BatchNorm momentum
    WEIGHTS = "latest.weights.h5"

    def __init__(self, spec: Any, params: dict[str, Any], ctx: FoldContext):
        self.spec, self.ctx = spec, ctx
        self.params = {**profile(ctx.cfg), **(params or {})}
        self.data = SegData(ctx.work, ctx.cfg)
        self.post = postprocess.PostProcess()
        self.post_score = float("nan")
        self.model = None

    # -- pieces ----------------------------------------------------------------------------------
    def _build(self, reuse: bool = False):
        """The seeded network, compiled; with `reuse` the previous fold's compiled graphs (cnn.compiled)."""
        import keras

        from ichkit.models.cnn.compiled import reuse_compiled, set_seed, warn_slow_allocator
        from ichkit.models.seg.losses import get_loss
        from ichkit.models.seg.unet import build_resnet50_unet

        warn_slow_allocator()
        set_seed(int(self.ctx.seed) + int(self.ctx.fold))
        p = self.params
        weights = p["weights"] if p["weights"] not in (None, "none", "null") else None

        def build():
            return build_resnet50_unet(int(p["size"]), weights=weights, decoder_filters=p["decoder_filters"],
                                       bn_momentum=float(p["bn_momentum"]), init_prior=p["init_prior"])

        def compile_model(model) -> None:
            # run_eagerly skips tracing the ~500-variable train / predict graphs (~20 s on 2 cores): quicker
            # for a step or two (tests, debugging), slower per step for a real training run
            model.compile(optimizer=keras.optimizers.Adam(float(p["lr"])), loss=get_loss(p["loss"]),
                          run_eagerly=bool(p["run_eagerly"]))

        if not reuse:
            model = build()
            compile_model(model)
            return model
        key = json.dumps({"model": "resnet50_unet_seg", "params": p}, sort_keys=True, default=str)
        return reuse_compiled(key, build, compile_model)

    def _sequence(self, ids: list[str], train: bool, flip: bool = False):
        from ichkit.models.cnn.augment import ClassAugmenter
        from ichkit.models.cnn.inputs import CacheSequence

        p, inp = self.params, self.ctx.cfg["cnn"]["input"]
        kw: dict[str, Any] = dict(size=int(p["size"]), batch_size=int(p["batch"]), kind=p["source"], flip=flip,
                                  workers=int(inp["workers"]), use_multiprocessing=bool(inp["use_multiprocessing"]),
                                  max_queue_size=int(inp["max_queue_size"]))
        if train:
            y7 = self.ctx.labels.loc[ids, "y7"].to_numpy()
            dicom = self.ctx.slices.loc[self.ctx.slices["source"].isin(["dicom", "nifti"]), "image_id"]
            kw.update(masks=True, labels7=y7, samples_per_class=int(p["samples_per_class"]), shuffle=True,
                      seed=int(self.ctx.seed) + int(self.ctx.fold), hu_ids=set(dicom) & set(ids),
                      augmenter=ClassAugmenter.from_config(self.ctx.cfg, int(p["size"])) if p["augment"] else None)
        return CacheSequence(self.ctx.work, ids, **kw)

    def probabilities(self, ids: list[str]) -> list[np.ndarray]:
        """Blood probability maps at seg_size (uint8 0-255 to keep a validation set small in memory); with
        the profile's `tta`, the mean of the image's and its mirror's maps (the mirror's flipped back)."""
        import cv2

        if not ids:
            return []
        raw = self.model.predict(self._sequence(ids, train=False), verbose=0)[..., 0]
        if self.params.get("tta"):
            mirrored = self.model.predict(self._sequence(ids, train=False, flip=True), verbose=0)[..., 0]
            raw = (raw + mirrored[:, :, ::-1]) / 2.0
        size = self.data.size
        return [np.round(cv2.resize(r, (size, size), interpolation=cv2.INTER_LINEAR) * 255).astype(np.uint8)
                for r in raw]

    # -- FoldTrainer -------------------------------------------------------------------------------
    def fit(self, train_ids: list[str], valid_ids: list[str], fold_dir: Path, resume: bool) -> None:
        import keras

        fold_dir = Path(fold_dir)
        fold_dir.mkdir(parents=True, exist_ok=True)
        masked, normal = _known_truth(self.ctx, list(train_ids))
        if not masked:
            raise SegError(f"{self.ctx.model} fold {self.ctx.fold}: no masked slice among the training images")
        self.model = self._build(reuse=True)
        state_path = fold_dir / "state.json"
        start = 0
        if resume and state_path.is_file() and (fold_dir / self.WEIGHTS).is_file():
            state = json.loads(state_path.read_text())
            if state.get("params") == self.params:
                load_weights(self.model, fold_dir / self.WEIGHTS)
                start = int(state["epochs_done"])
        seq = self._sequence(masked + normal, train=True)
        epochs = int(self.params["epochs"])
        for epoch in range(start, epochs):
            seq.set_epoch(epoch)
            # one fit call per epoch (a checkpoint after each): the log is appended to after the first
            log = keras.callbacks.CSVLogger(str(fold_dir / "log.csv"), append=epoch > 0)
            self.model.fit(seq, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[log])
            save_weights_atomic(self.model, fold_dir / self.WEIGHTS)
            write_text_atomic(state_path, json.dumps({"epochs_done": epoch + 1, "params": self.params}))
        self._choose_postprocess(valid_ids)

    def _choose_postprocess(self, valid_ids: list[str]) -> None:
        v_masked, v_normal = _known_truth(self.ctx, list(valid_ids))
        cap = int(self.ctx.cfg["seg"]["postprocess"]["max_valid_normals"])
        if len(v_normal) > cap:  # every masked slice, and a seeded sample of the normal ones
            rng = np.random.default_rng(int(self.ctx.seed) + int(self.ctx.fold))
            v_normal = [v_normal[i] for i in sorted(rng.choice(len(v_normal), cap, replace=False))]
        ids = v_masked + v_normal
        probs = [p.astype(np.float32) / 255.0 for p in self.probabilities(ids)]
        truths = [self.data.truth(i) for i in ids]
        brains = [self.data.brain(i) for i in ids]
        self.post, self.post_score = postprocess.choose(probs, truths, brains, postprocess.grid(self.ctx.cfg))
        self.valid_ids = ids

    def predict(self, ids: list[str]) -> pd.DataFrame:
        masks, scores = [], []
        for image_id, prob in zip(ids, self.probabilities(list(ids))):
            p = prob.astype(np.float32) / 255.0
            m = self.post.apply(p, self.data.brain(image_id) if self.post.brain_mask else None)
            masks.append(m)
            scores.append(float(p[m > 0].max()) if m.any() else 0.0)
        return predictions_frame(list(ids), masks, scores)

    def save(self, fold_dir: Path) -> None:
        fold_dir = Path(fold_dir)
        save_weights_atomic(self.model, fold_dir / self.WEIGHTS)
        write_text_atomic(fold_dir / "postprocess.json", json.dumps(
            {**self.post.to_dict(), "valid_mean_dice": self.post_score, "n_valid": len(getattr(self, "valid_ids", [])),
             "params": self.params}, indent=2))

    @classmethod
    def load(cls, fold_dir: Path, ctx: FoldContext) -> "ResNet50UNetSeg":
        fold_dir = Path(fold_dir)
        saved = json.loads((fold_dir / "postprocess.json").read_text())
        self = cls(None, saved["params"], ctx)
        self.model = self._build()
        load_weights(self.model, fold_dir / cls.WEIGHTS)
        self.post = postprocess.PostProcess(saved["threshold"], saved["min_size"], saved["brain_mask"])
        self.post_score = saved["valid_mean_dice"]
        return self
