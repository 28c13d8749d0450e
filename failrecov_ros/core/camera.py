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


def z16_to_millimetres(depth_units: np.ndarray, depth_scale: float) -> np.ndarray:
    """Device depth units to the ROS ``16UC1`` millimetres (0 stays 0 = no data).

    A D435 counts in millimetres already (scale 0.001) and is passed through untouched; other
    scales (a D405's 0.1 mm) are converted as realsense-ros does, saturating to 0 past 65.535 m.
    """
    if not depth_scale > 0:
        raise ValueError(f"depth scale must be positive, got {depth_scale}")
    if math.isclose(depth_scale, 0.001, rel_tol=1e-6):
        return depth_units
    return depth_to_z16(z16_to_depth(depth_units, depth_scale))


def colored_points(depth_mm: np.ndarray, rgb: np.ndarray,
                   intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Nx3 float32 points (metres, optical frame) and their Nx3 uint8 colors.

    ``depth_mm`` must be registered to ``rgb`` (same size, ``intrinsics`` of the color camera),
    so each point takes its own pixel's color; pixels without depth are left out.
    """
    if depth_mm.shape != rgb.shape[:2] or (intrinsics.height, intrinsics.width) != depth_mm.shape:
        raise ValueError(f"depth {depth_mm.shape}, color {rgb.shape[:2]} and intrinsics "
                         f"{intrinsics.width}x{intrinsics.height} must share one size")
    valid = depth_mm > 0
    points = intrinsics.deproject(z16_to_depth(depth_mm))[valid]
    return points.astype(np.float32), rgb[valid]


def distort_plumb_bob(xy: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """Normalized image coordinates (..., 2) through ``plumb_bob`` (k1, k2, p1, p2, k3).

    The forward model librealsense (Brown-Conrady) and OpenCV project with.
    """
    k1, k2, p1, p2, k3 = (tuple(coefficients) + (0.0,) * 5)[:5]
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
    return np.stack([x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                     y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)], axis=-1)


def pixel_rays(intrinsics: Intrinsics, iterations: int = 20) -> np.ndarray:
    """HxWx3 ray directions (x, y, 1) through each pixel's centre, in the optical frame.

    Undistorts ``plumb_bob`` by fixed-point iteration (converges for a real lens's small
    coefficients), so a scene rendered along these rays lands where the distorted camera that
    librealsense projects with would see it.
    """
    if intrinsics.distortion_model != "plumb_bob":
        raise ValueError(f"only plumb_bob rays are supported, got {intrinsics.distortion_model}")
    distorted = intrinsics.deproject(np.ones((intrinsics.height, intrinsics.width)))[..., :2]
    undistorted = distorted.copy()
    if any(intrinsics.distortion):
        for _ in range(iterations):
            undistorted += distorted - distort_plumb_bob(undistorted, intrinsics.distortion)
    return np.concatenate([undistorted, np.ones(undistorted.shape[:2] + (1,))], axis=-1)


@dataclasses.dataclass(frozen=True)
class AlignmentCheck:
    """How well an object's pixels in depth registered to color cover it in the color image."""

    iou: float  # intersection over union of the two pixel sets
    color_pixels: int
    depth_pixels: int
    min_iou: float

    @property
    def aligned(self) -> bool:
        """Whether the overlap reaches ``min_iou``."""
        return self.iou >= self.min_iou


def check_alignment(color_mask: np.ndarray, aligned_depth_mm: np.ndarray, object_depth_m: float,
                    tolerance_m: float = 0.01, min_iou: float = 0.9,
                    depth_scale: float = 0.001) -> AlignmentCheck:
    """Whether depth registered to color puts an object where the color image shows it.

    ``color_mask`` marks the object in the color image (found by its color); the object's pixels
    in ``aligned_depth_mm`` (Z16, the color camera's size) are those within ``tolerance_m`` of
    its known depth. Depth that is not registered, or registered with the wrong intrinsics or
    extrinsics, puts the object elsewhere or at another size and the IoU falls.
    """
    if color_mask.shape != aligned_depth_mm.shape:
        raise ValueError(f"color mask {color_mask.shape} and aligned depth "
                         f"{aligned_depth_mm.shape} must share one size")
    in_color = np.asarray(color_mask, dtype=bool)
    if not in_color.any():
        raise ValueError("the object is not in the color image: nothing to check alignment on")
    depth_m = z16_to_depth(aligned_depth_mm, depth_scale)
    in_depth = (aligned_depth_mm > 0) & (np.abs(depth_m - object_depth_m) <= tolerance_m)
    union = int(np.count_nonzero(in_color | in_depth))
    return AlignmentCheck(iou=np.count_nonzero(in_color & in_depth) / union,
                          color_pixels=int(np.count_nonzero(in_color)),
                          depth_pixels=int(np.count_nonzero(in_depth)), min_iou=min_iou)
