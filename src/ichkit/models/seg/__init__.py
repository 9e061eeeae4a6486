"""Segmentation family: hemorrhage masks per slice, volumes per study.

- `hu_threshold_seg`: the classical baseline (`features.blood_candidates` inside the brain mask, its HU
  range and minimum component size chosen on the training folds);
- `resnet50_unet_seg`: ResNet50-encoder U-Net to full input resolution, sigmoid mask; soft Dice, BCE +
  Dice or focal Tversky loss; profiles quick / paper / full in ``seg.profiles`` of default.yaml.

Modules: `losses`, `unet` (the network), `data` (truth / brain / HU from the cache; the input images come
through `ichkit.models.cnn.inputs`), `postprocess` (threshold, min size, brain masking; chosen on the inner
validation split), `trainers` (the two `FoldTrainer`s), `results` (the seg output contract and files),
`run` (stage `segment`: the engine's fold driver with this family's output contract), `evaluate` (the segmentation table with its baselines).
"""

from __future__ import annotations

from ichkit.models import ModelSpec, register
from ichkit.models.seg.trainers import HUThresholdSeg, ResNet50UNetSeg

TRAINERS: dict[str, type] = {"hu_threshold_seg": HUThresholdSeg, "resnet50_unet_seg": ResNet50UNetSeg}
DESCRIPTIONS = {
    "hu_threshold_seg": "blood HU range inside the brain mask, opening, min component size (chosen on the training folds)",
    "resnet50_unet_seg": "ResNet50 U-Net to full resolution, sigmoid mask; post-processing chosen on the inner validation split",
}


def _no_estimator(params, seed):
    raise TypeError("segmentation models are FoldTrainers (ichkit.models.seg.trainers), not scikit-learn estimators")


def _no_search(trial) -> dict:
    return {}


for _name, _trainer in TRAINERS.items():
    register(ModelSpec(name=_name, family="seg", features=(), build=_no_estimator, suggest=_no_search,
                       description=DESCRIPTIONS[_name], trainer=_trainer, outputs="ichkit.models.seg.results",
                       config_keys=("prepare.seg_size", "prepare.cls_size", "features", "seg", "cnn.augment",
                                    "cnn.input")))
