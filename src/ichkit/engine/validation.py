"""The inner validation split: patient-grouped, inside the training folds, never the held-out fold.

For held-out fold k, the images of the other folds are split once more with scikit-learn's
`StratifiedGroupKFold` (groups = patients, strata = the task's target): one of its ``round(1 /
fraction)`` splits becomes ``valid_ids`` (early stopping, checkpoint choice, thresholds, calibration) and
the rest ``train_ids`` (on sets too small to stratify, a seeded grouped shuffle split). The split is seeded by (seed, k), so it is the same on every machine and rerun.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def inner_split(image_ids: np.ndarray, patients: np.ndarray, target: np.ndarray, fraction: float,
                seed: int) -> tuple[list[str], list[str]]:
    """(train_ids, valid_ids) in the given order; valid holds about `fraction` of the patients.

    With `fraction` 0, or fewer than two patients, valid is empty (every image trains).
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    ids = np.asarray(image_ids, dtype=object)
    n_patients = len(pd.unique(np.asarray(patients)))
    if fraction <= 0 or n_patients < 2:
        return list(ids), []
    if not 0 < fraction < 1:
        raise ValueError(f"train.inner_valid_fraction must be in [0, 1), got {fraction}")
    n_splits = int(min(max(2, round(1.0 / fraction)), n_patients))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=int(seed))
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits": expected
        warnings.simplefilter("ignore", UserWarning)
        try:
            _, valid_rows = next(splitter.split(ids, np.asarray(target), groups=np.asarray(patients)))
        except ValueError:  # every class has fewer images than splits (tiny sets): grouped, not stratified
            shuffle = GroupShuffleSplit(n_splits=1, test_size=1.0 / n_splits, random_state=int(seed))
            _, valid_rows = next(shuffle.split(ids, groups=np.asarray(patients)))
    is_valid = np.zeros(len(ids), dtype=bool)
    is_valid[valid_rows] = True
    return list(ids[~is_valid]), list(ids[is_valid])
