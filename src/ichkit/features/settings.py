"""Feature settings: everything a feature value depends on (its fingerprint keys the cache), read from the
`features:` and `prepare.windows` sections of default.yaml."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Bump when the definition of any feature changes: cached files computed by older code are then redone.
FEATURE_VERSION = 2
FEATURE_SETS: tuple[str, ...] = ("pixels", "radiomic")
PIXEL_PREFIX = "px_"


class FeatureError(ValueError):
    """A cached image or feature file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class FeatureSettings:
    """Everything the feature values depend on; its fingerprint keys the cache."""

    windows: tuple[tuple[str, float, float], ...]  # (name, centre, width) in the cached channel order
    pixel_size: int = 32
    blood_hu: tuple[float, float] = (40.0, 100.0)  # histogram range: acute blood and its partial volume
    clot_hu: tuple[float, float] = (50.0, 100.0)   # hyperdense components, above grey matter (~35-45 HU)
    hist_bins: int = 6
    bone_hu: float = 300.0          # skull threshold
    csf_hu: tuple[float, float] = (-5.0, 20.0)
    brain_erode_px: int = 2         # keeps skull partial volume (which looks like blood) out of the brain
    min_blood_px: int = 12          # smaller hyperdense specks are noise at 256 px
    table_contact_px: float = 3.0   # "touching the inner table" = within this distance of it
    glcm_levels: int = 32

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "FeatureSettings":
        f = cfg.get("features", {})
        windows = tuple((str(name), float(c), float(w)) for name, (c, w) in cfg["prepare"]["windows"].items())
        if len(windows) != 3:
            raise FeatureError(f"prepare.windows must name 3 windows (the cached channels), got {len(windows)}")
        defaults = cls(windows=windows)
        kw: dict[str, Any] = {}
        for key, default in asdict(defaults).items():
            if key == "windows" or key not in f:
                continue
            value = f[key]
            kw[key] = tuple(float(v) for v in value) if isinstance(default, tuple) else type(default)(value)
        settings = cls(windows=windows, **kw)
        for key in ("blood_hu", "clot_hu", "csf_hu"):
            lo, hi = getattr(settings, key)
            if not lo < hi:
                raise FeatureError(f"features.{key} must be [low, high] with low < high, got {[lo, hi]}")
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
