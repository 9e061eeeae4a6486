"""Render the slices of one study: anatomy + bleeds at each slice's pixel centres, then the scanner."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ichkit.labels import SUBTYPES
from ichkit.phantom.anatomy import HeadAnatomy
from ichkit.phantom.hemorrhage import Bleed, Points
from ichkit.phantom.scanner import IMAGE_SIZE, Acquisition

# A subtype is labelled present in a slice when at least this many of its pixels are rendered there
# (about 4 mm^2): fewer is a partial-volume sliver no reader would call.
MIN_BLEED_PIXELS = 20


@dataclass(frozen=True)
class RenderedSlice:
    """One slice: HU after the scanner (float32, HxW, outside the FOV still filled) and the bleed masks."""

    hu: np.ndarray
    masks: dict[str, np.ndarray]   # subtype -> bool HxW, every bleed pixel rendered in this slice
    pixels: dict[str, int]         # subtype -> number of those pixels

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


def render_slice(anatomy: HeadAnatomy, bleeds: list[Bleed], acq: Acquisition, k: int, rng: np.random.Generator) -> RenderedSlice:
    """Slice k of the acquisition: the head and its bleeds at the pixel centres, then blur and noise."""
    x, y, z = acq.world_grid(k)
    u, v, w = (a.ravel() for a in acq.to_head(x, y, z))
    head = anatomy.render(u, v, w)
    hu, cavity = head.hu, head.cavity
    masks = {s: np.zeros(u.shape, dtype=bool) for s in SUBTYPES}
    pixels = dict.fromkeys(SUBTYPES, 0)
    if bleeds and cavity.index.size:  # every bleed is intracranial
        pts = Points(u[cavity.index], v[cavity.index], w[cavity.index], gravity_in_head(acq))
        for bleed in bleeds:  # oedema first, so that a neighbouring clot paints over it
            oedema = bleed.oedema(pts, cavity)
            if oedema is not None:
                rim, rim_hu = oedema
                hu[cavity.index[rim]] = np.float32(rim_hu)
        for bleed in bleeds:
            m = bleed.mask(pts, cavity)
            hu[cavity.index[m]] = np.float32(bleed.hu) + bleed.texture(pts)[m]
            masks[bleed.subtype][cavity.index[m]] = True
        pixels = {s: int(np.count_nonzero(masks[s])) for s in SUBTYPES}
    image = hu.reshape(IMAGE_SIZE, IMAGE_SIZE)
    acq.paint_holder(x, y, image)
    image = acq.degrade(image, rng)
    return RenderedSlice(image, {s: m.reshape(IMAGE_SIZE, IMAGE_SIZE) for s, m in masks.items()}, pixels)
