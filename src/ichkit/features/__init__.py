"""Per-image features for the classical models: downsampled window pixels and radiomic / anatomical
measurements of the Hounsfield-unit map. Stage `features`; `train` and `tune` call `load_features`.

Two feature sets, each cached as ``<work>/features/<set>.parquet`` (one row per image id) with a
``<set>.json`` sidecar holding the settings it was computed with:

- ``pixels``: each cached uint8 window channel downsampled (area averaging) to ``pixel_size`` squared and
  flattened, ``3 * pixel_size**2`` columns ``px_<window>_<row>_<col>``. PCA is fitted inside each model's
  pipeline on the training folds only, never here.
- ``radiomic``: ~50 scalar measurements from the HU map (brain mask, blood histogram, hyperdense
  components and their position and shape, midline / ventricle proximity, GLCM texture). Every column is
  documented in `RADIOMIC_DOC` (and the table in README.md); every value is finite, so every model
  family can read them without imputation.

A cached file is extended only with the ids it lacks, and recomputed from scratch when the settings (or
`FEATURE_VERSION`) change. Computation runs over processes with a tqdm progress bar.
"""

from ichkit.features.settings import FEATURE_SETS, FEATURE_VERSION, PIXEL_PREFIX, FeatureError, FeatureSettings
from ichkit.features.pixels import pixel_columns, pixel_features
from ichkit.features.doc import RADIOMIC_DOC, radiomic_columns
from ichkit.features.analysis import (
    HeadMasks,
    blood_candidates,
    brain_mask,
    composite_hu,
    head_masks,
    radiomic_features,
)
from ichkit.features.pool import workers as _workers
from ichkit.features.store import ensure_features, features_dir, load_features
from ichkit.features.stage import add_arguments, run

__all__ = [
    "FEATURE_SETS", "FEATURE_VERSION", "PIXEL_PREFIX", "FeatureError", "FeatureSettings", "HeadMasks",
    "RADIOMIC_DOC", "add_arguments", "blood_candidates", "brain_mask", "composite_hu", "ensure_features", "features_dir",
    "head_masks", "load_features", "pixel_columns", "pixel_features", "radiomic_columns", "radiomic_features",
    "run",
]
