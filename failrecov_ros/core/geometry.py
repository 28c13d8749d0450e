"""Rotations and the 7-DoF end-effector delta shared by labels and the executor.

A FailSafe correction dA = (dx, dy, dz, droll, dpitch, dyaw, dgripper) is expressed in the base
frame: the corrected pose is p' = p + (dx, dy, dz), R' = R_rpy(droll, dpitch, dyaw) @ R, with
roll/pitch/yaw the fixed-axis X-Y-Z convention (R_rpy = Rz(yaw) Ry(pitch) Rx(roll)), and the
gripper width changed by dgripper metres. Quaternions are (w, x, y, z) as in MuJoCo and ROS
message order aside. Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np


def matrix_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    cr, sr, cp, sp = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def rpy_from_matrix(rotation: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`matrix_from_rpy` (pitch in [-pi/2, pi/2])."""
    r = np.asarray(rotation, dtype=float)
    pitch = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    if abs(r[2, 0]) < 1 - 1e-9:
        return math.atan2(r[2, 1], r[2, 2]), pitch, math.atan2(r[1, 0], r[0, 0])
    return 0.0, pitch, math.atan2(-r[0, 1], r[1, 1])  # gimbal lock: put it all in yaw


def matrix_from_quat(quat) -> np.ndarray:
    """Rotation matrix of a unit quaternion (w, x, y, z); it is normalised first."""
    w, x, y, z = np.asarray(quat, dtype=float) / np.linalg.norm(quat)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def quat_multiply(a, b) -> tuple[float, float, float, float]:
    """Hamilton product ``a * b`` of two (w, x, y, z) quaternions (``b`` applied first)."""
    aw, ax, ay, az = (float(v) for v in a)
    bw, bx, by, bz = (float(v) for v in b)
    return (aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw)


def quat_about_z(angle: float) -> tuple[float, float, float, float]:
    """The (w, x, y, z) quaternion of a rotation by ``angle`` rad about the z axis."""
    return (math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2))


def pose_matrix(position, quat) -> np.ndarray:
    """4x4 homogeneous transform of a position (m) and a (w, x, y, z) quaternion."""
    out = np.eye(4)
    out[:3, :3] = matrix_from_quat(quat)
    out[:3, 3] = np.asarray(position, dtype=float)
    return out


def ee_delta(from_position, from_quat, from_gripper: float, to_position, to_quat,
             to_gripper: float) -> np.ndarray:
    """DA taking pose ``from`` to pose ``to`` (see module docstring)."""
    relative = matrix_from_quat(to_quat) @ matrix_from_quat(from_quat).T
    translation = np.asarray(to_position, dtype=float) - np.asarray(from_position, dtype=float)
    return np.array([*translation, *rpy_from_matrix(relative), to_gripper - from_gripper])


def apply_ee_delta(position, rotation: np.ndarray, gripper: float,
                   delta) -> tuple[np.ndarray, np.ndarray, float]:
    """The pose and gripper width that dA asks for, from ``position``/``rotation``/``gripper``."""
    d = np.asarray(delta, dtype=float)
    if d.shape != (7,) or not np.all(np.isfinite(d)):
        raise ValueError(f"ee delta must be 7 finite numbers, got {delta!r}")
    return (np.asarray(position, dtype=float) + d[:3], matrix_from_rpy(*d[3:6]) @ rotation,
            float(gripper + d[6]))
