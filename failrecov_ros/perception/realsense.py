"""A D435i (or a recording of one) through pyrealsense2: open, read one frameset at a time, close.

Color (rgb8), depth (z16, in millimetres) and depth aligned to color all come from ONE frameset,
so they share a device timestamp: the fix for realsense-ros users' most frequent complaint (RGB
and depth out of sync). A live camera's frames go from librealsense into a shallow queue read by
the caller's thread; when the reader falls behind, the oldest frame is dropped there (a gap in the
frame numbers) rather than published late. A recording is never dropped from: librealsense plays
it without its own pacing (it then waits for the reader instead of discarding frames) and
``Pacer`` releases each frame at its recorded time. librealsense's real-time playback hands every
stream's frames to a dispatcher thread through a queue of ONE and discards the frame when that
thread has not run within a frame period, which on a loaded machine happens all the time
(measured at a load average of 5-6: 5 and 37 of 1200 framesets lost, the second with the
alignment on the reader; its debug log says "Dropping frame from dispatcher" for each).
``DeviceWatcher`` turns librealsense's devices-changed callback into unplug/plug notices.
pyrealsense2 is passed in (``rs=``) so tests can drive this with a fake; nothing here imports ROS.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from failrecov_ros.core.camera import Intrinsics, z16_to_millimetres
from failrecov_ros.perception.imu import MotionSample
from failrecov_ros.perception.transforms import Extrinsics

if TYPE_CHECKING:  # session imports this module
    from failrecov_ros.perception.session import DeviceEvents

_PROFILE = re.compile(r"\s*(\d+)\s*[x,]\s*(\d+)\s*[x,]\s*(\d+)\s*")
# How many image periods of frames librealsense may hold for a live camera's capture thread:
# anything older is stale, and publishing it late would only hide that the node
# fell behind; dropping it shows up as a drop in /diagnostics instead. Two, not one, so a
# frameset that arrives while the previous one is being aligned and published is not lost.
QUEUE_PERIODS = 2
# A recording: how many frames librealsense reads ahead. It waits when they are not taken, so
# nothing is lost, and more would not help: measured with a reader slower than the recording,
# a queue of 22 lost most of a recording with the IMU on, 8 and fewer lost nothing (a queue
# holding much of librealsense's frame pool, 16 frames a stream, is what fails).
PLAYBACK_QUEUE = 4


class CameraUnavailableError(RuntimeError):
    """No camera to stream from right now (none plugged, busy, unreadable file): retry later."""


@dataclasses.dataclass(frozen=True)
class StreamProfile:
    """``WIDTHxHEIGHTxFPS`` as realsense-ros writes it; 0 leaves that part to the device."""

    width: int = 0
    height: int = 0
    fps: int = 0

    def __post_init__(self) -> None:
        if min(self.width, self.height, self.fps) < 0:
            raise ValueError(f"profile values must be >= 0, got {self}")

    @classmethod
    def parse(cls, text: str) -> StreamProfile:
        """``"640x480x30"`` (or realsense-ros's ``"640,480,30"``)."""
        match = _PROFILE.fullmatch(text)
        if not match:
            raise ValueError(f"a profile is WIDTHxHEIGHTxFPS such as 640x480x30, got {text!r}")
        return cls(*(int(v) for v in match.groups()))

    def matches(self, width: int, height: int, fps: int) -> bool:
        """Whether a device mode satisfies this request."""
        return all(want in (0, have) for want, have in
                   ((self.width, width), (self.height, height), (self.fps, fps)))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.fps}"


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    """What to open and which streams to run."""

    serial_no: str = ""
    rosbag_filename: str = ""
    real_time: bool = True
    color_profile: StreamProfile = StreamProfile(640, 480, 30)
    depth_profile: StreamProfile = StreamProfile(640, 480, 30)
    align_depth: bool = True
    enable_gyro: bool = False
    enable_accel: bool = False
    gyro_fps: int = 0
    accel_fps: int = 0
    initial_reset: bool = False

    def __post_init__(self) -> None:
        if self.gyro_fps < 0 or self.accel_fps < 0:
            raise ValueError("gyro_fps and accel_fps must be >= 0 (0 = device default)")
        if self.rosbag_filename and not os.path.isfile(self.rosbag_filename):
            raise ValueError(f"rosbag_filename {self.rosbag_filename!r} is not a file")

    @property
    def motion_streams(self) -> tuple[str, ...]:
        """The enabled IMU streams."""
        return tuple(s for s, on in (("gyro", self.enable_gyro), ("accel", self.enable_accel))
                     if on)


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The opened device and its calibration, fixed until the next connection."""

    name: str
    serial: str
    firmware: str
    playback: bool
    depth_scale: float
    color: Intrinsics
    depth: Intrinsics
    to_depth: dict[str, Extrinsics]  # each stream's extrinsics to the depth sensor


class Deferred:
    """A value made on first use, which then lets go of what it was made from.

    Alignment waits here: the node publishes color first, so color leaves without waiting
    for it. librealsense frames belong to a small pool, so the camera makes any value still
    pending at its next read rather than hold the frameset while the caller keeps the frame.
    """

    def __init__(self, make: Callable[[], np.ndarray]) -> None:
        self._make: Callable[[], np.ndarray] | None = make
        self._value: np.ndarray | None = None

    def get(self) -> np.ndarray:
        """The value, made now if it is not yet."""
        if self._make is not None:
            self._value, self._make = self._make(), None
        return self._value


@dataclasses.dataclass(frozen=True)
class RgbdFrame:
    """One frameset: color, depth and depth aligned to color (None when alignment is off)."""

    color: np.ndarray
    depth_mm: np.ndarray
    timestamp_ms: float  # the color frame's, in ``domain``
    depth_timestamp_ms: float
    domain: str
    frame_number: int  # the color frame's
    aligned: Deferred | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def aligned_depth_mm(self) -> np.ndarray | None:
        """Depth registered to the color camera (millimetres), or None without alignment."""
        return None if self.aligned is None else self.aligned.get()


@dataclasses.dataclass(frozen=True)
class Capture:
    """What one read gave: a frameset, IMU samples, or both."""

    rgbd: RgbdFrame | None
    motion: tuple[MotionSample, ...] = ()


def intrinsics_from_rs(intrinsics) -> Intrinsics:
    """Intrinsics from librealsense's, with realsense-ros's distortion model names.

    Kannala-Brandt becomes ``equidistant`` (4 coefficients); every Brown-Conrady variant (the
    D435's) becomes ``plumb_bob`` with its 5 coefficients.
    """
    model = getattr(intrinsics.model, "name", str(intrinsics.model)).rsplit(".", 1)[-1]
    fisheye = model == "kannala_brandt4"
    return Intrinsics(int(intrinsics.width), int(intrinsics.height), float(intrinsics.fx),
                      float(intrinsics.fy), float(intrinsics.ppx), float(intrinsics.ppy),
                      "equidistant" if fisheye else "plumb_bob",
                      tuple(float(c) for c in list(intrinsics.coeffs)[:4 if fisheye else 5]))


def import_pyrealsense2():
    """pyrealsense2, imported on first use (ROS-free tests of the rest do not need it)."""
    return importlib.import_module("pyrealsense2")


def select_device(rs, serial_no: str, context=None):
    """The connected device with ``serial_no`` (any device when empty)."""
    devices = list((rs.context() if context is None else context).query_devices())
    serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
    if not devices:
        raise CameraUnavailableError("no RealSense device connected")
    if not serial_no:
        return devices[0]
    if serial_no not in serials:
        raise CameraUnavailableError(f"no RealSense device with serial number {serial_no} "
                                f"(connected: {', '.join(serials)})")
    return devices[serials.index(serial_no)]


def check_profiles(rs, device, config: CameraConfig) -> None:
    """Raise ValueError naming the supported modes when the device cannot run the request."""
    wanted = [(rs.stream.color, rs.format.rgb8, config.color_profile),
              (rs.stream.depth, rs.format.z16, config.depth_profile)]
    for stream, fmt, request in wanted:
        modes = sorted({(p.width(), p.height(), p.fps())
                        for sensor in device.query_sensors()
                        for p in (v.as_video_stream_profile() for v in sensor.get_stream_profiles()
                                  if v.stream_type() == stream and v.format() == fmt)})
        if not any(request.matches(*mode) for mode in modes):
            supported = ", ".join(f"{w}x{h}x{f}" for w, h, f in modes) or "none"
            raise ValueError(f"{device.get_info(rs.camera_info.name)} has no {stream} mode "
                             f"{request} in {fmt}; supported: {supported}")


def queue_capacity(fps: int, motion_hz: float = 0.0) -> int:
    """Frames librealsense may queue for a live camera: ``QUEUE_PERIODS`` image periods' worth.

    With the IMU on, each period also brings its motion samples, one queue entry each.
    """
    per_period = 1 + math.ceil(motion_hz / max(fps, 1))
    return QUEUE_PERIODS * per_period


class Pacer:
    """When each frame of a recording is due: its recorded time after the first one's.

    A frame that is late (the reader was starved) is due at once, and the ones after it stay on
    the recorded schedule, so a backlog is caught up rather than shifting the rest of the
    recording (librealsense's real-time playback does the same, minus its dropping). A timestamp
    before the first one (a recording that started over) starts a new schedule.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._base: tuple[float, float] | None = None  # (clock s, recorded ms) of the first

    def wait_s(self, timestamp_ms: float) -> float:
        """Seconds until the frame recorded at ``timestamp_ms`` is due (<= 0: due now)."""
        now = self._clock()
        if self._base is None or timestamp_ms < self._base[1]:
            self._base = (now, timestamp_ms)
        return self._base[0] + (timestamp_ms - self._base[1]) / 1000.0 - now


class DeviceWatcher:
    """librealsense's devices-changed callback, as notices to ``events``.

    The callback belongs to ``context``; the camera must be opened through the same context
    (``camera_opener(..., context=watcher.context)``). librealsense calls it on its own thread.
    """

    def __init__(self, events: DeviceEvents, rs=None, context=None) -> None:
        self._rs = rs = rs or import_pyrealsense2()
        self.events = events
        self.context = rs.context() if context is None else context
        # Only the callback (one librealsense thread) touches this after construction.
        self._known = {self._serial(d): d for d in self.context.query_devices()}
        self.context.set_devices_changed_callback(self._on_change)

    def _serial(self, device) -> str:
        field = self._rs.camera_info.serial_number
        return device.get_info(field) if device.supports(field) else ""

    def _on_change(self, info) -> None:
        try:
            removed = [s for s, device in self._known.items() if info.was_removed(device)]
            added = {self._serial(d): d for d in info.get_new_devices()}
        except Exception:  # noqa: BLE001 - never raise into librealsense's thread
            # Unknown change: say the open device may be gone; the reconnect finds out.
            removed, added = list(self._known), {}
        for serial in removed:
            self._known.pop(serial, None)
        self._known.update(added)
        self.events.notify(removed, added)


class RealSenseCamera:
    """One running camera. Constructing it opens the device (or recording) and starts it."""

    def __init__(self, config: CameraConfig, rs=None, context=None) -> None:
        self._rs = rs = rs or import_pyrealsense2()
        self.config = config
        playback = bool(config.rosbag_filename)
        pipeline_config = rs.config()
        if playback:
            pipeline_config.enable_device_from_file(config.rosbag_filename, False)
            color, depth, gyro_fps, accel_fps = StreamProfile(), StreamProfile(), 0, 0
        else:
            device = select_device(rs, config.serial_no, context)
            check_profiles(rs, device, config)
            pipeline_config.enable_device(device.get_info(rs.camera_info.serial_number))
            color, depth = config.color_profile, config.depth_profile
            gyro_fps, accel_fps = config.gyro_fps, config.accel_fps
        for stream, fmt, profile in ((rs.stream.color, rs.format.rgb8, color),
                                     (rs.stream.depth, rs.format.z16, depth)):
            pipeline_config.enable_stream(stream, -1, profile.width, profile.height, fmt,
                                          profile.fps)
        for stream, fps in (("gyro", gyro_fps), ("accel", accel_fps)):
            if stream in config.motion_streams:
                pipeline_config.enable_stream(getattr(rs.stream, stream), -1, 0, 0,
                                              rs.format.motion_xyz32f, fps)
        self._pipeline = rs.pipeline(context) if context is not None else rs.pipeline()
        self._queue = self._syncer = None
        self._sensors: list = []  # a recording's, started here rather than by the pipeline
        self._pending = None  # a recording's frame read before it was due
        self._lone = None  # a color or depth frame the syncer let out without its pair
        self._pacer = Pacer() if playback and config.real_time else None
        try:
            resolved = pipeline_config.resolve(self._pipeline)
            streams = list(resolved.get_streams())
            fps = max((p.fps() for p in streams if p.stream_type() == rs.stream.color), default=0)
            motion_hz = sum(p.fps() for p in streams if p.stream_type() in
                            (rs.stream.gyro, rs.stream.accel))
            if playback:
                self._start_playback(resolved.get_device(), streams)
                started = resolved
            else:
                self._queue = rs.frame_queue(queue_capacity(fps, motion_hz), False)
                started = self._pipeline.start(pipeline_config, self._queue)
        except RuntimeError as error:
            self.close()
            streams = "".join(", " + s for s in config.motion_streams)
            if playback:
                problem = ("is unreadable (truncated or corrupt?)" if _unreadable(error) else
                           f"cannot be played with rgb8 color and z16 depth{streams}")
                raise CameraUnavailableError(f"recording {config.rosbag_filename} {problem}: "
                                             f"{error}") from error
            raise CameraUnavailableError(f"cannot start the device with rgb8 color and z16 depth"
                                         f"{streams}: {error}") from error
        try:
            self._device = started.get_device()
            self.info = self._describe(started, self._device, playback)
            color_fps = started.get_stream(rs.stream.color).fps()
        except Exception:
            self.close()
            raise
        self._align = rs.align(rs.stream.color) if config.align_depth else None
        self._unaligned: Deferred | None = None
        # Color and depth further apart than half a frame are not one moment: never paired.
        self._max_skew_ms = 500.0 / max(color_fps, 1)
        self._last_color_number: int | None = None

    def _start_playback(self, device, streams) -> None:
        """Play a recording without librealsense's pacing, into a syncer that waits for us.

        Not through the pipeline: its callback mode stalls after two frames when playback is
        not real-time, and its waiting mode keeps only the latest IMU sample per frameset.
        """
        rs = self._rs
        playback = device.as_playback()
        playback.set_real_time(False)  # frames block librealsense instead of being dropped
        self._syncer = rs.syncer(PLAYBACK_QUEUE)
        wanted = {p.unique_id() for p in streams}
        # Reading starts with the first sensor started; paused, the first frames of the streams
        # started after it are not read before anyone listens for them.
        playback.pause()
        for sensor in device.query_sensors():
            profiles = [p for p in sensor.get_stream_profiles() if p.unique_id() in wanted]
            if profiles:
                sensor.open(profiles)
                self._sensors.append(sensor)
                sensor.start(self._syncer)
        playback.resume()

    def _describe(self, started, device, playback: bool) -> DeviceInfo:
        rs = self._rs
        profiles = {name: started.get_stream(getattr(rs.stream, name))
                    for name in ("color", "depth", *self.config.motion_streams)}

        def info(field) -> str:
            return device.get_info(field) if device.supports(field) else ""

        to_depth = {}
        for name, profile in profiles.items():
            try:
                extrinsics = profile.get_extrinsics_to(profiles["depth"])
                to_depth[name] = Extrinsics(tuple(extrinsics.rotation),
                                            tuple(extrinsics.translation))
            except RuntimeError:  # not calibrated (a synthetic recording): as realsense-ros
                to_depth[name] = Extrinsics()
        return DeviceInfo(
            name=info(rs.camera_info.name), serial=info(rs.camera_info.serial_number),
            firmware=info(rs.camera_info.firmware_version), playback=playback,
            depth_scale=float(device.first_depth_sensor().get_depth_scale()),
            color=intrinsics_from_rs(profiles["color"].as_video_stream_profile()
                                     .get_intrinsics()),
            depth=intrinsics_from_rs(profiles["depth"].as_video_stream_profile()
                                     .get_intrinsics()),
            to_depth=to_depth)

    def read(self, timeout_s: float) -> Capture | None:
        """The next frameset or IMU sample, or None if nothing came within ``timeout_s``.

        A recording played at its recorded rate gives each frame at its recorded time.
        """
        if self._unaligned is not None:  # the last frameset goes back to librealsense's pool
            self._unaligned.get()
            self._unaligned = None
        if self._pending is None:
            timeout_ms = max(1, int(timeout_s * 1000))
            source = (self._syncer.try_wait_for_frames if self._syncer is not None
                      else self._queue.try_wait_for_frame)
            ok, frame = source(timeout_ms)
            if not ok:
                return None
            self._pending = frame
        if self._pacer is not None:
            wait = self._pacer.wait_s(max(f.get_timestamp() for f in _frames(self._pending)))
            if wait > timeout_s:  # kept for the next read
                time.sleep(timeout_s)
                return None
            if wait > 0:
                time.sleep(wait)
        frame, self._pending = self._pending, None
        return self._capture(frame)

    def _capture(self, frame) -> Capture | None:
        rs = self._rs
        frames = _frames(frame)
        motion = tuple(self._motion(f) for f in frames if f.is_motion_frame())
        streams = {f.get_profile().stream_type(): f for f in frames if f.is_video_frame()}
        color, depth = streams.get(rs.stream.color), streams.get(rs.stream.depth)
        frameset = frame
        if (color is None) != (depth is None):
            color, depth = self._pair_lone(color or depth)
            frameset = None
        # Unpaired (no color or no depth, or not one moment), or a frameset the syncer built
        # again around a new IMU sample: no new image to publish.
        if (color is None or depth is None or color.get_frame_number() == self._last_color_number
                or abs(color.get_timestamp() - depth.get_timestamp()) > self._max_skew_ms):
            return Capture(None, motion) if motion else None
        self._last_color_number = color.get_frame_number()
        aligned = None
        if self._align is not None:
            frameset = (frameset.as_frameset() if frameset is not None
                        else self._compose(color, depth))
            aligned = Deferred(lambda: self._depth_mm(
                self._align.process(frameset).get_depth_frame()))
            self._unaligned = aligned
        return Capture(RgbdFrame(
            color=np.asanyarray(color.get_data()).copy(), depth_mm=self._depth_mm(depth),
            timestamp_ms=float(color.get_timestamp()),
            depth_timestamp_ms=float(depth.get_timestamp()), domain=_domain(color),
            frame_number=int(color.get_frame_number()), aligned=aligned), motion)

    def _pair_lone(self, frame) -> tuple:
        """(color, depth) of a frame that came alone and the lone one before it, if one moment.

        librealsense's syncer learns which streams there are from their first frames, so it
        lets a recording's first depth and first color out one by one; paired here they are
        the first frameset rather than a frame lost at start-up. Otherwise the frame waits
        alone for its pair (only the latest does).
        """
        previous, self._lone = self._lone, None
        color_stream = self._rs.stream.color
        if (previous is not None
                and (previous.get_profile().stream_type() == color_stream)
                != (frame.get_profile().stream_type() == color_stream)
                and abs(previous.get_timestamp() - frame.get_timestamp()) <= self._max_skew_ms):
            pair = (previous, frame)
            return pair if previous.get_profile().stream_type() == color_stream else pair[::-1]
        frame.keep()  # outlives the syncer's queue slot
        self._lone = frame
        return (None, None)

    def _compose(self, color, depth):
        """One frameset of a color and a depth frame that came apart (for the alignment)."""
        built = []
        self._rs.processing_block(lambda frame, source: built.append(
            source.allocate_composite_frame([frame, depth]))).invoke(color)
        return built[0].as_frameset()

    def _depth_mm(self, frame) -> np.ndarray:
        # Copied: the frame's buffer goes back to librealsense's pool when the frame is freed.
        raw = np.asanyarray(frame.get_data()).copy()
        return z16_to_millimetres(raw, self.info.depth_scale)

    def _motion(self, frame) -> MotionSample:
        data = frame.as_motion_frame().get_motion_data()
        return MotionSample(_stream_name(frame.get_profile().stream_type()),
                            float(frame.get_timestamp()), _domain(frame),
                            (float(data.x), float(data.y), float(data.z)))

    def hardware_reset(self) -> None:
        """Reset the device: it drops off the bus and comes back (a recording has no reset)."""
        if not self.info.playback:
            self._device.hardware_reset()

    def close(self) -> None:
        """Stop streaming (the device is free for the next connection)."""
        self._pending = self._lone = self._unaligned = None
        if self._syncer is None:
            try:
                self._pipeline.stop()
            except RuntimeError:  # already stopped, never started, or the device is gone
                pass
            return
        # librealsense's playback thread may be waiting for room in the syncer's queue, and a
        # sensor stops only once its thread returns: keep emptying the queue until they stop.
        sensors, self._sensors = self._sensors, []

        def stop() -> None:
            for call in [sensor.stop for sensor in sensors] + [s.close for s in sensors]:
                try:
                    call()
                except RuntimeError:  # stopped at the end of the recording, or never started
                    pass

        stopper = threading.Thread(target=stop, name="playback-stop", daemon=True)
        stopper.start()
        while stopper.is_alive():
            while self._syncer.poll_for_frames():
                pass
            stopper.join(0.005)


def _unreadable(error: Exception) -> bool:
    """Whether librealsense failed to read a recording's file (not to find its streams)."""
    return any(sign in str(error) for sign in ("SQLite", "malformed", "Failed to open",
                                               "Failed to create", "Invalid file format"))


def _frames(frame) -> list:
    """The frames a read gave: a frameset's, or the one frame."""
    return list(frame.as_frameset()) if frame.is_frameset() else [frame]


def _domain(frame) -> str:
    return _stream_name(frame.get_frame_timestamp_domain())


def _stream_name(value) -> str:
    """``stream.gyro`` / ``timestamp_domain.hardware_clock`` -> ``gyro`` / ``hardware_clock``."""
    return getattr(value, "name", str(value)).rsplit(".", 1)[-1]


def camera_opener(config: CameraConfig, rs=None,
                  context=None) -> Callable[[], RealSenseCamera]:
    """A function that opens the camera, resetting the device first when ``initial_reset``.

    The reset (realsense-ros ``initial_reset``) happens once: the device drops off the bus,
    so that attempt reports the camera unavailable and the next one opens it. ``context`` is
    the librealsense context to find devices in (a ``DeviceWatcher``'s).
    """
    reset_pending = config.initial_reset and not config.rosbag_filename

    def open_camera() -> RealSenseCamera:
        nonlocal reset_pending
        module = rs or import_pyrealsense2()
        if reset_pending:
            device = select_device(module, config.serial_no, context)
            reset_pending = False
            device.hardware_reset()
            raise CameraUnavailableError("initial_reset: the device is resetting; it is opened "
                                         "on the next attempt")
        return RealSenseCamera(config, module, context)

    return open_camera

