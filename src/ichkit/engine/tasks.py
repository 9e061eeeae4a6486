"""Task variants: what a model is trained to predict, and under which name its outputs are kept apart.

- ``7class``: the seven classes (CLASSES7), every training image; the default, so its run name is the model
  name and its files are the ones every later stage reads.
- ``6class``: the five subtypes and normal; slices labelled "multi" are dropped from training, inner
  validation and the held-out fold, as the reference paper did.
- ``binary``: any hemorrhage vs normal, every training image.

Every task writes the same OOF contract (`ichkit.oof`); its outputs live under the run name
``<model>.<task>`` (``lgbm_radiomic.binary``), so tasks never overwrite each other, and `evaluate` groups
its table by task. The task is part of `FoldContext` and of the fold fingerprint.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ichkit.errors import IchkitError
from ichkit.labels import CLASS7_INDEX

TASKS: tuple[str, ...] = ("7class", "6class", "binary")
DEFAULT_TASK = "7class"
_SEPARATOR = "."


class TaskError(IchkitError):
    """An unknown task or run name."""


def check_task(task: str) -> str:
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; expected one of {TASKS}")
    return task


def run_name(model: str, task: str) -> str:
    """The name the OOF, test and model folders of (model, task) are kept under."""
    check_task(task)
    return model if task == DEFAULT_TASK else f"{model}{_SEPARATOR}{task}"


def split_run_name(name: str) -> tuple[str, str]:
    """(model, task) of a run name written by `run_name`."""
    model, sep, task = name.rpartition(_SEPARATOR)
    if sep and task in TASKS:
        return model, task
    return name, DEFAULT_TASK


def task_rows(labels: pd.DataFrame, task: str) -> np.ndarray:
    """Boolean mask of the labelled rows (column y7: CLASSES7 index) a task trains and scores on."""
    check_task(task)
    y7 = labels["y7"].to_numpy()
    if task == "6class":
        return y7 != CLASS7_INDEX["multi"]
    return np.ones(len(y7), dtype=bool)


def task_target(labels: pd.DataFrame, task: str) -> np.ndarray:
    """The integer target of a task: CLASSES7 indices (7class, 6class without multi) or any (binary)."""
    check_task(task)
    if task == "binary":
        return labels["any"].to_numpy(dtype=np.int64)
    return labels["y7"].to_numpy(dtype=np.int64)
