"""One configuration: the packaged default.yaml, merged with an optional user file and `--set` overrides.

default.yaml is the schema as well as the defaults: every key a user file or ``--set`` names must exist
there (an unknown key is an error naming the nearest valid one, so a typo is never silently ignored), and
its value must have the default's type (``--set folds.k=abc`` is an error naming the key and the value).
A default of ``null`` accepts any value; ``int`` accepts only integers, ``float`` integers or floats, a
list a list (of numbers where the default's are numbers). Two mappings take names the user chooses:
``models`` (model name -> parameter overrides; the names and parameters are checked against the model
registry when a stage uses them) and ``prepare.windows`` (window name -> [centre, width]).
"""

from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ichkit.errors import IchkitError

DEFAULT_CONFIG = resources.files("ichkit") / "default.yaml"
# dotted paths of mappings whose keys are the user's names, with a check of each value
OPEN_MAPPINGS: dict[str, str] = {"models": "mapping", "prepare.windows": "window"}


class ConfigError(IchkitError):
    """A config key that does not exist or a value of the wrong type; the message names both."""


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
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "the string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}" if kind == "the string" else f"{kind} ({value!r})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return _is_number(value)
    if isinstance(default, str):
        return isinstance(value, str) or value is None  # null: "unset" (e.g. paths.input: demo data)
    if isinstance(default, list):
        if not isinstance(value, list):
            return False
        if default and all(_is_number(v) for v in default):
            return all(_is_number(v) for v in value)
        if default and all(isinstance(v, str) for v in default):
            return all(isinstance(v, str) for v in value)
        return True
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def _expected(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, list):
        return "a list of numbers" if default and all(_is_number(v) for v in default) else "a list"
    return "a mapping"


def check(value: Any, default: Any, path: str, source: str) -> None:
    """Check `value` (at dotted `path`) against the default tree; raise ConfigError naming `source`."""
    open_kind = OPEN_MAPPINGS.get(path)
    if open_kind is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {path} must be a mapping, got {_describe(value)}")
        for name, item in value.items():
            if open_kind == "window" and not (isinstance(item, list) and len(item) == 2 and all(map(_is_number, item))):
                raise ConfigError(f"{source}: {path}.{name} must be [centre, width] in HU, got {_describe(item)}")
            if open_kind == "mapping" and not isinstance(item, dict):
                raise ConfigError(f"{source}: {path}.{name} must be a mapping of parameters, got {_describe(item)}")
        return
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {path or 'the top level'} must be a mapping of keys, got {_describe(value)}")
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if key not in default:
                near = difflib.get_close_matches(str(key), [str(k) for k in default], n=1, cutoff=0.5)
                hint = f"did you mean {(path + '.' if path else '') + near[0]}?" if near else \
                    f"valid keys{' of ' + path if path else ''}: {', '.join(map(str, default))}"
                raise ConfigError(f"{source}: unknown config key {child} ({hint})")
            check(item, default[key], child, source)
        return
    if not _type_ok(value, default):
        raise ConfigError(f"{source}: {path} = {_describe(value)} is not {_expected(default)} "
                          f"(default: {default!r})")


def load_defaults() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load default.yaml, merge `path` over it, then apply `section.key=value` overrides (each checked)."""
    defaults = load_defaults()
    cfg = copy.deepcopy(defaults)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        user = yaml.safe_load(p.read_text()) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        check(user, defaults, "", f"config file {p}")
        cfg = _merge(cfg, user)
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        check(nested, defaults, "", f"--set {text}")
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return cfg
