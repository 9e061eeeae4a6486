"""Render the slices of one study: anatomy + bleeds at each slice's pixel centres, then the scanner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ichkit.labels import SUBTYPES
from ichkit.phantom.anatomy import HeadAnatomy, Tissue
from ichkit.phantom.hemorrhage import Bleed, Points
from ichkit.phantom.scanner import IMAGE_SIZE, Acquisition

# A subtype is labelled present in a slice when at least this many of its pixels are rendered there
# (about 4 mm^2): fewer is a partial-volume sliver no reader would call.
MIN_BLEED_PIXELS = 20
MIN_PIECE_PIXELS = 8
# rendered tissues that look like blood and are not (counted per slice into _truth/slices.csv)
HARD_NEGATIVE_TISSUES: dict[str, int] = {
    "calcification": Tissue.CALCIFICATION,
    "venous_sinus": Tissue.VENOUS_SINUS,
    "falx_tentorium": Tissue.FALX,
    "scalp_haematoma": Tissue.SCALP_HAEMATOMA,
}


@dataclass(frozen=True)
class RenderedSlice:
    """One slice: HU after the scanner (float32, HxW, outside the FOV still filled) and the bleed masks."""

    hu: np.ndarray
    masks: dict[str, np.ndarray]   # subtype -> bool HxW, every bleed pixel rendered in this slice
    pixels: dict[str, int]         # subtype -> number of those pixels
    hard_negatives: dict[str, int] = field(default_factory=dict)  # mimic of blood -> pixels in this slice

    def labels(self) -> dict[str, int]:
        """RSNA labels of the slice: a subtype is present with at least MIN_BLEED_PIXELS pixels."""
        present = {s: int(self.pixels[s] >= MIN_BLEED_PIXELS) for s in SUBTYPES}
        return {"any": max(present.values()), **present}

    def labelled_mask(self) -> np.ndarray:
        """Union of the masks of the subtypes that are labelled present: what the annotator outlines."""
        out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        for s in SUBTYPES:
            if self.pixels[s] >= MIN_BLEED_PIXELS:
                out |= self.masks[s]
        return out

    def bleed_mask(self) -> np.ndarray:
        """Every bleed pixel, labelled or not (for volumes)."""
        return np.logical_or.reduce([self.masks[s] for s in SUBTYPES])


def gravity_in_head(acq: Acquisition) -> tuple[float, float, float]:
    """World +y (the patient is supine) expressed in the head frame."""
    g = math.radians(acq.yaw_deg)
    return (math.sin(g), math.cos(g), 0.0)


def render_slice(anatomy: HeadAnatomy, bleeds: list[Bleed], acq: Acquisition, k: int, rng: np.random.Generator,
                 noise: np.ndarray | None = None) -> RenderedSlice:
    """Slice k of the acquisition: the head and its bleeds at the pixel centres, then the scanner (blur,
    correlated noise, streaks, motion); `noise` is the study's noise field (`Acquisition.noise_field`). Bleeds blend into their background by their partial-volume
    occupancy; the masks leave out the rim where the blurred skull outshines the blood (an annotator does
    not outline bone), and every mask is in the orientation the file is written in."""
    x, y, z = acq.world_grid(k)
    u, v, w = (a.ravel() for a in acq.to_head(x, y, z))
    head = anatomy.render(u, v, w)
    hu, cavity = head.hu, head.cavity
    masks = {s: np.zeros(u.shape, dtype=bool) for s in SUBTYPES}
    if bleeds and cavity.index.size:  # every bleed is intracranial
        pts = Points(u[cavity.index], v[cavity.index], w[cavity.index], gravity_in_head(acq))
        for bleed in bleeds:  # oedema first, so that a neighbouring clot paints over it
            oedema = bleed.oedema(pts, cavity)
            if oedema is not None:
                rim, rim_hu = oedema
                hu[cavity.index[rim]] = np.float32(rim_hu)
        for bleed in bleeds:
            occ = bleed.occupancy(pts, cavity)
            touched = np.flatnonzero(occ > 0)
            if not touched.size:
                continue
            sub = Points(pts.u[touched], pts.v[touched], pts.w[touched], pts.gravity)
            weight = occ[touched] * bleed.fill_share(sub, occ[touched])
            where = cavity.index[touched]
            hu[where] = (1.0 - weight) * hu[where] + weight * bleed.density(sub)
            masks[bleed.subtype][where[occ[touched] >= 0.5]] = True
    image = hu.reshape(IMAGE_SIZE, IMAGE_SIZE)
    bone = image > 300
    acq.paint_holder(x, y, image)
    streaked = acq.add_streaks(image, skull_base=float(np.median(w)) < 0.45 * anatomy.lowest_level)
    image = acq.degrade(image, rng, noise)
    out_masks = {s: m.reshape(IMAGE_SIZE, IMAGE_SIZE) for s, m in masks.items()}
    if any(m.any() for m in out_masks.values()) and bone.any():
        # the rim the scanner's point spread brightens with skull (beyond ~2.5 sigma it brings in < 1%):
        # every pixel within `reach` pixels (chessboard distance) of bone, one square dilation
        import cv2

        reach = int(math.ceil(2.5 * acq.scanner.blur_sigma))
        square = np.ones((2 * reach + 1, 2 * reach + 1), dtype=np.uint8)
        bright_rim = cv2.dilate(bone.view(np.uint8), square).view(bool)
        out_masks = {s: m & ~bright_rim for s, m in out_masks.items()}
    # an annotator outlines regions, not specks: pieces under MIN_PIECE_PIXELS after the rim is cut drop out
    for s, m in out_masks.items():
        if m.any():
            from scipy import ndimage

            lab, n = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
            if n > 1 or m.sum() < MIN_PIECE_PIXELS:
                sizes = np.bincount(lab.ravel())
                keep = sizes >= MIN_PIECE_PIXELS
                keep[0] = False
                out_masks[s] = keep[lab]
    if acq.transposed:
        image = np.ascontiguousarray(image.T)
        out_masks = {s: np.ascontiguousarray(m.T) for s, m in out_masks.items()}
    pixels = {s: int(np.count_nonzero(m)) for s, m in out_masks.items()}
    per_tissue = np.bincount(head.tissue.view(np.uint8), minlength=len(Tissue))  # pixels of each Tissue code
    hard = {name: int(per_tissue[code]) for name, code in HARD_NEGATIVE_TISSUES.items()}
    hard["streaks"] = int(streaked)
    return RenderedSlice(image, out_masks, pixels, hard)
