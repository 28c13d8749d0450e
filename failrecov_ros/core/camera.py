"""Pinhole intrinsics and depth encoding shared by the simulated camera and the D435i node.

realsense-ros publishes aligned depth as 16UC1 millimetres (``Z16``, 0 = no data) and a
``plumb_bob`` camera_info; these helpers produce exactly that from metres and intrinsics.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

Z16_MAX_M = 65.535


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera: image size in pixels, focal lengths and principal point in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        values = (self.fx, self.fy, self.cx, self.cy, *self.distortion)
        if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"bad intrinsics {self}")

    @classmethod
    def from_fovy(cls, width: int, height: int, fovy_deg: float) -> Intrinsics:
        """Square pixels and a centred principal point, as an OpenGL (MuJoCo) camera renders."""
        if not 0 < fovy_deg < 180:
            raise ValueError(f"vertical field of view must be in (0, 180) degrees, got {fovy_deg}")
        focal = (height / 2) / math.tan(math.radians(fovy_deg) / 2)
        return cls(width, height, focal, focal, (width - 1) / 2, (height - 1) / 2)

    @property
    def fovy_deg(self) -> float:
        """Vertical field of view in degrees."""
        return math.degrees(2 * math.atan((self.height / 2) / self.fy))

    @property
    def k(self) -> tuple[float, ...]:
        """Row-major 3x3 camera matrix as sensor_msgs/CameraInfo.k."""
        return (self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0)

    @property
    def p(self) -> tuple[float, ...]:
        """Row-major 3x4 projection matrix of a monocular camera (no baseline)."""
        return (self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0)

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera resampled to another image size."""
        sx, sy = width / self.width, height / self.height
        return dataclasses.replace(
            self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5,
        )

    def project(self, points_camera: np.ndarray) -> np.ndarray:
        """Pixel coordinates (u, v) of points in the optical frame (z forward, x right, y down)."""
        points = np.atleast_2d(points_camera)
        return np.stack([self.fx * points[:, 0] / points[:, 2] + self.cx,
                         self.fy * points[:, 1] / points[:, 2] + self.cy], axis=1)

    def deproject(self, depth_m: np.ndarray) -> np.ndarray:
        """HxWx3 points in the optical frame from a depth image in metres (NaN where no data)."""
        v, u = np.indices(depth_m.shape, dtype=np.float64)
        z = np.where(depth_m > 0, depth_m, np.nan)
        return np.stack([(u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy, z], axis=-1)


def depth_to_z16(depth_m: np.ndarray, max_range_m: float = Z16_MAX_M) -> np.ndarray:
    """Depth in metres to uint16 millimetres; NaN, inf, <= 0 and beyond range become 0 (no data)."""
    depth = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0) & (depth <= min(max_range_m, Z16_MAX_M))
    millimetres = np.where(valid, np.rint(depth * 1000.0), 0.0)
    return millimetres.astype(np.uint16)


def z16_to_depth(depth_mm: np.ndarray, depth_scale: float = 0.001) -> np.ndarray:
    """uint16 depth units to metres (0 stays 0 = no data)."""
    if depth_mm.dtype != np.uint16:
        raise ValueError(f"Z16 depth must be uint16, got {depth_mm.dtype}")
    return depth_mm.astype(np.float32) * np.float32(depth_scale)
