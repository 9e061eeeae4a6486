"""The `pixels` feature set: each cached uint8 window downsampled (area averaging) and flattened."""

from __future__ import annotations

import numpy as np

from ichkit.features.settings import PIXEL_PREFIX, FeatureSettings



def pixel_features(cls_image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) windows -> uint8 vector (3 * size * size,), channel-major, area-averaged."""
    import cv2

    if cls_image.ndim != 3 or cls_image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) window image, got shape {cls_image.shape}")
    small = cv2.resize(np.ascontiguousarray(cls_image), (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small.transpose(2, 0, 1)).reshape(-1)


def pixel_columns(settings: FeatureSettings) -> list[str]:
    n = settings.pixel_size
    return [f"{PIXEL_PREFIX}{w}_{r:02d}_{c:02d}" for w, _, _ in settings.windows for r in range(n) for c in range(n)]
