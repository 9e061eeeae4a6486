"""A model's parameters: its defaults, then the config, then what `ichkit tune` saved (the fingerprint's
``params`` field is exactly this)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ichkit.errors import IchkitError


class ParamsError(IchkitError):
    """Parameters that cannot be used; the message names the file or setting."""


def params_path(work: Path | str, model: str) -> Path:
    """Where `ichkit tune` saves a model's best parameters."""
    return Path(work) / "params" / f"{model}.json"


def read_tuned_params(work: Path | str, model: str) -> dict[str, Any] | None:
    path = params_path(work, model)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ParamsError(f"{path}: not valid JSON ({exc}); re-run `ichkit tune --model {model}` or delete it") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), dict):
        raise ParamsError(f"{path}: expected an object with a 'params' object; re-run `ichkit tune --model {model}`")
    return saved["params"]


def resolve_params(spec, cfg: dict[str, Any], use_tuned: bool = True) -> tuple[dict[str, Any], str]:
    """(params, where they came from): defaults < features.pca_components, train.n_jobs (models that have
    them) < config models.<name> < the tuned file."""
    work = Path(cfg["paths"]["work"])
    layers: list[dict[str, Any] | None] = []
    sources = ["defaults"]
    if "pca_components" in spec.defaults and cfg.get("features", {}).get("pca_components") is not None:
        layers.append({"pca_components": int(cfg["features"]["pca_components"])})
        sources.append("features.pca_components")
    if "n_jobs" in spec.defaults and cfg.get("train", {}).get("n_jobs") is not None:
        layers.append({"n_jobs": int(cfg["train"]["n_jobs"])})
        sources.append("train.n_jobs")
    configured = (cfg.get("models") or {}).get(spec.name)
    if configured:
        layers.append(dict(configured))
        sources.append(f"config models.{spec.name}")
    tuned = read_tuned_params(work, spec.name) if use_tuned else None
    if tuned:
        layers.append(tuned)
        sources.append(f"tuned {params_path(work, spec.name)}")
    try:
        return spec.params(*layers), " < ".join(sources)
    except ValueError as exc:  # an unknown key in the config or the tuned file: say where params came from
        raise ParamsError(f"{exc}; params from {' < '.join(sources)}") from None
