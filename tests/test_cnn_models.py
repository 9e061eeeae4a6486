"""CNN architectures and the CNN FoldTrainer on a tiny synthetic work folder (weights=None, 32-96 px)."""

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
from ichkit.models.cnn.trainer import CNNTrainer, read_state  # noqa: E402
from ichkit.oof import OOF_COLUMNS  # noqa: E402
from synthetic_ct import config_for, make_work  # noqa: E402

SMALL_DECODER = (16, 8, 8, 8)


@pytest.mark.parametrize("name,sizes", [("resnet50_unet_cls", (64, 96)), ("xception_unet_cls", (72, 96))])
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


def test_baseline_and_nine_channel_stem():
    for size in (64, 96):
        model = nets.build("cnn_baseline", size)
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        assert len(convs) + len(dense) - 2 == 9          # 7 conv + 2 dense (+ the two output layers)
        assert tuple(model.output["class7"].shape) == (None, 7)
    stemmed = nets.build("resnet50_unet_cls", 64, channels=9, decoder_filters=SMALL_DECODER)
    assert stemmed.get_layer("stem_1x1").kernel.shape == (1, 1, 9, 3)
    with pytest.raises(ValueError, match="at least 71"):
        nets.build("xception_unet_cls", 64)
    with pytest.raises(nets.WeightsError, match="no such file"):
        nets.build("resnet50_unet_cls", 64, weights="/nonexistent/w.weights.h5")


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
                                                 "size": 32, "batch_size": 8, "valid_max": None, "patience": 0,
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
    trainer.fit(ids, ids[::3], tmp_path, resume=False)
    log = pd.read_csv(tmp_path / "log.csv")
    assert log["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert log["class7_loss"].iloc[-1] < log["class7_loss"].iloc[0] - 0.05
    test_ids = slices.loc[slices["split"] == "test", "image_id"].tolist()
    frame = trainer.predict(test_ids)
    assert list(frame.columns) == list(OOF_COLUMNS) and frame["image_id"].tolist() == test_ids
    trainer.save(tmp_path)
    again = CNNTrainer.load(tmp_path, trainer.ctx).predict(test_ids)
    np.testing.assert_allclose(again.iloc[:, 2:].to_numpy(float), frame.iloc[:, 2:].to_numpy(float), atol=1e-6)


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
        first.fit(ids, ids[::4], tmp_path, resume=False)
    assert read_state(tmp_path)["epochs_done"] == 2
    second = _trainer(tiny, "cnn_baseline", epochs=4)
    record = Record()
    second.extra_callbacks = [record]
    second.fit(ids, ids[::4], tmp_path, resume=True)
    assert record.begun == [2, 3]                             # not epochs 0 and 1 again
    assert pd.read_csv(tmp_path / "log.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert read_state(tmp_path)["epochs_done"] == 4


def test_pretrained_encoder_is_frozen_first_then_fine_tuned(tiny, tmp_path):
    weights = tmp_path / "encoder.weights.h5"
    nets.build("resnet50_unet_cls", 32, decoder_filters=SMALL_DECODER).get_layer(nets.ENCODER_NAME).save_weights(weights)
    trainer = _trainer(tiny, "resnet50_unet_cls", epochs=1, freeze_epochs=1, lr=1e-2)
    trainer.settings["weights"] = str(weights)
    phases = trainer.phases()
    assert [(p[0], p[1], p[2], p[4]) for p in phases] == [("frozen", 0, 1, False), ("finetune", 1, 2, True)]
    assert phases[1][3] == pytest.approx(1e-2 * trainer.settings["finetune_lr_factor"])
    trainer.model = trainer._build(str(weights))
    encoder = trainer.model.get_layer(nets.ENCODER_NAME)
    kernel0 = np.array(encoder.get_layer("conv1_conv").kernel.numpy())
    bn0 = np.array(encoder.get_layer("conv1_bn").moving_mean.numpy())
    saved = np.array(keras.models.Model(encoder.input, encoder.outputs).get_layer("conv1_conv").kernel.numpy())
    np.testing.assert_array_equal(kernel0, saved)
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    y = {"class7": np.eye(7, dtype=np.float32)[[0, 1, 5, 6]], "rsna": np.zeros((4, 6), np.float32)}
    kernels = []
    for _, _, _, lr, trainable in phases:           # what fit does per phase: set the flag, recompile, train
        trainer._set_encoder_trainable(trainable)
        trainer._compile(lr)
        trainer.model.train_on_batch(x, y)
        kernels.append(np.array(encoder.get_layer("conv1_conv").kernel.numpy()))
    np.testing.assert_array_equal(kernels[0], kernel0)           # phase 1: encoder frozen
    assert not np.array_equal(kernels[1], kernel0)               # phase 2: unfrozen after the recompile
    np.testing.assert_array_equal(encoder.get_layer("conv1_bn").moving_mean.numpy(), bn0)  # BN inference mode


def test_inner_validation_is_class_balanced_like_the_training_epochs(tiny):
    labels = tiny[3]
    ids = labels.index.tolist()
    balanced = _trainer(tiny, "cnn_baseline", samples_per_class=2, valid_max=7)._valid_ids(ids)
    assert labels.loc[balanced, "y7"].value_counts().to_dict() == {c: 1 for c in range(7)}
    assert _trainer(tiny, "cnn_baseline", valid_max=None)._valid_ids(ids) == ids
