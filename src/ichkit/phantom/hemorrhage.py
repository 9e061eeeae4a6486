"""Intracranial bleeds as 3-D objects in the head frame, each subtype with its real shape and place.

- epidural: a biconvex lens between the inner table and the dura, confined to one region of the vault;
- subdural: a thin crescent spread along the convexity of one hemisphere, stopping at the falx;
- subarachnoid: blood filling the CSF spaces (sulci, Sylvian fissure, basal cisterns, interhemispheric
  fissure) inside one region;
- intraparenchymal: an irregular ovoid clot in the brain, ringed by hypodense oedema;
- intraventricular: blood layering in the dependent (posterior, the patient lies supine) part of the
  ventricles, up to a horizontal blood-CSF level; in severe cases a cast filling them.

A bleed is evaluated at points like the anatomy is, so its extent along z follows from its 3-D shape and a
slice's label comes from what is actually rendered in it. Densities follow real acute blood per subtype
(`BLOOD_HU`, shifted per patient by the haematocrit), mixed with CSF where the blood lies in it (`FILL`),
inhomogeneous inside (waves, hypodense pockets; mixed and subacute subdurals), and soft at the edge: each
bleed has a partial-volume occupancy, and the labelled mask is where it fills at least half a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ichkit.labels import SUBTYPES
from ichkit.phantom.anatomy import (PARENCHYMA, SUBARACHNOID_SPACES, CavityFields, DirectionalField, Ellipsoid,
                                    HeadAnatomy, Tissue, height_range)

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
    """Base: a subtype, its density and a partial-volume occupancy over points; `follow_up` gives the later
    scan's bleed.

    `occupancy` (0..1) is how much of a point's volume the bleed fills, soft over about a millimetre at its
    edge (partial volume); the labelled mask is occupancy >= 0.5. `fill` (0..1) is the share of that volume
    that is blood rather than CSF (subarachnoid and ventricular blood mix with it), so a pixel reads
    (1 - occupancy * fill) * background + occupancy * fill * density.
    """

    subtype: str
    hu: float                 # mean density of the blood itself
    phase: float              # of the clot's internal inhomogeneity
    heterogeneity: float      # HU amplitude of the inhomogeneity (clot retraction, serum, layering)
    waves: tuple[tuple[float, float, float, float], ...]  # (frequency u, v, w per mm, phase) of the texture
    pockets: float            # HU of hypodense pockets (unclotted / hyperacute blood, mixed subdurals); 0: none
    fill: float               # blood share of the occupied volume

    def texture(self, pts: Points) -> np.ndarray:
        """Inhomogeneity inside the clot: a few waves of 3-15 mm, plus hypodense pockets where they dip."""
        out = np.zeros(pts.u.shape, dtype=np.float32)
        for fu, fv, fw, ph in self.waves:
            out += np.cos(np.float32(fu) * pts.u + np.float32(fv) * pts.v + np.float32(fw) * pts.w
                          + np.float32(ph + self.phase))
        out *= np.float32(self.heterogeneity / max(1.0, np.sqrt(len(self.waves) / 2.0)))
        if self.pockets:
            out += np.float32(self.pockets) * np.clip(-out / max(self.heterogeneity, 1e-3) - 0.6, 0.0, 1.0)
        return out

    def density(self, pts: Points) -> np.ndarray:
        return np.float32(self.hu) + self.texture(pts)

    def occupancy(self, pts: Points, cavity: CavityFields) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fill_share(self, pts: Points, occupancy: np.ndarray) -> np.ndarray:
        return np.full(occupancy.shape, np.float32(self.fill), dtype=np.float32)

    def mask(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        return self.occupancy(pts, cavity) >= 0.5

    def oedema(self, pts: Points, cavity: CavityFields) -> tuple[np.ndarray, float] | None:
        """Points of hypodense oedema around the bleed and its HU (None: this subtype has none)."""
        return None

    def follow_up(self, rng: np.random.Generator) -> "Bleed":  # pragma: no cover - abstract
        raise NotImplementedError

    def _older(self, rng: np.random.Generator) -> float:
        """Density a few days later: clot retraction keeps it hyperdense, resorption starts lowering it."""
        return max(38.0, self.hu - float(rng.uniform(2.0, 12.0)))


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """0..1 ramp of `width` centred on x = 0 (inside for x > 0): the partial volume of an edge."""
    return np.clip(x / np.float32(width) + np.float32(0.5), 0.0, 1.0)


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
    margin: DirectionalField  # relative irregularity of the inner margin (lobulated, not a smooth lens)

    def occupancy(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        du, dv, dw = cavity.direction
        az = np.arctan2(dv, du)
        el = np.arcsin(np.clip(dw, -1.0, 1.0))
        d_az = np.mod(az - np.float32(self.azimuth) + np.float32(math.pi), np.float32(2 * math.pi)) - np.float32(math.pi)
        horiz = cavity.cavity_radius * np.cos(el)
        q = (d_az * horiz / np.float32(self.extent_azimuth)) ** 2 + (
            (el - np.float32(self.elevation)) * cavity.cavity_radius / np.float32(self.extent_elevation)) ** 2
        local = np.float32(self.thickness) * np.clip(1.0 - q, 0.0, None) ** np.float32(self.profile)
        local *= np.clip(1.0 + self.margin(du, dv, dw), 0.3, None)
        same_side = pts.u * np.float32(self.side) > 1.0  # the falx stops it at the midline
        return np.where(same_side & (local > 0.3), _soft(local - cavity.depth, 1.0), np.float32(0.0))

    def follow_up(self, rng: np.random.Generator) -> "ExtraAxialCollection":
        return replace(self, hu=self._older(rng), thickness=self.thickness * float(rng.uniform(0.55, 0.9)))


@dataclass(frozen=True)
class SubarachnoidBlood(Bleed):
    """Blood replacing the CSF of the subarachnoid spaces inside an ellipsoidal region."""

    region: Ellipsoid

    def occupancy(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        in_space = np.isin(cavity.tissue, np.asarray(SUBARACHNOID_SPACES, dtype=np.int8))
        if self.region.misses(height_range(pts.w)):
            return np.zeros(pts.u.shape, dtype=np.float32)
        return np.where(in_space, _soft(1.0 - self.region.radius(pts.u, pts.v, pts.w), 0.15), np.float32(0.0))

    def fill_share(self, pts: Points, occupancy: np.ndarray) -> np.ndarray:
        """Blood diluted by CSF, unevenly: denser in the middle of the region."""
        return np.float32(self.fill) * (np.float32(0.75) + np.float32(0.25) * occupancy)

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
    satellites: tuple[Ellipsoid, ...] = ()   # smaller clots around the main one (contusions, daughter clots)

    def _radius(self, pts: Points) -> np.ndarray:
        cu, cv, cw = (np.float32(c) for c in self.clot.centre)
        bumps = np.zeros(pts.u.shape, dtype=np.float32)
        for fu, fv, fw, amp in self.lobulation:
            bumps += np.float32(amp) * np.cos(np.float32(fu) * (pts.u - cu) + np.float32(fv) * (pts.v - cv) + np.float32(fw) * (pts.w - cw))
        r = self.clot.radius(pts.u, pts.v, pts.w)
        for s in self.satellites:
            r = np.minimum(r, s.radius(pts.u, pts.v, pts.w))
        return r * (1.0 + bumps)

    def occupancy(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        inside_brain = cavity.depth > 0.5
        not_csf = ~np.isin(cavity.tissue, np.asarray((Tissue.VENTRICLE,) + SUBARACHNOID_SPACES, dtype=np.int8))
        edge = 1.0 / min(self.clot.axes)  # about 1 mm of partial volume, in normalised radius
        return np.where(inside_brain & not_csf, _soft(1.0 - self._radius(pts), edge), np.float32(0.0))

    def oedema(self, pts: Points, cavity: CavityFields) -> tuple[np.ndarray, float]:
        rim = self.oedema_rim / min(self.clot.axes)
        in_brain = np.isin(cavity.tissue, np.asarray(PARENCHYMA, dtype=np.int8))
        return (self._radius(pts) < 1.0 + rim) & in_brain, self.oedema_hu

    def follow_up(self, rng: np.random.Generator) -> "ParenchymalClot":
        k = float(rng.uniform(0.8, 0.95))
        c = self.clot
        return replace(self, hu=self._older(rng), clot=Ellipsoid(c.centre, tuple(a * k for a in c.axes), c.yaw),
                       oedema_rim=self.oedema_rim * float(rng.uniform(1.2, 1.6)),
                       satellites=tuple(Ellipsoid(s.centre, tuple(a * k for a in s.axes), s.yaw) for s in self.satellites))


@dataclass(frozen=True)
class VentricularBlood(Bleed):
    """Blood in the selected ventricles below a level perpendicular to gravity.

    `depth` is how far (mm) the level lies above the lowest, most dependent, point of those ventricles:
    a few mm layer in the occipital horns, several cm cast the whole system.
    """

    compartments: tuple[Ellipsoid, ...]
    depth: float

    def occupancy(self, pts: Points, cavity: CavityFields) -> np.ndarray:
        gu, gv, gw = pts.gravity
        lowest = max(_support(e, pts.gravity) for e in self.compartments)
        height = pts.u * np.float32(gu) + pts.v * np.float32(gv) + pts.w * np.float32(gw)
        inside = np.zeros(pts.u.shape, dtype=bool)
        heights = height_range(pts.w)
        for e in self.compartments:
            inside |= e.contains(pts.u, pts.v, pts.w, heights)
        inside &= cavity.tissue == Tissue.VENTRICLE
        return np.where(inside, _soft(height - np.float32(lowest - self.depth), 1.5), np.float32(0.0))

    def fill_share(self, pts: Points, occupancy: np.ndarray) -> np.ndarray:
        """Blood mixed with CSF, denser toward the dependent part (a haematocrit gradient)."""
        gu, gv, gw = pts.gravity
        height = pts.u * np.float32(gu) + pts.v * np.float32(gv) + pts.w * np.float32(gw)
        lowest = max(_support(e, pts.gravity) for e in self.compartments)
        below = np.clip((height - np.float32(lowest - self.depth)) / np.float32(max(self.depth, 1.0)), 0.0, 1.0)
        return np.float32(self.fill) * (np.float32(0.8) + np.float32(0.35) * below)

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
# Density of the blood itself (HU) by subtype; SAH and IVH then mix with CSF through `fill`. Acute blood
# is mostly 40-80 HU (median ~55-60); a patient's haematocrit shifts every bleed together (`offset`).
BLOOD_HU: dict[str, tuple[float, float]] = {
    EPIDURAL: (52.0, 78.0),
    SUBDURAL: (52.0, 72.0),
    SUBARACHNOID: (58.0, 75.0),       # x fill 0.65-0.95 -> about 40-60 HU on the image
    INTRAPARENCHYMAL: (52.0, 78.0),
    INTRAVENTRICULAR: (50.0, 70.0),   # x fill 0.5-0.8 with CSF -> about 30-50 HU
}
FILL: dict[str, tuple[float, float]] = {SUBARACHNOID: (0.65, 0.95), INTRAVENTRICULAR: (0.5, 0.8)}
SUBDURAL_AGE = {"acute": 0.65, "mixed": 0.2, "subacute": 0.15}   # subacute / chronic: 15-35 HU, iso/hypodense


def _blood(subtype: str, rng: np.random.Generator, offset: float) -> dict:
    """Density, inhomogeneity and CSF mix of one bleed (the Bleed base fields)."""
    lo, hi = BLOOD_HU[subtype]
    hu = float(rng.uniform(lo, hi)) + offset
    pockets = 0.0
    if subtype == SUBDURAL:
        age = rng.choice(list(SUBDURAL_AGE), p=list(SUBDURAL_AGE.values()))
        if age == "subacute":
            hu = float(rng.uniform(15.0, 35.0))
        elif age == "mixed":
            pockets = -float(rng.uniform(15.0, 30.0))
    elif subtype in (EPIDURAL, INTRAPARENCHYMAL) and rng.random() < 0.2:
        pockets = -float(rng.uniform(10.0, 20.0))  # the swirl of active, unclotted bleeding
    n_waves = int(rng.integers(2, 5))
    waves = tuple((float(fu), float(fv), float(fw), float(ph)) for fu, fv, fw, ph in
                  np.column_stack([rng.uniform(-1.0, 1.0, (n_waves, 3)) * rng.uniform(0.25, 0.9, (n_waves, 1)),
                                   rng.uniform(0.0, 2 * math.pi, n_waves)]))
    lo_f, hi_f = FILL.get(subtype, (1.0, 1.0))
    return dict(subtype=subtype, hu=hu, phase=float(rng.uniform(0.0, 2 * math.pi)),
                heterogeneity=float(rng.uniform(3.0, 8.0)), waves=waves, pockets=pockets,
                fill=float(rng.uniform(lo_f, hi_f)))


def _convexity_direction(rng: np.random.Generator, side: int) -> tuple[float, float]:
    """Azimuth and elevation of a point on the lateral convexity (temporal / parietal / frontal)."""
    lateral = 0.0 if side > 0 else math.pi
    azimuth = lateral + side * float(rng.uniform(-0.9, 0.9))
    return azimuth, float(rng.uniform(-0.1, 0.75))


def sample_bleed(subtype: str, anatomy: HeadAnatomy, rng: np.random.Generator, near: Bleed | None = None,
                 offset: float = 0.0) -> Bleed:
    """One bleed of `subtype`; with `near`, placed where it plausibly accompanies that bleed. `offset` (HU)
    is the patient's haematocrit shift."""
    a, b, c = anatomy.semi_axes
    side = int(rng.choice([-1, 1]))
    if isinstance(near, ExtraAxialCollection):
        side = near.side
    blood = _blood(subtype, rng, offset)
    if subtype in (EPIDURAL, SUBDURAL):
        azimuth, elevation = _convexity_direction(rng, side)
        margin = DirectionalField.sample(rng, waves=6, frequency=float(rng.uniform(6.0, 12.0)),
                                         amplitude=float(rng.uniform(0.12, 0.3)))
        if subtype == EPIDURAL:
            return ExtraAxialCollection(**blood, side=side, azimuth=azimuth, elevation=elevation,
                                        extent_azimuth=float(rng.uniform(18.0, 42.0)),
                                        extent_elevation=float(rng.uniform(12.0, 24.0)),
                                        thickness=float(rng.uniform(5.0, 24.0)), profile=1.0, margin=margin)
        return ExtraAxialCollection(**blood, side=side, azimuth=azimuth, elevation=elevation,
                                    extent_azimuth=float(rng.uniform(40.0, 90.0)),
                                    extent_elevation=float(rng.uniform(25.0, 45.0)),
                                    thickness=float(rng.uniform(3.0, 13.0)), profile=0.6, margin=margin)
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
            axes = (float(rng.uniform(15, 40)), float(rng.uniform(15, 45)), float(rng.uniform(15, 32)))
        elif pattern == "sylvian":
            centre = (side * 0.6 * a, -0.05 * b, -0.05 * c)
            axes = (float(rng.uniform(18, 35)), float(rng.uniform(18, 32)), float(rng.uniform(12, 24)))
        else:  # aneurysmal: the basal cisterns and both Sylvian fissures
            centre = (0.0, -0.02 * b, -0.2 * c)
            axes = (float(rng.uniform(40, 55)), float(rng.uniform(22, 30)), float(rng.uniform(14, 22)))
        return SubarachnoidBlood(**blood, region=Ellipsoid(centre, axes, float(rng.uniform(-20, 20))))
    if subtype == INTRAPARENCHYMAL:
        deep = (near is not None and near.subtype == INTRAVENTRICULAR) or rng.random() < 0.45
        contusion = not deep and (isinstance(near, ExtraAxialCollection) or rng.random() < 0.4)
        if deep:  # hypertensive: putamen (lentiform nucleus) or thalamus
            host = anatomy.structures[str(rng.choice(["lentiform", "thalamus"]))][0 if side > 0 else 1]
            centre = (host.centre[0] + float(rng.uniform(-3, 3)), host.centre[1] + float(rng.uniform(-4, 4)),
                      host.centre[2] + float(rng.uniform(-3, 5)))
        else:  # lobar / contusion: in the white matter, under the cortex
            azimuth, elevation = _convexity_direction(rng, side)
            if isinstance(near, ExtraAxialCollection):
                azimuth, elevation = near.azimuth + math.pi * float(rng.choice([0.0, 1.0])), near.elevation
            r = float(rng.uniform(0.45, 0.62))
            centre = (r * a * math.cos(elevation) * math.cos(azimuth), r * b * math.cos(elevation) * math.sin(azimuth),
                      r * c * math.sin(elevation))
        size = (3.0, 10.0) if contusion else (6.0, 22.0)
        axes = tuple(float(x) for x in rng.uniform(*size, size=3))
        if not contusion and rng.random() < 0.25:  # a large lobar or basal ganglia haematoma
            axes = tuple(float(x) for x in rng.uniform(20.0, 32.0, size=3))
        n_lobes = int(rng.integers(4, 8))
        lobulation = tuple((float(fu), float(fv), float(fw), float(amp)) for fu, fv, fw, amp in
                           np.column_stack([rng.uniform(-0.7, 0.7, (n_lobes, 3)), rng.uniform(0.03, 0.1, n_lobes)]))
        satellites = []
        for _ in range(int(rng.integers(1, 4)) if contusion else int(rng.random() < 0.3)):
            offset_mm = rng.normal(size=3)
            offset_mm *= float(rng.uniform(8.0, 18.0)) / np.linalg.norm(offset_mm)
            satellites.append(Ellipsoid(tuple(float(x) for x in np.asarray(centre) + offset_mm),
                                        tuple(float(x) for x in rng.uniform(2.0, 6.0, size=3)),
                                        float(rng.uniform(-90, 90))))
        return ParenchymalClot(**blood, clot=Ellipsoid(centre, axes, float(rng.uniform(-90, 90))),
                               lobulation=lobulation, oedema_rim=float(rng.uniform(1.5, 5.0)),
                               oedema_hu=float(rng.uniform(14.0, 24.0)), satellites=tuple(satellites))
    if subtype == INTRAVENTRICULAR:
        st = anatomy.structures
        cast = rng.random() < 0.35
        midline = cast or rng.random() < 0.3  # blood reaching the third and fourth ventricles
        compartments = tuple(st["lateral_ventricles"]) + (
            tuple(st["third_ventricle"] + st["fourth_ventricle"]) if midline else ())
        depth = float(rng.uniform(20.0, 35.0)) if cast else float(rng.uniform(4.0, 14.0))
        return VentricularBlood(**blood, compartments=compartments, depth=depth)
    raise ValueError(f"unknown hemorrhage subtype {subtype!r}")


def sample_bleeds(subtypes: tuple[str, ...], anatomy: HeadAnatomy, rng: np.random.Generator) -> list[Bleed]:
    """The bleeds of one patient; a second bleed is placed relative to the first. The patient's haematocrit
    shifts the density of all of them together."""
    offset = float(np.clip(rng.normal(0.0, 4.0), -10.0, 10.0))
    bleeds: list[Bleed] = []
    for subtype in subtypes:
        bleeds.append(sample_bleed(subtype, anatomy, rng, near=bleeds[0] if bleeds else None, offset=offset))
    return bleeds
