"""One configuration: the packaged default.yaml, merged with an optional user file and `--set` overrides."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = resources.files("ichkit") / "default.yaml"


def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (['section', 'key'], value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load default.yaml, merge `path` over it, then apply `section.key=value` overrides."""
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        user = yaml.safe_load(p.read_text()) or {}
        if not isinstance(user, dict):
            raise ValueError(f"{p}: top level must be a mapping of sections")
        cfg = _merge(cfg, user)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return cfg
