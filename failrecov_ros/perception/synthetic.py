"""Synthetic D435i recordings made with no camera: librealsense's software device + recorder.

The node plays them exactly as it plays a real recording, so tests and the benchmark exercise
the real pyrealsense2 path. The recorder paces playback by the wall time at which each frame
reached it, so frames are fed at the requested rate (30 frames at 30 Hz take a second to make);
``gap_after`` holds the rest back by ``gap_s`` to make a recording that breaks off mid-way.

Timestamps are the host's clock at recording time (``global_time``, a D435's default domain).
Every frame says which it is: color pixel (0, 0) holds the index (red = low byte, green = high
byte) and depth pixel (0, 0) is ``INDEX_DEPTH_MM + index`` mm, so a test can tell whether color
and depth came from one frameset (that depth pixel sees outside the color camera's view).

Color and depth are two views of ONE 3-D scene, so aligned depth can be checked: a wall at
``WALL_MM`` and, in front of it at ``BOX_MM``, the ``BOX_RGB`` front face of a box sliding
along x. Each stream is rendered by casting its own pixels' rays (its own intrinsics; color with
its plumb_bob distortion, from where the recorded extrinsics put it), so the box appears at a
different place and size in each image, and only depth registered with the recorded calibration
puts it back under the box in color.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from failrecov_ros.core.camera import Intrinsics, pixel_rays
from failrecov_ros.perception.realsense import import_pyrealsense2

WALL_MM = 1000
BOX_MM = 600  # the box's front face, parallel to the wall
BOX_SIDE_M = 0.2
BOX_TRAVEL_M = 0.15  # its centre slides from x = -travel to +travel (depth frame) every 60 frames
BOX_RGB = (200, 40, 40)
WALL_RGB = (90, 90, 90)
INDEX_DEPTH_MM = 2000


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What the recording holds; the intrinsics are the ones a test should read back."""

    frames: int = 30
    fps: int = 30
    color_size: tuple[int, int] = (640, 480)
    depth_size: tuple[int, int] = (640, 480)
    color_fov_deg: float = 42.0  # vertical, a D435 color camera's
    depth_fov_deg: float = 58.0  # vertical, its depth camera's
    color_distortion: tuple[float, ...] = (0.01, -0.02, 0.001, 0.002, 0.003)
    depth_to_color_m: tuple[float, float, float] = (0.015, 0.0, 0.0)
    serial: str = "000000000435"
    name: str = "Intel RealSense D435I"
    imu: bool = False
    gyro_fps: int = 200
    accel_fps: int = 100
    gap_after: int | None = None  # frames before the pause (None: no pause)
    gap_s: float = 0.0

    @property
    def color_intrinsics(self) -> Intrinsics:
        """The recorded color camera (plumb_bob with ``color_distortion``)."""
        return dataclasses.replace(Intrinsics.from_fovy(*self.color_size, self.color_fov_deg),
                                   distortion=self.color_distortion)

    @property
    def depth_intrinsics(self) -> Intrinsics:
        """The recorded depth camera (no distortion)."""
        return Intrinsics.from_fovy(*self.depth_size, self.depth_fov_deg)

    def timestamp_ms(self, index: int) -> float:
        """Milliseconds from the first frame to frame ``index`` (the gap included)."""
        gap = self.gap_s if self.gap_after is not None and index >= self.gap_after else 0.0
        return index * 1000.0 / self.fps + gap * 1000.0

    def box_centre_x_m(self, index: int) -> float:
        """The box face's centre in frame ``index``: its x in the depth frame (y is 0)."""
        phase = (index % 60) / 60.0
        return (2.0 * phase - 1.0) * BOX_TRAVEL_M

    @functools.cached_property
    def _box_plane(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Per camera (color, depth): where its pixels' rays meet the box's plane.

        x there in the depth frame, and whether y is within the box (it moves along x only).
        """
        z = BOX_MM / 1000.0
        depth_hits = pixel_rays(self.depth_intrinsics)[..., :2] * z  # from the depth origin
        # The color camera: p_color = p_depth + t (identity rotation), so it sits at -t and
        # looks along +z; its rays meet z = BOX at -t + ray * (z + t_z).
        t = np.asarray(self.depth_to_color_m)
        color_hits = pixel_rays(self.color_intrinsics)[..., :2] * (z + t[2]) - t[:2]
        return tuple((hits[..., 0].astype(np.float32), np.abs(hits[..., 1]) <= BOX_SIDE_M / 2)
                     for hits in (color_hits, depth_hits))

    def box_masks(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels where the color and the depth camera see the box in frame ``index``."""
        centre = np.float32(self.box_centre_x_m(index))
        return tuple(in_rows & (np.abs(x - centre) <= np.float32(BOX_SIDE_M / 2))
                     for x, in_rows in self._box_plane)

    def images(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Color (HxWx3 uint8) and depth (HxW uint16 mm) of frame ``index``."""
        in_color, in_depth = self.box_masks(index)
        color = np.where(in_color[..., None], np.array(BOX_RGB, np.uint8),
                         np.array(WALL_RGB, np.uint8))
        depth = np.where(in_depth, np.uint16(BOX_MM), np.uint16(WALL_MM))
        color[0, 0] = (index % 256, index // 256 % 256, 0)
        depth[0, 0] = INDEX_DEPTH_MM + index
        return color, depth


def frame_index(first_pixel) -> int:
    """The index a synthetic color image carries: pass ``color[0, 0]`` (or rgb8 bytes 0-2)."""
    return int(first_pixel[0]) + 256 * int(first_pixel[1])


def _intrinsics(rs, intrinsics: Intrinsics):
    out = rs.intrinsics()
    out.width, out.height = intrinsics.width, intrinsics.height
    out.fx, out.fy, out.ppx, out.ppy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    out.model = rs.distortion.brown_conrady
    out.coeffs = list(intrinsics.distortion)
    return out


def _video_stream(rs, stream, uid: int, intrinsics: Intrinsics, fmt, bpp: int, fps: int):
    spec = rs.video_stream()
    spec.type, spec.index, spec.uid = stream, 0, uid
    spec.width, spec.height, spec.fps = intrinsics.width, intrinsics.height, fps
    spec.bpp, spec.fmt, spec.intrinsics = bpp, fmt, _intrinsics(rs, intrinsics)
    return spec


def _motion_stream(rs, stream, uid: int, fps: int):
    spec = rs.motion_stream()
    spec.type, spec.index, spec.uid, spec.fps = stream, 0, uid, fps
    spec.fmt = rs.format.motion_xyz32f
    return spec


def write_recording(path: str, spec: SyntheticSpec, rs=None) -> None:
    """Record ``spec`` to ``path`` (``.db3``: librealsense 2.59 writes rosbag2 sqlite)."""
    rs = rs or import_pyrealsense2()
    device = rs.software_device()
    device.register_info(rs.camera_info.name, spec.name)
    device.register_info(rs.camera_info.serial_number, spec.serial)
    device.register_info(rs.camera_info.firmware_version, "5.16.0.1")
    depth_sensor = device.add_sensor("Stereo Module")
    color_sensor = device.add_sensor("RGB Camera")
    depth_profile = depth_sensor.add_video_stream(_video_stream(
        rs, rs.stream.depth, 0, spec.depth_intrinsics, rs.format.z16, 2, spec.fps))
    color_profile = color_sensor.add_video_stream(_video_stream(
        rs, rs.stream.color, 1, spec.color_intrinsics, rs.format.rgb8, 3, spec.fps))
    depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
    extrinsics = rs.extrinsics()
    extrinsics.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    extrinsics.translation = list(spec.depth_to_color_m)
    depth_profile.register_extrinsics_to(color_profile, extrinsics)
    sensors = [(depth_sensor, [depth_profile]), (color_sensor, [color_profile])]
    if spec.imu:
        motion_sensor = device.add_sensor("Motion Module")
        gyro = motion_sensor.add_motion_stream(_motion_stream(rs, rs.stream.gyro, 2,
                                                              spec.gyro_fps))
        accel = motion_sensor.add_motion_stream(_motion_stream(rs, rs.stream.accel, 3,
                                                               spec.accel_fps))
        sensors.append((motion_sensor, [gyro, accel]))
    recorder = rs.recorder(path, device)
    sink = rs.frame_queue(64)
    for sensor, profiles in sensors:
        sensor.open(profiles)
        sensor.start(sink)
    start, epoch_ms = time.monotonic(), time.time() * 1000.0
    try:
        for index in range(spec.frames):
            time.sleep(max(0.0, start + spec.timestamp_ms(index) / 1000.0 - time.monotonic()))
            stamp_ms = epoch_ms + spec.timestamp_ms(index)
            if spec.imu:
                _feed_motion(rs, spec, index, stamp_ms, gyro, accel, motion_sensor)
            color, depth = spec.images(index)
            for sensor, profile, pixels, bpp in ((depth_sensor, depth_profile, depth, 2),
                                                 (color_sensor, color_profile, color, 3)):
                frame = rs.software_video_frame()
                frame.pixels, frame.bpp, frame.stride = pixels, bpp, pixels.shape[1] * bpp
                frame.timestamp, frame.frame_number = stamp_ms, index
                frame.domain = rs.timestamp_domain.global_time
                frame.profile = profile.as_video_stream_profile()
                if sensor is depth_sensor:
                    frame.depth_units = 0.001
                sensor.on_video_frame(frame)
            while sink.poll_for_frame():
                pass
    finally:
        for sensor, _ in sensors:
            sensor.stop()
            sensor.close()
        del recorder  # the file is complete once the recorder is gone


def _feed_motion(rs, spec: SyntheticSpec, index: int, start: float, gyro, accel,
                 sensor) -> None:
    """The IMU samples from frame ``index`` (at ``start`` ms) on: gyro spins about y, accel is g."""
    for profile, fps, value in ((gyro, spec.gyro_fps, (0.0, 0.5, 0.0)),
                                (accel, spec.accel_fps, (0.0, -9.81, 0.0))):
        per_frame = fps // spec.fps
        for k in range(per_frame):
            data = rs.vector()
            data.x, data.y, data.z = value
            frame = rs.software_motion_frame()
            frame.data = data
            frame.timestamp = start + k * 1000.0 / fps
            frame.domain = rs.timestamp_domain.global_time
            frame.frame_number = index * per_frame + k
            frame.profile = profile.as_motion_stream_profile()
            sensor.on_motion_frame(frame)
