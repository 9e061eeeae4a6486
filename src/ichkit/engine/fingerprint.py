"""Fold fingerprints: what made a (model, fold) part, so a stale part is never reused.

A fingerprint is a JSON object of everything that changes a fold's outputs:

- ``params``: the resolved parameters (defaults < config ``models.<name>`` < tuned file);
- ``features``: a digest per feature set the model reads (`ichkit.features.FeatureSettings.for_set`);
- ``config``: the values of the config keys the family declares (`ModelSpec.config_keys`, e.g. image size);
- ``folds``: a digest of folds.csv (which images, which patients, which fold), and ``test_images`` a digest
  of the test ids predicted;
- ``settings``: the train settings that change outputs (seed, class_weight, rsna_head, task, inner
  validation fraction);
- ``code_version``: the family trainer's `FoldTrainer.code_version`.

`changes(old, new)` lists the dotted fields that differ ("params.C: 1.0 -> 0.5"), which the driver prints
when it retrains a fold.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FINGERPRINT_FILE = "fingerprint.json"


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value (sorted keys)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def config_value(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def feature_digests(cfg: dict[str, Any], feature_sets: tuple[str, ...]) -> dict[str, str]:
    if not feature_sets:
        return {}
    from ichkit.features import FeatureSettings

    settings = FeatureSettings.from_config(cfg)
    return {s: digest(settings.for_set(s)) for s in feature_sets}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def make_fingerprint(*, spec, params: dict[str, Any], cfg: dict[str, Any], folds_digest: str,
                     test_ids: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    return _jsonable({
        "model": spec.name,
        "family": spec.family,
        "code_version": str(spec.code_version),
        "params": params,
        "features": feature_digests(cfg, tuple(spec.features)),
        "config": {key: config_value(cfg, key) for key in spec.config_keys},
        "folds": folds_digest,
        "test_images": digest(sorted(test_ids)),
        "settings": settings,
    })


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Dotted fields that differ between two fingerprints, as "field: old -> new" (empty when equal)."""
    if old is None:
        return ["no fingerprint (made by an older version or interrupted)"]
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {json.dumps(a.get(key, '<absent>'))} -> {json.dumps(b.get(key, '<absent>'))}")
    return out


def read_fingerprint(fold_dir: Path | str, name: str = FINGERPRINT_FILE) -> dict[str, Any] | None:
    path = Path(fold_dir) / name
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a damaged fingerprint is a missing one: the fold is retrained
    return value if isinstance(value, dict) else None


def write_fingerprint(fold_dir: Path | str, fingerprint: dict[str, Any], name: str = FINGERPRINT_FILE) -> Path:
    from ichkit.files import write_text_atomic

    path = Path(fold_dir) / name
    write_text_atomic(path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    return path
