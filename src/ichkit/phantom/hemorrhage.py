"""Intracranial bleeds as 3-D objects in the head frame, each subtype with its real shape and place.

- epidural: a biconvex lens between the inner table and the dura, confined to one region of the vault;
- subdural: a thin crescent spread along the convexity of one hemisphere, stopping at the falx;
- subarachnoid: blood filling the CSF spaces (sulci, Sylvian fissure, basal cisterns, interhemispheric
  fissure) inside one region;
- intraparenchymal: an irregular ovoid clot in the brain, ringed by hypodense oedema;
- intraventricular: blood layering in the dependent (posterior, the patient lies supine) part of the
  ventricles, up to a horizontal blood-CSF level; in severe cases a cast filling them.

A bleed is evaluated at points like the anatomy is, so its extent along z follows from its 3-D shape and a
slice's label comes from what is actually rendered in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ichkit.labels import SUBTYPES
from ichkit.phantom.anatomy import PARENCHYMA, SUBARACHNOID_SPACES, CavityFields, Ellipsoid, HeadAnatomy, Tissue

EPIDURAL, INTRAPARENCHYMAL, INTRAVENTRICULAR, SUBARACHNOID, SUBDURAL = SUBTYPES


@dataclass(frozen=True)
class Points:
    """Where a slice's pixels are: head frame (u, v, w) and the direction of gravity in that frame."""

    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    gravity: tuple[float, float, float]


@dataclass(frozen=True)
class Bleed:
    """Base: a subtype, its density (HU) and a mask over points; `follow_up` gives the later scan's bleed."""

    subtype: str
    hu: float
    phase: float              # of the clot's internal inhomogeneity

    def texture(self, pts: Points) -> np.ndarray:
        """A few HU of smooth inhomogeneity inside the clot (wavelength about a centimetre)."""
        p = np.float32(self.phase)
        return np.float32(3.0) * np.cos(np.float32(0.6) * pts.u + p) * np.cos(np.float32(0.5) * pts.v - p) * np.cos(np.float32(0.7) * pts.w)

    def mask(self, pts: Points, cavity: CavityFields) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def oedema(self, pts: Points, cavity: CavityFields) -> tuple[np.ndarray, float] | None:
        """Points of hypodense oedema around the bleed and its HU (None: this subtype has none)."""
        return None

    def follow_up(self, rng: np.random.Generator) -> "Bleed":  # pragma: no cover - abstract
        raise NotImplementedError

    def _older(self, rng: np.random.Generator) -> float:
        """Density a few days later: clot retraction keeps it hyperdense, resorption starts lowering it."""
        return max(50.0, self.hu - float(rng.uniform(0.0, 10.0)))


@dataclass(frozen=True)
class ExtraAxialCollection(Bleed):
    """Blood between skull and brain, against the inner table of one hemisphere.

    Thickness falls off from `thickness` at the centre as (1 - q) ** profile, q the squared normalised
    distance along the surface. profile 1 with a short extent makes the epidural lens (the inner margin
    bulges toward the brain); profile < 1 with a long extent makes the subdural crescent (thin, spread out,
    its inner margin following the brain surface).
    """

    side: int                 # +1 patient's left (u > 0), -1 right
    azimuth: float            # radians in the u-v plane, atan2(v, u)
    elevation: float          # radians above the u-v plane
    extent_azimuth: float     # mm along the surface, horizontally
    extent_elevation: float   # mm along the surface, vertically
    thickness: float          # mm at the centre
    profile: float

    def mask(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        du, dv, dw = cavity.direction
        az = np.arctan2(dv, du)
        el = np.arcsin(np.clip(dw, -1.0, 1.0))
        d_az = np.mod(az - np.float32(self.azimuth) + np.float32(math.pi), np.float32(2 * math.pi)) - np.float32(math.pi)
        horiz = cavity.cavity_radius * np.cos(el)
        q = (d_az * horiz / np.float32(self.extent_azimuth)) ** 2 + (
            (el - np.float32(self.elevation)) * cavity.cavity_radius / np.float32(self.extent_elevation)) ** 2
        local = np.float32(self.thickness) * np.clip(1.0 - q, 0.0, None) ** np.float32(self.profile)
        same_side = pts.u * np.float32(self.side) > 1.0  # the falx stops it at the midline
        return (cavity.depth < local) & same_side

    def follow_up(self, rng: np.random.Generator) -> "ExtraAxialCollection":
        return replace(self, hu=self._older(rng), thickness=self.thickness * float(rng.uniform(0.55, 0.9)))


@dataclass(frozen=True)
class SubarachnoidBlood(Bleed):
    """Blood replacing the CSF of the subarachnoid spaces inside an ellipsoidal region."""

    region: Ellipsoid

    def mask(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        in_space = np.isin(cavity.tissue, np.asarray(SUBARACHNOID_SPACES, dtype=np.int8))
        return in_space & self.region.contains(pts.u, pts.v, pts.w)

    def follow_up(self, rng: np.random.Generator) -> "SubarachnoidBlood":
        k = float(rng.uniform(0.6, 0.85))  # washes out with the CSF
        r = self.region
        return replace(self, hu=self._older(rng), region=Ellipsoid(r.centre, tuple(a * k for a in r.axes), r.yaw))


@dataclass(frozen=True)
class ParenchymalClot(Bleed):
    """An irregular ovoid clot in the brain; oedema forms a darker rim `oedema_rim` mm wide."""

    clot: Ellipsoid
    lobulation: tuple[tuple[float, float, float, float], ...]  # (frequency u, v, w, amplitude) bumps
    oedema_rim: float
    oedema_hu: float

    def _radius(self, pts: Points) -> np.ndarray:
        r = self.clot.radius(pts.u, pts.v, pts.w)
        cu, cv, cw = (np.float32(c) for c in self.clot.centre)
        bumps = np.zeros_like(r)
        for fu, fv, fw, amp in self.lobulation:
            bumps += np.float32(amp) * np.cos(np.float32(fu) * (pts.u - cu) + np.float32(fv) * (pts.v - cv) + np.float32(fw) * (pts.w - cw))
        return r * (1.0 + bumps)

    def mask(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        inside_brain = cavity.depth > 0.5
        not_csf = ~np.isin(cavity.tissue, np.asarray((Tissue.VENTRICLE,) + SUBARACHNOID_SPACES, dtype=np.int8))
        return (self._radius(pts) < 1.0) & inside_brain & not_csf

    def oedema(self, pts: Points, cavity: CavityFields) -> tuple[np.ndarray, float]:
        rim = self.oedema_rim / min(self.clot.axes)
        in_brain = np.isin(cavity.tissue, np.asarray(PARENCHYMA, dtype=np.int8))
        return (self._radius(pts) < 1.0 + rim) & in_brain, self.oedema_hu

    def follow_up(self, rng: np.random.Generator) -> "ParenchymalClot":
        k = float(rng.uniform(0.8, 0.95))
        c = self.clot
        return replace(self, hu=self._older(rng), clot=Ellipsoid(c.centre, tuple(a * k for a in c.axes), c.yaw),
                       oedema_rim=self.oedema_rim * float(rng.uniform(1.2, 1.6)))


@dataclass(frozen=True)
class VentricularBlood(Bleed):
    """Blood in the selected ventricles below a level perpendicular to gravity.

    `depth` is how far (mm) the level lies above the lowest, most dependent, point of those ventricles:
    a few mm layer in the occipital horns, several cm cast the whole system.
    """

    compartments: tuple[Ellipsoid, ...]
    depth: float

    def mask(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        gu, gv, gw = pts.gravity
        lowest = max(_support(e, pts.gravity) for e in self.compartments)
        height = pts.u * np.float32(gu) + pts.v * np.float32(gv) + pts.w * np.float32(gw)
        inside = np.zeros(pts.u.shape, dtype=bool)
        for e in self.compartments:
            inside |= e.contains(pts.u, pts.v, pts.w)
        return inside & (cavity.tissue == Tissue.VENTRICLE) & (height > np.float32(lowest - self.depth))

    def follow_up(self, rng: np.random.Generator) -> "VentricularBlood":
        return replace(self, hu=self._older(rng), depth=self.depth * float(rng.uniform(0.5, 0.8)))


def _support(e: Ellipsoid, direction: tuple[float, float, float]) -> float:
    """max over the ellipsoid of (point . direction)."""
    gu, gv, gw = direction
    c, s = math.cos(math.radians(e.yaw)), math.sin(math.radians(e.yaw))
    g1, g2 = c * gu + s * gv, -s * gu + c * gv
    au, av, aw = e.axes
    return float(np.dot(e.centre, direction) + math.sqrt((au * g1) ** 2 + (av * g2) ** 2 + (aw * gw) ** 2))


# ---------------------------------------------------------------------------------------------- sampling
def _acute(rng: np.random.Generator) -> tuple[float, float]:
    """Density (HU) of acute blood and the phase of its inhomogeneity."""
    return float(rng.uniform(58.0, 85.0)), float(rng.uniform(0.0, 2 * math.pi))


def _convexity_direction(rng: np.random.Generator, side: int) -> tuple[float, float]:
    """Azimuth and elevation of a point on the lateral convexity (temporal / parietal / frontal)."""
    lateral = 0.0 if side > 0 else math.pi
    azimuth = lateral + side * float(rng.uniform(-0.7, 0.7))
    return azimuth, float(rng.uniform(0.05, 0.7))


def sample_bleed(subtype: str, anatomy: HeadAnatomy, rng: np.random.Generator, near: Bleed | None = None) -> Bleed:
    """One acute bleed of `subtype`; with `near`, placed where it plausibly accompanies that bleed."""
    a, b, c = anatomy.semi_axes
    side = int(rng.choice([-1, 1]))
    if isinstance(near, ExtraAxialCollection):
        side = near.side
    if subtype in (EPIDURAL, SUBDURAL):
        azimuth, elevation = _convexity_direction(rng, side)
        if subtype == EPIDURAL:
            return ExtraAxialCollection(EPIDURAL, *_acute(rng), side, azimuth, elevation,
                                        extent_azimuth=float(rng.uniform(28.0, 42.0)),
                                        extent_elevation=float(rng.uniform(16.0, 24.0)),
                                        thickness=float(rng.uniform(10.0, 20.0)), profile=1.0)
        return ExtraAxialCollection(SUBDURAL, *_acute(rng), side, azimuth, elevation,
                                    extent_azimuth=float(rng.uniform(55.0, 90.0)),
                                    extent_elevation=float(rng.uniform(30.0, 45.0)),
                                    thickness=float(rng.uniform(5.0, 13.0)), profile=0.6)
    if subtype == SUBARACHNOID:
        pattern = rng.choice(["convexity", "sylvian", "basal"], p=[0.45, 0.3, 0.25])
        if isinstance(near, ExtraAxialCollection):  # traumatic SAH under the collection
            pattern = "convexity"
        if pattern == "convexity":
            if isinstance(near, ExtraAxialCollection):
                azimuth, elevation = near.azimuth, near.elevation
            else:
                azimuth, elevation = _convexity_direction(rng, side)
            r = 0.85 * a
            centre = (r * math.cos(elevation) * math.cos(azimuth), r * math.cos(elevation) * math.sin(azimuth) * b / a,
                      r * math.sin(elevation) * c / a)
            axes = (float(rng.uniform(25, 40)), float(rng.uniform(25, 45)), float(rng.uniform(20, 32)))
        elif pattern == "sylvian":
            centre = (side * 0.6 * a, -0.05 * b, -0.05 * c)
            axes = (float(rng.uniform(25, 35)), float(rng.uniform(22, 32)), float(rng.uniform(15, 24)))
        else:  # aneurysmal: the basal cisterns and both Sylvian fissures
            centre = (0.0, -0.02 * b, -0.2 * c)
            axes = (float(rng.uniform(40, 55)), float(rng.uniform(22, 30)), float(rng.uniform(14, 22)))
        return SubarachnoidBlood(SUBARACHNOID, *_acute(rng), Ellipsoid(centre, axes, float(rng.uniform(-20, 20))))
    if subtype == INTRAPARENCHYMAL:
        deep = (near is not None and near.subtype == INTRAVENTRICULAR) or rng.random() < 0.5
        if deep:  # hypertensive: putamen (lentiform nucleus) or thalamus
            host = anatomy.structures[str(rng.choice(["lentiform", "thalamus"]))][0 if side > 0 else 1]
            centre = (host.centre[0] + float(rng.uniform(-3, 3)), host.centre[1] + float(rng.uniform(-4, 4)),
                      host.centre[2] + float(rng.uniform(-3, 5)))
        else:  # lobar: in the white matter, under the cortex
            azimuth, elevation = _convexity_direction(rng, side)
            r = float(rng.uniform(0.45, 0.6))
            centre = (r * a * math.cos(elevation) * math.cos(azimuth), r * b * math.cos(elevation) * math.sin(azimuth),
                      r * c * math.sin(elevation))
        axes = tuple(float(x) for x in rng.uniform(8.0, 20.0, size=3))
        lobulation = tuple((float(fu), float(fv), float(fw), float(amp)) for fu, fv, fw, amp in
                           np.column_stack([rng.uniform(-0.5, 0.5, (4, 3)), rng.uniform(0.02, 0.07, 4)]))
        return ParenchymalClot(INTRAPARENCHYMAL, *_acute(rng), Ellipsoid(centre, axes, float(rng.uniform(-90, 90))),
                               lobulation, oedema_rim=float(rng.uniform(2.0, 5.0)), oedema_hu=float(rng.uniform(14.0, 22.0)))
    if subtype == INTRAVENTRICULAR:
        st = anatomy.structures
        cast = rng.random() < 0.45
        midline = cast or rng.random() < 0.3  # blood reaching the third and fourth ventricles
        compartments = tuple(st["lateral_ventricles"]) + (
            tuple(st["third_ventricle"] + st["fourth_ventricle"]) if midline else ())
        depth = float(rng.uniform(20.0, 35.0)) if cast else float(rng.uniform(7.0, 14.0))
        return VentricularBlood(INTRAVENTRICULAR, *_acute(rng), compartments, depth)
    raise ValueError(f"unknown hemorrhage subtype {subtype!r}")


def sample_bleeds(subtypes: tuple[str, ...], anatomy: HeadAnatomy, rng: np.random.Generator) -> list[Bleed]:
    """The bleeds of one patient; a second bleed is placed relative to the first."""
    bleeds: list[Bleed] = []
    for subtype in subtypes:
        bleeds.append(sample_bleed(subtype, anatomy, rng, near=bleeds[0] if bleeds else None))
    return bleeds

