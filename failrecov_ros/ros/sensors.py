"""Messages for what sensors report.

JointState, Images, CameraInfo, Imu, PointCloud2, Clock, a sensor's static transforms and its
DiagnosticStatus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import Quaternion, TransformStamped, Vector3
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, Imu, JointState, PointCloud2, PointField
from std_msgs.msg import Header

from failrecov_ros.core.camera import Intrinsics


def header(stamp: Time, frame_id: str = "") -> Header:
    """A std_msgs/Header with ``stamp`` and ``frame_id``."""
    return Header(stamp=stamp, frame_id=frame_id)


def joint_state_msg(stamp: Time, names: Sequence[str], positions, velocities=(),
                    efforts=()) -> JointState:
    """sensor_msgs/JointState from plain sequences."""
    return JointState(header=header(stamp), name=list(names),
                      position=[float(v) for v in positions],
                      velocity=[float(v) for v in velocities],
                      effort=[float(v) for v in efforts])


def rgb_image_msg(stamp: Time, frame_id: str, rgb: np.ndarray) -> Image:
    """An HxWx3 uint8 array as an ``rgb8`` Image."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb8 needs an HxWx3 uint8 array, got {rgb.dtype} {rgb.shape}")
    height, width, _ = rgb.shape
    return Image(header=header(stamp, frame_id), height=height, width=width, encoding="rgb8",
                 is_bigendian=0, step=width * 3, data=np.ascontiguousarray(rgb).tobytes())


def depth_image_msg(stamp: Time, frame_id: str, depth_mm: np.ndarray) -> Image:
    """An HxW uint16 millimetre array as a ``16UC1`` Image (realsense-ros ``Z16``)."""
    if depth_mm.dtype != np.uint16 or depth_mm.ndim != 2:
        raise ValueError(f"16UC1 needs an HxW uint16 array, got {depth_mm.dtype} {depth_mm.shape}")
    height, width = depth_mm.shape
    little = np.ascontiguousarray(depth_mm.astype("<u2", copy=False))
    return Image(header=header(stamp, frame_id), height=height, width=width, encoding="16UC1",
                 is_bigendian=0, step=width * 2, data=little.tobytes())


def camera_info_msg(stamp: Time, frame_id: str, intrinsics: Intrinsics) -> CameraInfo:
    """sensor_msgs/CameraInfo of a rectified monocular camera with ``intrinsics``."""
    return CameraInfo(
        header=header(stamp, frame_id), width=intrinsics.width, height=intrinsics.height,
        distortion_model=intrinsics.distortion_model, d=list(intrinsics.distortion),
        k=list(intrinsics.k), r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=list(intrinsics.p))


def image_to_array(msg: Image) -> np.ndarray:
    """``rgb8``/``bgr8`` (HxWx3 uint8, as RGB) or ``16UC1`` (HxW uint16) Image as an array.

    Raises ValueError naming the problem for any other encoding or an inconsistent size.
    """
    channels = {"rgb8": 3, "bgr8": 3, "16UC1": 1, "mono16": 1}
    if msg.encoding not in channels:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; "
                         f"expected one of {', '.join(channels)}")
    depth = msg.encoding in ("16UC1", "mono16")
    itemsize = 2 if depth else 1
    row = msg.width * channels[msg.encoding] * itemsize
    if msg.step < row or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"{msg.encoding} image {msg.width}x{msg.height}: step {msg.step} and "
                         f"{len(msg.data)} bytes do not hold it")
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :row]
    if depth:
        dtype = ">u2" if msg.is_bigendian else "<u2"
        return raw.copy().view(dtype).reshape(msg.height, msg.width).astype(np.uint16)
    image = raw.reshape(msg.height, msg.width, 3)
    return image[..., ::-1].copy() if msg.encoding == "bgr8" else image.copy()


def intrinsics_from_msg(msg: CameraInfo) -> Intrinsics:
    """The pinhole part of a CameraInfo (K), raising ValueError when it is not usable."""
    return Intrinsics(msg.width, msg.height, msg.k[0], msg.k[4], msg.k[2], msg.k[5],
                      msg.distortion_model or "plumb_bob", tuple(msg.d))


def clock_msg(stamp: Time) -> Clock:
    """rosgraph_msgs/Clock for ``/clock``."""
    return Clock(clock=stamp)


def imu_msg(stamp: Time, frame_id: str, angular_velocity=None, linear_acceleration=None) -> Imu:
    """sensor_msgs/Imu; a part not measured is marked so (covariance[0] = -1), as REP 145 says.

    No orientation is ever estimated here.
    """
    msg = Imu(header=header(stamp, frame_id))
    msg.orientation_covariance[0] = -1.0
    for value, field, covariance in ((angular_velocity, "angular_velocity",
                                      "angular_velocity_covariance"),
                                     (linear_acceleration, "linear_acceleration",
                                      "linear_acceleration_covariance")):
        if value is None:
            getattr(msg, covariance)[0] = -1.0
        else:
            x, y, z = (float(v) for v in value)
            setattr(msg, field, Vector3(x=x, y=y, z=z))
    return msg


def pointcloud_msg(stamp: Time, frame_id: str, points: np.ndarray,
                   colors: np.ndarray) -> PointCloud2:
    """Unordered XYZRGB cloud (float32 x, y, z and rgb packed as realsense-ros and PCL do)."""
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"need Nx3 points and Nx3 colors, got {points.shape}, {colors.shape}")
    rgb = colors.astype(np.uint32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    cloud = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("rgb", "<u4")])
    cloud["x"], cloud["y"], cloud["z"], cloud["rgb"] = points.T[0], points.T[1], points.T[2], \
        packed
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, name in enumerate(("x", "y", "z", "rgb"))]
    return PointCloud2(header=header(stamp, frame_id), height=1, width=len(points),
                       fields=fields, is_bigendian=False, point_step=16,
                       row_step=16 * len(points), data=cloud.tobytes(), is_dense=True)


def transform_msgs(stamp: Time, transforms) -> list[TransformStamped]:
    """geometry_msgs/TransformStamped for each ``perception.transforms.Transform``."""
    out = []
    for transform in transforms:
        msg = TransformStamped(header=header(stamp, transform.parent),
                               child_frame_id=transform.child)
        x, y, z = transform.translation
        msg.transform.translation = Vector3(x=x, y=y, z=z)
        qx, qy, qz, qw = transform.rotation_xyzw
        msg.transform.rotation = Quaternion(x=qx, y=qy, z=qz, w=qw)
        out.append(msg)
    return out


_LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN,
           "error": DiagnosticStatus.ERROR}


def diagnostic_status_msg(name: str, hardware_id: str, level: str, message: str,
                          values: dict) -> DiagnosticStatus:
    """diagnostic_msgs/DiagnosticStatus; ``level`` is ``ok``, ``warn`` or ``error``."""
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {', '.join(_LEVELS)}, got {level!r}")
    return DiagnosticStatus(level=_LEVELS[level], name=name, hardware_id=hardware_id,
                            message=message,
                            values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])
