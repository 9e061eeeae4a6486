"""A parametric adult head in Hounsfield units, evaluated at arbitrary 3-D points.

Coordinates are the head's own frame in mm: u to the patient's left, v to posterior, w to superior, origin
at the centre of the cranial cavity. Everything is an implicit function of the point, so any slice (any
position, tilt or in-plane rotation) is rendered by evaluating the head at that slice's pixel centres.

The cavity is an ellipsoid whose lower half is shallow in front (the anterior cranial fossa sits on the
orbits) and deep behind (the posterior fossa), with a little low-frequency irregularity. Depth below the
inner table of the skull (`depth`, mm, measured along the ray from the centre) drives the layers: scalp with
a fat layer, outer table / diploe / inner table, the thin extra-axial CSF space, the cortical ribbon and the
white matter. Sulci are the zero set of a random field on the sphere of directions, so their walls run
radially: at mid levels they are radial clefts along the convexity, near the vertex (where the slice cuts
the cortex tangentially) they form the gyral maze. Deep structures (ventricles, basal ganglia, thalami,
brainstem, cisterns, cerebellum) are ellipsoids placed in proportion to the cavity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Tissue class of a rendered point; bleeds use these to find where they may lie."""

    AIR = 0
    SCALP = 1
    FAT = 2
    BONE = 3
    SINUS = 4            # air cells inside the skull base (sphenoid, frontal, mastoid)
    CSF_EXTRA = 5        # thin subarachnoid space over the convexity
    SULCUS = 6           # CSF in sulci and the Sylvian fissures
    FISSURE = 7          # interhemispheric fissure
    CISTERN = 8          # basal (suprasellar, perimesencephalic) cisterns
    VENTRICLE = 9
    GREY = 10
    WHITE = 11
    DEEP_GREY = 12       # caudate, lentiform nucleus, thalamus
    BRAINSTEM = 13
    CEREBELLUM = 14
    FALX = 15
    CALCIFICATION = 16   # pineal gland, choroid plexus: dense but not blood
    ORBIT = 17
    VENOUS_SINUS = 18    # dural venous sinuses (superior sagittal, transverse): 40-60 HU against the table
    SCALP_HAEMATOMA = 19 # blood outside the skull: not an intracranial bleed


# CSF-filled spaces where subarachnoid blood collects
SUBARACHNOID_SPACES = (Tissue.CSF_EXTRA, Tissue.SULCUS, Tissue.FISSURE, Tissue.CISTERN)
# brain tissue an intraparenchymal bleed may replace
PARENCHYMA = (Tissue.GREY, Tissue.WHITE, Tissue.DEEP_GREY, Tissue.BRAINSTEM, Tissue.CEREBELLUM)
# names of HeadAnatomy.structures entries, each a list of ellipsoids (paired ones: patient's left first)
VENTRICLES = ("lateral_ventricles", "third_ventricle", "fourth_ventricle")
DEEP_GREY_NUCLEI = ("caudate", "lentiform", "thalamus")


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid in head coordinates (mm), optionally turned by `yaw` degrees about the w axis."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    yaw: float = 0.0

    def radius(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside, 1 on the surface."""
        cu, cv, cw = (np.float32(x) for x in self.centre)
        au, av, aw = (np.float32(x) for x in self.axes)
        du, dv = u - cu, v - cv
        if self.yaw:
            c, s = np.float32(np.cos(np.radians(self.yaw))), np.float32(np.sin(np.radians(self.yaw)))
            du, dv = c * du + s * dv, -s * du + c * dv
        return np.sqrt((du / au) ** 2 + (dv / av) ** 2 + ((w - cw) / aw) ** 2)

    def contains(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, heights: tuple[float, float] | None = None) -> np.ndarray:
        """Inside or not. `heights` (min, max of w), when the caller knows it, saves recomputing it."""
        # most structures miss most slices: decide that from the slice's height range before any maths
        if self.misses(heights or height_range(w)):
            return np.zeros(np.shape(w), dtype=bool)
        return self.radius(u, v, w) < 1.0

    def misses(self, heights: tuple[float, float]) -> bool:
        """True if no point with w in `heights` (min, max) can lie inside (a cheap reject)."""
        reach = self.axes[2]  # yaw turns about w: the vertical reach is unchanged
        return heights[0] > self.centre[2] + reach or heights[1] < self.centre[2] - reach

    def mirrored(self) -> "Ellipsoid":
        """The same structure in the other hemisphere."""
        return Ellipsoid((-self.centre[0], self.centre[1], self.centre[2]), self.axes, -self.yaw)


def height_range(w: np.ndarray) -> tuple[float, float]:
    """(min, max) of w; an empty set of points spans nothing."""
    return (float(w.min()), float(w.max())) if w.size else (np.inf, -np.inf)


@dataclass(frozen=True)
class DirectionalField:
    """A smooth random function on the sphere of directions: sum of plane waves cos(k . d + phase)."""

    wavevectors: np.ndarray   # (K, 3)
    phases: np.ndarray        # (K,)
    amplitudes: np.ndarray    # (K,)

    @classmethod
    def sample(cls, rng: np.random.Generator, waves: int, frequency: float, amplitude: float) -> "DirectionalField":
        directions = rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        freq = frequency * rng.uniform(0.8, 1.25, size=(waves, 1))
        # amplitude normalised so the field's standard deviation is `amplitude`
        amps = np.full(waves, amplitude * np.sqrt(2.0 / waves))
        return cls(directions * freq, rng.uniform(0, 2 * np.pi, waves), amps)

    def __call__(self, du: np.ndarray, dv: np.ndarray, dw: np.ndarray) -> np.ndarray:
        out = np.zeros_like(du)
        arg, term = np.empty_like(out), np.empty_like(out)  # reused buffers: the sum is done in place
        for wave, phase, amp in zip(self.wavevectors, self.phases, self.amplitudes):
            self._argument(du, dv, dw, wave, phase, arg, term)
            out += np.multiply(np.cos(arg, out=arg), np.float32(amp), out=arg)
        return out

    @staticmethod
    def _argument(du: np.ndarray, dv: np.ndarray, dw: np.ndarray, wave: np.ndarray, phase: float,
                  arg: np.ndarray, term: np.ndarray) -> None:
        """arg = k . d + phase, in float32, into `arg` (`term` is scratch), summed in that order."""
        ku, kv, kw = wave
        np.multiply(du, np.float32(ku), out=arg)
        arg += np.multiply(dv, np.float32(kv), out=term)
        arg += np.multiply(dw, np.float32(kw), out=term)
        arg += np.float32(phase)

    def distance_to_zero(self, du: np.ndarray, dv: np.ndarray, dw: np.ndarray) -> np.ndarray:
        """Angular distance (radians) to the field's zero set, to first order: |f| / |tangential gradient|."""
        value = np.zeros_like(du)
        gu, gv, gw = np.zeros_like(du), np.zeros_like(du), np.zeros_like(du)
        arg, term = np.empty_like(value), np.empty_like(value)
        for wave, phase, amp in zip(self.wavevectors, self.phases, self.amplitudes):
            self._argument(du, dv, dw, wave, phase, arg, term)
            value += np.multiply(np.cos(arg, out=term), np.float32(amp), out=term)
            slope = np.multiply(np.sin(arg, out=arg), np.float32(-amp), out=arg)
            for g, k in zip((gu, gv, gw), wave):
                g += np.multiply(slope, np.float32(k), out=term)
        radial = gu * du + gv * dv + gw * dw
        gu -= radial * du
        gv -= radial * dv
        gw -= radial * dw
        return np.abs(value) / (np.sqrt(gu * gu + gv * gv + gw * gw) + np.float32(1e-3))


@dataclass(frozen=True)
class TissueHU:
    """Mean attenuation of each tissue for one patient (HU)."""

    scalp: float
    fat: float
    outer_table: float
    diploe: float
    inner_table: float
    csf: float
    grey: float
    white: float
    deep_grey: float
    brainstem: float
    cerebellum: float
    falx: float
    calcification: float
    orbit_fat: float
    globe: float
    venous: float = 50.0
    suture: float = 250.0


@dataclass(frozen=True)
class CavityFields:
    """The rendered points inside the cranial cavity, with the fields bleeds are placed by."""

    index: np.ndarray          # (M,) positions of these points among all the rendered points
    tissue: np.ndarray         # int8 (M,) Tissue codes
    depth: np.ndarray          # float32 (M,) mm below the inner table (>= 0)
    direction: tuple[np.ndarray, np.ndarray, np.ndarray]  # unit vector from the cavity centre
    cavity_radius: np.ndarray  # float32 (M,) distance from the centre to the inner table along it


@dataclass(frozen=True)
class RenderedTissue:
    """What the head looks like at a set of points."""

    hu: np.ndarray             # float32 (N,)
    tissue: np.ndarray         # int8 (N,) Tissue codes
    cavity: CavityFields       # the intracranial subset


@dataclass(frozen=True)
class HeadAnatomy:
    """One patient's head. Build with `HeadAnatomy.sample(rng)`; render with `render(u, v, w)`."""

    semi_axes: tuple[float, float, float]      # cavity: left-right, antero-posterior, up (mm)
    floor_depth: tuple[float, float, float]    # cavity extent below the centre: anterior, lateral, posterior
    shape: DirectionalField                    # relative irregularity of the inner table
    inner_table: float
    diploe: float
    outer_table: float
    base_thickening: float                     # skull base is this many times thicker than the vault
    scalp: float
    csf_gap: float                             # extra-axial CSF thickness
    ribbon: float                              # cortical grey matter thickness
    sulcal_field: DirectionalField
    fold_field: DirectionalField               # modulates how deep each sulcus reaches
    sulcal_halfwidth: float                    # mm, half the width of a sulcus
    sulcal_depth: float
    fissure_halfwidth: float
    ventricle_scale: float
    hu: TissueHU
    structures: dict[str, list[Ellipsoid]] = field(default_factory=dict)
    calcifications: list[Ellipsoid] = field(default_factory=list)
    warp: DirectionalField | None = None       # bends the sulci and fissures (no straight lines)
    texture: DirectionalField | None = None    # slow +-HU inhomogeneity of the parenchyma
    falx_wave: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # amplitude (mm), freq v, freq w, phase
    scalp_haematoma: tuple[float, float, float, float, float] | None = None  # azimuth, elevation, extent, thickness, HU
    craniotomy: tuple[float, float, float] | None = None  # azimuth, elevation, radius (mm) of a bone flap removed

    # ------------------------------------------------------------------ construction
    @classmethod
    def sample(cls, rng: np.random.Generator) -> "HeadAnatomy":
        a = rng.uniform(60.0, 67.0)            # cavity half-breadth
        b = rng.uniform(76.0, 85.0)            # cavity half-length
        c = rng.uniform(66.0, 74.0)            # centre to vertex (inner table)
        atrophy = rng.beta(1.5, 4.0)           # 0 young .. 1 very atrophic: wider sulci and ventricles
        vscale = 0.85 + 0.8 * atrophy
        grey = rng.uniform(36.0, 41.0)
        hu = TissueHU(
            scalp=rng.uniform(30.0, 55.0),
            fat=rng.uniform(-105.0, -80.0),
            outer_table=rng.uniform(1000.0, 1400.0),
            diploe=rng.uniform(550.0, 850.0),
            inner_table=rng.uniform(950.0, 1350.0),
            csf=rng.uniform(2.0, 12.0),
            grey=grey,
            white=grey - rng.uniform(7.0, 11.0),
            deep_grey=grey - rng.uniform(1.0, 4.0),
            brainstem=grey - rng.uniform(4.0, 8.0),
            cerebellum=grey - rng.uniform(1.0, 4.0),
            falx=rng.uniform(42.0, 55.0),
            calcification=rng.uniform(150.0, 400.0),
            orbit_fat=rng.uniform(-110.0, -80.0),
            globe=rng.uniform(5.0, 20.0),
            venous=rng.uniform(40.0, 60.0),
            suture=rng.uniform(150.0, 400.0),
        )
        structures = _deep_structures(a, b, c, vscale, rng)
        calcifications = []
        if rng.random() < 0.5:  # pineal gland
            calcifications.append(Ellipsoid((0.0, 0.30 * b, 0.02 * c), (2.5, 2.5, 2.5)))
        if rng.random() < 0.4:  # choroid plexus in both atria
            glomus = Ellipsoid((0.30 * a * vscale ** 0.5, 0.36 * b, 0.12 * c), (2.0, 2.5, 2.0))
            calcifications += [glomus, glomus.mirrored()]
        if rng.random() < 0.15:  # plaques of dural calcification along the falx
            for _ in range(int(rng.integers(1, 4))):
                calcifications.append(Ellipsoid((0.0, float(rng.uniform(-0.6, 0.5)) * b, float(rng.uniform(0.3, 0.8)) * c),
                                                (0.8, float(rng.uniform(2.0, 6.0)), float(rng.uniform(1.5, 4.0)))))
        if rng.random() < 0.1:  # globus pallidus calcification, both sides
            gp = Ellipsoid((0.30 * a, -0.05 * b, 0.02 * c), (float(rng.uniform(1.5, 3.0)), float(rng.uniform(2.0, 4.0)), 2.5))
            calcifications += [gp, gp.mirrored()]
        scalp_haematoma = None
        if rng.random() < 0.1:
            scalp_haematoma = (float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(0.0, 0.8)),
                               float(rng.uniform(25.0, 50.0)), float(rng.uniform(4.0, 12.0)), float(rng.uniform(50.0, 75.0)))
        craniotomy = None
        if rng.random() < 0.05:
            craniotomy = (float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(0.1, 0.7)), float(rng.uniform(15.0, 30.0)))
        return cls(
            semi_axes=(a, b, c),
            floor_depth=(rng.uniform(30.0, 35.0), rng.uniform(38.0, 44.0), rng.uniform(50.0, 56.0)),
            shape=DirectionalField.sample(rng, waves=8, frequency=4.0, amplitude=0.025),
            inner_table=rng.uniform(1.0, 1.8),
            diploe=rng.uniform(1.5, 3.5),
            outer_table=rng.uniform(1.3, 2.3),
            base_thickening=rng.uniform(1.5, 2.5),
            scalp=rng.uniform(4.0, 7.0),
            csf_gap=rng.uniform(0.6, 1.2) + 1.5 * atrophy,
            ribbon=rng.uniform(2.5, 3.5),
            sulcal_field=DirectionalField.sample(rng, waves=10, frequency=24.0, amplitude=1.0),
            fold_field=DirectionalField.sample(rng, waves=5, frequency=9.0, amplitude=0.45),
            sulcal_halfwidth=0.4 + 1.4 * atrophy,
            sulcal_depth=rng.uniform(7.0, 12.0),
            fissure_halfwidth=0.8 + 1.5 * atrophy,
            ventricle_scale=vscale,
            hu=hu,
            structures=structures,
            calcifications=calcifications,
            warp=DirectionalField.sample(rng, waves=4, frequency=4.0, amplitude=float(rng.uniform(0.08, 0.14))),
            texture=DirectionalField.sample(rng, waves=4, frequency=5.0, amplitude=float(rng.uniform(0.8, 2.0))),
            falx_wave=(float(rng.uniform(0.8, 2.5)), float(rng.uniform(0.02, 0.05)), float(rng.uniform(0.02, 0.05)),
                       float(rng.uniform(0, 2 * math.pi))),
            scalp_haematoma=scalp_haematoma,
            craniotomy=craniotomy,
        )

    # ------------------------------------------------------------------ geometry
    @property
    def lowest_level(self) -> float:
        """w of the floor of the posterior fossa (mm): scans start about here."""
        return -self.floor_depth[2]

    @property
    def vertex_level(self) -> float:
        """w of the top of the scalp (mm)."""
        up = np.ones(1, dtype=np.float32)
        top = float(self.cavity_radius(0 * up, 0 * up, up)[0])
        return top + self.inner_table + self.diploe + self.outer_table + self.scalp

    def cavity_radius(self, du: np.ndarray, dv: np.ndarray, dw: np.ndarray) -> np.ndarray:
        """Distance from the centre to the inner table along unit direction (du, dv, dw)."""
        a, b, c = self.semi_axes
        ant, lat, post = self.floor_depth
        horiz = np.sqrt(du * du + dv * dv) + np.float32(1e-6)
        hv = dv / horiz  # +1 straight back, -1 straight forward
        below = np.float32(lat) + np.maximum(hv, 0) * np.float32(post - lat) + np.maximum(-hv, 0) * np.float32(ant - lat)
        cw = np.where(dw >= 0, np.float32(c), below)
        ellipsoid = 1.0 / np.sqrt((du / np.float32(a)) ** 2 + (dv / np.float32(b)) ** 2 + (dw / cw) ** 2)
        return (ellipsoid * (1.0 + self.shape(du, dv, dw))).astype(np.float32)

    def skull_scale(self, du: np.ndarray, dv: np.ndarray, dw: np.ndarray) -> np.ndarray:
        """Bone thickness multiplier: the anterior and middle skull base are thicker than the vault and
        the occipital bone."""
        horiz = np.sqrt(du * du + dv * dv) + np.float32(1e-6)
        not_occipital = 1.0 - 0.8 * np.clip(dv / horiz, 0.0, 1.0)
        return 1.0 + np.float32(self.base_thickening - 1.0) * np.clip(-dw * 1.6, 0.0, 1.0) ** 1.5 * not_occipital

    def max_extent(self) -> tuple[float, float]:
        """Largest half-breadth and half-length of the head (skin), for fitting it in the field of view."""
        bone = (self.inner_table + self.diploe + self.outer_table) * self.base_thickening
        extra = bone + self.scalp + (self.scalp_haematoma[3] if self.scalp_haematoma is not None else 0.0)
        bumps = float(np.abs(self.shape.amplitudes).sum())  # the irregularity can add at most this fraction
        return self.semi_axes[0] * (1 + bumps) + extra, self.semi_axes[1] * (1 + bumps) + extra

    # ------------------------------------------------------------------ rendering
    @property
    def bounding_radius(self) -> float:
        """No part of the head lies farther than this from the origin (mm)."""
        half_breadth, half_length = self.max_extent()
        face = self.structures["face"][0]
        extra = self.scalp_haematoma[3] if self.scalp_haematoma is not None else 0.0
        return max(half_breadth, half_length, self.vertex_level, float(np.linalg.norm(face.centre)) + max(face.axes)) + 2.0 + extra

    def render(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> RenderedTissue:
        """Evaluate the head at points (u, v, w) (float32 arrays, head frame, mm)."""
        u, v, w = (np.asarray(x, dtype=np.float32) for x in (u, v, w))
        r = np.sqrt(u * u + v * v + w * w) + np.float32(1e-3)
        near = np.flatnonzero(r < self.bounding_radius)  # the rest is air: skip it
        heights = height_range(w[near])  # of the whole sphere, so structure rejects do not depend on the cull
        near = near[self._may_hold_tissue(u[near], v[near], w[near], r[near], heights)]
        hu = np.full(u.shape, -1000.0, dtype=np.float32)
        tissue = np.full(u.shape, Tissue.AIR, dtype=np.int8)
        head = self._render_near(u[near], v[near], w[near], r[near], heights)
        hu[near], tissue[near] = head.hu, head.tissue
        cavity = head.cavity
        return RenderedTissue(hu, tissue, CavityFields(near[cavity.index], cavity.tissue, cavity.depth,
                                                       cavity.direction, cavity.cavity_radius))

    def _may_hold_tissue(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, r: np.ndarray,
                         heights: tuple[float, float]) -> np.ndarray:
        """False only where the point is surely air: beyond the farthest the skin (scalp haematoma
        included) can reach along the point's direction, and outside the face. A cheap, conservative cull:
        the points it keeps render exactly as without it, the others would have come out air."""
        a, b, c = self.semi_axes
        # the cavity's radius along a direction is at most that of the ellipsoid with its deepest floor as the
        # vertical half-axis, times (1 + the largest irregularity); bone, scalp and a haematoma add at most `extra`
        tall = max(c, *self.floor_depth)
        grow = np.float32(1.0 + float(np.abs(self.shape.amplitudes).sum()))
        extra = ((self.inner_table + self.diploe + self.outer_table) * self.base_thickening + self.scalp
                 + (self.scalp_haematoma[3] if self.scalp_haematoma is not None else 0.0) + 2.0)
        q = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2 + (w / np.float32(tall)) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            keep = r - r * grow / q < np.float32(extra)  # r minus the ellipsoid's reach (r / q) along the ray
        face = self.structures["face"][0]
        if not face.misses(heights):
            keep |= face.radius(u, v, w) < 1.0
        return keep

    def _render_near(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, r: np.ndarray,
                     heights: tuple[float, float]) -> RenderedTissue:
        du, dv, dw = u / r, v / r, w / r
        radius = self.cavity_radius(du, dv, dw)
        depth = radius - r
        scale = self.skull_scale(du, dv, dw)
        t_inner = self.inner_table * scale
        t_diploe = t_inner + self.diploe * scale
        t_bone = t_diploe + self.outer_table * scale
        hu = np.full(u.shape, -1000.0, dtype=np.float32)
        tissue = np.full(u.shape, Tissue.AIR, dtype=np.int8)

        # extracranial layers, outermost first so inner ones overwrite
        outside = -depth
        scalp = outside < t_bone + self.scalp
        hu[scalp], tissue[scalp] = self.hu.scalp, Tissue.SCALP
        fat = scalp & (outside > t_bone + 0.35 * self.scalp) & (outside < t_bone + 0.7 * self.scalp)
        hu[fat], tissue[fat] = self.hu.fat, Tissue.FAT
        bone = outside < t_bone
        hu[bone], tissue[bone] = self.hu.outer_table, Tissue.BONE
        diploe = bone & (outside < t_diploe) & (outside >= t_inner)
        hu[diploe] = self.hu.diploe
        inner = bone & (outside < t_inner)
        hu[inner] = self.hu.inner_table
        self._sutures_and_defects(du, dv, dw, r, outside, t_bone, bone & (outside >= 0), hu, tissue)
        self._face_and_skull_base(u, v, w, hu, tissue, heights)

        # intracranial contents, evaluated only where needed
        inside = np.flatnonzero(depth >= 0)
        direction = (du[inside], dv[inside], dw[inside])
        hu[inside], tissue[inside] = self._intracranial(u[inside], v[inside], w[inside], *direction, depth[inside],
                                                        radius[inside])
        cavity = CavityFields(inside, tissue[inside], depth[inside], direction, radius[inside])
        return RenderedTissue(hu, tissue, cavity)

    def _sutures_and_defects(self, du: np.ndarray, dv: np.ndarray, dw: np.ndarray, r: np.ndarray,
                             outside: np.ndarray, t_bone: np.ndarray, bone: np.ndarray, hu: np.ndarray,
                             tissue: np.ndarray) -> None:
        """Zig-zag sutures through the vault (sagittal, coronal, lambdoid), a craniotomy defect, and a scalp
        haematoma (blood outside the skull)."""
        vault = np.flatnonzero(bone & (dw > -0.2))  # sutures cross the vault only: evaluate just there
        bu, bv, bw = du[vault], dv[vault], dw[vault]
        zig = np.float32(0.012) * np.sin(np.float32(40.0) * (bu + bv + bw))
        half = np.float32(0.35) / r[vault]  # 0.35 mm half-width, as an angle
        sagittal = (np.abs(bu + zig) < half) & (bw > 0.35)
        coronal = (np.abs(bv + 0.3 + 0.05 * np.abs(bu) + zig) < half) & (bw > 0.15)
        lambdoid = (np.abs(bv - 0.72 + 0.3 * np.abs(bu) - 0.2 * bw + zig) < half) & (bv > 0)
        hu[vault[sagittal | coronal | lambdoid]] = self.hu.suture
        if self.craniotomy is not None:
            az, el, radius = self.craniotomy
            centre = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], np.float32)
            cos_angle = du * centre[0] + dv * centre[1] + dw * centre[2]
            flap = bone & (cos_angle > np.float32(math.cos(radius / 70.0)))
            hu[flap], tissue[flap] = self.hu.scalp, Tissue.SCALP
        if self.scalp_haematoma is not None:
            az, el, extent, thick, blood = self.scalp_haematoma
            centre = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], np.float32)
            angle = np.arccos(np.clip(du * centre[0] + dv * centre[1] + dw * centre[2], -1.0, 1.0)) * r
            q = np.clip(1.0 - (angle / np.float32(extent)) ** 2, 0.0, None)
            layer = (outside > t_bone + 0.3 * self.scalp) & (outside < t_bone + self.scalp + np.float32(thick) * q)
            layer &= q > 0
            hu[layer], tissue[layer] = blood, Tissue.SCALP_HAEMATOMA

    def _face_and_skull_base(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, hu: np.ndarray,
                             tissue: np.ndarray, heights: tuple[float, float]) -> None:
        """Below and in front of the cavity: the face (soft tissue over a thin bony shell), the orbits
        (fat around the globe), the nasal cavity, and air cells carved into the thick skull base.
        `heights`: the (min, max) of w the structures are rejected by."""
        face = self.structures["face"][0]
        if face.misses(heights):
            return
        fr = face.radius(u, v, w)
        soft = (fr < 1.0) & ((tissue == Tissue.AIR) | (tissue == Tissue.FAT))  # face and scalp merge
        hu[soft], tissue[soft] = self.hu.scalp, Tissue.SCALP
        shell = (fr > 0.84) & (fr < 0.9) & (tissue == Tissue.SCALP)
        hu[shell], tissue[shell] = self.hu.diploe, Tissue.BONE
        for orbit, globe in zip(self.structures["orbit"], self.structures["globe"]):
            inside = orbit.contains(u, v, w, heights) & (tissue != Tissue.AIR)
            hu[inside], tissue[inside] = self.hu.orbit_fat, Tissue.ORBIT
            hu[globe.contains(u, v, w, heights) & inside] = self.hu.globe
        for name in ("sinus", "mastoid"):
            for ell in self.structures[name]:
                inside = ell.contains(u, v, w, heights) & ((tissue == Tissue.BONE) | (tissue == Tissue.SCALP))
                if name == "mastoid":  # a honeycomb of small air cells, not one cavity
                    inside &= np.cos(u * 1.3) * np.cos(v * 1.3) * np.cos(w * 1.3) > 0.1
                hu[inside], tissue[inside] = -1000.0, Tissue.SINUS

    def _intracranial(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, du: np.ndarray, dv: np.ndarray,
                      dw: np.ndarray, depth: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = self.hu
        hu = np.full(u.shape, h.white, dtype=np.float32)
        tissue = np.full(u.shape, Tissue.WHITE, dtype=np.int8)
        below_gap = depth - np.float32(self.csf_gap)

        # soft grey-white transition: white matter just under the ribbon is a little denser
        under = np.clip((below_gap - np.float32(self.ribbon)) / np.float32(1.5), 0.0, None)
        hu += np.float32(h.grey - h.white) * np.exp(-under).astype(np.float32) * np.float32(0.6)

        # cortex: a ribbon under the surface that follows each sulcus down to its fundus; the directions are
        # bent by a slow field of position, so sulci curve as they deepen instead of running straight in
        r = radius - depth
        if self.warp is not None:
            su, sv, sw = u / np.float32(70.0), v / np.float32(70.0), w / np.float32(70.0)
            du, dv, dw = du + self.warp(sv, sw, su), dv + self.warp(sw, su, sv), dw + self.warp(su, sv, sw)
            norm = np.sqrt(du * du + dv * dv + dw * dw) + np.float32(1e-6)
            du, dv, dw = du / norm, dv / norm, dw / norm
        to_sulcus = self.sulcal_field.distance_to_zero(du, dv, dw) * r  # mm along the surface
        fold_depth = np.float32(self.sulcal_depth) * (1.0 + self.fold_field(du, dv, dw))
        in_fold = below_gap < fold_depth
        grey = (below_gap < self.ribbon) | (in_fold & (to_sulcus < self.sulcal_halfwidth + self.ribbon))
        hu[grey], tissue[grey] = h.grey, Tissue.GREY
        # sulci narrow toward their fundus
        sulcus = in_fold & (to_sulcus < self.sulcal_halfwidth * (1.2 - below_gap / fold_depth))
        hu[sulcus], tissue[sulcus] = h.csf, Tissue.SULCUS

        # interhemispheric fissure with the falx in its middle; it stops above the corpus callosum
        amp, fv, fw, ph = self.falx_wave  # the falx and fissure wave a little: no ruler-straight midline
        mid_u = u - np.float32(amp) * np.sin(np.float32(fv) * v + np.float32(fw) * w + np.float32(ph))
        fissure = (np.abs(mid_u) < self.fissure_halfwidth) & (depth < 0.5 * radius)
        hu[fissure], tissue[fissure] = h.csf, Tissue.FISSURE
        falx = fissure & (np.abs(mid_u) < 0.45) & (depth > self.csf_gap)
        hu[falx], tissue[falx] = h.falx, Tissue.FALX

        # posterior fossa: cerebellum under the tentorium, folia as a finer version of the sulcal field
        a, b, c = self.semi_axes
        # the tentorium is a tent: highest in the midline, sloping down laterally
        tent_level = -0.15 * c - 0.15 * np.abs(u) + 0.1 * (v - 0.5 * b)
        tentorium = w < tent_level
        cerebellum = np.flatnonzero(tentorium & (v > 0.05 * b) & (below_gap > 0))
        hu[cerebellum], tissue[cerebellum] = h.cerebellum, Tissue.CEREBELLUM
        folia = np.abs(self.sulcal_field(du[cerebellum] * 1.7, dv[cerebellum] * 1.7, dw[cerebellum] * 1.7)) < 0.25
        hu[cerebellum[folia]] = h.cerebellum - 6.0
        # the tentorium itself: a thin dense sheet over the cerebellum (looks like a thin subdural)
        sheet = (np.abs(w - tent_level) < 0.6) & (v > 0.05 * b) & (below_gap > 0)
        hu[sheet], tissue[sheet] = h.falx, Tissue.FALX

        # Sylvian fissures: oblique clefts from the lateral surface inward, at the level of the basal ganglia
        sylvian = (np.abs(v - (-0.08 * b + 0.35 * (np.abs(u) - 0.4 * a))) < 1.2 + 0.8 * self.ventricle_scale) & (
            np.abs(u) > 0.58 * a) & (np.abs(w + 0.05 * c) < 0.17 * c)
        hu[sylvian], tissue[sylvian] = h.csf, Tissue.SULCUS

        s = self.structures
        heights = height_range(w)
        for ell in (e for name in DEEP_GREY_NUCLEI for e in s[name]):
            m = ell.contains(u, v, w, heights)
            hu[m], tissue[m] = h.deep_grey, Tissue.DEEP_GREY
        stem = s["brainstem"][0]
        reach = Ellipsoid(stem.centre, tuple(1.4 * x for x in stem.axes))  # brainstem and its cistern
        if not (reach.misses(heights) and all(e.misses(heights) for e in s["cistern"])):
            stem_r = stem.radius(u, v, w)
            # the perimesencephalic cistern: wide in front of the brainstem, thin behind it
            ring = (2.0 + 2.5 * np.clip(-(v - stem.centre[1]) / stem.axes[1], 0.0, 1.0)) / stem.axes[0]
            cistern = (stem_r >= 1.0) & (stem_r < 1.0 + ring) & (w < stem.centre[2] + 0.6 * stem.axes[2])
            for ell in s["cistern"]:
                cistern |= ell.contains(u, v, w, heights) & (stem_r >= 1.0)
            hu[cistern], tissue[cistern] = h.csf, Tissue.CISTERN
            m = stem_r < 1.0
            hu[m], tissue[m] = h.brainstem, Tissue.BRAINSTEM
        for ell in (e for name in VENTRICLES for e in s[name]):
            m = ell.contains(u, v, w, heights)
            hu[m], tissue[m] = h.csf, Tissue.VENTRICLE
        for ell in self.calcifications:
            m = ell.contains(u, v, w, heights)
            hu[m], tissue[m] = h.calcification, Tissue.CALCIFICATION

        # the extra-axial CSF space lies over everything at the surface
        gap = below_gap < 0
        hu[gap], tissue[gap] = h.csf, Tissue.CSF_EXTRA
        # dense dural venous sinuses against the inner table: superior sagittal (a triangle at the top of the
        # falx) and transverse (along the tentorium's attachment at the back)
        sss = (depth < 6.0) & (np.abs(mid_u) < 4.5 - 0.75 * depth) & (w > -0.1 * c) & (v > -0.7 * b)
        transverse = (depth < 4.0) & (np.abs(w - tent_level) < 4.0) & (v > 0.55 * b)
        sinus = sss | transverse
        hu[sinus], tissue[sinus] = h.venous, Tissue.VENOUS_SINUS
        if self.texture is not None:  # slow inhomogeneity of the parenchyma (a couple of HU)
            soft = np.isin(tissue, np.asarray(PARENCHYMA, dtype=np.int8))
            hu[soft] += self.texture(u[soft] / np.float32(70.0), v[soft] / np.float32(70.0), w[soft] / np.float32(70.0))
        return hu, tissue


def _deep_structures(a: float, b: float, c: float, vscale: float, rng: np.random.Generator) -> dict[str, list[Ellipsoid]]:
    """Ventricles, deep grey nuclei, brainstem, cisterns and skull-base cavities, scaled to the cavity."""
    def jitter(size: float) -> float:  # individual variation of each structure
        return size * rng.uniform(0.92, 1.08)

    vs = vscale
    # each lateral ventricle: frontal horn, body, atrium / occipital horn, temporal horn
    lateral = [
        Ellipsoid((0.14 * a * vs ** 0.5 + 1.0, -0.30 * b, 0.20 * c), (jitter(4.5 * vs), jitter(13.0), jitter(9.0)), yaw=25.0),
        Ellipsoid((0.17 * a * vs ** 0.5 + 1.0, -0.02 * b, 0.27 * c), (jitter(5.0 * vs), jitter(20.0), jitter(6.5 * vs)), yaw=-12.0),
        Ellipsoid((0.27 * a * vs ** 0.5, 0.30 * b, 0.12 * c), (jitter(6.5 * vs), jitter(11.0), jitter(8.0 * vs)), yaw=-25.0),
        Ellipsoid((0.45 * a, -0.02 * b, -0.22 * c), (jitter(2.5 * vs), jitter(10.0), jitter(2.5 * vs))),
    ]
    caudate = Ellipsoid((0.20 * a * vs ** 0.5 + 3.0, -0.23 * b, 0.18 * c), (5.0, 9.0, 8.0))
    lentiform = Ellipsoid((0.36 * a, -0.05 * b, 0.03 * c), (6.5, 14.0, 9.0))
    thalamus = Ellipsoid((0.13 * a + 1.5 * vs, 0.10 * b, 0.04 * c), (7.0, 11.0, 8.0))
    brainstem = Ellipsoid((0.0, 0.16 * b, -0.45 * c), (13.0, 10.0, 22.0))
    cisterns = [Ellipsoid((0.0, -0.02 * b, -0.20 * c), (13.0, 8.0, 4.5))]  # suprasellar
    sinuses = [
        Ellipsoid((0.0, -0.80 * b, -0.05 * c), (14.0, 6.0, 12.0)),   # frontal sinus
        Ellipsoid((0.0, -0.40 * b, -0.55 * c), (12.0, 10.0, 10.0)),  # sphenoid sinus
        Ellipsoid((0.0, -0.85 * b, -0.85 * c), (9.0, 22.0, 14.0)),   # nasal cavity and ethmoid cells
    ]
    mastoid = Ellipsoid((0.88 * a, 0.25 * b, -0.60 * c), (9.0, 12.0, 12.0))
    orbit = Ellipsoid((0.42 * a, -0.80 * b, -0.70 * c), (15.0, 20.0, 13.0), yaw=-15.0)
    globe = Ellipsoid((orbit.centre[0], orbit.centre[1] - 0.4 * orbit.axes[1], orbit.centre[2]), (11.5, 11.5, 11.5))
    face = Ellipsoid((0.0, -0.50 * b, -0.62 * c), (0.82 * a, 0.60 * b, 0.50 * c))
    return {
        "lateral_ventricles": lateral + [e.mirrored() for e in lateral],
        "third_ventricle": [Ellipsoid((0.0, 0.02 * b, 0.0), (1.2 * vs + 0.3, 11.0, 8.0))],
        "fourth_ventricle": [Ellipsoid((0.0, 0.36 * b, -0.52 * c), (5.0, 3.0 * vs, 5.0))],
        "caudate": [caudate, caudate.mirrored()],
        "lentiform": [lentiform, lentiform.mirrored()],
        "thalamus": [thalamus, thalamus.mirrored()],
        "brainstem": [brainstem],
        "cistern": cisterns,
        "sinus": sinuses,
        "mastoid": [mastoid, mastoid.mirrored()],
        "orbit": [orbit, orbit.mirrored()],
        "globe": [globe, globe.mirrored()],
        "face": [face],
    }
