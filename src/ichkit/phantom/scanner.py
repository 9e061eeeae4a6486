"""One CT acquisition: where the slices lie, how the head sits in them, and what the scanner adds.

World coordinates are DICOM patient coordinates (LPS, mm): x to the patient's left, y posterior, z
superior. Rows of an image run along `row_direction` (= +x), columns along `column_direction` (+y, or
tilted with the gantry), so the images are in the usual radiological orientation: anterior at the top,
the patient's left on the right. The patient lies supine, so gravity points to +y in every slice, which is
why the head holder and blood-fluid levels are placed in world, not head, coordinates.

Each study draws its protocol (slice thickness 0.625-5 mm with matching z steps, pixel spacing, kernel
sharpness, noise level and grain) and pose (offset, rotation up to 30 degrees, a few cut by the field of
view or written transposed) and its artefacts (beam-hardening streaks at the skull base, motion blur).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ichkit.phantom.anatomy import HeadAnatomy

IMAGE_SIZE = 512


@dataclass(frozen=True)
class Scanner:
    """What differs between scanners and protocols; sampled once per study."""

    manufacturer: str
    model: str
    kvp: float
    noise_sigma: float        # HU, standard deviation of the image noise
    blur_sigma: float         # px, in-plane point spread of the kernel: partial volume at edges (sharpness)
    noise_grain: float        # px, correlation length of the noise (filtered back-projection texture)
    pixel_spacing: float      # mm
    slice_spacing: float      # mm between slice centres
    slice_thickness: float    # mm
    fov_radius: float         # px, radius of the reconstruction circle


SCANNER_MODELS = (
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT"),
    ("GE MEDICAL SYSTEMS", "Revolution CT"),
    ("SIEMENS", "SOMATOM Definition AS"),
    ("SIEMENS", "SOMATOM Force"),
    ("TOSHIBA", "Aquilion ONE"),
    ("Philips", "iCT 256"),
)


# Protocols: (slice thickness = spacing in mm, weight). Thick axial series dominate, as in RSNA 2019; thin
# reconstructions (0.625-1.25 mm) come as a slab of at most MAX_SLICES (a full thin series would be 200+).
PROTOCOLS: tuple[tuple[float, float], ...] = (
    (5.0, 0.55), (4.5, 0.06), (4.0, 0.08), (3.0, 0.07), (2.5, 0.06), (1.25, 0.08), (1.0, 0.05), (0.625, 0.05),
)
MIN_SLICES, MAX_SLICES = 20, 40


def sample_scanner(rng: np.random.Generator) -> Scanner:
    manufacturer, model = SCANNER_MODELS[rng.integers(len(SCANNER_MODELS))]
    weights = np.array([w for _, w in PROTOCOLS])
    thickness = float(PROTOCOLS[int(rng.choice(len(PROTOCOLS), p=weights / weights.sum()))][0])
    # thinner slices are noisier at the same dose; soft kernels blur more and correlate the noise more
    blur = float(rng.uniform(0.5, 1.1))
    thin_noise = math.sqrt(5.0 / thickness) ** 0.5
    return Scanner(
        manufacturer=manufacturer,
        model=model,
        kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0])),
        noise_sigma=float(np.clip(rng.uniform(3.0, 5.5) * thin_noise, 2.5, 6.5)),
        blur_sigma=blur,
        noise_grain=float(rng.uniform(0.85, 1.5)),
        pixel_spacing=float(np.round(rng.uniform(0.40, 0.50), 6)),
        slice_spacing=thickness,
        slice_thickness=thickness,
        fov_radius=float(IMAGE_SIZE / 2 - rng.uniform(0.0, 4.0)),
    )


@dataclass(frozen=True)
class Acquisition:
    """The geometry of one axial series and the head's pose in it."""

    scanner: Scanner
    n_slices: int
    tilt_deg: float           # gantry tilt about the x axis
    yaw_deg: float            # in-plane rotation of the head
    head_origin: tuple[float, float, float]   # world position of the head frame's origin (cavity centre)
    first_centre: tuple[float, float, float]  # world position of the first slice's centre pixel
    holder_radius: float      # mm, radius of the curved head holder under the occiput
    holder_gap: float         # mm of cushion between head and holder
    head_back: float          # mm, largest posterior extent of the head from its origin
    transposed: bool = False  # pixel rows and columns swapped (some secondary-capture exports)
    fov_cut: bool = False     # the head placed partly outside the reconstruction circle
    motion: tuple[float, float] | None = None   # (direction in radians, length in px) of motion blur
    streaks: float = 0.0      # HU of beam-hardening streaks between dense bone (0: none)

    @classmethod
    def sample(cls, anatomy: HeadAnatomy, rng: np.random.Generator) -> "Acquisition":
        """A scanner and protocol; the head placed in its field of view, covered from the posterior fossa to
        the vertex."""
        scanner = sample_scanner(rng)
        tilt = float(rng.uniform(8.0, 20.0)) if rng.random() < 0.2 else 0.0
        # most heads lie straight; some are turned a lot (up to 30 degrees)
        yaw = float(rng.uniform(-10.0, 10.0)) if rng.random() < 0.8 else float(rng.choice([-1, 1]) * rng.uniform(10.0, 30.0))
        half_breadth, half_length = anatomy.max_extent()
        reach = max(half_breadth, half_length)  # turned, the head needs its largest extent in every direction
        fov_mm = scanner.fov_radius * scanner.pixel_spacing
        # keep the skin inside the reconstruction circle: room left over is the random offset; a few heads
        # are placed so far off-centre that the circle cuts them
        room = max(fov_mm - reach - 3.0, 0.0)
        fov_cut = bool(rng.random() < 0.06)
        if fov_cut:
            angle = float(rng.uniform(0, 2 * math.pi))
            shift = room + float(rng.uniform(5.0, 15.0))
            offset = (shift * math.cos(angle), shift * math.sin(angle))
        else:
            offset = (float(rng.uniform(-1, 1) * min(room, 20.0)), float(rng.uniform(-1, 1) * min(room, 15.0)))
        head_z = float(rng.uniform(40.0, 180.0))
        head_origin = (offset[0], offset[1], head_z)
        fov_centre = (float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)))
        start = anatomy.lowest_level + float(rng.uniform(-4.0, 8.0))
        stop = anatomy.vertex_level - float(rng.uniform(0.0, 4.0))
        step = scanner.slice_spacing / math.cos(math.radians(tilt))
        n_full = math.floor((stop - start) / step) + 1
        n_slices = int(np.clip(n_full, MIN_SLICES, MAX_SLICES))
        if n_full > MAX_SLICES:  # a thin series: a slab somewhere from the skull base to the vertex
            start += float(rng.uniform(0.0, (n_full - MAX_SLICES) * step))
        return cls(
            scanner=scanner,
            n_slices=n_slices,
            tilt_deg=tilt,
            yaw_deg=yaw,
            head_origin=head_origin,
            first_centre=(fov_centre[0], fov_centre[1], head_z + start),
            holder_radius=float(rng.uniform(95.0, 130.0)),
            holder_gap=float(rng.uniform(2.0, 8.0)),
            head_back=half_length,
            transposed=bool(rng.random() < 0.04),
            fov_cut=fov_cut,
            motion=(float(rng.uniform(0, math.pi)), float(rng.uniform(3.0, 7.0))) if rng.random() < 0.05 else None,
            streaks=float(rng.uniform(8.0, 30.0)),
        )

    # ------------------------------------------------------------------ geometry
    @property
    def row_direction(self) -> np.ndarray:
        return np.array([1.0, 0.0, 0.0])

    @property
    def column_direction(self) -> np.ndarray:
        t = math.radians(self.tilt_deg)
        return np.array([0.0, math.cos(t), -math.sin(t)])

    @property
    def image_orientation(self) -> list[float]:
        """ImageOrientationPatient of the written file (row direction first; swapped when transposed)."""
        first, second = (self.column_direction, self.row_direction) if self.transposed else (self.row_direction, self.column_direction)
        return [float(x) for x in np.concatenate([first, second])]

    def slice_centre(self, k: int) -> np.ndarray:
        """Slice centres stay on the scanner axis (the table does not move sideways), so with a gantry tilt
        they step by spacing / cos(tilt) along z and the planes are `slice_spacing` apart along the normal."""
        step = self.scanner.slice_spacing / math.cos(math.radians(self.tilt_deg))
        return np.asarray(self.first_centre) + np.array([0.0, 0.0, k * step])

    def image_position(self, k: int) -> list[float]:
        """ImagePositionPatient: the centre of the top-left pixel of slice k."""
        half = (IMAGE_SIZE - 1) / 2.0
        sp = self.scanner.pixel_spacing
        p = self.slice_centre(k) - half * sp * self.row_direction - half * sp * self.column_direction
        return [float(x) for x in p]

    def world_grid(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, z of every pixel centre of slice k, each (IMAGE_SIZE, IMAGE_SIZE) float32."""
        sp = self.scanner.pixel_spacing
        idx = np.arange(IMAGE_SIZE, dtype=np.float32) * np.float32(sp)
        ipp = np.asarray(self.image_position(k), dtype=np.float32)
        rd, cd = self.row_direction.astype(np.float32), self.column_direction.astype(np.float32)
        cols, rows = idx[None, :], idx[:, None]
        return tuple(ipp[i] + cols * rd[i] + rows * cd[i] for i in range(3))  # type: ignore[return-value]

    def to_head(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World -> head frame: undo the head's offset and in-plane rotation."""
        ox, oy, oz = (np.float32(c) for c in self.head_origin)
        g = math.radians(self.yaw_deg)
        cg, sg = np.float32(math.cos(g)), np.float32(math.sin(g))
        dx, dy = x - ox, y - oy
        return cg * dx + sg * dy, -sg * dx + cg * dy, z - oz

    def fov_mask(self) -> np.ndarray:
        """True inside the reconstruction circle."""
        c = (IMAGE_SIZE - 1) / 2.0
        rr, cc = np.ogrid[:IMAGE_SIZE, :IMAGE_SIZE]
        return (rr - c) ** 2 + (cc - c) ** 2 <= self.scanner.fov_radius ** 2

    # ------------------------------------------------------------------ what is not the head
    def paint_holder(self, x: np.ndarray, y: np.ndarray, hu: np.ndarray) -> None:
        """The curved head holder (plastic shell over a foam cushion) under the occiput, in place."""
        back = self.head_origin[1] + self.head_back
        cy = back + self.holder_gap - self.holder_radius
        cx = self.head_origin[0]
        dist = np.sqrt((x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2)
        lower = y > np.float32(cy + 0.45 * self.holder_radius)
        cushion = lower & (dist > self.holder_radius - self.holder_gap) & (dist <= self.holder_radius) & (hu <= -990)
        shell = lower & (dist > self.holder_radius) & (dist <= self.holder_radius + 4.0)
        hu[cushion] = -750.0
        hu[shell] = 180.0

    def add_streaks(self, hu: np.ndarray, skull_base: bool) -> bool:
        """Beam hardening, in place, on skull-base slices: dark streaks along the lines that cross the most
        dense bone (between the petrous bones) and a faint bright band beside them. True if any was added.
        Computed at a quarter of the resolution (the streaks are smooth across their width)."""
        if not self.streaks or not skull_base:
            return False
        f = 4
        n = IMAGE_SIZE // f
        dense = (hu > 900).reshape(n, f, n, f).sum(axis=(1, 3)).astype(np.float32) / f  # bone path per coarse px
        rows, cols = np.nonzero(dense)
        if rows.size < 50:
            return False
        weights = dense[rows, cols]
        rr, cc = np.mgrid[:n, :n].astype(np.float32)
        total = np.zeros((n, n), dtype=np.float32)
        for angle in np.linspace(0.0, math.pi, 12, endpoint=False):
            ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
            offsets = np.rint(rows * sa - cols * ca).astype(np.int64)  # lines of this direction, by offset
            shift = int(offsets.min())
            path = np.bincount(offsets - shift, weights=weights).astype(np.float32)  # bone crossed per line (px)
            line = np.rint(rr * sa - cc * ca).astype(np.int64) - shift
            inside = (line >= 0) & (line < path.size)
            profile = np.zeros((n, n), dtype=np.float32)
            profile[inside] = path[line[inside]]
            total += np.maximum(profile - np.float32(np.percentile(path, 75)), 0.0) ** 2
        if not total.any():
            return False
        total /= total.max()
        streak = ndimage.gaussian_filter(total, 0.6)
        band = ndimage.gaussian_filter(total, 2.0) - streak
        full = np.kron(np.float32(0.6) * band - streak, np.ones((f, f), dtype=np.float32))
        soft = (hu > -200) & (hu < 900)  # streaks show on soft tissue (air stays black, bone stays white)
        hu[soft] += np.float32(self.streaks) * full[soft]
        return True

    def noise_field(self, rng: np.random.Generator) -> np.ndarray:
        """Unit-variance noise with the grain of this study's reconstruction (periodic, so any roll of it is
        again such noise): filtered once per study, then rolled and flipped differently for every slice."""
        sc = self.scanner
        scale = np.float32(math.sqrt(4.0 * math.pi) * sc.noise_grain)  # Gaussian of sigma s: var 1 / (4 pi s^2)
        return scale * ndimage.gaussian_filter(rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32),
                                               sc.noise_grain, mode="wrap", truncate=3.0)

    def degrade(self, hu: np.ndarray, rng: np.random.Generator, noise: np.ndarray | None = None) -> np.ndarray:
        """The reconstruction kernel's point spread, motion, and correlated quantum noise, in HU.

        The image is blurred by the kernel (sharpness: `blur_sigma`); the noise is white noise filtered to
        the grain of filtered back-projection (`noise_grain`, neighbour correlation ~0.6-0.9) and scaled to
        `noise_sigma`, so sharpness and noise texture vary independently between studies.
        """
        sc = self.scanner
        image = ndimage.gaussian_filter(hu, sc.blur_sigma, mode="nearest", truncate=3.0)
        if self.motion is not None:
            angle, length = self.motion
            kernel = np.zeros((int(2 * length) | 1,) * 2, dtype=np.float32)
            c = kernel.shape[0] // 2
            for t in np.linspace(-length / 2, length / 2, int(4 * length)):
                kernel[int(round(c + t * math.sin(angle))), int(round(c + t * math.cos(angle)))] = 1.0
            image = ndimage.convolve(image, kernel / kernel.sum(), mode="nearest")
        if noise is None:
            noise = self.noise_field(rng)
        else:  # a fresh draw of the same texture: random roll, flips and transposition of the study's field
            noise = np.roll(noise, (int(rng.integers(IMAGE_SIZE)), int(rng.integers(IMAGE_SIZE))), axis=(0, 1))
            if rng.random() < 0.5:
                noise = noise.T
            noise = noise[::int(rng.choice([-1, 1])), ::int(rng.choice([-1, 1]))]
        return image + np.float32(sc.noise_sigma) * noise
