"""CNN family: Keras 3 classifiers (baseline CNN, ResNet50 / Xception U-Net-style) on the prepared cache.

- `ichkit.models.cnn.inputs`: the one input pipeline (cache -> batches, 2.5D neighbours, balanced epochs),
  shared with the segmentation family;
- `ichkit.models.cnn.augment`: class-specific albumentations policies (image + mask aligned).
"""
