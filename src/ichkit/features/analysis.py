"""Image analysis of one HU slice: skull and brain masks, the hyperdense blood candidates, and the radiomic
measurements made from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichkit.features.doc import radiomic_columns
from ichkit.features.settings import FeatureSettings



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


@dataclass
class HeadMasks:
    """Masks of one slice: `intracranial` (inside the skull), `head` (skull + inside), `brain` (eroded).

    `path` says how the mask was made: `closed` (a closing of `features.skull_close_px` closed the skull
    ring; `closing_px` is its radius in px at this image's size, the first on an intact mid-level slice,
    a wider one over a gap), `soft_tissue` (the ring stays open, at the skull base / vertex or over a
    craniotomy: the brain-density tissue inside the bone's convex hull, cut loose from the scalp and
    sinuses), `hull` (the last resort: everything inside the bone's convex hull, which takes in bone
    partial volume, sinuses and scalp) or `no_brain` (neither finds `min_brain_px` of brain: a solid bone
    plate at the vertex, the mask is all but empty). `from_hull` is true for `hull` only."""

    intracranial: np.ndarray
    head: np.ndarray
    brain: np.ndarray
    from_hull: bool
    closing_px: int = 0
    path: str = "closed"


def _head_region(hu: np.ndarray) -> np.ndarray:
    """The head: the largest body of non-air pixels, holes filled (the CT table and headrest, separated from
    the head by air, fall outside it)."""
    from scipy import ndimage as ndi

    return ndi.binary_fill_holes(_large_components(hu > -200))


def _soft_tissue_fill(hu: np.ndarray, bone: np.ndarray, hull: np.ndarray, settings: FeatureSettings,
                      scale: float) -> np.ndarray:
    """The intracranial region of a slice whose skull ring does not close: inside the bone's convex hull,
    not bone, HU in the brain's range (CSF to clotted blood: no air, fat, bone partial volume), opened by
    the first closing radius so that thin bridges through the gap (scalp, sinus mucosa) break off, and the
    compartments of at least `min_compartment` of the image kept; only pinholes are filled (the sinuses and
    bone ridges it wraps around, and calcifications, stay out)."""
    from scipy import ndimage as ndi

    r = max(1, int(round(settings.skull_close_px[0] * scale)))
    soft = hull & ~bone & (hu >= settings.csf_hu[0]) & (hu <= settings.clot_hu[1])
    soft = ndi.binary_opening(soft, structure=_disk(r))
    if not soft.any():
        return soft
    kept = _large_components(soft, settings.min_compartment)
    # fill pinholes (noise below the CSF limit) but not the sinuses or bone ridges the region wraps around
    holes, n = ndi.label(ndi.binary_fill_holes(kept) & ~kept)
    if n:
        small = np.bincount(holes.ravel()) <= _disk(r).sum()
        small[0] = False
        kept = kept | small[holes]
    return kept


def head_masks(hu: np.ndarray, settings: FeatureSettings) -> HeadMasks:
    """Find the skull and the region it encloses.

    Threshold bone (`bone_hu`) inside the head (not the CT table), close small gaps (sutures, partial
    volume after resizing), fill holes, drop the bone and air (sinuses), keep the compartments covering at
    least `min_compartment` of the image (at the skull base the anterior, middle and posterior fossae are
    separate; the orbits are smaller and drop out). A ring that does not close (thin slices at the vertex
    and skull base, foramen magnum, a craniotomy) encloses next to nothing; wider closings
    (`skull_close_px`, scaled from 256 px to this image) are tried in turn, then the brain-density tissue
    inside the bone's convex hull (`_soft_tissue_fill`), before the whole convex hull stands in. The brain
    mask is the intracranial region eroded by `brain_erode_px`, which keeps skull partial volume (it looks
    like blood) out.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    scale = hu.shape[0] / 256.0
    erode_px = max(0, int(round(settings.brain_erode_px * scale))) if settings.brain_erode_px else 0

    def erode(region: np.ndarray) -> np.ndarray:
        return ndi.binary_erosion(region, structure=_disk(erode_px)) if erode_px > 0 else region

    tissue = hu > -100
    bone = (hu >= settings.bone_hu) & _head_region(hu)
    if not bone.any():
        # no skull in view: the largest soft-tissue region is the best guess
        intracranial = ndi.binary_fill_holes(_large_components(tissue))
        return HeadMasks(intracranial=intracranial, head=intracranial, brain=erode(intracranial),
                         from_hull=True, path="hull")
    rows, cols = np.nonzero(bone)
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    for radius in settings.skull_close_px:
        r = max(1, int(round(radius * scale)))
        # pad so a closing near the border does not glue the skull to the image edge
        closed = ndi.binary_closing(np.pad(bone, r), structure=_disk(r))[r:-r, r:-r]
        head = ndi.binary_fill_holes(closed)
        inside = head & ~closed & tissue
        # a closed skull ring encloses ~half of its bounding box or more; an open one next to nothing
        if inside.sum() >= settings.closed_skull_fill * box_area:
            intracranial = ndi.binary_fill_holes(_large_components(inside, settings.min_compartment))
            return HeadMasks(intracranial=intracranial, head=head, brain=erode(intracranial),
                             from_hull=False, closing_px=r)
    closed = ndi.binary_closing(bone, structure=_disk(max(1, int(round(settings.skull_close_px[0] * scale)))))
    head = convex_hull_image(closed)
    intracranial = _soft_tissue_fill(hu, closed, head, settings, scale)
    brain = erode(intracranial)
    if brain.sum() >= settings.min_brain_px:
        return HeadMasks(intracranial=intracranial, head=head, brain=brain, from_hull=False, path="soft_tissue")
    hull_region = ndi.binary_fill_holes(_large_components(head & ~closed & tissue, settings.min_compartment))
    hull_brain = erode(hull_region)
    if hull_brain.sum() < settings.min_brain_px:  # a solid bone plate (vertex): no brain on this slice
        return HeadMasks(intracranial=intracranial, head=head, brain=brain, from_hull=False, path="no_brain")
    return HeadMasks(intracranial=hull_region, head=head, brain=hull_brain, from_hull=True, path="hull")


def brain_mask(hu: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """The eroded intracranial mask: pixels whose density is the brain's (and its blood's)."""
    return head_masks(hu, settings).brain


def composite_hu(cls_image: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """A pseudo-HU map of a rendered (windowed) image that the skull threshold can work on: the bone window
    channel where it shows bone (>= bone_hu), the brain window elsewhere, air / fat (black in the brain
    window) as -1000. Raises FeatureError if the configured windows have no bone window (one whose range
    reaches well above `bone_hu`): then no brain mask can be made from the image."""
    from ichkit.features.settings import FeatureError

    by_range = [(name, c - w / 2, c + w / 2, i) for i, (name, c, w) in enumerate(settings.windows)]
    bone = [b for b in by_range if b[2] >= 3 * settings.bone_hu and b[1] < settings.bone_hu]
    soft = [b for b in by_range if b[1] <= 20 <= b[2] and b[2] <= 200]
    if not bone or not soft:
        raise FeatureError(f"radiomic features need Hounsfield units or a bone-window channel; windows "
                           f"{[w[0] for w in settings.windows]} have "
                           f"{'no bone window' if not bone else 'no brain window'}, so no brain mask can be made")
    _, b_lo, b_hi, b_ch = bone[0]
    _, s_lo, s_hi, s_ch = soft[0]
    img = cls_image.astype(np.float32)
    bone_hu = b_lo + img[..., b_ch] / 255.0 * (b_hi - b_lo)
    soft_hu = s_lo + img[..., s_ch] / 255.0 * (s_hi - s_lo)
    out = np.where(bone_hu >= settings.bone_hu, bone_hu, soft_hu)
    out[(img[..., s_ch] == 0) & (bone_hu < settings.bone_hu)] = -1000.0
    return out.astype(np.float32)


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


def smoothed_hu(hu: np.ndarray, size: int) -> np.ndarray:
    """Median of the HU map over size x size: single noisy pixels above grey matter do not make a bleed."""
    from scipy import ndimage as ndi

    return ndi.median_filter(np.asarray(hu, dtype=np.float32), size=size)


def blood_candidates(hu: np.ndarray, brain: np.ndarray, settings: FeatureSettings,
                     min_px: int | None = None, smooth: np.ndarray | None = None) -> np.ndarray:
    """The hyperdense blood-candidate mask (bool, the shape of `hu`): brain pixels whose median-smoothed HU
    lies in `settings.clot_hu`, opened by a radius-1 disk, in connected components (8-connectivity) of at
    least `min_px` pixels (default `settings.min_blood_px`, sized for the cls_size HU map). `smooth` is
    `smoothed_hu(hu, settings.smooth_px)` where the caller has it already.

    This is THE definition of "looks like acute blood" in the project: the radiomic features measure its
    components and the HU-threshold segmentation baseline uses it as its mask.
    """
    from scipy import ndimage as ndi

    if hu.shape != brain.shape:
        raise ValueError(f"HU map {hu.shape} and brain mask {brain.shape} differ in shape")
    if smooth is None:
        smooth = smoothed_hu(hu, settings.smooth_px)
    clot = brain & (smooth >= settings.clot_hu[0]) & (smooth <= settings.clot_hu[1])
    clot = ndi.binary_opening(clot, structure=_disk(1))
    labels, n = ndi.label(clot, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return clot
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= (settings.min_blood_px if min_px is None else min_px)
    keep[0] = False
    return keep[labels]


def radiomic_features(hu: np.ndarray, settings: FeatureSettings) -> dict[str, float]:
    """All radiomic features of one HU slice, keyed and ordered as `radiomic_columns(settings)`."""
    from scipy import ndimage as ndi
    from skimage.measure import label, regionprops

    if hu.ndim != 2:
        raise ValueError(f"expected a 2-D HU map, got shape {hu.shape}")
    hu = hu.astype(np.float32)
    masks = head_masks(hu, settings)
    region, brain = masks.intracranial, masks.brain
    cols = radiomic_columns(settings)
    f: dict[str, float] = dict.fromkeys(cols, 0.0)
    f["brain_mask_from_hull"] = float(masks.from_hull)
    f["brain_mask_soft_fill"] = float(masks.path == "soft_tissue")
    f["brain_mask_closing"] = float(masks.closing_px) / (hu.shape[0] / 256.0)
    n_brain = int(brain.sum())
    f["brain_area_frac"] = n_brain / brain.size
    if n_brain < settings.min_brain_px:  # no brain on this slice (or not a head): every other feature stays 0
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
    csf = brain & (hu >= settings.csf_hu[0]) & (hu <= settings.csf_hu[1]) & (dist_table > settings.deep_depth * inradius)
    ventricles = ndi.binary_opening(csf, structure=_disk(1))
    f["ventricle_frac"] = float(ventricles.sum()) / n_brain

    # hyperdense components on a median-smoothed map so single noisy pixels above grey matter don't count
    smooth = smoothed_hu(hu, settings.smooth_px)
    rim = brain & (dist_table <= settings.rim_depth * inradius)
    deep = brain & (dist_table > settings.deep_depth * inradius)
    f["rim_hu_p99"] = float(np.percentile(smooth[rim], 99)) if rim.any() else 0.0
    f["deep_hu_p99"] = float(np.percentile(smooth[deep], 99)) if deep.any() else 0.0
    labels = label(blood_candidates(hu, brain, settings, smooth=smooth), connectivity=2)
    regions = list(regionprops(labels))
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
        f["blood_deep_frac"] = float((d_table > settings.deep_blood_depth * inradius).mean())
        # midline = the brain's long axis through its centroid (the head is longer front-to-back)
        head = regionprops(brain.astype(np.uint8))[0]
        theta = head.orientation  # angle between the row axis and the major axis
        axis = np.array([np.cos(theta), np.sin(theta)])  # (row, col) direction of the major axis
        off_axis = np.abs((br - centre[0]) * axis[1] - (bc - centre[1]) * axis[0])
        f["blood_midline_frac"] = float((off_axis <= settings.midline_width * head.axis_minor_length).mean())
        near_ventricle = ndi.binary_dilation(ventricles, structure=_disk(settings.ventricle_near_px)) if ventricles.any() else ventricles
        f["blood_near_ventricle_frac"] = float(near_ventricle[br, bc].mean())
        largest = max(regions, key=lambda r: r.area)
        f.update(_largest_shape(largest, labels, dist_table, centre, float(n_brain), contact_px))

    window_lo = settings.windows[0][1] - settings.windows[0][2] / 2
    brain_window = np.clip((hu - window_lo) / settings.windows[0][2], 0.0, 1.0)
    f.update(_glcm(brain_window, brain, settings.glcm_levels))
    return {k: float(np.nan_to_num(f[k], nan=0.0, posinf=0.0, neginf=0.0)) for k in cols}
