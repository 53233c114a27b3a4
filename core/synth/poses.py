"""Orbit poses around the training cameras' look-at centre: bins over azimuth x elevation x distance, the
hull of the training cameras, clamping to it, and look-at camera matrices.

Angles are in degrees in the metric world frame (z up, Blender's convention); azimuth is measured from +x
towards +y, elevation from the horizontal plane; distances are in world units from the centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.transforms import Similarity

AXES = ("azimuth", "elevation", "distance")
#: elevations are kept this far from the poles (the look-at frame with a z up vector is undefined there)
MAX_ELEVATION = 89.0
#: a capture whose cameras see the centre from directions spread less than this is forward-facing
MIN_ORBIT_SPREAD_DEG = 20.0


@dataclass(frozen=True)
class Range:
    """``count`` equal bins over [low, high]."""

    low: float
    high: float
    count: int

    def edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high, self.count + 1)

    def to_json(self) -> list:
        return [self.low, self.high, self.count]


def parse_range(value, name: str) -> Optional[Range]:
    """``"A0:A1:K"`` (or a Range / 3-sequence) -> Range; None stays None (the hull's default). Errors name ``name``."""
    if value is None or isinstance(value, Range):
        return value
    parts = value.split(":") if isinstance(value, str) else list(value)
    try:
        low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, IndexError, TypeError):
        raise NeuralLabelError(f"{name} {value!r}: expected LOW:HIGH:BINS, e.g. 0:360:8", field=name) from None
    if len(parts) != 3 or not (math.isfinite(low) and math.isfinite(high)):
        raise NeuralLabelError(f"{name} {value!r}: expected LOW:HIGH:BINS, e.g. 0:360:8", field=name)
    if count < 1 or high < low:
        raise NeuralLabelError(f"{name} {value!r}: empty bins (need BINS >= 1 and LOW <= HIGH)", field=name)
    if name == "distance" and low <= 0:
        raise NeuralLabelError(f"{name} {value!r}: distances must be > 0", field=name)
    if name == "elevation" and not -MAX_ELEVATION <= low <= high <= MAX_ELEVATION:
        raise NeuralLabelError(f"{name} {value!r}: elevations must lie in [-{MAX_ELEVATION:g}, {MAX_ELEVATION:g}]",
                               field=name)
    return Range(low, high, count)


@dataclass(frozen=True)
class Orbit:
    """Where the training cameras look (world frame) and the hull of their spherical coordinates."""

    centre: np.ndarray  # (3,) world frame
    azimuth: tuple[float, float]  # the smallest arc holding every camera (low may exceed 180: unwrapped)
    elevation: tuple[float, float]
    distance: tuple[float, float]

    def default_ranges(self, bins: Sequence[int] = (8, 2, 1)) -> tuple[Range, Range, Range]:
        return (Range(*self.azimuth, bins[0]), Range(*self.elevation, bins[1]), Range(*self.distance, bins[2]))

    def to_json(self) -> dict:
        return {"centre": [float(v) for v in self.centre], "azimuth": list(self.azimuth),
                "elevation": list(self.elevation), "distance": list(self.distance)}


def spherical(centre: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N, 3) azimuth (deg, [-180, 180)), elevation (deg), distance of ``positions`` around ``centre``."""
    d = np.asarray(positions, dtype=np.float64) - centre
    r = np.linalg.norm(d, axis=1)
    az = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    el = np.degrees(np.arcsin(np.clip(d[:, 2] / np.maximum(r, 1e-12), -1, 1)))
    return np.stack([az, el, r], axis=1)


def azimuth_arc(azimuths: np.ndarray) -> tuple[float, float]:
    """The smallest arc [low, high] (degrees, high - low <= 360) holding every azimuth: the complement of the
    widest gap between neighbours. A full orbit (no gap wider than one camera spacing would leave) is 360."""
    a = np.sort(np.mod(azimuths, 360.0))
    gaps = np.diff(np.concatenate([a, a[:1] + 360.0]))
    widest = int(np.argmax(gaps))
    if gaps[widest] <= 2 * 360.0 / max(len(a), 1):  # evenly spread all around: the full circle
        return (-180.0, 180.0)
    low = a[(widest + 1) % len(a)]
    high = a[widest] + (360.0 if widest + 1 < len(a) else 0.0)
    if low > 180.0:  # keep low in [-180, 180)
        low, high = low - 360.0, high - 360.0
    return (float(low), float(high))


def training_orbit(frames, world_from_data: Similarity) -> Orbit:
    """The orbit of a dataset's cameras (``frames``, data frame): their look-at centre and hull, world frame.
    NeuralLabelError when the capture has no orbit centre (forward-facing: the centre is behind the cameras
    or seen from nearly one direction)."""
    from ..train.bounds import look_at_centre

    if not frames:
        raise NeuralLabelError("the dataset has no camera to orbit", field="spec")
    centre_data = look_at_centre(frames)
    ahead = [float(np.dot(centre_data - f.cam_to_data[:3, 3], -f.cam_to_data[:3, 2])) for f in frames]
    origins = np.array([world_from_data.apply(f.cam_to_data[:3, 3][None])[0] for f in frames])
    centre = world_from_data.apply(centre_data[None])[0]
    dirs = origins - centre
    dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-12)
    spread = math.degrees(math.acos(float(np.clip((dirs @ dirs.T).min(), -1.0, 1.0))))  # widest pair
    if np.mean(np.array(ahead) > 0) < 0.9 or spread < MIN_ORBIT_SPREAD_DEG:
        raise NeuralLabelError(f"the cameras have no orbit centre (a forward-facing capture: they look at no "
                               f"common point, spread {spread:.0f} deg); synthetic orbit views need one",
                               field="spec")
    sph = spherical(centre, origins)
    return Orbit(centre, azimuth_arc(sph[:, 0]), (float(sph[:, 1].min()), float(sph[:, 1].max())),
                 (float(sph[:, 2].min()), float(sph[:, 2].max())))


def clamp_to_hull(ranges: Sequence[Range], orbit: Orbit) -> tuple[tuple[Range, ...], list[str]]:
    """``ranges`` cut to the training hull; and for each axis that was cut, what (for a one-line warning).
    Azimuth is cut only when the training arc is not the full circle."""
    hull = {"azimuth": orbit.azimuth, "elevation": orbit.elevation, "distance": orbit.distance}
    out, cut = [], []
    for name, r in zip(AXES, ranges):
        lo, hi = hull[name]
        if name == "azimuth" and hi - lo >= 360.0:
            out.append(r)
            continue
        low, high = r.low, r.high
        if name == "azimuth":  # compare on the arc: move the range by whole turns next to the hull
            shift = 360.0 * round(((low + high) / 2 - (lo + hi) / 2) / 360.0)
            low, high = low - shift, high - shift
        new = Range(min(max(low, lo), hi), max(min(high, hi), lo), r.count)
        if (new.low, new.high) != (low, high):
            cut.append(f"{name} {r.low:g}:{r.high:g} -> {new.low:.3g}:{new.high:.3g}")
        out.append(new)
    return tuple(out), cut


def outside_hull(coords: np.ndarray, orbit: Orbit, tolerance: float = 1e-6) -> np.ndarray:
    """(N,) whether each (azimuth, elevation, distance) row lies outside the training hull (an extrapolated
    view). Azimuth counts only when the training arc is not the full circle."""
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    outside = np.zeros(len(c), dtype=bool)
    for axis, (lo, hi) in ((1, orbit.elevation), (2, orbit.distance)):
        outside |= (c[:, axis] < lo - tolerance) | (c[:, axis] > hi + tolerance)
    lo, hi = orbit.azimuth
    if hi - lo < 360.0:
        # on the arc: past ``hi`` and not yet back round to ``lo`` (by whole turns)
        past = np.mod(c[:, 0] - lo, 360.0)
        outside |= (past > hi - lo + tolerance) & (past < 360.0 - tolerance)
    return outside


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 OpenGL camera-to-world pose at ``eye`` looking at ``target`` (x right, y up, z back), no roll."""
    z = np.asarray(eye, dtype=np.float64) - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, np.cross(z, x), z, eye
    return pose


def orbit_pose(centre: np.ndarray, azimuth: float, elevation: float, distance: float) -> np.ndarray:
    """The camera at (azimuth, elevation, distance) around ``centre`` looking at it (world frame)."""
    a, e = math.radians(azimuth), math.radians(elevation)
    eye = centre + distance * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    return look_at(eye, centre)
