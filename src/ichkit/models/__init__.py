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

# family -> module that registers its models on import
FAMILY_MODULES: dict[str, str] = {"classical": "ichkit.models.classical", "cnn": "ichkit.models.cnn"}
FAMILY_MODULES["stack"] = "ichkit.models.stack"  # the meta-learner on first-level OOF (ichkit stack)


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its family, the feature sets it reads, a factory and an Optuna search space.

    build(params, seed) returns an unfitted scikit-learn estimator whose `predict_proba` gives one column
    per class seen in fit; `params` is `defaults` updated with config / tuned values. suggest(trial)
    returns a dict of the tunable params (the others keep their defaults).
    """

    name: str
    family: str
    features: tuple[str, ...]
    build: Callable[[dict[str, Any], int], Any]
    suggest: Callable[[Any], dict[str, Any]]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

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
                raise ValueError(f"model {self.name}: unknown params {unknown}; known: {sorted(out)}")
            out.update(over)
        return out


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED: set[str] = set()


def register(spec: ModelSpec) -> ModelSpec:
    if spec.family not in FAMILY_MODULES:
        raise ValueError(f"model {spec.name}: unknown family {spec.family!r}; expected one of {sorted(FAMILY_MODULES)}")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"model {spec.name} is registered twice")
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
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def list_models(family: str | None = None) -> list[str]:
    """Registered model names (of one family if given), sorted."""
    _load_families()
    if family is not None and family not in FAMILY_MODULES:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILY_MODULES)}")
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)
