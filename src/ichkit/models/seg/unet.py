"""The ResNet50 U-Net segmenter: a Keras ResNet50 encoder, a U-Net decoder up to the full input
resolution, one sigmoid output channel (blood probability per pixel).

Skips are the encoder's stage outputs (conv1_relu 1/2, conv2_block3_out 1/4, conv3_block4_out 1/8,
conv4_block6_out 1/16; conv5_block3_out 1/32 is the bottleneck). Each decoder step upsamples x2,
concatenates the skip and applies two 3x3 conv-BN-ReLU; the last step returns to full resolution and
concatenates the input windows themselves (ResNet50 has no full-resolution stage: without this skip every
pixel's intensity reaches the output only through the stride-2 7x7 stem, and a thin rim of blood along the
skull is lost to it). `weights="imagenet"` loads the real Keras ImageNet weights (needs the download); the
tests and the CPU demo use `weights=None`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ichkit.models.seg.results import SegError

SKIP_LAYERS: tuple[str, ...] = ("conv4_block6_out", "conv3_block4_out", "conv2_block3_out", "conv1_relu")
BOTTLENECK = "conv5_block3_out"
CAFFE_MEAN: tuple[float, float, float] = (103.939, 116.779, 123.68)


def _conv_block(x, filters: int, name: str):
    import keras
    from keras import layers

    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_resnet50_unet(size: int, weights: str | None = None,
                        decoder_filters: Sequence[int] = (256, 128, 64, 32, 16), bn_momentum: float = 0.99,
                        init_prior: float | None = None):
    """An uncompiled Keras model: (size, size, 3) windows in [0, 1] (what `models.cnn.inputs.CacheSequence`
    yields) in, (size, size, 1) sigmoid out.

    `size` must be a multiple of 32 (five x2 downsamplings). ResNet50's own preprocessing (caffe: x255,
    minus the ImageNet channel means) is the model's first layer, so callers never repeat it.
    `bn_momentum` is every BatchNormalization's (encoder and decoder): Keras' 0.99 needs several hundred
    steps to forget its (0, 1) start, more than a CPU run of ~100 steps takes (`models.cnn.nets.set_bn_momentum`).
    `init_prior`: the output's initial blood probability (its bias = the logit; RetinaNet's prior
    initialisation). Blood is ~0.5% of the pixels: a network that starts at 0.5 everywhere spends its first
    ~100 steps unlearning that, and on a CPU run that is all the steps it gets (it then predicts nothing).
    """
    import keras
    from keras import layers

    from ichkit.models.cnn.nets import prior_bias, set_bn_momentum

    if size % 32:
        raise SegError(f"resnet50_unet_seg: input size must be a multiple of 32, got {size}")
    if len(decoder_filters) != 5:
        raise SegError(f"decoder_filters needs 5 values (one per x2 step), got {list(decoder_filters)}")
    inputs = keras.Input((size, size, 3), name="image")
    # caffe preprocessing of x * 255 as a plain Normalization layer (the saved model needs no Lambda): the
    # window channels are not RGB, so the BGR flip is left out
    x = layers.Normalization(mean=[m / 255.0 for m in CAFFE_MEAN], variance=[(1 / 255.0) ** 2] * 3,
                             name="preprocess")(inputs)
    encoder = keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x)
    x = encoder.get_layer(BOTTLENECK).output
    for i, filters in enumerate(decoder_filters):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{i}_up")(x)
        skip = encoder.get_layer(SKIP_LAYERS[i]).output if i < len(SKIP_LAYERS) else inputs
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skip])
        x = _conv_block(x, filters, f"dec{i}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", bias_initializer=prior_bias(init_prior),
                            name="mask")(x)
    model = keras.Model(inputs, outputs, name="resnet50_unet_seg")
    set_bn_momentum(model, bn_momentum)
    return model
