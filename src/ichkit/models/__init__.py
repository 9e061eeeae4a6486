"""One registry for every model family: what each named model is fed, how it is built, how it is tuned.

A model family module (``ichkit.models.classical`` now, ``ichkit.models.cnn`` when it exists) calls
`register` at import time; `get_model_spec` / `list_models` import the family modules on first use, so
importing this package stays cheap (no scikit-learn until a model is built).

The model name is what the OOF and test files are named after, so it says what was fed:
``<estimator>_<feature sets>``, e.g. ``logreg_pixels``, ``lgbm_radiomic``, ``lgbm_both``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ichkit.errors import IchkitError

# family -> module that registers its models on import
FAMILY_MODULES: dict[str, str] = {"classical": "ichkit.models.classical", "cnn": "ichkit.models.cnn",
                                  "seg": "ichkit.models.seg"}
FAMILY_MODULES["stack"] = "ichkit.models.stack"  # the meta-learner on first-level OOF (ichkit stack)


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its family, what it reads, how the fold driver trains it, its Optuna search space.

    - `trainer`: the family's `ichkit.engine.trainer.FoldTrainer` subclass; the driver builds one per
      (model, fold) with `make_trainer(params, ctx)` = ``trainer(spec, params, ctx)`` and restores a fitted
      one with ``trainer.load(fold_dir, ctx)``; its ``code_version`` enters the fold fingerprint.
    - `defaults`: every parameter with its default; `params(...)` layers config / tuned values over them.
    - `suggest(trial)`: the tunable params (the others keep their defaults).
    - `build(params, seed)`: for the classical family, the unfitted scikit-learn estimator.
    - `num_cpus` / `num_gpus`: one Ray task's resources (GPUs only asked for where the cluster has them).
    - `config_keys`: dotted config keys (or sections) whose values change the outputs (e.g.
      ``prepare.cls_size``); they enter the fold fingerprint.
    - `outputs`: the module of the family's output contract (validate / write the fold parts, merge them):
      `ichkit.oof` for classifiers, `ichkit.models.seg.results` for segmenters (see `ichkit.engine.driver`).
    - `setup(cfg, image_ids, feature_sets, progress)`: optional, run once on the driver before any unit
      (the classical family computes the cached features there, with all cores and a progress bar).
    """

    name: str
    family: str
    features: tuple[str, ...]
    build: Callable[[dict[str, Any], int], Any] | None = None
    suggest: Callable[[Any], dict[str, Any]] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    trainer: type | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    config_keys: tuple[str, ...] = ()
    setup: Callable[..., None] | None = None
    outputs: str = "ichkit.oof"

    @property
    def code_version(self) -> str:
        return str(getattr(self.trainer, "code_version", "1"))

    def make_trainer(self, params: dict[str, Any], ctx: Any):
        """A fresh FoldTrainer of this model for one fold."""
        if self.trainer is None:
            raise ModelError(f"model {self.name}: its family registered no trainer")
        return self.trainer(self, params, ctx)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def params(self, *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """The defaults updated with each override in turn; unknown keys are an error naming the model."""
        out = dict(self.defaults)
        for over in overrides:
            if not over:
                continue
            unknown = sorted(set(over) - set(out))
            if unknown:
                import difflib

                hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, list(out), 1)) else repr(k)
                         for k in unknown]
                raise ModelError(f"model {self.name}: unknown params {', '.join(hints)}; known: {sorted(out)}")
            out.update(over)
        return out


class ModelError(IchkitError):
    """An unknown model or family, or a model registered twice."""


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED: set[str] = set()


def register(spec: ModelSpec) -> ModelSpec:
    if spec.family not in FAMILY_MODULES:
        raise ModelError(f"model {spec.name}: unknown family {spec.family!r}; expected one of {sorted(FAMILY_MODULES)}")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ModelError(f"model {spec.name} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_families() -> None:
    for family, module in FAMILY_MODULES.items():
        if family in _LOADED:
            continue
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
        _LOADED.add(family)


def get_model_spec(name: str) -> ModelSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(name, list(_REGISTRY), 1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ModelError(f"unknown model {name!r}{hint}; registered: {', '.join(sorted(_REGISTRY))}") from None


def list_models(family: str | None = None) -> list[str]:
    """Registered model names (of one family if given), sorted."""
    _load_families()
    if family is not None and family not in FAMILY_MODULES:
        raise ModelError(f"unknown family {family!r}; expected one of {sorted(FAMILY_MODULES)}")
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)
