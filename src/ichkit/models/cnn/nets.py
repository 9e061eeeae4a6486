"""The CNN architectures (Keras 3): the paper's baseline CNN and its ResNet50 / Xception U-Net-style classifiers.

Every model takes (size, size, C) float32 in [0, 1] (what `ichkit.models.cnn.inputs` yields) and has two
outputs: ``class7`` (softmax over CLASSES7) and ``rsna`` (sigmoid over the 6 RSNA labels, ``any`` first).
A C other than 3 (the 9-channel 2.5D input) goes through a learned 1x1 conv stem to 3 channels first,
so the ImageNet encoders keep their 3-channel first layer.

U-Net-style classifiers: the encoder from `keras.applications` gives skips at 1/2 .. 1/16 and the bridge
at 1/32 (`SKIP_LAYERS`); the decoder upsamples the bridge with Conv2DTranspose, resizes it to the skip's
size where they differ (Xception's valid-padded stem gives odd sizes), concatenates, then 3x3 conv + BN +
ReLU + dropout, up to 1/2 resolution. The head pools the last decoder map (global average) ->
Dense(256) ReLU, dropout 0.4 -> Dense(128) ReLU, dropout 0.3 -> the two outputs. With ``mask_head`` a
third output, ``mask`` (sigmoid blood probability at the input size, from a 1x1 conv on that same decoder
map), lets the trainer supervise the decoder with the ground-truth masks (deep supervision: a dense
per-pixel signal that tells a randomly initialised encoder where blood is far sooner than one label per
image does; the classification head pools the features it shapes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
from keras import layers

from ichkit.labels import CLASSES7, RSNA_LABELS
from ichkit.models.cnn import CNNError

# encoder -> (skip layers shallow to deep, bridge layer)
SKIP_LAYERS: dict[str, tuple[tuple[str, ...], str]] = {
    "resnet50": (("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"), "conv5_block3_out"),
    "xception": (("block1_conv2_act", "block3_sepconv2_bn", "block4_sepconv2_bn", "block13_sepconv2_bn"),
                 "block14_sepconv2_act"),
}
MIN_SIZE = {"resnet50": 32, "xception": 71}
ENCODER_NAME = "encoder"
# registered U-Net-style classifiers -> their encoder (cnn_baseline has no encoder and no decoder)
UNET_CLASSIFIERS: dict[str, str] = {"resnet50_unet_cls": "resnet50", "xception_unet_cls": "xception"}


class WeightsError(CNNError):
    """Pretrained weights that cannot be had (no internet, no cached file, wrong file)."""


@keras.saving.register_keras_serializable(package="ichkit")
class ImagenetPreprocess(layers.Layer):
    """[0, 1] RGB -> the input each Keras application was trained on (caffe: BGR minus mean; tf: [-1, 1])."""

    CAFFE_MEAN = (103.939, 116.779, 123.68)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf"):
            raise CNNError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "tf":
            return x * 2.0 - 1.0
        x = x[..., ::-1] * 255.0
        return x - keras.ops.convert_to_tensor(self.CAFFE_MEAN, dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def prior_bias(prior: float | None):
    """Bias initialiser of a sigmoid output that starts at probability `prior` (its logit; RetinaNet's prior
    initialisation); None = zeros (0.5)."""
    return "zeros" if prior is None else keras.initializers.Constant(math.log(prior / (1.0 - prior)))


def _stem(inputs, channels: int):
    """A 1x1 conv mapping C != 3 channels (2.5D: 9) onto the 3 an encoder expects."""
    if channels == 3:
        return inputs
    return layers.Conv2D(3, 1, name="stem_1x1")(inputs)


def _heads(features, dropout_dense: tuple[float, float] = (0.4, 0.3)):
    x = layers.Dense(256, activation="relu", name="head_dense256")(features)
    x = layers.Dropout(dropout_dense[0], name="head_drop1")(x)
    x = layers.Dense(128, activation="relu", name="head_dense128")(x)
    x = layers.Dropout(dropout_dense[1], name="head_drop2")(x)
    class7 = layers.Dense(len(CLASSES7), activation="softmax", dtype="float32", name="class7")(x)
    rsna = layers.Dense(len(RSNA_LABELS), activation="sigmoid", dtype="float32", name="rsna")(x)
    return {"class7": class7, "rsna": rsna}


def resolve_weights(weights: str | None) -> tuple[str | None, Path | None]:
    """--weights imagenet|none|PATH -> (keras_weights, file to load after building)."""
    if weights in (None, "none", "None", ""):
        return None, None
    if weights == "imagenet":
        return "imagenet", None
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"--weights {weights}: no such file (expected imagenet, none or a .weights.h5 path)")
    return None, path


def build_encoder(encoder: str, size: int, weights: str | None) -> keras.Model:
    """The `keras.applications` encoder as one multi-output model: [skips shallow..deep, bridge]."""
    if encoder not in SKIP_LAYERS:
        raise CNNError(f"unknown encoder {encoder!r}; expected one of {sorted(SKIP_LAYERS)}")
    if size < MIN_SIZE[encoder]:
        raise CNNError(f"{encoder} needs inputs of at least {MIN_SIZE[encoder]} px, got {size}")
    factory = {"resnet50": keras.applications.ResNet50, "xception": keras.applications.Xception}[encoder]
    try:
        base = factory(include_top=False, weights=weights, input_shape=(size, size, 3))
    except Exception as exc:  # no internet and no ~/.keras/models file: say what to do
        if weights != "imagenet":
            raise
        raise WeightsError(
            f"{encoder}: ImageNet weights could not be loaded ({exc}); put the Keras weight file in "
            "~/.keras/models/ or pass --weights none / --weights PATH"
        ) from exc
    skips, bridge = SKIP_LAYERS[encoder]
    outputs = [base.get_layer(n).output for n in skips] + [base.get_layer(bridge).output]
    return keras.Model(base.input, outputs, name=ENCODER_NAME)


def _decoder_block(x, skip, filters: int, dropout: float, index: int):
    x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{index}_up")(x)
    if x.shape[1] != skip.shape[1] or x.shape[2] != skip.shape[2]:
        x = layers.Resizing(skip.shape[1], skip.shape[2], interpolation="bilinear", name=f"dec{index}_resize")(x)
    x = layers.Concatenate(name=f"dec{index}_concat")([x, skip])
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"dec{index}_conv")(x)
    x = layers.BatchNormalization(name=f"dec{index}_bn")(x)
    x = layers.Activation("relu", name=f"dec{index}_relu")(x)
    return layers.Dropout(dropout, name=f"dec{index}_drop")(x)


def unet_classifier(encoder: str, size: int, channels: int = 3, weights: str | None = None,
                    decoder_filters: Sequence[int] = (256, 128, 64, 32), decoder_dropout: float = 0.2,
                    frozen_bn: bool = False, mask_head: bool = False, mask_prior: float = 0.01) -> keras.Model:
    """ResNet50 / Xception encoder + U-Net-style decoder to 1/2 resolution + the classification heads.

    `frozen_bn`: call the encoder with training=False, so its BatchNorm layers stay in inference mode
    (pretrained encoders: during the frozen phase and after, as Keras' fine-tuning guide advises).
    `mask_head`: add the ``mask`` output (size, size, 1), its bias at the blood prior `mask_prior` (as the
    segmentation U-Net's, `ichkit.models.seg.unet`).
    """
    if len(decoder_filters) != 4:
        raise CNNError(f"decoder_filters needs 4 values (1/16 .. 1/2), got {list(decoder_filters)}")
    keras_weights, weight_file = resolve_weights(weights)
    enc = build_encoder(encoder, size, keras_weights)
    inputs = keras.Input((size, size, channels), name="image")
    x = _stem(inputs, channels)
    x = ImagenetPreprocess("caffe" if encoder == "resnet50" else "tf", name="preprocess")(x)
    *skips, bridge = enc(x, training=False) if frozen_bn else enc(x)
    x = bridge
    for i, (skip, filters) in enumerate(zip(reversed(skips), decoder_filters)):
        x = _decoder_block(x, skip, int(filters), decoder_dropout, i + 1)
    features = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = _heads(features)
    if mask_head:
        m = layers.Conv2D(1, 1, activation="sigmoid", bias_initializer=prior_bias(mask_prior), dtype="float32",
                          name="mask_half")(x)
        outputs["mask"] = layers.Resizing(size, size, interpolation="bilinear", dtype="float32", name="mask")(m)
    model = keras.Model(inputs, outputs, name=f"{encoder}_unet_cls")
    if weight_file is not None:
        load_weights_file(model, weight_file)
    return model


def baseline_cnn(size: int, channels: int = 3, weights: str | None = None, width: int = 32) -> keras.Model:
    """The paper's ~10-layer baseline: 7 conv layers in 4 stages (BN, ReLU, max-pool) + the 2 dense layers."""
    _, weight_file = resolve_weights(None if weights == "imagenet" else weights)
    if weights == "imagenet":
        raise WeightsError("cnn_baseline has no ImageNet weights; use --weights none or a PATH")
    inputs = keras.Input((size, size, channels), name="image")
    x = inputs
    for stage, (convs, mult) in enumerate([(2, 1), (2, 2), (2, 4), (1, 8)], 1):
        for j in range(convs):
            x = layers.Conv2D(width * mult, 3, padding="same", use_bias=False, name=f"conv{stage}_{j + 1}")(x)
            x = layers.BatchNormalization(name=f"bn{stage}_{j + 1}")(x)
            x = layers.Activation("relu", name=f"relu{stage}_{j + 1}")(x)
        if stage < 4:
            x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    features = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, _heads(features), name="cnn_baseline")
    if weight_file is not None:
        load_weights_file(model, weight_file)
    return model


def load_weights_file(model: keras.Model, path: Path) -> None:
    """Weights from a .weights.h5 file: the whole model's, or (a file saved from an encoder) the encoder's.

    Keras stores weights by structure, not by layer name, and a mismatched file can load with only
    warnings; so the file's kind is read from its own layer groups: the heads' Dense layers exist only in
    a whole-model file.
    """
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            groups = list(fh["layers"].keys()) if "layers" in fh else []
    except OSError as exc:
        raise WeightsError(f"--weights {path}: not a Keras .weights.h5 file ({exc})") from exc
    whole = any(g.startswith("dense") for g in groups)
    names = {layer.name for layer in model.layers}
    target = model if whole or ENCODER_NAME not in names else model.get_layer(ENCODER_NAME)
    try:
        target.load_weights(path)
    except Exception as exc:
        raise WeightsError(f"--weights {path}: does not fit {target.name} ({exc})") from exc


def set_bn_momentum(model: keras.Model, momentum: float, skip: str | None = None) -> None:
    """Set every BatchNormalization's moving-average momentum (except inside the layer named `skip`).

    Keras' 0.99 needs several hundred steps before the moving statistics forget their (0, 1) start; a
    short CPU run of ~100 steps would then predict with wrong statistics (one class for every image).
    """
    for layer in model.layers:
        if skip is not None and layer.name == skip:
            continue
        if isinstance(layer, keras.Model):
            set_bn_momentum(layer, momentum)
        elif isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(momentum)


def build(name: str, size: int, channels: int = 3, weights: str | None = None, frozen_bn: bool = False,
          decoder_filters: Sequence[int] = (256, 128, 64, 32), decoder_dropout: float = 0.2,
          baseline_width: int = 32, bn_momentum: float = 0.99, mask_head: bool = False) -> keras.Model:
    """A registered CNN by name. `bn_momentum` applies to every BatchNorm not in a frozen (pretrained) encoder;
    `mask_head` (U-Net classifiers only: the baseline has no decoder) adds the ``mask`` output."""
    if name == "cnn_baseline":
        model = baseline_cnn(size, channels, weights, baseline_width)
    elif name in UNET_CLASSIFIERS:
        model = unet_classifier(UNET_CLASSIFIERS[name], size, channels, weights, decoder_filters, decoder_dropout, frozen_bn,
                                mask_head=mask_head)
    else:
        raise CNNError(f"unknown CNN {name!r}; expected cnn_baseline or one of {sorted(UNET_CLASSIFIERS)}")
    set_bn_momentum(model, bn_momentum, skip=ENCODER_NAME if frozen_bn else None)
    return model
