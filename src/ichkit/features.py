"""Per-image features for the classical models: downsampled window pixels and radiomic / anatomical
measurements of the Hounsfield-unit map. Stage `features`; `train` and `tune` call `load_features`.

Two feature sets, each cached as ``<work>/features/<set>.parquet`` (one row per image id) with a
``<set>.json`` sidecar holding the settings it was computed with:

- ``pixels``: each cached uint8 window channel downsampled (area averaging) to ``pixel_size`` squared and
  flattened, ``3 * pixel_size**2`` columns ``px_<window>_<row>_<col>``. PCA is fitted inside each model's
  pipeline on the training folds only, never here.
- ``radiomic``: ~50 scalar measurements from the HU map (brain mask, blood histogram, hyperdense
  components and their position and shape, midline / ventricle proximity, GLCM texture). Every column is
  documented in `RADIOMIC_DOC` (and the table in README.md); every value is finite, so every model
  family can read them without imputation.

A cached file is extended only with the ids it lacks, and recomputed from scratch when the settings (or
`FEATURE_VERSION`) change. Computation runs over processes with a tqdm progress bar.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichkit.files import atomic_path, write_text_atomic
from ichkit.errors import IchkitError

# Bump when the definition of any feature changes: cached files computed by older code are then redone.
FEATURE_VERSION = 2
FEATURE_SETS: tuple[str, ...] = ("pixels", "radiomic")
PIXEL_PREFIX = "px_"


class FeatureError(IchkitError):
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


# --------------------------------------------------------------------------------------------------
# pixels


def pixel_features(cls_image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) windows -> uint8 vector (3 * size * size,), channel-major, area-averaged."""
    import cv2

    if cls_image.ndim != 3 or cls_image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) window image, got shape {cls_image.shape}")
    small = cv2.resize(np.ascontiguousarray(cls_image), (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small.transpose(2, 0, 1)).reshape(-1)


def pixel_columns(settings: FeatureSettings) -> list[str]:
    n = settings.pixel_size
    return [f"{PIXEL_PREFIX}{w}_{r:02d}_{c:02d}" for w, _, _ in settings.windows for r in range(n) for c in range(n)]


# --------------------------------------------------------------------------------------------------
# radiomic

# name -> (definition, why it carries the physics of a bleed). Names with <window> / <i> are patterns.
RADIOMIC_DOC: dict[str, tuple[str, str]] = {
    "brain_area_frac": ("intracranial mask area / image area",
                        "slice level: small near the vertex and skull base, large at the ventricles"),
    "brain_mask_from_hull": ("1 if the skull did not close and the mask came from its convex hull",
                             "flags skull-base / vertex slices where the mask is less reliable"),
    "hu_mean": ("mean HU inside the brain", "global density shift: diffuse blood or oedema"),
    "hu_std": ("HU standard deviation inside the brain", "heterogeneity: clots add a bright mode"),
    "csf_frac": ("fraction of brain pixels in the CSF range (features.csf_hu)",
                 "ventricle / sulcal size; blood displaces or fills CSF spaces"),
    "calcific_frac": ("fraction of brain pixels above blood_hu high (calcification, bone partial volume)",
                      "separates physiological calcification from blood"),
    "blood_hist_<i>": ("fraction of brain pixels in bin i of blood_hu split into hist_bins equal bins",
                       "acute blood is 50-90 HU depending on haematocrit; the shape of this tail is the bleed"),
    "win_<window>_mean": ("mean of the HU map clipped to the window and scaled to [0, 1], over the head "
                          "(skull and everything inside it)",
                          "what a radiologist sees in that window: brain / subdural / bone (the skull)"),
    "win_<window>_std": ("standard deviation of the same", "contrast inside the window"),
    "win_<window>_skew": ("skewness of the same", "a bright tail (blood) skews right"),
    "win_<window>_kurt": ("excess kurtosis of the same", "a small bright mode raises the tails"),
    "blood_count": ("number of hyperdense components (clot_hu, >= min_blood_px pixels, smoothed HU)",
                    "one focal clot vs scattered sulcal blood (subarachnoid) vs several lesions (multi)"),
    "blood_count_extra_axial": ("components reaching the inner table (within table_contact_px of the brain "
                                "mask's edge)", "epidural / subdural / convexity SAH lie against the skull"),
    "blood_count_intra_axial": ("components that do not reach it", "parenchymal and ventricular blood; one of "
                                "each kind is the commonest multi pattern"),
    "blood_area_frac": ("total hyperdense area / brain area", "bleed volume on this slice"),
    "blood_mean_hu": ("mean HU inside the components (0 if none)",
                      "clotted blood is denser than blood diluted by CSF (SAH, IVH)"),
    "blood_dist_table_mean": ("mean distance of blood pixels to the inner skull table / brain inradius",
                              "extra-axial (epidural, subdural) ~0; intra-axial larger"),
    "blood_dist_centre_mean": ("mean distance of blood pixels to the brain centroid / brain radius",
                               "central (ventricles, deep nuclei) vs peripheral"),
    "blood_peripheral_frac": ("fraction of blood pixels within table_contact_px of the brain mask's edge "
                              "(brain_erode_px + table_contact_px of the inner table)",
                              "blood lying against the skull: epidural / subdural"),
    "blood_deep_frac": ("fraction of blood pixels farther than half the inradius from the table",
                        "deep parenchymal or intraventricular blood"),
    "blood_midline_frac": ("fraction of blood pixels within 8% of the brain width of the midline axis",
                           "falx / interhemispheric fissure (SAH, falcine subdural) and ventricles"),
    "blood_near_ventricle_frac": ("fraction of blood pixels within 3 px of the ventricles (deep CSF)",
                                  "intraventricular blood fills or borders the ventricles"),
    "rim_hu_p99": ("99th percentile of the median-smoothed HU in the rim (within 0.2 inradius of the table)",
                   "threshold-free: thin or CSF-diluted blood along the surface (SAH, thin subdural)"),
    "deep_hu_p99": ("99th percentile of the median-smoothed HU deeper than 0.35 inradius",
                    "threshold-free: diluted blood in the ventricles or a small deep clot"),
    "ventricle_frac": ("deep CSF area (CSF range, > 0.35 inradius from the table) / brain area",
                       "ventricles; blood casts them or mass effect compresses them"),
    "largest_area_frac": ("largest component area / brain area", "size of the dominant clot"),
    "largest_eccentricity": ("eccentricity of the largest component's ellipse",
                             "elongated crescents and lenses vs round parenchymal clots"),
    "largest_solidity": ("area / convex hull area of the largest component",
                         "a lens (epidural) is convex (~1); a crescent (subdural) is concave (low)"),
    "largest_concavity": ("(convex hull area - area) of the largest component / brain area",
                          "the brain a crescent wraps around: large for a long subdural, ~0 for a lens"),
    "largest_extent": ("area / bounding box area of the largest component", "fills its box: blob vs arc"),
    "largest_compactness": ("4 pi area / perimeter^2", "round (1) vs thin, branching sulcal blood (~0)"),
    "largest_thickness_ratio": ("max thickness (2 x max inner distance) / major axis length",
                                "a biconvex lens is thick for its length; a crescent is thin"),
    "largest_depth_uniformity": ("mean / max depth from the inner table over the 3-degree sectors the "
                                 "component covers (seen from the brain centroid)",
                                 "a lens bulges in the middle and tapers to both tips (low); a crescent "
                                 "keeps an even depth along the table (high)"),
    "largest_table_contact": ("fraction of the component's boundary pixels within table_contact_px of the "
                              "brain mask's edge",
                              "extra-axial collections lie along the inner table"),
    "largest_arc_span": ("angle the component subtends around the brain centroid / 360 degrees",
                         "subdural crosses sutures (wide arc); epidural is bounded by them (short arc)"),
    "glcm_contrast": ("GLCM contrast, brain window inside the brain (distances 1, 2; 4 angles; mean)",
                      "local density jumps at clot edges"),
    "glcm_dissimilarity": ("GLCM dissimilarity (same GLCM)", "as contrast, linear in the grey difference"),
    "glcm_homogeneity": ("GLCM homogeneity (same GLCM)", "smooth parenchyma vs textured blood"),
    "glcm_energy": ("GLCM energy (same GLCM)", "uniformity of the grey-level pairs"),
    "glcm_correlation": ("GLCM correlation (same GLCM)", "linear structure of the texture"),
}


def radiomic_columns(settings: FeatureSettings) -> list[str]:
    """The radiomic column names in their fixed order, patterns expanded for these settings."""
    names: list[str] = []
    for key in RADIOMIC_DOC:
        if key == "blood_hist_<i>":
            names += [f"blood_hist_{i}" for i in range(settings.hist_bins)]
        elif key.startswith("win_<window>_"):
            stat = key.rsplit("_", 1)[1]
            if stat == "mean":  # expand the four window statistics together, window by window
                names += [f"win_{w}_{s}" for w, _, _ in settings.windows for s in ("mean", "std", "skew", "kurt")]
        else:
            names.append(key)
    return names


def _disk(radius: int) -> np.ndarray:
    from skimage.morphology import disk

    return disk(radius).astype(bool)


def _large_components(mask: np.ndarray, min_fraction: float = 0.0) -> np.ndarray:
    """The components of `mask` covering at least `min_fraction` of the image; the largest if none does."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= min_fraction * mask.size) if min_fraction > 0 else []
    if len(keep) == 0:
        keep = [int(sizes.argmax())]
    return np.isin(labels, keep)


# smallest intracranial compartment kept, as a fraction of the image (0.5% = 328 px at 256 x 256)
MIN_COMPARTMENT = 0.005


@dataclass
class HeadMasks:
    """Masks of one slice: `intracranial` (inside the skull), `head` (skull + inside), `brain` (eroded)."""

    intracranial: np.ndarray
    head: np.ndarray
    brain: np.ndarray
    from_hull: bool


def head_masks(hu: np.ndarray, bone_hu: float = 300.0, erode_px: int = 2) -> HeadMasks:
    """Find the skull and the region it encloses.

    Threshold bone, close small gaps (sutures, partial volume after resizing), fill holes, drop the bone and
    air (sinuses), keep the compartments covering at least `MIN_COMPARTMENT` of the image (at the skull base
    the anterior, middle and posterior fossae are separate; the orbits are smaller and drop out). Where the
    skull is open (vertex, foramen magnum) the filled region is nearly empty and the convex hull of the bone
    stands in for it. The brain mask is the
    intracranial region eroded by `erode_px`, which keeps skull partial volume (it looks like blood) out.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    bone = hu >= bone_hu
    tissue = hu > -100
    from_hull = False
    if not bone.any():
        # no skull in view: the largest soft-tissue region is the best guess
        from_hull = True
        intracranial = ndi.binary_fill_holes(_large_components(tissue))
        head = intracranial
    else:
        closed = ndi.binary_closing(bone, structure=_disk(3))
        head = ndi.binary_fill_holes(closed)
        inside = head & ~closed & tissue
        rows, cols = np.nonzero(closed)
        box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        # a closed skull ring encloses ~half of its bounding box or more; an open one next to nothing
        if inside.sum() < 0.3 * box_area:
            from_hull = True
            head = convex_hull_image(closed)
            inside = head & ~closed & tissue
        intracranial = ndi.binary_fill_holes(_large_components(inside, MIN_COMPARTMENT))
    brain = ndi.binary_erosion(intracranial, structure=_disk(erode_px)) if erode_px > 0 else intracranial
    return HeadMasks(intracranial=intracranial, head=head, brain=brain, from_hull=from_hull)


def brain_mask(hu: np.ndarray, bone_hu: float = 300.0, erode_px: int = 2) -> np.ndarray:
    """The eroded intracranial mask: pixels whose density is the brain's (and its blood's)."""
    return head_masks(hu, bone_hu, erode_px).brain


def _moments(values: np.ndarray) -> tuple[float, float, float, float]:
    from scipy import stats

    if values.size < 3 or float(values.std()) < 1e-9:
        return float(values.mean()) if values.size else 0.0, 0.0, 0.0, 0.0
    return (float(values.mean()), float(values.std()), float(stats.skew(values)), float(stats.kurtosis(values)))


def _glcm(window01: np.ndarray, mask: np.ndarray, levels: int) -> dict[str, float]:
    """GLCM properties of the masked image; grey level 0 is reserved for 'outside' and dropped."""
    from skimage.feature import graycomatrix, graycoprops

    props = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
    if mask.sum() < 16:
        return {f"glcm_{p}": 0.0 for p in props}
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    q = np.where(mask, 1 + np.minimum((window01 * levels).astype(np.int64), levels - 1), 0)[box].astype(np.uint8)
    glcm = graycomatrix(q, distances=[1, 2], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                        levels=levels + 1, symmetric=True, normed=False)[1:, 1:].astype(np.float64)
    totals = glcm.sum(axis=(0, 1), keepdims=True)
    glcm = np.divide(glcm, totals, out=np.zeros_like(glcm), where=totals > 0)
    out = {}
    for p in props:
        v = graycoprops(glcm, p)
        out[f"glcm_{p}"] = float(np.nan_to_num(v, nan=0.0).mean())
    return out


def _arc_span(angles: np.ndarray) -> float:
    """Fraction of the full circle that pixels at these angles cover (2 pi minus the widest gap)."""
    angles = np.sort(angles)
    if angles.size < 2:
        return 0.0
    gaps = np.diff(np.append(angles, angles[0] + 2 * np.pi))
    return float((2 * np.pi - gaps.max()) / (2 * np.pi))


def _depth_uniformity(depth: np.ndarray, angles: np.ndarray, sector_deg: float = 3.0) -> float:
    """mean / max over angular sectors of the deepest pixel in each sector (depth = distance to the table)."""
    sectors = np.floor((angles + np.pi) / np.deg2rad(sector_deg)).astype(np.int64)
    deepest = np.zeros(int(sectors.max()) + 1)
    np.maximum.at(deepest, sectors, depth)
    covered = deepest[np.bincount(sectors, minlength=deepest.size) > 0]
    return float(covered.mean() / covered.max()) if covered.max() > 0 else 1.0


def _largest_shape(region, labels: np.ndarray, dist_table: np.ndarray, centre: tuple[float, float],
                   brain_area: float, contact_px: float) -> dict[str, float]:
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    comp = region.image  # bool, cropped to the component's bounding box
    inner = ndi.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    r0, c0, r1, c1 = region.bbox
    boundary = find_boundaries(labels[r0:r1, c0:c1] == region.label, mode="inner") & comp
    rows, cols = region.coords[:, 0], region.coords[:, 1]
    angles = np.arctan2(rows - centre[0], cols - centre[1])
    perimeter = float(region.perimeter)
    return {
        "largest_area_frac": float(region.area) / brain_area,
        "largest_eccentricity": float(region.eccentricity),
        "largest_solidity": float(region.solidity),
        "largest_concavity": float(region.area_convex - region.area) / brain_area,
        "largest_extent": float(region.extent),
        "largest_compactness": float(min(1.0, 4 * np.pi * region.area / perimeter**2)) if perimeter > 0 else 1.0,
        "largest_thickness_ratio": float(2 * inner.max() / max(region.axis_major_length, 1.0)),
        "largest_depth_uniformity": _depth_uniformity(dist_table[rows, cols], angles),
        "largest_table_contact": float((dist_table[r0:r1, c0:c1][boundary] <= contact_px).mean()) if boundary.any() else 0.0,
        "largest_arc_span": _arc_span(angles),
    }


def radiomic_features(hu: np.ndarray, settings: FeatureSettings) -> dict[str, float]:
    """All radiomic features of one HU slice, keyed and ordered as `radiomic_columns(settings)`."""
    from scipy import ndimage as ndi
    from skimage.measure import label, regionprops

    if hu.ndim != 2:
        raise ValueError(f"expected a 2-D HU map, got shape {hu.shape}")
    hu = hu.astype(np.float32)
    masks = head_masks(hu, settings.bone_hu, settings.brain_erode_px)
    region, brain = masks.intracranial, masks.brain
    cols = radiomic_columns(settings)
    f: dict[str, float] = dict.fromkeys(cols, 0.0)
    f["brain_mask_from_hull"] = float(masks.from_hull)
    n_brain = int(brain.sum())
    f["brain_area_frac"] = n_brain / brain.size
    if n_brain < 50:  # no brain on this slice (or not a head): every other feature stays 0
        return f

    # distances in the un-eroded intracranial region: 0 at the inner table, max at the deepest point
    dist_table = ndi.distance_transform_edt(region)
    inradius = float(dist_table.max())
    rr, cc = np.nonzero(brain)
    centre = (float(rr.mean()), float(cc.mean()))
    radius = float(np.sqrt(n_brain / np.pi))
    values = hu[brain]

    f["hu_mean"], f["hu_std"] = float(values.mean()), float(values.std())
    f["csf_frac"] = float(((values >= settings.csf_hu[0]) & (values <= settings.csf_hu[1])).mean())
    f["calcific_frac"] = float((values > settings.blood_hu[1]).mean())
    hist, _ = np.histogram(values, bins=settings.hist_bins, range=settings.blood_hu)
    for i, count in enumerate(hist):
        f[f"blood_hist_{i}"] = float(count) / n_brain
    head_values = hu[masks.head]
    for name, centre_hu, width in settings.windows:
        lo = centre_hu - width / 2
        scaled = np.clip((head_values - lo) / width, 0.0, 1.0)
        (f[f"win_{name}_mean"], f[f"win_{name}_std"], f[f"win_{name}_skew"], f[f"win_{name}_kurt"]) = _moments(scaled)

    # ventricles: CSF well away from the table (sulci and cisterns lie near it)
    csf = brain & (hu >= settings.csf_hu[0]) & (hu <= settings.csf_hu[1]) & (dist_table > 0.35 * inradius)
    ventricles = ndi.binary_opening(csf, structure=_disk(1))
    f["ventricle_frac"] = float(ventricles.sum()) / n_brain

    # hyperdense components on a median-smoothed map so single noisy pixels above grey matter don't count
    smooth = ndi.median_filter(hu, size=3)
    rim = brain & (dist_table <= 0.2 * inradius)
    deep = brain & (dist_table > 0.35 * inradius)
    f["rim_hu_p99"] = float(np.percentile(smooth[rim], 99)) if rim.any() else 0.0
    f["deep_hu_p99"] = float(np.percentile(smooth[deep], 99)) if deep.any() else 0.0
    clot = brain & (smooth >= settings.clot_hu[0]) & (smooth <= settings.clot_hu[1])
    clot = ndi.binary_opening(clot, structure=_disk(1))
    labels = label(clot, connectivity=2)
    regions = [r for r in regionprops(labels) if r.area >= settings.min_blood_px]
    if regions:
        keep = np.isin(labels, [r.label for r in regions])
        br, bc = np.nonzero(keep)
        d_table = dist_table[br, bc]
        contact_px = settings.brain_erode_px + settings.table_contact_px
        reaches_table = [float(dist_table[r.coords[:, 0], r.coords[:, 1]].min()) <= contact_px for r in regions]
        f["blood_count"] = float(len(regions))
        f["blood_count_extra_axial"] = float(sum(reaches_table))
        f["blood_count_intra_axial"] = float(len(regions) - sum(reaches_table))
        f["blood_area_frac"] = float(keep.sum()) / n_brain
        f["blood_mean_hu"] = float(smooth[keep].mean())
        f["blood_dist_table_mean"] = float(d_table.mean()) / inradius
        f["blood_dist_centre_mean"] = float(np.hypot(br - centre[0], bc - centre[1]).mean()) / radius
        f["blood_peripheral_frac"] = float((d_table <= contact_px).mean())
        f["blood_deep_frac"] = float((d_table > 0.5 * inradius).mean())
        # midline = the brain's long axis through its centroid (the head is longer front-to-back)
        head = regionprops(brain.astype(np.uint8))[0]
        theta = head.orientation  # angle between the row axis and the major axis
        axis = np.array([np.cos(theta), np.sin(theta)])  # (row, col) direction of the major axis
        off_axis = np.abs((br - centre[0]) * axis[1] - (bc - centre[1]) * axis[0])
        f["blood_midline_frac"] = float((off_axis <= 0.08 * head.axis_minor_length).mean())
        near_ventricle = ndi.binary_dilation(ventricles, structure=_disk(3)) if ventricles.any() else ventricles
        f["blood_near_ventricle_frac"] = float(near_ventricle[br, bc].mean())
        largest = max(regions, key=lambda r: r.area)
        f.update(_largest_shape(largest, labels, dist_table, centre, float(n_brain), contact_px))

    window_lo = settings.windows[0][1] - settings.windows[0][2] / 2
    brain_window = np.clip((hu - window_lo) / settings.windows[0][2], 0.0, 1.0)
    f.update(_glcm(brain_window, brain, settings.glcm_levels))
    return {k: float(np.nan_to_num(f[k], nan=0.0, posinf=0.0, neginf=0.0)) for k in cols}


# --------------------------------------------------------------------------------------------------
# the cache


def features_dir(work: Path | str) -> Path:
    return Path(work) / "features"


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _compute_one(work: str, image_id: str, settings: FeatureSettings, sets: tuple[str, ...]) -> dict[str, Any]:
    """Worker: both feature sets of one image, read from the prepared cache."""
    from ichkit.cache import ImageCache

    cache = ImageCache(work)
    out: dict[str, Any] = {}
    if "pixels" in sets:
        cls_image = cache.load("cls", image_id)
        if cls_image.dtype != np.uint8 or cls_image.ndim != 3 or cls_image.shape[2] != len(settings.windows):
            raise FeatureError(f"{cache.path('cls', image_id)}: expected uint8 (H, W, 3), got {cls_image.dtype} {cls_image.shape}")
        out["pixels"] = pixel_features(cls_image, settings.pixel_size)
    if "radiomic" in sets:
        hu = cache.load("hu", image_id)
        if hu.ndim != 2 or hu.dtype.kind not in "iuf":
            raise FeatureError(f"{cache.path('hu', image_id)}: expected a 2-D HU map, got {hu.dtype} {hu.shape}")
        out["radiomic"] = radiomic_features(hu, settings)
    return out


def _compute(work: Path, ids: Sequence[str], settings: FeatureSettings, sets: tuple[str, ...],
             workers: int, chunksize: int, progress: bool) -> dict[str, pd.DataFrame]:
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    import multiprocessing

    from tqdm import tqdm

    fn = partial(_compute_one, str(work), settings=settings, sets=sets)
    bar = tqdm(total=len(ids), desc=f"features ({'+'.join(sets)})", unit="img", disable=not progress)
    results: list[dict[str, Any]] = []
    if workers <= 1 or len(ids) < 2 * chunksize:
        for image_id in ids:
            results.append(fn(image_id))
            bar.update()
    else:
        # forkserver: safe when the parent already runs threads (BLAS, OpenMP in LightGBM)
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for r in pool.map(fn, ids, chunksize=chunksize):
                results.append(r)
                bar.update()
    bar.close()
    index = pd.Index(list(ids), name="image_id", dtype="string")
    frames: dict[str, pd.DataFrame] = {}
    if "pixels" in sets:
        data = np.stack([r["pixels"] for r in results]) if results else np.zeros((0, 3 * settings.pixel_size**2), np.uint8)
        frames["pixels"] = pd.DataFrame(data, index=index, columns=pixel_columns(settings))
    if "radiomic" in sets:
        frames["radiomic"] = pd.DataFrame([r["radiomic"] for r in results], index=index,
                                          columns=radiomic_columns(settings), dtype=np.float32)
    return frames


def _read_cached(work: Path, feature_set: str, fingerprint: str) -> pd.DataFrame | None:
    path = features_dir(work) / f"{feature_set}.parquet"
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise FeatureError(f"{meta_path}: not valid JSON ({exc}); delete it to recompute the features") from None
    if meta.get("fingerprint") != fingerprint:
        return None
    df = pd.read_parquet(path)
    if "image_id" not in df.columns:
        raise FeatureError(f"{path}: no image_id column; delete it to recompute the features")
    return df.set_index(df["image_id"].astype("string")).drop(columns="image_id")


def _write_cached(work: Path, feature_set: str, df: pd.DataFrame, settings: dict[str, Any]) -> Path:
    out = features_dir(work)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{feature_set}.parquet"
    # sidecar removed first and written last, both files atomically (temp + rename): an interrupted write
    # leaves no sidecar, which reads as "not cached", never as rows paired with the wrong settings
    path.with_suffix(".json").unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        df.rename_axis("image_id").reset_index().to_parquet(tmp, index=False)
    meta = {"fingerprint": _fingerprint(settings), "settings": settings, "n_images": len(df)}
    write_text_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2, default=list))
    return path


def _workers(cfg: dict[str, Any]) -> int:
    n = int(cfg.get("features", {}).get("workers", 0) or 0)
    return n if n > 0 else (os.cpu_count() or 1)


def ensure_features(work: Path | str, image_ids: Iterable[str], cfg: dict[str, Any],
                    sets: Sequence[str] = FEATURE_SETS, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Make sure every id has every requested feature set cached; return each set's frame for those ids.

    Only ids missing from a cache file are computed; a file written with other settings is redone.
    The returned frames are indexed by image_id in the order given.
    """
    work = Path(work)
    ids = pd.Index(pd.unique(pd.Series(list(image_ids), dtype="string")), name="image_id")
    sets = tuple(dict.fromkeys(sets))
    for s in sets:
        if s not in FEATURE_SETS:
            raise FeatureError(f"unknown feature set {s!r}; expected one of {FEATURE_SETS}")
    settings = FeatureSettings.from_config(cfg)
    cached = {s: _read_cached(work, s, _fingerprint(settings.for_set(s))) for s in sets}
    missing = {s: ids.difference(cached[s].index) if cached[s] is not None else ids for s in sets}
    todo = ids[ids.isin(set().union(*(set(m) for m in missing.values())))]
    chunksize = int(cfg.get("features", {}).get("chunksize", 8))
    # computed in batches, each saved before the next starts: an interrupted run on a large dataset keeps
    # what it finished (the next call computes only what is still missing)
    batch = max(1, int(cfg.get("features", {}).get("save_every", 5000)))
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        need = tuple(s for s in sets if missing[s].isin(part).any())
        new = _compute(work, list(part), settings, need, _workers(cfg), chunksize, progress)
        for s in need:
            fresh = new[s].loc[new[s].index.isin(missing[s])]
            cached[s] = fresh if cached[s] is None else pd.concat([cached[s], fresh])
            _write_cached(work, s, cached[s], settings.for_set(s))
    return {s: cached[s].loc[ids] for s in sets}


def load_features(work: Path | str, image_ids: Sequence[str], cfg: dict[str, Any],
                  sets: Sequence[str], progress: bool = True) -> pd.DataFrame:
    """One frame (index image_id, in the given order) with the columns of every requested set, as float32."""
    frames = ensure_features(work, image_ids, cfg, sets, progress=progress)
    return pd.concat([frames[s].astype(np.float32) for s in dict.fromkeys(sets)], axis=1)


# --------------------------------------------------------------------------------------------------
# stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sets", nargs="+", choices=FEATURE_SETS, default=list(FEATURE_SETS),
                        help="feature sets to compute (default: all)")
    parser.add_argument("--force", action="store_true", help="recompute even if cached with the same settings")
    parser.add_argument("--workers", type=int, default=None, help="processes (default features.workers; 0 = all cores)")


def run(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    from ichkit.table import read_table

    work = Path(cfg["paths"]["work"])
    if args.workers is not None:
        cfg["features"]["workers"] = args.workers
    slices = read_table(work).slices
    ids = slices.loc[slices["status"] == "ok", "image_id"].tolist()
    if not ids:
        print(f"ichkit features: error: no prepared images in {work}/table.parquet (status ok): "
              "run `ichkit prepare` first", file=sys.stderr)
        return 1
    if args.force:
        for s in args.sets:
            (features_dir(work) / f"{s}.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        frames = ensure_features(work, ids, cfg, args.sets)
    except (FeatureError, FileNotFoundError) as exc:
        print(f"ichkit features: error: {exc}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    for s, df in frames.items():
        print(f"{s}: {df.shape[0]} images x {df.shape[1]} features -> {features_dir(work) / (s + '.parquet')}")
    print(f"{len(ids)} images in {dt:.1f} s ({len(ids) / max(dt, 1e-9):.1f} images/s, cached ones included)")
    return 0
