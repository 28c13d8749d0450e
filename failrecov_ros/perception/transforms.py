"""The D435i's static TF tree and frame names, laid out as realsense-ros lays them out.

``<camera>_link`` (the depth sensor, in ROS axes: x forward, y left, z up) is the root; each
stream has ``<camera>_<stream>_frame`` (from the device extrinsics, converted from optical to ROS
axes) and a child ``<camera>_<stream>_optical_frame`` (z forward, x right, y down) that its
images and camera_info name. With a united IMU, ``<camera>_imu_frame`` and its optical frame hang
under the gyro. Whoever aligns point clouds with rviz or a robot URDF relies on these names.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from failrecov_ros.core.geometry import matrix_from_rpy

# Rotation from a sensor's ROS-axes frame to its optical frame (roll -90 deg, yaw -90 deg).
OPTICAL_ROTATION = matrix_from_rpy(-math.pi / 2, 0.0, -math.pi / 2)


@dataclasses.dataclass(frozen=True)
class Extrinsics:
    """librealsense extrinsics A -> B: ``p_B = R p_A + t``; ``rotation`` is column-major."""

    rotation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.rotation) != 9 or len(self.translation) != 3:
            raise ValueError(f"extrinsics need 9 rotation and 3 translation values, got {self}")

    @property
    def matrix(self) -> np.ndarray:
        """The 3x3 rotation, row-major."""
        return np.asarray(self.rotation, dtype=float).reshape(3, 3).T


@dataclasses.dataclass(frozen=True)
class Transform:
    """One static transform: ``child`` expressed in ``parent`` (as geometry_msgs/Transform)."""

    parent: str
    child: str
    translation: tuple[float, float, float]
    rotation_xyzw: tuple[float, float, float, float]


def base_frame(camera_name: str) -> str:
    """The root of the camera's tree."""
    return f"{camera_name}_link"


def stream_frame(camera_name: str, stream: str) -> str:
    """A stream's frame in ROS axes."""
    return f"{camera_name}_{stream}_frame"


def optical_frame(camera_name: str, stream: str) -> str:
    """A stream's optical frame: the frame_id of its images and camera_info."""
    return f"{camera_name}_{stream}_optical_frame"


def quaternion_xyzw(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion (x, y, z, w) of a rotation matrix, w >= 0."""
    r = np.asarray(rotation, dtype=float)
    # The largest of the four squared components is computed directly (numerically safe).
    squares = np.array([1 + r[0, 0] - r[1, 1] - r[2, 2], 1 - r[0, 0] + r[1, 1] - r[2, 2],
                        1 - r[0, 0] - r[1, 1] + r[2, 2], 1 + r[0, 0] + r[1, 1] + r[2, 2]])
    k = int(np.argmax(squares))
    s = 2.0 * math.sqrt(max(squares[k], 1e-12))
    if k == 0:
        q = (s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s)
    elif k == 1:
        q = ((r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s)
    elif k == 2:
        q = ((r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4, (r[1, 0] - r[0, 1]) / s)
    else:
        q = ((r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4)
    q = np.asarray(q) / np.linalg.norm(q)
    return tuple(float(v) for v in (q if q[3] >= 0 else -q))


_OPTICAL_QUATERNION = quaternion_xyzw(OPTICAL_ROTATION)
_IDENTITY_QUATERNION = (0.0, 0.0, 0.0, 1.0)
_ZERO = (0.0, 0.0, 0.0)


def camera_transforms(camera_name: str, to_depth: dict[str, Extrinsics],
                      united_imu: bool = False) -> list[Transform]:
    """Every static transform of the camera.

    ``to_depth`` maps each enabled stream (``depth``, ``color``, ``gyro``, ``accel``) to its
    extrinsics *to the depth sensor*, which is how realsense-ros picks its base.
    """
    base = base_frame(camera_name)
    transforms = []
    for stream, extrinsics in to_depth.items():
        # Optical-axes extrinsics seen from ROS axes: R_ros = O R O^T, t_ros = O t.
        rotation = OPTICAL_ROTATION @ extrinsics.matrix @ OPTICAL_ROTATION.T
        translation = OPTICAL_ROTATION @ np.asarray(extrinsics.translation, dtype=float)
        frame = stream_frame(camera_name, stream)
        transforms.append(Transform(base, frame, tuple(float(v) for v in translation),
                                    quaternion_xyzw(rotation)))
        transforms.append(Transform(frame, optical_frame(camera_name, stream), _ZERO,
                                    _OPTICAL_QUATERNION))
    if united_imu and "gyro" in to_depth:
        imu = stream_frame(camera_name, "imu")
        transforms.append(Transform(stream_frame(camera_name, "gyro"), imu, _ZERO,
                                    _IDENTITY_QUATERNION))
        transforms.append(Transform(imu, optical_frame(camera_name, "imu"), _ZERO,
                                    _OPTICAL_QUATERNION))
    return transforms
