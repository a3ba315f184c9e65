"""The embedded default data set: synthetic left-hand radiographs whose skeletal maturity follows age and sex.

Each radiograph is drawn from a simple anatomical model (radius, ulna, carpals, metacarpals,
phalanges, soft tissue) whose ossification follows the known sequence: diaphyses lengthen and
widen, epiphyses appear, grow to the width of the shaft and fuse; carpal centres appear in order.
Girls run ahead of boys, each hand carries its own maturity offset, and the acquisition adds the
nuisances of real radiographs (pose, exposure, noise, blur, side marker, collimation).
Geometry is in millimetres of an adult hand (x towards the thumb, y towards the fingers),
scaled by growth and mapped to pixels by one affine transform.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from utils.files import atomic_path, write_json_atomic

LABELS_CSV = "boneage-training-dataset.csv"
IMAGE_FOLDER = "boneage-training-dataset"
MANIFEST = "synthetic_manifest.json"
# Bump when the renderer changes, so that a data set drawn by an older renderer is regenerated.
GENERATOR_VERSION = 1

# The oldest bone age drawn, like the oldest RSNA label (config.MAX_AGE_MONTHS is the range the study accepts).
OLDEST_GENERATED_MONTHS = 228
# Girls' bone age standards correspond to a more mature skeleton (about 1-2 years ahead at puberty).
GIRL_MATURITY_FACTOR = 1.13
# Individual maturity offset: label noise of one reader plus biological spread (months).
OFFSET_SD_BASE_MONTHS = 2.0
OFFSET_SD_FRACTION = 0.08

# Hand length as a fraction of the adult's, by maturity (boy-equivalent years).
GROWTH_YEARS = (0.0, 1.0, 2.0, 5.0, 10.0, 13.0, 15.0, 17.0, 40.0)
GROWTH_FRACTION = (0.33, 0.42, 0.48, 0.62, 0.79, 0.90, 0.97, 1.0, 1.0)
FUSION_YEARS = 1.8  # from the first narrowing of a growth plate to its disappearance
SERIAL_BELOW = 200  # fewer images than this are not worth starting worker processes


@dataclass(frozen=True)
class Ray:
    """One digit: a metacarpal followed by its phalanges, all lengths and widths in adult millimetres."""

    name: str
    base: tuple[float, float]
    angle: float  # degrees from the forearm axis, positive towards the thumb
    spread: float  # extra angle of the phalanges (fingers slightly spread)
    lengths: tuple[float, ...]
    half_widths: tuple[float, ...]  # shaft waist
    appear: tuple[float, ...]  # epiphysis appearance, boy-equivalent years
    fuse: tuple[float, ...]  # start of epiphyseal fusion


# Thumb metacarpal's epiphysis is proximal, the other metacarpals' distal; phalanges' proximal.
RAYS = (
    Ray("thumb", (24.0, 24.0), 44.0, 6.0, (44.0, 31.0, 23.0), (4.0, 3.9, 3.4), (2.5, 2.2, 1.6), (14.6, 14.6, 13.6)),
    Ray("index", (11.0, 32.0), 7.0, 8.0, (66.0, 40.0, 23.0, 17.0), (3.4, 3.7, 3.3, 2.7), (1.5, 1.4, 2.3, 2.0), (14.8, 14.6, 14.3, 13.6)),
    Ray("middle", (1.0, 34.0), 0.0, 0.0, (63.0, 45.0, 28.0, 18.0), (3.6, 3.9, 3.4, 2.8), (1.6, 1.3, 2.2, 2.0), (14.8, 14.6, 14.3, 13.6)),
    Ray("ring", (-9.0, 32.0), -7.0, -7.0, (57.0, 42.0, 27.0, 18.0), (3.2, 3.6, 3.2, 2.7), (1.9, 1.5, 2.4, 2.1), (14.8, 14.6, 14.3, 13.6)),
    Ray("little", (-18.0, 28.0), -15.0, -13.0, (52.0, 33.0, 19.0, 16.0), (3.0, 3.1, 2.8, 2.4), (2.1, 1.9, 3.3, 2.5), (14.8, 14.6, 14.3, 13.6)),
)


@dataclass(frozen=True)
class Carpal:
    name: str
    centre: tuple[float, float]
    half_axes: tuple[float, float]
    angle: float
    appear: float  # boy-equivalent years


# Appearance order: capitate, hamate (months), triquetrum, lunate, trapezium, trapezoid, scaphoid, pisiform.
CARPALS = (
    Carpal("capitate", (1.0, 21.0), (6.6, 10.0), 0.0, 0.2),
    Carpal("hamate", (-11.0, 21.0), (6.8, 8.6), 12.0, 0.3),
    Carpal("triquetrum", (-12.0, 8.0), (6.0, 5.6), 25.0, 2.5),
    Carpal("lunate", (1.0, 6.0), (6.8, 6.6), 0.0, 3.5),
    Carpal("trapezium", (20.0, 19.0), (6.8, 6.0), -35.0, 5.0),
    Carpal("trapezoid", (12.0, 24.0), (5.3, 6.0), 0.0, 5.4),
    Carpal("scaphoid", (14.0, 8.0), (5.8, 10.0), -55.0, 5.6),
    Carpal("pisiform", (-14.0, 4.5), (4.3, 4.6), 0.0, 11.0),
)


@dataclass(frozen=True)
class LongBone:
    """A forearm bone, its distal end at `end` (y of the articular surface)."""

    name: str
    x: float
    end: float
    half_width: float
    flare: float
    epiphysis: float  # height of the distal epiphysis
    appear: float
    fuse: float


RADIUS = LongBone("radius", 9.0, -1.0, 6.3, 1.3, 9.0, 1.1, 16.0)
ULNA = LongBone("ulna", -15.0, -4.0, 4.6, 0.55, 7.0, 6.5, 16.0)
SESAMOID_APPEAR = 13.0  # adductor sesamoid of the thumb, a late pubertal sign
CENTRE_NAMES = (
    [f"{ray.name}{index}" for ray in RAYS for index in range(len(ray.lengths))]
    + [carpal.name for carpal in CARPALS]
    + [RADIUS.name, ULNA.name, "sesamoid"]
)


@dataclass(frozen=True)
class Anatomy:
    """Per-hand variation of proportions and of each ossification centre's timing (years)."""

    size: float = 1.0
    bone_width: float = 1.0
    tissue: float = 1.0
    ray_length: tuple[float, ...] = (1.0,) * len(RAYS)
    spread: float = 1.0  # how far the fingers fan out
    ray_angle: tuple[float, ...] = (0.0,) * len(RAYS)
    timing: dict = field(default_factory=lambda: dict.fromkeys(CENTRE_NAMES, 0.0))
    marrow: float = 0.55


@dataclass(frozen=True)
class Pose:
    """Where the hand lies on the detector: rotation (degrees), shift (fraction of the image), scale."""

    rotation: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0


def maturity_years(age_months: float, male: bool) -> float:
    """Skeletal maturity in boy-equivalent years: girls' bones run ahead of boys' at the same age."""
    factor = 1.0 if male else GIRL_MATURITY_FACTOR
    return float(age_months) / 12.0 * factor


def growth_fraction(maturity: float) -> float:
    return float(np.interp(maturity, GROWTH_YEARS, GROWTH_FRACTION))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    timing = {name: float(rng.normal(0.0, 0.25)) for name in CENTRE_NAMES}
    return Anatomy(
        size=float(rng.normal(1.0, 0.04)),
        bone_width=float(rng.normal(1.0, 0.06)),
        tissue=float(rng.normal(1.0, 0.12)),
        ray_length=tuple(rng.normal(1.0, 0.02, len(RAYS))),
        spread=float(rng.uniform(0.7, 1.6)),
        ray_angle=tuple(rng.normal(0.0, 1.5, len(RAYS))),
        timing=timing,
        marrow=float(rng.uniform(0.45, 0.65)),
    )


def sample_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        rotation=float(rng.uniform(-15.0, 15.0)),
        shift=(float(rng.uniform(-0.07, 0.07)), float(rng.uniform(-0.05, 0.06))),
        scale=float(rng.uniform(0.88, 1.08)),
    )


def _stage(maturity: float, start: float, duration: float) -> float:
    """0 before `start`, rising linearly to 1 after `duration` years."""
    return float(np.clip((maturity - start) / duration, 0.0, 1.0))


def _superellipse(centre, half_width, half_height, axis, exponent, points=28) -> np.ndarray:
    """Outline of a rounded shape; half_height lies along the unit vector `axis`."""
    angles = np.linspace(0.0, 2.0 * np.pi, points, endpoint=False)
    cos, sin = np.cos(angles), np.sin(angles)
    across = half_width * np.sign(cos) * np.abs(cos) ** (2.0 / exponent)
    along = half_height * np.sign(sin) * np.abs(sin) ** (2.0 / exponent)
    axis = np.asarray(axis, dtype=np.float64)
    normal = np.array([axis[1], -axis[0]])
    return np.asarray(centre) + np.outer(across, normal) + np.outer(along, axis)


def _shaft(origin, axis, start, end, half_width, flare_start, flare_end, points=34) -> np.ndarray:
    """Outline of a tubular bone between `start` and `end` along `axis`: a narrow waist, metaphyses
    flaring to `half_width * (1 + flare)` at each end, and rounded corners."""
    length = max(end - start, 1e-3)
    t = start + length * (1.0 - np.cos(np.linspace(0.0, np.pi, points))) / 2.0  # denser near the ends
    from_start, from_end = t - start, end - t
    metaphysis = min(2.5 * half_width, 0.35 * length)  # how far the flare reaches into the shaft
    profile = half_width * (
        1.0 + flare_start * np.exp(-((from_start / metaphysis) ** 2)) + flare_end * np.exp(-((from_end / metaphysis) ** 2))
    )
    corner = np.minimum(0.45 * half_width * (1.0 + max(flare_start, flare_end)), 0.5 * length)
    rounding = 1.0 - np.clip(1.0 - np.minimum(from_start, from_end) / corner, 0.0, 1.0) ** 2.5
    profile = profile * rounding ** 0.4
    axis = np.asarray(axis, dtype=np.float64)
    normal = np.array([axis[1], -axis[0]])
    centre = np.asarray(origin) + np.outer(t, axis)
    left = centre + profile[:, None] * normal
    right = centre - profile[:, None] * normal
    return np.concatenate([left, right[::-1]])


class _Canvas:
    """Bone and soft-tissue layers in pixels; shapes arrive in (grown) millimetres."""

    def __init__(self, image_size: int, matrix: np.ndarray, pixels_per_mm: float):
        self.image_size = image_size
        self.matrix = matrix
        self.pixels_per_mm = pixels_per_mm
        self.bone = np.zeros((image_size, image_size), np.float32)
        self.tissue = np.zeros((image_size, image_size), np.uint8)

    def to_pixels(self, points_mm) -> np.ndarray:
        points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 2)
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]

    def add_bone(self, parts, marrow: float, cortex_mm: float) -> None:
        """One bone (its shaft and epiphysis, as outlines): cortical rim bright, marrow darker.

        All outer outlines are filled before the inner ones so that a fusing epiphysis merges with
        its shaft; where separate bones overlap the image is denser.
        """
        outers = [self.to_pixels(outer) for outer, _ in parts]
        inners = [self.to_pixels(inner) for _, inner in parts if inner is not None]
        corner = np.floor(np.min([outline.min(axis=0) for outline in outers], axis=0)).astype(int) - 1
        far = np.ceil(np.max([outline.max(axis=0) for outline in outers], axis=0)).astype(int) + 2
        low = np.maximum(corner, 0)
        high = np.minimum(far, self.image_size)
        if np.any(high <= low):
            return
        patch = np.zeros((high[1] - low[1], high[0] - low[0]), np.float32)
        # 4 fractional bits: OpenCV fills polygons with sub-pixel vertices.
        outers = [np.round((outline - low) * 16.0).astype(np.int32) for outline in outers]
        inners = [np.round((outline - low) * 16.0).astype(np.int32) for outline in inners]
        cv2.fillPoly(patch, outers, 1.0, cv2.LINE_8, 4)
        if inners and cortex_mm * self.pixels_per_mm > 0.35:  # a rim thinner than a pixel is not drawn
            cv2.fillPoly(patch, inners, marrow, cv2.LINE_8, 4)
        # Overlapping bones look denser, though less than twice as dense (they are not parallel slabs).
        region = self.bone[low[1] : high[1], low[0] : high[0]]
        region[...] = np.maximum(region, patch) + 0.4 * np.minimum(region, patch)

    def add_tissue_polygon(self, outline_mm) -> None:
        cv2.fillPoly(self.tissue, [np.round(self.to_pixels(outline_mm) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)

    def add_tissue_limb(self, start_mm, end_mm, radius_mm) -> None:
        start, end = np.round(self.to_pixels([start_mm, end_mm]) * 16).astype(np.int32)
        thickness = max(1, int(round(2.0 * radius_mm * self.pixels_per_mm)))
        cv2.line(self.tissue, tuple(map(int, start)), tuple(map(int, end)), 255, thickness, cv2.LINE_8, 4)


@dataclass(frozen=True)
class _Epiphysis:
    proximal: bool  # at the segment's proximal end (else distal)
    zone: float  # height of its cartilage, millimetres
    appear: float
    fuse: float


def _tubular_bone(origin, axis, length, half_width, flares, joint, cortex, epiphysis, maturity):
    """Outlines (outer, inner) of a shaft on [0, length] of `axis` and of its epiphysis once ossified.

    Before it ossifies the epiphysis is cartilage, invisible; then a small round centre appears
    next to the joint, widens to the width of the metaphysis, and the dark growth plate between
    them narrows until the two overlap and merge (fusion).
    """
    axis = np.asarray(axis, dtype=np.float64)
    start, end = joint / 2.0, length - joint / 2.0
    offset = epiphysis.zone  # from the joint to the start of the shaft, on the epiphysis side
    parts = []
    if maturity >= epiphysis.appear:
        growth = _stage(maturity, epiphysis.appear, max(epiphysis.fuse - 1.0 - epiphysis.appear, 1.0))
        fusion = _stage(maturity, epiphysis.fuse, FUSION_YEARS)
        metaphysis = half_width * (1.0 + (flares[0] if epiphysis.proximal else flares[1]))
        width = metaphysis * (0.25 + 0.8 * growth**0.8)
        height = epiphysis.zone * (0.35 + 0.5 * growth) / 2.0
        gap = (epiphysis.zone - 2.0 * height) * (1.0 - fusion) - 1.5 * cortex * fusion
        offset = 2.0 * height + gap
        along = start + height if epiphysis.proximal else end - height
        centre = np.asarray(origin) + along * axis
        exponent = 2.0 + 1.5 * growth
        rim = 0.3 * min(width, height)
        parts.append(
            (
                _superellipse(centre, width, height, axis, exponent),
                _superellipse(centre, width - rim, height - rim, axis, exponent),
            )
        )
    shaft_start, shaft_end = (start + offset, end) if epiphysis.proximal else (start, end - offset)
    outer = _shaft(origin, axis, shaft_start, shaft_end, half_width, *flares)
    inner_width = half_width - cortex
    # The marrow outline keeps the cortex equally thick all round, flared ends included.
    inner_flares = [(half_width * (1.0 + flare) - cortex) / inner_width - 1.0 for flare in flares]
    inner = _shaft(origin, axis, shaft_start + cortex, shaft_end - cortex, inner_width, *inner_flares)
    parts.append((outer, inner))
    return parts


def _direction(angle_degrees: float) -> np.ndarray:
    """Unit vector `angle_degrees` from the forearm axis, positive towards the thumb (+x)."""
    angle = np.radians(angle_degrees)
    return np.array([np.sin(angle), np.cos(angle)])


def _frame(image_size: int, growth: float, pose: Pose) -> tuple[np.ndarray, float]:
    """Affine map from hand millimetres (y up) to pixels (y down) and its scale.

    A child's hand fills less of the field than an adult's, but radiographers collimate
    to the hand, so the image scale only partly compensates growth.
    """
    pixels_per_mm = image_size * (0.74 + 0.14 * growth) / (235.0 * growth) * pose.scale
    angle = np.radians(pose.rotation)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = pixels_per_mm * rotation @ np.diag([1.0, -1.0])
    anchor = np.array([14.0, 92.0]) * growth  # middle of the hand and the visible forearm
    centre = image_size * (0.5 + np.asarray(pose.shift))
    return np.column_stack([linear, centre - linear @ anchor]), pixels_per_mm


def draw_layers(maturity: float, image_size: int, anatomy: Anatomy = Anatomy(), pose: Pose = Pose()):
    """Noise-free soft-tissue thickness and bone density, float32 (S, S), for a maturity in years."""
    growth = growth_fraction(maturity)
    scale = growth * anatomy.size
    matrix, pixels_per_mm = _frame(image_size, growth, pose)
    canvas = _Canvas(image_size, matrix, pixels_per_mm)
    joint = (1.6 + 3.5 * np.exp(-maturity / 2.5)) * scale
    plump = anatomy.tissue * (1.0 + 0.6 * np.exp(-maturity / 2.5))  # infants' fingers are chubby
    palm_points = []
    for ray_index, ray in enumerate(RAYS):
        point = np.asarray(ray.base) * scale
        angle = ray.angle * (0.5 + 0.5 * anatomy.spread) + anatomy.ray_angle[ray_index]
        finger_radius = (2.2 * ray.half_widths[1] + 2.0) * scale * plump
        joints = [point]
        for segment, length in enumerate(ray.lengths):
            axis = _direction(angle if segment == 0 else angle + ray.spread * anatomy.spread)
            length *= scale * anatomy.ray_length[ray_index]
            half_width = ray.half_widths[segment] * scale * anatomy.bone_width
            thumb_metacarpal = ray.name == "thumb" and segment == 0
            epiphysis = _Epiphysis(
                proximal=segment > 0 or thumb_metacarpal,
                zone=(0.14 if segment == 0 else 0.17) * length,
                appear=ray.appear[segment] + anatomy.timing[f"{ray.name}{segment}"],
                fuse=ray.fuse[segment] + anatomy.timing[f"{ray.name}{segment}"] * 0.5,
            )
            is_distal_phalanx = segment == len(ray.lengths) - 1
            flares = (0.65, 0.2 if is_distal_phalanx else 0.4 if segment else 0.6)
            cortex = half_width * (0.22 + 0.12 * growth)
            canvas.add_bone(
                _tubular_bone(point, axis, length, half_width, flares, joint, cortex, epiphysis, maturity),
                anatomy.marrow,
                cortex,
            )
            point = point + axis * length
            joints.append(point)
        tip = point + axis * 3.0 * scale
        canvas.add_tissue_limb(joints[1], joints[-2], finger_radius)
        canvas.add_tissue_limb(joints[-2], tip, 0.85 * finger_radius)
        metacarpal_axis = _direction(angle)
        metacarpal_normal = np.array([metacarpal_axis[1], -metacarpal_axis[0]])
        for joint_point in joints[:2]:
            for side in (-1.0, 1.0):
                palm_points.append(joint_point + side * metacarpal_normal * finger_radius)
        if ray.name == "thumb":
            _add_sesamoid(canvas, joints[1], metacarpal_normal, scale, maturity, anatomy)
    wrist = 28.0 * scale * plump
    palm_points += [np.array([-wrist, 8.0 * scale]), np.array([wrist, 8.0 * scale])]
    canvas.add_tissue_polygon(cv2.convexHull(np.asarray(palm_points, np.float32)).reshape(-1, 2))
    forearm = np.array([[-wrist, 12.0 * scale], [wrist, 12.0 * scale], [0.85 * wrist, -200.0], [-0.85 * wrist, -200.0]])
    canvas.add_tissue_polygon(forearm)
    _add_carpals(canvas, scale, maturity, anatomy)
    _add_forearm_bones(canvas, scale, growth, joint, maturity, anatomy)
    return _tissue_thickness(canvas.tissue, 15.0 * scale * pixels_per_mm), _soften(canvas.bone, image_size)


def _add_sesamoid(canvas, head, radial_normal, scale, maturity, anatomy) -> None:
    """The thumb's adductor sesamoid, beside the metacarpal head on its ulnar side."""
    appear = SESAMOID_APPEAR + anatomy.timing["sesamoid"]
    if maturity < appear:
        return
    radius = 2.6 * scale * (0.4 + 0.6 * _stage(maturity, appear, 2.0))
    centre = head - radial_normal * 3.0 * scale
    outline = _superellipse(centre, radius, radius, (0.0, 1.0), 2.0, points=16)
    canvas.add_bone([(outline, None)], anatomy.marrow, 0.0)


def _add_carpals(canvas, scale, maturity, anatomy) -> None:
    """Carpal centres appear in their known order as small round nuclei and grow into blocks."""
    for carpal in CARPALS:
        appear = carpal.appear + anatomy.timing[carpal.name]
        if maturity < appear:
            continue
        stage = _stage(maturity, appear, max(12.5 - appear, 4.0)) ** 0.75
        size = (0.22 + 0.78 * stage) * scale * anatomy.bone_width
        width, height = carpal.half_axes[0] * size, carpal.half_axes[1] * size
        centre = np.asarray(carpal.centre) * scale
        axis = _direction(carpal.angle)
        exponent = 2.0 + 1.5 * stage
        rim = 0.25 * min(width, height)
        canvas.add_bone(
            [(
                _superellipse(centre, width, height, axis, exponent),
                _superellipse(centre, width - rim, height - rim, axis, exponent),
            )],
            anatomy.marrow,
            rim,
        )


def _add_forearm_bones(canvas, scale, growth, joint, maturity, anatomy) -> None:
    for bone in (RADIUS, ULNA):
        length = 200.0 * scale
        origin = np.array([bone.x * scale, bone.end * scale + joint / 2.0 - length])
        half_width = bone.half_width * scale * anatomy.bone_width
        timing = anatomy.timing[bone.name]
        epiphysis = _Epiphysis(False, bone.epiphysis * scale, bone.appear + timing, bone.fuse + 0.5 * timing)
        cortex = half_width * (0.2 + 0.12 * growth)
        parts = _tubular_bone(origin, (0.0, 1.0), length, half_width, (0.0, bone.flare), joint, cortex, epiphysis, maturity)
        canvas.add_bone(parts, anatomy.marrow, cortex)


def _tissue_thickness(mask: np.ndarray, full_thickness_pixels: float) -> np.ndarray:
    """Soft tissue rounded like a cylinder: thin at the silhouette, full inside the palm."""
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    thickness = np.sqrt(np.clip(distance / max(full_thickness_pixels, 1.0), 0.0, 1.0))
    return _soften(thickness.astype(np.float32), mask.shape[0])


def _soften(layer: np.ndarray, image_size: int) -> np.ndarray:
    """Edges of anatomy are never pixel-sharp (finite focal spot, partial volume)."""
    return cv2.GaussianBlur(layer, (0, 0), 0.5 * image_size / 256.0 + 0.2)


def render_hand(age_months: float, male: bool, rng: np.random.Generator, image_size: int = 256) -> np.ndarray:
    """One synthetic left-hand radiograph, uint8 (S, S), for a bone age in months and a sex.

    The hand's maturity is the sex-specific one for its age plus an individual offset, so two
    hands of the same label differ in maturity as they do in real data.
    """
    offset_months = rng.normal(0.0, OFFSET_SD_BASE_MONTHS + OFFSET_SD_FRACTION * float(age_months))
    maturity = max(maturity_years(float(age_months) + offset_months, male), 0.0)
    tissue, bone = draw_layers(maturity, image_size, sample_anatomy(rng), sample_pose(rng))
    return expose(tissue, bone, rng)


def expose(tissue: np.ndarray, bone: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Radiograph of the layers with the nuisances of real acquisitions."""
    size = tissue.shape[0]
    texture = cv2.resize(rng.standard_normal((size // 8, size // 8)).astype(np.float32), (size, size))
    bone = bone * (1.0 + 0.12 * texture)  # trabecular mottling
    attenuation = rng.uniform(0.45, 0.8) * tissue + rng.uniform(0.55, 1.05) * bone
    image = 1.0 - np.exp(-attenuation)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    image *= 1.0 + rng.uniform(-0.08, 0.08) * ramp[:, None] + rng.uniform(-0.05, 0.05) * ramp[None, :]  # heel effect
    fog = rng.uniform(0.0, 0.12)
    image = fog + (1.0 - fog) * np.clip(image, 0.0, 1.0)
    image = image ** rng.uniform(0.75, 1.35)
    image = rng.uniform(0.5, 1.15) * image + rng.uniform(-0.04, 0.08)
    if rng.random() < 0.3:
        image = _collimate(image, rng)
    _draw_side_marker(image, rng)
    blur = rng.uniform(0.0, 1.0) * size / 256.0
    if blur > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    image = image + rng.normal(0.0, rng.uniform(0.005, 0.03), image.shape).astype(np.float32)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _collimate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Outside a slightly tilted rectangular field the film is hardly exposed: flat grey, hand faint."""
    size = image.shape[0]
    left, top = size * rng.uniform(-0.1, 0.12, 2)
    right, bottom = size * (1.0 - rng.uniform(-0.1, 0.12, 2))
    corners = np.array([[left, top], [right, top], [right, bottom], [left, bottom]])
    tilt = np.radians(rng.uniform(-5.0, 5.0))
    rotation = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    corners = (corners - size / 2.0) @ rotation.T + size / 2.0
    field = np.zeros(image.shape, np.uint8)
    cv2.fillPoly(field, [np.round(corners * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    outside = rng.uniform(0.3, 0.8) + 0.25 * image
    return np.where(field > 0, image, outside).astype(np.float32)


def _draw_side_marker(image: np.ndarray, rng: np.random.Generator) -> None:
    """The lead letter "L" radiographers put in a corner, sometimes on a tag."""
    size = image.shape[0]
    font_scale = size / 256.0 * rng.uniform(0.55, 0.9)
    thickness = max(1, int(round(size / 128.0 * rng.uniform(0.7, 1.3))))
    (width, height), _ = cv2.getTextSize("L", cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    margin = int(size * rng.uniform(0.03, 0.08))
    right, bottom = rng.random() < 0.4, rng.random() < 0.5
    x = size - margin - width if right else margin
    y = size - margin if bottom else margin + height
    if rng.random() < 0.5:
        pad = max(2, height // 3)
        image[max(y - height - pad, 0) : y + pad, max(x - pad, 0) : x + width + pad] = rng.uniform(0.0, 0.25)
    letter = np.zeros(image.shape, np.uint8)  # OpenCV draws text on 8-bit images only
    cv2.putText(letter, "L", (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, thickness)
    image[letter > 0] = rng.uniform(0.8, 1.0)


def sample_age_months(rng: np.random.Generator) -> int:
    """An age drawn roughly like RSNA's: mostly 5-17 years, some infants and young children."""
    while True:
        months = rng.uniform(0.0, OLDEST_GENERATED_MONTHS) if rng.random() < 0.12 else rng.normal(132.0, 40.0)
        if 0.0 <= months <= OLDEST_GENERATED_MONTHS:
            return int(round(months))


def _render_case(index: int, seed: int, image_size: int, image_folder: Path) -> tuple[int, int, bool]:
    """Draw and write image `index`; its own seed makes it independent of the worker that draws it."""
    rng = np.random.default_rng([seed, index])
    age = sample_age_months(rng)
    male = bool(rng.random() < 0.5)
    image = render_hand(age, male, rng, image_size)
    case_id = index + 1
    encoded = cv2.imencode(".png", image)[1]
    with atomic_path(image_folder / f"{case_id}.png") as temporary:
        temporary.write_bytes(encoded.tobytes())
    return case_id, age, male


def _single_threaded_opencv() -> None:
    cv2.setNumThreads(1)  # the processes already use every core


def _render_all(image_folder: Path, n_images: int, seed: int, image_size: int, progress: bool) -> list:
    render = functools.partial(_render_case, seed=seed, image_size=image_size, image_folder=image_folder)
    workers = min(os.cpu_count() or 1, 8)
    bar = tqdm(total=n_images, desc="synthetic radiographs", unit="img", disable=not progress)
    with bar:
        if workers == 1 or n_images < SERIAL_BELOW:
            rows = []
            for index in range(n_images):
                rows.append(render(index))
                bar.update()
            return rows
        # "spawn": forking a process that already runs TensorFlow threads can deadlock.
        context = get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded_opencv) as executor:
            rows = []
            for row in executor.map(render, range(n_images), chunksize=16):
                rows.append(row)
                bar.update()
            return rows


def _settings(n_images: int, seed: int, image_size: int) -> dict:
    return {
        "n_images": int(n_images),
        "seed": int(seed),
        "image_size": int(image_size),
        "generator_version": GENERATOR_VERSION,
    }


def _is_complete(folder: Path, settings: dict) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file() or not (folder / LABELS_CSV).is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")) == settings
    except json.JSONDecodeError:
        return False


def generate_dataset(folder, n_images: int, *, seed: int = 42, image_size: int = 256, progress: bool = True) -> Path:
    """Write `n_images` synthetic radiographs in the Kaggle layout under `folder`; return `folder`.

    A folder that already holds the same (n_images, seed, image_size) is returned at once. The
    manifest is written last, so an interrupted generation is redone rather than used.
    """
    if int(n_images) < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if int(image_size) < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    folder = Path(folder)
    settings = _settings(n_images, seed, image_size)
    if _is_complete(folder, settings):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Runs of a sweep may start together on one data set: one generates, the others wait and read it.
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(folder, settings):
            return folder
        (folder / MANIFEST).unlink(missing_ok=True)
        image_folder = folder / IMAGE_FOLDER
        image_folder.mkdir(parents=True, exist_ok=True)
        rows = _render_all(image_folder, int(n_images), int(seed), int(image_size), progress)
        table = pd.DataFrame(rows, columns=["id", "boneage", "male"])
        _remove_stale_images(image_folder, set(table["id"]))
        with atomic_path(folder / LABELS_CSV) as temporary:
            table.to_csv(temporary, index=False)
        write_json_atomic(folder / MANIFEST, settings)
    return folder


def _remove_stale_images(image_folder: Path, ids: set) -> None:
    """Images of an earlier, larger generation would otherwise sit unlabelled beside the new ones."""
    for path in image_folder.glob("*.png"):
        if path.stem.isdigit() and int(path.stem) not in ids:
            path.unlink()
