"""One CT acquisition: where the slices lie, how the head sits in them, and what the scanner adds.

World coordinates are DICOM patient coordinates (LPS, mm): x to the patient's left, y posterior, z
superior. Rows of an image run along `row_direction` (= +x), columns along `column_direction` (+y, or
tilted with the gantry), so the images are in the usual radiological orientation: anterior at the top,
the patient's left on the right. The patient lies supine, so gravity points to +y in every slice, which is
why the head holder and blood-fluid levels are placed in world, not head, coordinates.
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
    blur_sigma: float         # px, in-plane point spread: partial volume at edges and the noise grain
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


def sample_scanner(rng: np.random.Generator) -> Scanner:
    manufacturer, model = SCANNER_MODELS[rng.integers(len(SCANNER_MODELS))]
    slice_spacing = float(rng.choice([5.0, 5.0, 5.0, 5.0, 4.5, 4.0]))
    return Scanner(
        manufacturer=manufacturer,
        model=model,
        kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0])),
        noise_sigma=float(rng.uniform(2.5, 5.0)),
        blur_sigma=float(rng.uniform(0.6, 0.9)),
        pixel_spacing=float(np.round(rng.uniform(0.42, 0.50), 6)),
        slice_spacing=slice_spacing,
        slice_thickness=5.0,
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

    @classmethod
    def sample(cls, anatomy: HeadAnatomy, rng: np.random.Generator) -> "Acquisition":
        """A scanner and protocol; the head placed in its field of view, covered from the posterior fossa to
        the vertex."""
        scanner = sample_scanner(rng)
        tilt = float(rng.uniform(8.0, 20.0)) if rng.random() < 0.2 else 0.0
        yaw = float(rng.uniform(-10.0, 10.0))
        half_breadth, half_length = anatomy.max_extent()
        fov_mm = scanner.fov_radius * scanner.pixel_spacing
        # keep the skin inside the reconstruction circle: room left over is the random offset
        room_x = max(fov_mm - half_breadth - 4.0, 0.0)
        room_y = max(fov_mm - half_length - 4.0, 0.0)
        head_z = float(rng.uniform(40.0, 180.0))
        head_origin = (float(rng.uniform(-1, 1) * min(room_x, 15.0)), float(rng.uniform(-1, 1) * min(room_y, 10.0)), head_z)
        fov_centre = (float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)))
        start = anatomy.lowest_level + float(rng.uniform(-4.0, 8.0))
        stop = anatomy.vertex_level - float(rng.uniform(0.0, 4.0))
        step = scanner.slice_spacing / math.cos(math.radians(tilt))
        n_slices = int(np.clip(math.floor((stop - start) / step) + 1, 20, 40))
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
        return [float(x) for x in np.concatenate([self.row_direction, self.column_direction])]

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

    def degrade(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Quantum noise and the reconstruction kernel's point spread, in HU.

        White noise is added first and blurred with the image, as the kernel does in a real scanner: one
        Gaussian gives both the partial volume at edges and the fine-grained, correlated noise texture.
        """
        sc = self.scanner
        # a 2-D Gaussian of sigma s leaves white noise with variance 1 / (4 pi s^2): pre-scale to hit noise_sigma
        scale = np.float32(sc.noise_sigma * math.sqrt(4.0 * math.pi) * sc.blur_sigma)
        noisy = hu + scale * rng.standard_normal(hu.shape, dtype=np.float32)
        return ndimage.gaussian_filter(noisy, sc.blur_sigma, mode="nearest", truncate=3.0)
