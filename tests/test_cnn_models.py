"""CNN architectures and the CNN FoldTrainer on a tiny synthetic work folder (weights=None, 32-80 px).

Sized for CI on 2 cores: the smallest legal inputs (ResNet50 32 px, Xception 71 px), batches of 4
(whole batches: a partial one retraces Keras' step functions), a 4-filter decoder; the two-phase test swaps the ImageNet ResNet50 for a tiny
stand-in with the same layer names, so the trainer's freeze / fine-tune logic runs end to end in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from ichkit.engine.trainer import FoldContext  # noqa: E402
from ichkit.labels import CLASS7_INDEX, RSNA_LABELS  # noqa: E402
from ichkit.models import get_model_spec  # noqa: E402
from ichkit.models.cnn import nets  # noqa: E402
from ichkit.models.cnn.trainer import CNNTrainer, load_weights, read_state  # noqa: E402
from ichkit.oof import OOF_COLUMNS  # noqa: E402
from synthetic_ct import config_for, make_work  # noqa: E402

SMALL_DECODER = (4, 4, 4, 4)


@pytest.mark.parametrize("name,sizes", [("resnet50_unet_cls", (32, 64)), ("xception_unet_cls", (71, 80))])
def test_unet_classifiers_use_the_named_skips_and_give_both_heads(name, sizes):
    encoder = {"resnet50_unet_cls": "resnet50", "xception_unet_cls": "xception"}[name]
    skips, bridge = nets.SKIP_LAYERS[encoder]
    for size in sizes:
        model = nets.build(name, size, decoder_filters=SMALL_DECODER)
        enc = model.get_layer(nets.ENCODER_NAME)
        expected = [enc.get_layer(n).output.shape for n in (*skips, bridge)]
        assert [tuple(o.shape) for o in enc.outputs] == [tuple(s) for s in expected]
        if encoder == "resnet50":
            assert [o.shape[1] for o in enc.outputs] == [size // 2, size // 4, size // 8, size // 16, size // 32]
        # each decoder stage is concatenated with its skip at the skip's own (possibly odd) size
        for i, skip_shape in enumerate(reversed(expected[:-1]), 1):
            assert tuple(model.get_layer(f"dec{i}_concat").output.shape[1:3]) == tuple(skip_shape[1:3])
        out = model(np.zeros((2, size, size, 3), np.float32))
        assert tuple(out["class7"].shape) == (2, 7) and tuple(out["rsna"].shape) == (2, 6)
        np.testing.assert_allclose(np.asarray(out["class7"]).sum(axis=1), 1.0, rtol=1e-5)
        assert model.get_layer("head_dense256").units == 256 and model.get_layer("head_dense128").units == 128
        assert model.get_layer("head_drop1").rate == 0.4 and model.get_layer("head_drop2").rate == 0.3
        # the deep-supervision mask output: the decoder's last map at the input size, starting at the blood prior
        masked = nets.build(name, size, decoder_filters=SMALL_DECODER, mask_head=True)
        m = masked(np.zeros((2, size, size, 3), np.float32))["mask"]
        assert tuple(m.shape) == (2, size, size, 1)
        assert masked.get_layer("mask_half").get_weights()[1][0] == pytest.approx(np.log(0.01 / 0.99), rel=1e-6)
        assert masked.get_layer("mask_half").input.shape[1:3] == masked.get_layer(f"dec{len(SMALL_DECODER)}_drop").output.shape[1:3]


def test_baseline_and_nine_channel_stem():
    for size in (32, 48):
        model = nets.build("cnn_baseline", size)
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        assert len(convs) + len(dense) - 2 == 9          # 7 conv + 2 dense (+ the two output layers)
        assert tuple(model.output["class7"].shape) == (None, 7)
    stemmed = nets.build("resnet50_unet_cls", 32, channels=9, decoder_filters=SMALL_DECODER)
    assert stemmed.get_layer("stem_1x1").kernel.shape == (1, 1, 9, 3)
    with pytest.raises(ValueError, match="at least 71"):
        nets.build("xception_unet_cls", 64)
    with pytest.raises(nets.WeightsError, match="no such file"):
        nets.build("resnet50_unet_cls", 32, weights="/nonexistent/w.weights.h5")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    work = tmp_path_factory.mktemp("cnnwork")
    slices, folds_path = make_work(work, patients_per_class=2, slices_per_patient=2, test_patients=1, k=2)
    cfg = config_for(work, folds_path)
    train = slices[slices["split"] == "train"].set_index("image_id")
    labels = train[list(RSNA_LABELS)].astype(int)
    labels["y7"] = train["label7"].map(CLASS7_INDEX)
    return work, cfg, slices, labels


def _trainer(tiny, name: str, **profile) -> CNNTrainer:
    work, cfg, slices, labels = tiny
    cfg = {**cfg, "cnn": {**cfg["cnn"], "profile": "quick",
                          "profiles": {"quick": {**cfg["cnn"]["profiles"]["quick"], "models": {},
                                                 "size": 32, "batch_size": 4, "valid_max": None, "patience": 0,
                                                 "samples_per_class": None, "decoder_filters": list(SMALL_DECODER),
                                                 **profile}}}}
    ctx = FoldContext(cfg=cfg, work=work, model=name, fold=0, seed=1, task="7class", slices=slices, labels=labels,
                      progress=False)
    spec = get_model_spec(name)
    return spec.make_trainer(spec.params(), ctx) if hasattr(spec, "make_trainer") else CNNTrainer(spec, spec.params(), ctx)


def test_training_reduces_the_loss_and_predicts_the_contract(tiny, tmp_path):
    _, _, slices, labels = tiny
    ids = labels.index.tolist()
    trainer = _trainer(tiny, "cnn_baseline", epochs=5, lr=3e-3)
    trainer.fit(ids, ids[::7], tmp_path, resume=False)
    log = pd.read_csv(tmp_path / "log.csv")
    assert log["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert log["class7_loss"].iloc[-1] < log["class7_loss"].iloc[0] - 0.05
    test_ids = slices.loc[slices["split"] == "test", "image_id"].tolist()
    frame = trainer.predict(test_ids)
    assert list(frame.columns) == list(OOF_COLUMNS) and frame["image_id"].tolist() == test_ids
    trainer.save(tmp_path)
    again = CNNTrainer.load(tmp_path, trainer.ctx).predict(test_ids)
    np.testing.assert_allclose(again.iloc[:, 2:].to_numpy(float), frame.iloc[:, 2:].to_numpy(float), atol=1e-6)


def _tcmalloc() -> str | None:
    import subprocess

    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    return next((line.split()[-1] for line in out.splitlines() if "libtcmalloc_minimal.so.4 " in line), None)


def test_allocator_names_the_malloc_the_process_runs_on():
    """A real process with tcmalloc preloaded (what run.sh does) reads as tcmalloc; without, as glibc
    (pyarrow's private jemalloc, loaded by pandas' parquet, does not count)."""
    import os
    import subprocess
    import sys

    lib = _tcmalloc()
    if lib is None:
        pytest.skip("libtcmalloc-minimal4 is not installed (bash run.sh test installs it)")
    code = "import pyarrow.parquet; from ichkit.models.cnn.compiled import allocator; print(allocator())"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    preloaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={**env, "LD_PRELOAD": lib})
    assert (plain.stdout.strip(), preloaded.stdout.strip()) == ("glibc", "tcmalloc")


def test_training_on_glibc_malloc_warns_once_and_says_how(monkeypatch):
    from ichkit.models.cnn import compiled

    monkeypatch.setattr(compiled, "_allocator_checked", False)
    monkeypatch.setattr(compiled, "allocator", lambda: "glibc")
    with pytest.warns(UserWarning, match="LD_PRELOAD.*libtcmalloc_minimal"):
        compiled.warn_slow_allocator()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled.warn_slow_allocator()          # once per process
    monkeypatch.setattr(compiled, "_allocator_checked", False)
    monkeypatch.setattr(compiled, "allocator", lambda: "tcmalloc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled.warn_slow_allocator()


def test_later_folds_reuse_the_compiled_model_and_train_as_a_fresh_build(tiny, tmp_path):
    """The second fold reuses the first fold's traced graphs (no retrace: the train function is the same
    object) and ends with the weights a fresh build + compile of that fold gives (same seeded init,
    dropout seeds and a zeroed Adam)."""
    import dataclasses

    from ichkit.models.cnn.compiled import forget_compiled

    ids = tiny[3].index.tolist()

    def fold(seed: int, folder: str):
        trainer = _trainer(tiny, "cnn_baseline", epochs=2, lr=3e-3)
        trainer.ctx = dataclasses.replace(trainer.ctx, seed=seed)
        trainer.fit(ids, ids[::7], tmp_path / folder, resume=False)
        return trainer.model, [np.array(v.numpy()) for v in trainer.model.weights]

    forget_compiled()
    first, _ = fold(1, "a")
    traced = first.train_function
    second, reused = fold(2, "b")
    assert second is first and second.train_function is traced
    forget_compiled()
    fresh_model, fresh = fold(2, "c")
    assert fresh_model is not first
    assert int(np.asarray(fresh_model.optimizer.iterations)) == int(np.asarray(second.optimizer.iterations))
    for a, b in zip(reused, fresh):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    forget_compiled()


class _Interrupt(Exception):
    pass


def test_a_fold_killed_mid_training_resumes_from_its_last_epoch(tiny, tmp_path):
    ids = tiny[3].index.tolist()

    class KillAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise _Interrupt

    class Record(keras.callbacks.Callback):
        begun: list[int] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.begun.append(epoch)

    first = _trainer(tiny, "cnn_baseline", epochs=4, bn_momentum=0.9)
    first.extra_callbacks = [KillAfter()]
    with pytest.raises(_Interrupt):
        first.fit(ids, ids[::7], tmp_path, resume=False)
    assert read_state(tmp_path)["epochs_done"] == 2
    second = _trainer(tiny, "cnn_baseline", epochs=4)
    record = Record()
    second.extra_callbacks = [record]
    second.fit(ids, ids[::7], tmp_path, resume=True)
    assert record.begun == [2, 3]                             # not epochs 0 and 1 again
    assert pd.read_csv(tmp_path / "log.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert read_state(tmp_path)["epochs_done"] == 4


def _tiny_resnet50(include_top=False, weights=None, input_shape=None):
    """A stand-in for keras.applications.ResNet50 (same call, same skip/bridge layer names, strides 2..32)."""
    assert not include_top and weights is None
    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(4, 3, strides=2, padding="same", name="conv1_conv")(inputs)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    for stage, name in enumerate(["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"], 2):
        x = layers.Conv2D(4, 3, strides=2, padding="same", name=f"conv{stage}_conv")(x)
        x = layers.BatchNormalization(name=f"conv{stage}_bn")(x)
        x = layers.Activation("relu", name=name)(x)
    return keras.Model(inputs, x, name="resnet50")


def _encoder_state(model) -> dict[str, np.ndarray]:
    """A copy of every encoder weight (kernels, BatchNorm scales and moving statistics) by path."""
    encoder = model.get_layer(nets.ENCODER_NAME)
    return {w.path: np.array(w.numpy()) for w in encoder.weights}


def test_pretrained_encoder_is_frozen_first_then_fine_tuned(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(keras.applications, "ResNet50", _tiny_resnet50)
    weights = tmp_path / "encoder.weights.h5"
    source = nets.build("resnet50_unet_cls", 32, decoder_filters=SMALL_DECODER).get_layer(nets.ENCODER_NAME)
    rng = np.random.default_rng(7)
    for w in source.weights:        # not what a fresh build draws: the load below must really happen
        low, high = (0.5, 1.5) if w.path.endswith(("gamma", "variance")) else (-0.1, 0.1)
        w.assign(w.numpy() * 0.5 + rng.uniform(low, high, w.shape).astype(np.float32))
    source.save_weights(weights)
    saved = {w.path: np.array(w.numpy()) for w in source.weights}
    trainer = _trainer(tiny, "resnet50_unet_cls", epochs=1, freeze_epochs=1, lr=1e-2)
    trainer.settings["weights"] = str(weights)
    phases = trainer.phases()
    assert [(p[0], p[1], p[2], p[4]) for p in phases] == [("frozen", 0, 1, False), ("finetune", 1, 2, True)]
    assert phases[1][3] == pytest.approx(1e-2 * trainer.settings["finetune_lr_factor"])

    class Record(keras.callbacks.Callback):
        at_start: list[dict] = []
        after_epoch: list[dict] = []

        def on_train_begin(self, logs=None):           # once per phase: fit recompiles between them
            self.at_start.append(_encoder_state(self.model))

        def on_epoch_end(self, epoch, logs=None):
            self.after_epoch.append(_encoder_state(self.model))

    trainer.extra_callbacks = [Record()]
    ids = tiny[3].index.tolist()[::3]       # 10 images, 7 classes: whole batches of 4 train and validate
    trainer.fit(ids[:8], ids[-4:], tmp_path / "fold", resume=False)
    start, (frozen, tuned) = Record.at_start[0], Record.after_epoch
    assert len(Record.at_start) == 2 and len(Record.after_epoch) == 2
    assert start.keys() == saved.keys()
    for path, value in saved.items():
        np.testing.assert_array_equal(start[path], value, err_msg=path)      # the file's weights were loaded
        np.testing.assert_array_equal(frozen[path], value, err_msg=path)     # phase 1: encoder frozen
    kernels = [p for p in saved if p.endswith("kernel")]
    moving = [p for p in saved if "moving" in p]
    assert len(kernels) == 5 and len(moving) == 10
    unchanged = [p for p in kernels if np.array_equal(tuned[p], saved[p])]
    assert not unchanged                                                     # phase 2: unfrozen by the recompile
    for p in moving:                                                         # BN in inference mode throughout
        np.testing.assert_array_equal(tuned[p], saved[p], err_msg=p)


def test_weight_ema_is_what_validation_and_the_checkpoints_hold(tiny, tmp_path):
    ids = tiny[3].index.tolist()
    seen: dict[str, list] = {"end": [], "raw": [], "begin": []}

    class Look(keras.callbacks.Callback):   # runs after the trainer's own callbacks
        def on_epoch_end(self, epoch, logs=None):
            seen["end"].append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_weights])
            seen["raw"].append([keras.ops.convert_to_numpy(v)
                                for v in self.model.optimizer._model_variables_moving_average])

        def on_epoch_begin(self, epoch, logs=None):
            seen["begin"].append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_weights])

    trainer = _trainer(tiny, "cnn_baseline", epochs=3, lr=3e-3, weight_ema=0.5)
    trainer.extra_callbacks = [Look()]
    trainer.fit(ids, ids[::7], tmp_path, resume=False)
    assert trainer.model.optimizer.use_ema
    saved = trainer._build(None)
    load_weights(saved, tmp_path / "latest.weights.h5")
    # at each epoch's end the model holds the average (what validation scored and the checkpoint saved)
    for got, want in zip(saved.trainable_weights, seen["end"][-1]):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    assert any(not np.allclose(a, b) for a, b in zip(seen["end"][0], seen["raw"][0]))
    # ... and the next epoch trains on from the raw weights, not from the average
    for got, want in zip(seen["begin"][1], seen["raw"][0]):
        np.testing.assert_array_equal(got, want)


def test_inner_validation_is_class_balanced_like_the_training_epochs(tiny):
    labels = tiny[3]
    ids = labels.index.tolist()
    balanced = _trainer(tiny, "cnn_baseline", samples_per_class=2, valid_max=7)._valid_ids(ids)
    assert labels.loc[balanced, "y7"].value_counts().to_dict() == {c: 1 for c in range(7)}
    assert _trainer(tiny, "cnn_baseline", valid_max=None)._valid_ids(ids) == ids


def test_mask_head_trains_on_known_masks_only(tiny, tmp_path):
    """mask_weight > 0: the U-Net classifier gets the ``mask`` output and its loss; normal slices teach an
    empty mask, positive slices without a pixel truth (this table has no masks) are all -1 (left out)."""
    from ichkit.models.cnn.compiled import forget_compiled

    _, _, _, labels = tiny
    ids = labels.index.tolist()
    trainer = _trainer(tiny, "resnet50_unet_cls", epochs=1, mask_weight=1.0)
    assert trainer.mask_head
    some = labels.index[labels["any"] == 1][:4].tolist() + labels.index[labels["any"] == 0][:4].tolist()
    seq = trainer._sequence(some, True, 8)
    _, y = seq[0]
    positive = labels.loc[[some[k] for k in seq.order], "any"].to_numpy() == 1
    assert positive.sum() == 4
    assert (y["mask"][positive] == -1).all() and (y["mask"][~positive] == 0).all()
    forget_compiled()
    trainer.fit(ids, ids[::7], tmp_path, resume=False)
    log = pd.read_csv(tmp_path / "log.csv")
    assert "mask_loss" in log.columns and np.isfinite(log["mask_loss"]).all()
    frame = trainer.predict(ids[:4])
    assert list(frame.columns) == list(OOF_COLUMNS)
    forget_compiled()
    assert not _trainer(tiny, "resnet50_unet_cls", mask_weight=0.0).mask_head


def test_rsna_probabilities_follow_train_rsna_head(tiny, tmp_path):
    """binary: the sigmoid head as predicted; class7: the softmax mapped; prior_corrected: the softmax after
    the balanced epochs' uniform prior is swapped for the training folds' prior (fewer positives)."""
    from ichkit.heads import class_prior

    _, _, _, labels = tiny
    trainer = _trainer(tiny, "cnn_baseline", epochs=1, samples_per_class=2)
    trainer.ctx.options["rsna_head"] = "prior_corrected"
    ids = labels.index.tolist()
    trainer.fit(ids, ids[::7], tmp_path, resume=False)
    assert trainer.head["rsna_head"] == "prior_corrected" and trainer.head["balanced"]
    np.testing.assert_allclose(trainer.head["class_prior"], class_prior(labels["y7"].to_numpy()))
    normal = CLASS7_INDEX["normal"]
    prior = np.full(7, 0.3 / 6)
    prior[normal] = 0.7
    trainer.head.update(class_prior=prior.tolist(), multi_share=[0.4] * 5)
    p7, sigmoid = np.full((2, 7), 1 / 7), np.full((2, 6), 0.9)
    trainer.head["rsna_head"] = "binary"
    np.testing.assert_allclose(trainer.rsna(p7, sigmoid), sigmoid)
    trainer.head["rsna_head"] = "class7"
    np.testing.assert_allclose(trainer.rsna(p7, sigmoid)[:, 0], 6 / 7)           # any = 1 - p(normal)
    trainer.head["rsna_head"] = "prior_corrected"
    np.testing.assert_allclose(trainer.rsna(p7, sigmoid)[:, 0], 0.3)             # 1 - 0.7 / (0.7 + 6 x 0.05)
    trainer.save(tmp_path)
    assert CNNTrainer.load(tmp_path, trainer.ctx).head == trainer.head
