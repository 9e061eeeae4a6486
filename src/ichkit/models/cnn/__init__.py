"""CNN family: Keras 3 classifiers (baseline CNN, ResNet50 / Xception U-Net-style) on the prepared cache.

- `ichkit.models.cnn.inputs`: the one input pipeline (cache -> batches, 2.5D neighbours, balanced epochs),
  shared with the segmentation family;
- `ichkit.models.cnn.augment`: class-specific albumentations policies (image + mask aligned);
- `ichkit.models.cnn.nets`: the architectures; `ichkit.models.cnn.trainer`: the FoldTrainer.

Importing this package registers the three models without importing Keras (the trainer does, lazily).
Every model parameter defaults to None = "take it from the profile" (``cnn.profiles.<cnn.profile>`` in
default.yaml); ``models.<name>.<param>`` in the config overrides one value for one model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ichkit.errors import IchkitError
from ichkit.models import ModelSpec, register


# bump when a change to the family's code changes its outputs (the fold fingerprint reads it from the lazy
# stand-in below, before Keras is imported; CNNTrainer.code_version is this value)
CODE_VERSION = "3"   # 3: the U-Net classifiers' mask output (deep supervision), the RSNA head of train.rsna_head


class CNNError(IchkitError):
    """A CNN setting or input that cannot work (profile, policy, context, size, encoder); names it."""


CNN_MODELS: dict[str, str] = {
    "cnn_baseline": "the paper's ~10-layer CNN (7 conv layers in 4 stages + 2 dense layers)",
    "resnet50_unet_cls": "ResNet50 encoder, U-Net-style decoder to 1/2 resolution, pooled dense heads (paper)",
    "xception_unet_cls": "Xception encoder, U-Net-style decoder to 1/2 resolution, pooled dense heads (paper)",
}
# every key a profile sets; a model param left None takes the profile's value
PARAM_KEYS = ("size", "batch_size", "epochs", "freeze_epochs", "lr", "finetune_lr_factor", "samples_per_class",
              "valid_max", "patience", "tta", "decoder_filters", "decoder_dropout", "baseline_width", "bn_momentum", "weight_ema",
              "context")


def _suggest(trial: Any) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
            "decoder_dropout": trial.suggest_float("decoder_dropout", 0.0, 0.4)}


def _no_estimator(params: dict[str, Any], seed: int) -> Any:
    raise TypeError("CNN models are trained by ichkit.models.cnn.trainer.CNNTrainer, not as an estimator")


def _trainer_class() -> type:
    from ichkit.models.cnn.trainer import CNNTrainer

    return CNNTrainer


class _LazyTrainer:
    """Stands for CNNTrainer in the spec without importing Keras until a CNN is actually trained."""

    code_version = CODE_VERSION

    def __new__(cls, *args: Any, **kwargs: Any):  # spec.trainer(spec, params, ctx)
        return _trainer_class()(*args, **kwargs)

    @classmethod
    def load(cls, fold_dir: Any, ctx: Any):
        return _trainer_class().load(fold_dir, ctx)


def _spec(name: str) -> ModelSpec:
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    extra: dict[str, Any] = {}
    if "trainer" in fields:
        extra["trainer"] = _LazyTrainer
    if "config_keys" in fields:
        extra["config_keys"] = ("cnn", "prepare.windows", "prepare.cls_size")
    return ModelSpec(name=name, family="cnn", features=(), build=_no_estimator, suggest=_suggest,
                     defaults={k: None for k in PARAM_KEYS}, description=CNN_MODELS[name], **extra)


for _name in CNN_MODELS:
    register(_spec(_name))
