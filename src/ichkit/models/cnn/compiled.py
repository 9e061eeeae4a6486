"""One compiled Keras model per architecture in a process: the folds after the first reuse its graphs.

Tracing the train step of a ResNet50 / Xception U-Net costs ~20-25 s on 2 CPU cores (Keras builds the
forward pass, the gradients of ~300 variables and Adam's update for each), more than a quick-profile fold
spends training. The fold driver runs the folds of one model one after another in one process, so the
first fold compiles a model and every later fold with the same graph (`key`: architecture, input size,
batch, loss, learning rate) loads its own freshly built initial state into that model:

- ``build()`` is called every time, after the caller seeded Keras for this fold (`set_seed`, which
  leaves TensorFlow's global seed alone: resetting it retraces the graphs), so the fold's initial
  weights, BatchNorm statistics and dropout seeds (all of ``model.variables``) are exactly those of a
  fresh build, and they are copied into the compiled model;
- the optimizer's slots and step counter are zeroed (a fresh Adam); the learning rate is in the key.

Only the most recent model is kept (the driver goes model by model), so memory holds one network.
Used by the CNN classifiers (single-phase training) and the segmentation U-Net.

`warn_slow_allocator` (called by the CNN and U-Net trainers before they build) checks the process's
memory allocator (`allocator`): TensorFlow on the CPU
re-allocates its large tensors every step, the tf.data generator op under Keras' PyDataset sets glibc's
M_TRIM_THRESHOLD to 128 KB for the process, and with glibc's malloc the kernel then faults them in again
page by page (an Xception fold: 524 s, 43 % of it kernel time; 296 s with tcmalloc, the same predictions).
`run.sh` preloads tcmalloc; a process started otherwise on the CPU gets a warning saying how.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_cached: dict[str, Any] = {}
_allocator_checked = False
FAST_ALLOCATORS = ("tcmalloc", "jemalloc")


def reuse_compiled(key: str, build: Callable[[], Any], compile_model: Callable[[Any], None]) -> Any:
    """A compiled model holding the state `build()` just made: compiled now, or the cached one for `key`."""
    fresh = build()
    model = _cached.get(key)
    if model is None or not _same_variables(model, fresh):
        compile_model(fresh)
        _cached.clear()
        _cached[key] = fresh
        return fresh
    for target, source in zip(model.variables, fresh.variables):
        target.assign(source)
    reset_optimizer(model.optimizer)
    return model


def set_seed(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)`, but without TensorFlow's global seed once a compiled model is
    cached: `tf.random.set_seed` retraces every tf.function (~12 s per fold for the ResNet50 U-Net), and
    Keras 3 layers (initializers, dropout) draw from Keras' own seed generators, which this resets."""
    import keras

    if not _cached:
        keras.utils.set_random_seed(int(seed))
        return
    import random

    import numpy as np
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, int(seed))
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(int(seed))
    np.random.seed(int(seed))


def allocator() -> str:
    """The malloc this process runs on: ``tcmalloc`` / ``jemalloc`` when one is loaded (LD_PRELOAD), else
    ``glibc`` (read from /proc/self/maps; no /proc: ``unknown``)."""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return "unknown"
    # libjemalloc / libtcmalloc only: pyarrow's bundled jemalloc is private to Arrow, not the process's malloc
    found = [name for name in FAST_ALLOCATORS if f"lib{name}" in maps]
    return found[0] if found else "glibc"


def warn_slow_allocator() -> None:
    """Once per process: a warning when TensorFlow trains on the CPU with glibc's malloc."""
    global _allocator_checked
    if _allocator_checked:
        return
    _allocator_checked = True
    import tensorflow as tf

    if allocator() == "glibc" and not tf.config.list_physical_devices("GPU"):
        import warnings

        warnings.warn("TensorFlow trains on the CPU with glibc's malloc: about 2x slower here than with tcmalloc. "
                      "Run through `bash run.sh` (it preloads tcmalloc), or set LD_PRELOAD to "
                      "libtcmalloc_minimal.so.4 (Debian: apt-get install libtcmalloc-minimal4)", stacklevel=2)


def forget_compiled() -> None:
    """Drop the cached model (tests; a caller that wants the memory back)."""
    _cached.clear()


def reset_optimizer(optimizer: Any) -> None:
    """Zero every slot and the step counter, keeping the learning rate: a fresh optimizer's state (the
    learning rate is part of the reuse key, so the variable already holds this fold's)."""
    import numpy as np

    lr_variable = getattr(optimizer, "_learning_rate", None)
    for v in optimizer.variables:
        if v is not lr_variable:
            v.assign(np.zeros(tuple(v.shape), dtype=v.dtype))


def _same_variables(a: Any, b: Any) -> bool:
    va, vb = a.variables, b.variables
    # shapes and dtypes, not paths: auto-named layers (conv2d_7) differ from one build to the next
    return len(va) == len(vb) and all(tuple(x.shape) == tuple(y.shape) and x.dtype == y.dtype for x, y in zip(va, vb))
