"""The CNN family's FoldTrainer: Keras fit with a checkpoint every epoch, resume, early stopping, two phases.

Per fold, in ``fold_dir`` (``<work>/models/<model>/fold<k>/``):

- ``latest.weights.h5`` every epoch, ``best.weights.h5`` at the best inner-validation loss so far;
- ``state.json``: epochs done, best loss/epoch, epochs without improvement, finished phases (resume);
- ``backup/<phase>/``: Keras `BackupAndRestore` (weights + optimizer + epoch) so a killed fit resumes at
  the start of the epoch it was in;
- ``log.csv``: Keras `CSVLogger`, one row per epoch (appended across resumes);
- ``model.weights.h5`` + ``settings.json``: what `load` rebuilds the fitted model from (`save`, which then
  removes the fit's checkpoints and backup: the best epoch's weights are in model.weights.h5).

Phases: with pretrained weights (imagenet or a PATH) phase 1 trains ``freeze_epochs`` with the encoder
frozen and its BatchNorm in inference mode; phase 2 unfreezes it and recompiles at ``lr *
finetune_lr_factor``. With ``weights: none`` a frozen random encoder would learn nothing, so only the
second phase runs, at ``lr``. Loss: categorical cross-entropy on ``class7`` + BCE on ``rsna`` weighted
2 for ``any`` (the competition weights); for the U-Net classifiers with ``mask_weight`` > 0, plus that
weight times ``mask_loss`` (a `ichkit.models.seg.losses` name) of the decoder's ``mask`` output against
the ground-truth masks (normal slices: empty; positive slices without a mask: left out). Early stopping
and best checkpoint on the inner validation split. With ``weight_ema`` (a momentum) Adam keeps a moving
average of the weights (Keras' ``use_ema``) and `keras.callbacks.SwapEMAWeights` puts it in the model for
validation and the checkpoints, so the epoch chosen and the weights predicted with are the average; training
steps on from the raw weights.

The six RSNA probabilities follow ``train.rsna_head`` as in every family (`ichkit.heads`): ``binary`` is
the network's own sigmoid head; ``class7`` maps its softmax; ``prior_corrected`` (the default) maps the
softmax after undoing the balanced epochs' uniform class prior with the training folds' prior (balanced
epochs make a network call most slices positive, which the RSNA log loss punishes; the 7 class
probabilities stay as trained, for the balanced 7-class metrics).

On GPUs, mixed precision (``mixed_float16``) and `tf.distribute.MirroredStrategy` switch on by
themselves; the global batch is ``batch_size`` per replica times the replicas.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.engine.trainer import FoldContext, FoldTrainer
from ichkit.files import write_text_atomic
from ichkit.labels import CLASSES7, RSNA_LABELS, SUBTYPES
from ichkit.models.cnn import CODE_VERSION, CNNError

SETTINGS_FILE = "settings.json"
MODEL_FILE = "model.weights.h5"
STATE_FILE = "state.json"
RSNA_LOSS_WEIGHTS = tuple(2.0 if label == "any" else 1.0 for label in RSNA_LABELS)
# settings a fitted model needs to be rebuilt and fed identically
ARCH_KEYS = ("size", "context", "decoder_filters", "decoder_dropout", "baseline_width", "tta", "mask_weight")


def resolve_settings(cfg: dict[str, Any], params: dict[str, Any], model: str) -> dict[str, Any]:
    """cnn.input < cnn.profiles[cnn.profile] < its ``models.<model>`` entry < model params that are not None.

    ``weights`` comes from cnn.weights (``ichkit train --weights``), the profile from cnn.profile
    (``--profile``).
    """
    section = cfg["cnn"]
    profile = section.get("profile", "quick")
    profiles = section.get("profiles", {})
    if profile not in profiles:
        raise CNNError(f"cnn.profile {profile!r}: unknown; defined: {sorted(profiles)}")
    out = {"profile": profile, "weights": section.get("weights", "none")}
    out.update(section.get("input", {}))
    chosen = dict(profiles[profile])
    per_model = chosen.pop("models", None) or {}
    out.update(chosen)
    out.update(per_model.get(model, None) or {})
    out.update({k: v for k, v in params.items() if v is not None})
    return out


def device_setup() -> tuple[Any, int]:
    """(distribution strategy, replicas): mixed precision + MirroredStrategy where GPUs exist."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        from ichkit.models.cnn.compiled import warn_slow_allocator

        warn_slow_allocator()
        return tf.distribute.get_strategy(), 1
    keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = tf.distribute.MirroredStrategy()
    return strategy, strategy.num_replicas_in_sync


def rsna_weighted_bce(y_true, y_pred):
    """Mean over the 6 RSNA labels of binary cross-entropy, `any` counted twice (the competition weights)."""
    from keras import ops

    w = ops.convert_to_tensor(RSNA_LOSS_WEIGHTS, dtype="float32")
    bce = ops.binary_crossentropy(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"))
    return ops.sum(bce * w, axis=-1) / ops.sum(w)


def _epoch_callback_class():
    import keras

    class FoldCheckpoint(keras.callbacks.Callback):
        """latest/best weights, state.json, early stopping that survives a resume; keeps epochs in sync."""

        def __init__(self, fold_dir: Path, state: dict[str, Any], patience: int, sequences: list[Any]):
            super().__init__()
            self.fold_dir, self.state, self.patience, self.sequences = fold_dir, state, patience, sequences

        def on_epoch_begin(self, epoch, logs=None):
            for seq in self.sequences:  # the epoch's balanced draw and augmentation seeds, also after a resume
                seq.set_epoch(epoch)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            loss = float(logs.get("val_loss", logs.get("loss", np.inf)))
            save_weights_atomic(self.model, self.fold_dir / "latest.weights.h5")
            if loss < self.state["best_loss"]:
                self.state.update(best_loss=loss, best_epoch=epoch, wait=0)
                save_weights_atomic(self.model, self.fold_dir / "best.weights.h5")
            else:
                self.state["wait"] += 1
            self.state["epochs_done"] = epoch + 1
            write_state(self.fold_dir, self.state)
            if self.patience and self.state["wait"] >= self.patience:
                self.model.stop_training = True

    return FoldCheckpoint


def _optimizer_of(model: Any) -> list[Any]:
    optimizer = getattr(model, "optimizer", None)
    return [optimizer] if optimizer is not None else []


def save_weights_atomic(model: Any, path: Path) -> None:
    """The model's weights without its optimizer (`model.save_weights` of a compiled ResNet50 U-Net also
    stores Adam's two slots: 286 instead of 95 MB, ~0.7 s more per checkpoint on 2 cores; a resumed fit
    gets the optimizer from Keras' BackupAndRestore). Keras wants the name to end in .weights.h5: write
    `.tmp-<name>` beside it, then rename."""
    import os

    from keras.src.saving import saving_lib  # save_weights with objects_to_skip (Keras >= 3.6)

    tmp = path.with_name(f".tmp-{path.name}")
    try:
        saving_lib.save_weights_only(model, str(tmp), objects_to_skip=_optimizer_of(model))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_weights(model: Any, path: Path) -> None:
    """Weights written by `save_weights_atomic` into a model, compiled or not (its optimizer untouched)."""
    from keras.src.saving import saving_lib

    saving_lib.load_weights_only(model, str(path), objects_to_skip=_optimizer_of(model))


def read_state(fold_dir: Path) -> dict[str, Any] | None:
    path = fold_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_state(fold_dir: Path, state: dict[str, Any]) -> None:
    write_text_atomic(fold_dir / STATE_FILE, json.dumps(state, indent=2))


class CNNTrainer(FoldTrainer):
    """One CNN on one fold. `params` are the model's (None = from the profile); see the module docstring."""

    code_version = CODE_VERSION

    def __init__(self, spec: Any, params: dict[str, Any], ctx: FoldContext) -> None:
        self.spec, self.params, self.ctx = spec, dict(params), ctx
        self.settings = resolve_settings(ctx.cfg, self.params, spec.name)
        self.model = None
        self.head: dict[str, Any] = {}         # train.rsna_head and the training folds' class prior / multi share
        self.extra_callbacks: list[Any] = []   # tests inject interruptions here

    # -- data ---------------------------------------------------------------------------------------------
    def _hu_ids(self) -> list[str]:
        slices = self.ctx.slices
        if "source" not in slices.columns:
            return []
        return slices.loc[slices["source"].astype("string") != "image", "image_id"].astype(str).tolist()

    def _sequence(self, ids: list[str], train: bool, batch_size: int, flip: bool = False):
        from ichkit.models.cnn.augment import ClassAugmenter
        from ichkit.models.cnn.inputs import CacheSequence

        s = self.settings
        kwargs: dict[str, Any] = dict(size=int(s["size"]), batch_size=batch_size, context=s["context"],
                                      slices=self.ctx.slices, max_gap=float(s["max_gap"]), seed=self.ctx.seed,
                                      hu_ids=self._hu_ids(), flip=flip, workers=int(s["workers"]),
                                      use_multiprocessing=bool(s["use_multiprocessing"]),
                                      max_queue_size=int(s["max_queue_size"]))
        if train is None:  # prediction: images only
            return CacheSequence(self.ctx.work, ids, **kwargs)
        labels = self.ctx.labels.loc[ids]
        y7 = labels["y7"].to_numpy(dtype=np.int64)
        targets = {"class7": np.eye(len(CLASSES7), dtype=np.float32)[y7],
                   "rsna": labels[list(RSNA_LABELS)].to_numpy(dtype=np.float32)}
        if train:
            kwargs.update(augmenter=ClassAugmenter.from_config(self.ctx.cfg, int(s["size"])), shuffle=True,
                          samples_per_class=s.get("samples_per_class"))
        if self.mask_head:
            from ichkit.models.seg.data import truth_kind

            kind = truth_kind(self.ctx.slices[self.ctx.slices["image_id"].isin(ids)], self.ctx.labels)
            kwargs.update(masks=True, unknown_masks=kind.index[kind == "unknown"].tolist())
        return CacheSequence(self.ctx.work, ids, labels7=y7, targets=targets, **kwargs)

    def _valid_ids(self, valid_ids: list[str]) -> list[str]:
        """The inner-validation images scored each epoch: at most ``valid_max``, class-balanced when the
        training epochs are (``samples_per_class``), so the validation loss that picks the best epoch and
        stops early is measured under the same class prior the model is trained on (a normal-heavy
        validation set would always prefer the untrained epoch-0 model)."""
        cap = self.settings.get("valid_max")
        rng = np.random.default_rng(self.ctx.seed)
        ids = np.asarray(valid_ids, dtype=object)
        if self.settings.get("samples_per_class"):
            y7 = self.ctx.labels.loc[list(valid_ids), "y7"].to_numpy()
            classes = np.unique(y7)
            per_class = max(1, int(cap) // len(classes)) if cap else int(np.bincount(y7).max())
            picks = [rng.choice(ids[y7 == c], min(per_class, int((y7 == c).sum())), replace=False) for c in classes]
            return sorted(np.concatenate(picks).tolist())
        if not cap or len(ids) <= cap:
            return list(valid_ids)
        return sorted(rng.choice(ids, int(cap), replace=False).tolist())

    # -- model --------------------------------------------------------------------------------------------
    def _channels(self) -> int:
        from ichkit.models.cnn.inputs import cache_windows, context_channels

        return context_channels(self.settings["context"], len(cache_windows(self.ctx.work, self.ctx.cfg)))

    def _build(self, weights: str | None):
        from ichkit.models.cnn import nets

        s = self.settings
        pretrained = weights not in (None, "none", "None", "")
        return nets.build(self.spec.name, int(s["size"]), self._channels(), weights, frozen_bn=pretrained,
                          decoder_filters=tuple(s["decoder_filters"]), decoder_dropout=float(s["decoder_dropout"]),
                          baseline_width=int(s["baseline_width"]), bn_momentum=float(s["bn_momentum"]),
                          mask_head=self.mask_head)

    @property
    def mask_head(self) -> bool:
        """The model has the decoder's ``mask`` output, trained on the masks (U-Net classifiers, mask_weight > 0)."""
        from ichkit.models.cnn.nets import UNET_CLASSIFIERS

        return self.spec.name in UNET_CLASSIFIERS and float(self.settings.get("mask_weight") or 0) > 0

    def _compile(self, lr: float, model: Any = None) -> None:
        import keras

        losses = {"class7": keras.losses.CategoricalCrossentropy(), "rsna": rsna_weighted_bce}
        weights = {"class7": 1.0, "rsna": 1.0}
        if self.mask_head:
            from ichkit.models.seg.losses import get_loss, ignoring_unknown

            losses["mask"] = ignoring_unknown(get_loss(str(self.settings["mask_loss"])))
            weights["mask"] = float(self.settings["mask_weight"])
        ema = self.settings.get("weight_ema")
        optimizer = (keras.optimizers.Adam(lr, use_ema=True, ema_momentum=float(ema)) if ema
                     else keras.optimizers.Adam(lr))
        (model or self.model).compile(optimizer=optimizer, loss=losses, loss_weights=weights,
                                      metrics={"class7": [keras.metrics.CategoricalAccuracy(name="acc")]})

    def _set_encoder_trainable(self, trainable: bool) -> None:
        from ichkit.models.cnn.nets import ENCODER_NAME

        names = {layer.name for layer in self.model.layers}
        if ENCODER_NAME not in names:
            return
        encoder = self.model.get_layer(ENCODER_NAME)
        encoder.trainable = trainable
        if trainable and self.pretrained:
            import keras

            # a pretrained encoder's BatchNorm stays in inference mode when unfrozen (a non-trainable
            # BatchNormalization runs in inference mode in Keras 3): small batches would wreck its statistics
            for layer in encoder.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False

    @property
    def pretrained(self) -> bool:
        from ichkit.models.cnn.nets import UNET_CLASSIFIERS

        return self.settings["weights"] not in (None, "none", "None", "") and self.spec.name in UNET_CLASSIFIERS

    def phases(self) -> list[tuple[str, int, int, float, bool]]:
        """(name, first epoch, end epoch, learning rate, encoder trainable) of each phase to run."""
        s = self.settings
        pretrained = self.pretrained
        lr, epochs, frozen = float(s["lr"]), int(s["epochs"]), int(s.get("freeze_epochs") or 0)
        if pretrained and frozen > 0:
            return [("frozen", 0, frozen, lr, False),
                    ("finetune", frozen, frozen + epochs, lr * float(s["finetune_lr_factor"]), True)]
        return [("train", 0, epochs, lr, True)]

    # -- FoldTrainer --------------------------------------------------------------------------------------
    def fit(self, train_ids: list[str], valid_ids: list[str], fold_dir: Path, resume: bool) -> None:
        import keras

        from ichkit.heads import check_head, class_prior, multi_share_from_labels

        fold_dir = Path(fold_dir)
        fold_dir.mkdir(parents=True, exist_ok=True)
        seen = self.ctx.labels.loc[list(train_ids)]
        self.head = {"rsna_head": check_head(str(self.ctx.options.get("rsna_head", "binary"))),
                     "balanced": bool(self.settings.get("samples_per_class")),
                     "class_prior": class_prior(seen["y7"].to_numpy()).tolist(),
                     "multi_share": multi_share_from_labels(seen[list(SUBTYPES)]).tolist()}
        state = read_state(fold_dir) if resume else None
        if state is None:
            for stale in ("backup", "log.csv", STATE_FILE, "latest.weights.h5", "best.weights.h5"):
                p = fold_dir / stale
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            state = {"epochs_done": 0, "best_loss": float("inf"), "best_epoch": -1, "wait": 0, "phases_done": []}
        s = self.settings
        from ichkit.models.cnn.compiled import reuse_compiled, set_seed

        set_seed(int(self.ctx.seed))   # keras.utils.set_random_seed, minus what would retrace a reused model
        strategy, replicas = device_setup()
        batch = int(s["batch_size"]) * replicas
        train_seq = self._sequence(list(train_ids), True, batch)
        valid_seq = self._sequence(self._valid_ids(valid_ids), False, batch)
        phases = self.phases()
        single_phase = len(phases) == 1
        with strategy.scope():
            if single_phase:  # later folds reuse the first fold's traced graphs (see compiled.py)
                lr = phases[0][3]
                key = json.dumps({"model": self.spec.name, "settings": s, "channels": self._channels(), "lr": lr,
                                  "replicas": replicas}, sort_keys=True, default=str)
                self.model = reuse_compiled(key, lambda: self._build(s["weights"]), lambda m: self._compile(lr, m))
            else:
                self.model = self._build(s["weights"])
        checkpoint = _epoch_callback_class()(fold_dir, state, int(s.get("patience") or 0), [train_seq])
        for name, start, end, lr, trainable in phases:
            if name in state["phases_done"]:
                continue
            if state["phases_done"] and not (fold_dir / "backup" / name).exists():
                load_weights(self.model, fold_dir / "latest.weights.h5")  # the previous phase's last epoch
            if not single_phase:
                with strategy.scope():
                    self._set_encoder_trainable(trainable)
                    self._compile(lr)   # trainable flags are fixed at compile: recompile per phase
            if name == "finetune" and state["epochs_done"] == start:
                state["wait"] = 0   # early stopping counts afresh once the encoder is unfrozen
            # order: the backup saves the raw weights (and the EMA in the optimizer) before SwapEMAWeights
            # puts the EMA into the model for the checkpoint; validation always scores the EMA
            ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if s.get("weight_ema") else []
            callbacks = [keras.callbacks.BackupAndRestore(str(fold_dir / "backup" / name)), *ema, checkpoint,
                         keras.callbacks.CSVLogger(str(fold_dir / "log.csv"), append=True),
                         *self.extra_callbacks]
            stopped = bool(s.get("patience")) and state["wait"] >= int(s["patience"])
            if state["epochs_done"] < end and not stopped:
                self.model.fit(train_seq, validation_data=valid_seq, initial_epoch=max(start, 0), epochs=end,
                               callbacks=callbacks, verbose=1 if self.ctx.progress else 0)
            state["phases_done"].append(name)
            write_state(fold_dir, state)
        best = fold_dir / "best.weights.h5"
        if best.is_file():
            load_weights(self.model, best)

    def predict(self, ids: list[str]) -> pd.DataFrame:
        from ichkit.oof import predictions_frame

        if self.model is None:
            raise RuntimeError("predict before fit/load")
        batch = int(self.settings["batch_size"]) * 2
        outs = [self.model.predict(self._sequence(list(ids), None, batch), verbose=0)]
        if self.settings.get("tta"):
            outs.append(self.model.predict(self._sequence(list(ids), None, batch, flip=True), verbose=0))
        p7 = np.mean([o["class7"] for o in outs], axis=0).astype(np.float64)
        p6 = np.mean([o["rsna"] for o in outs], axis=0).astype(np.float64)
        p7 /= p7.sum(axis=1, keepdims=True)
        return predictions_frame(list(ids), self.ctx.fold, p7, self.rsna(p7, p6))

    def rsna(self, p7: np.ndarray, p6_sigmoid: np.ndarray) -> np.ndarray:
        """The 6 RSNA probabilities by ``train.rsna_head`` (see the module docstring)."""
        from ichkit.heads import prior_correct, rsna_from_class7

        head = self.head.get("rsna_head", "binary")
        if head == "binary":
            return p6_sigmoid
        base = p7
        if head == "prior_corrected" and self.head["balanced"]:
            base = prior_correct(p7, np.asarray(self.head["class_prior"]))
        return rsna_from_class7(base, np.asarray(self.head["multi_share"]))

    def save(self, fold_dir: Path) -> None:
        fold_dir = Path(fold_dir)
        save_weights_atomic(self.model, fold_dir / MODEL_FILE)
        # the fit is finished: its checkpoints (~3 x 100-300 MB for the ResNet/Xception models) are no
        # longer needed for resume, and model.weights.h5 holds the best epoch's weights
        for done in ("latest.weights.h5", "best.weights.h5"):
            (fold_dir / done).unlink(missing_ok=True)
        shutil.rmtree(fold_dir / "backup", ignore_errors=True)
        keep = {k: self.settings[k] for k in ARCH_KEYS if k in self.settings}
        write_text_atomic(fold_dir / SETTINGS_FILE, json.dumps({"model": self.spec.name, **keep, "head": self.head},
                                                               indent=2))

    @classmethod
    def load(cls, fold_dir: Path, ctx: FoldContext) -> "CNNTrainer":
        from ichkit.models import get_model_spec

        fold_dir = Path(fold_dir)
        path = fold_dir / SETTINGS_FILE
        if not path.is_file() or not (fold_dir / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{fold_dir}: no fitted CNN ({SETTINGS_FILE} and {MODEL_FILE} expected)")
        saved = json.loads(path.read_text())
        spec = get_model_spec(saved.pop("model"))
        head = saved.pop("head", {})    # absent in folds saved before code_version 3: the sigmoid head
        trainer = cls(spec, {**{k: None for k in spec.defaults}, **saved}, ctx)
        trainer.head = head
        trainer.model = trainer._build(None)
        load_weights(trainer.model, fold_dir / MODEL_FILE)
        return trainer
