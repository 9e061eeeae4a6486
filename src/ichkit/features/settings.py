"""Feature settings: everything a feature value depends on (its fingerprint keys the cache), read from the
`features:` and `prepare.windows` sections of default.yaml."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ichkit.errors import IchkitError

# Bump when the definition of any feature changes: cached files computed by older code are then redone.
FEATURE_VERSION = 4
FEATURE_SETS: tuple[str, ...] = ("pixels", "radiomic")
PIXEL_PREFIX = "px_"


class FeatureError(IchkitError):
    """A cached image or feature file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class FeatureSettings:
    """Everything the feature values depend on; its fingerprint keys the cache. Every value comes from the
    `features:` section of default.yaml (its comments say what each one is); there are no defaults here."""

    windows: tuple[tuple[str, float, float], ...]  # (name, centre, width) in the cached channel order
    pixel_size: int
    blood_hu: tuple[float, float]
    clot_hu: tuple[float, float]
    hist_bins: int
    bone_hu: float
    csf_hu: tuple[float, float]
    brain_erode_px: int
    min_blood_px: int
    table_contact_px: float
    glcm_levels: int
    smooth_px: int
    skull_close_px: tuple[int, ...]
    closed_skull_fill: float
    min_compartment: float
    min_brain_px: int
    rim_depth: float
    deep_depth: float
    deep_blood_depth: float
    midline_width: float
    ventricle_near_px: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "FeatureSettings":
        f = cfg.get("features", {})
        windows = tuple((str(name), float(c), float(w)) for name, (c, w) in cfg["prepare"]["windows"].items())
        if len(windows) != 3:
            raise FeatureError(f"prepare.windows must name 3 windows (the cached channels), got {len(windows)}")
        kw: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name == "windows":
                continue
            if spec.name not in f:
                raise FeatureError(f"features.{spec.name} is missing from the configuration (default.yaml has it)")
            value, kind = f[spec.name], str(spec.type)
            try:
                if kind.startswith("tuple[int"):
                    kw[spec.name] = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
                elif kind.startswith("tuple"):
                    kw[spec.name] = tuple(float(v) for v in value)
                else:
                    kw[spec.name] = {"int": int, "float": float}[kind](value)
            except (TypeError, ValueError):
                raise FeatureError(f"features.{spec.name}: cannot read {value!r} as {kind}") from None
        settings = cls(windows=windows, **kw)
        for key in ("blood_hu", "clot_hu", "csf_hu"):
            lo, hi = getattr(settings, key)
            if not lo < hi:
                raise FeatureError(f"features.{key} must be [low, high] with low < high, got {[lo, hi]}")
        if not settings.skull_close_px or any(r < 1 for r in settings.skull_close_px):
            raise FeatureError(f"features.skull_close_px must list closing radii >= 1, got {list(settings.skull_close_px)}")
        return settings

    def for_set(self, feature_set: str) -> dict[str, Any]:
        """The settings one feature set depends on (so changing a radiomic threshold keeps the pixels)."""
        if feature_set == "pixels":
            return {"version": FEATURE_VERSION, "pixel_size": self.pixel_size, "windows": self.windows}
        if feature_set == "radiomic":
            d = asdict(self)
            d.pop("pixel_size")
            return {"version": FEATURE_VERSION, **d}
        raise FeatureError(f"unknown feature set {feature_set!r}; expected one of {FEATURE_SETS}")
