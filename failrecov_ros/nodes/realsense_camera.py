"""A RealSense D435i (or a recording of one) with realsense-ros's topics, frames and parameters.

Publishes under ``<camera_namespace>/<camera_name>/``: ``color/image_raw`` (rgb8),
``depth/image_rect_raw`` (16UC1 mm), ``aligned_depth_to_color/image_raw``
(``align_depth.enable``), their ``camera_info``,
``depth/color/points`` (``pointcloud.enable``), ``imu`` or ``gyro/sample`` + ``accel/sample``
(``enable_gyro``/``enable_accel``, ``unite_imu_method``); the static TF on ``/tf_static`` and the
stream's health on ``/diagnostics``. Serves ``hw_reset`` (std_srvs/Empty) beside the topics: the
device is reset and reopened, a recording plays again from its start. Color and aligned depth
come from one frameset and carry one stamp. A capture thread reads the camera; everything it
decides (connect, stall, reconnect) lives in ``failrecov_ros.perception``. A live device is
watched through librealsense's devices-changed callback, so unplugging and plugging it back in
are acted on at once rather than after the stall timeouts.
"""

from __future__ import annotations

import threading
import traceback

import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, Imu, PointCloud2
from std_srvs.srv import Empty

from failrecov_ros.core.camera import colored_points
from failrecov_ros.perception.clock import DeviceClock
from failrecov_ros.perception.imu import UNITE_METHODS, ImuUniter
from failrecov_ros.perception.realsense import (
    CameraConfig,
    DeviceWatcher,
    StreamProfile,
    camera_opener,
)
from failrecov_ros.perception.session import CameraSession, DeviceEvents, SessionConfig, State
from failrecov_ros.perception.stats import StreamStats
from failrecov_ros.perception.transforms import camera_transforms, optical_frame
from failrecov_ros.ros import entry
from failrecov_ros.ros.conversions import ns_to_time
from failrecov_ros.ros.logs import log_at
from failrecov_ros.ros.qos import event_qos, latched_qos, sensor_qos
from failrecov_ros.ros.sensors import (
    camera_info_msg,
    depth_image_msg,
    diagnostic_status_msg,
    header,
    imu_msg,
    pointcloud_msg,
    rgb_image_msg,
    transform_msgs,
)

try:  # in every ROS distro, but not on PyPI: without it the TF tree is not published
    from tf2_msgs.msg import TFMessage
except ImportError:
    TFMessage = None

# realsense-ros QoS names -> reliability (SYSTEM_DEFAULT is reliable on every rmw we ship).
QOS_RELIABILITY = {"SYSTEM_DEFAULT": "reliable", "DEFAULT": "reliable",
                   "SENSOR_DATA": "best_effort"}
# Images a reliable writer keeps for resending: one second at 30 Hz. Keep-last history drops a
# sample once this many newer ones are written, delivered or not, and a loaded machine delays
# a 640x480 image's delivery by up to ~230 ms (measured); with 5 (1/6 s) Fast DDS reported 4-8
# of 1200 frames lost that way, with 30 none. The cost is memory: up to 30 images a topic.
IMAGE_HISTORY_DEPTH = 30


class RealSenseCameraNode(Node):
    """Declares the parameters, wires publishers and runs the capture thread."""

    def __init__(self) -> None:
        super().__init__("realsense_camera")
        p = self.declare_parameter
        namespace = p("camera_namespace", "camera").value.strip("/")
        self.camera_name = p("camera_name", "camera").value.strip("/")
        self.align_depth = bool(p("align_depth.enable", True).value)
        self.pointcloud = bool(p("pointcloud.enable", False).value)
        unite = int(p("unite_imu_method", 0).value)
        self.camera_config = CameraConfig(
            serial_no=str(p("serial_no", "").value),
            rosbag_filename=p("rosbag_filename", "").value,
            real_time=bool(p("rosbag_real_time", True).value),
            color_profile=StreamProfile.parse(p("rgb_camera.color_profile", "640x480x30").value),
            depth_profile=StreamProfile.parse(p("depth_module.depth_profile",
                                                "640x480x30").value),
            align_depth=self.align_depth or self.pointcloud,
            enable_gyro=bool(p("enable_gyro", False).value),
            enable_accel=bool(p("enable_accel", False).value),
            gyro_fps=int(p("gyro_fps", 0).value), accel_fps=int(p("accel_fps", 0).value),
            initial_reset=bool(p("initial_reset", False).value))
        session_config = SessionConfig(
            frame_timeout=float(p("frame_timeout", 1.0).value),
            reconnect_timeout=float(p("reconnect_timeout", 6.0).value),
            wait_for_device_timeout=float(p("wait_for_device_timeout", -1.0).value))
        self.publish_tf = bool(p("publish_tf", True).value)
        diagnostics_period = float(p("diagnostics_period", 1.0).value)
        qos_names = {stream: p(name, "SYSTEM_DEFAULT").value for stream, name in
                     (("color", "rgb_camera.color_qos"), ("depth", "depth_module.depth_qos"))}
        if unite not in UNITE_METHODS:
            raise ValueError(f"unite_imu_method must be one of {sorted(UNITE_METHODS)}, "
                             f"got {unite}")
        motion = self.camera_config.motion_streams
        if unite and len(motion) != 2:
            raise ValueError("unite_imu_method needs enable_gyro and enable_accel")
        bad_qos = {name for name in qos_names.values() if name not in QOS_RELIABILITY}
        if bad_qos:
            raise ValueError(f"QoS must be one of {', '.join(QOS_RELIABILITY)}, got {bad_qos}")
        if diagnostics_period < 0:
            raise ValueError(f"diagnostics_period must be >= 0 (0 = off), got {diagnostics_period}")
        self.unite = unite

        prefix = "/".join(x for x in (namespace, self.camera_name) if x)
        color_qos = sensor_qos(depth=IMAGE_HISTORY_DEPTH,
                               reliability=QOS_RELIABILITY[qos_names["color"]])
        depth_qos = sensor_qos(depth=IMAGE_HISTORY_DEPTH,
                               reliability=QOS_RELIABILITY[qos_names["depth"]])

        def publisher(kind, topic, qos):
            return self.create_publisher(kind, f"{prefix}/{topic}", qos)

        self.color_pub = publisher(Image, "color/image_raw", color_qos)
        self.color_info_pub = publisher(CameraInfo, "color/camera_info", color_qos)
        self.depth_pub = publisher(Image, "depth/image_rect_raw", depth_qos)
        self.depth_info_pub = publisher(CameraInfo, "depth/camera_info", depth_qos)
        self.aligned_pub = self.aligned_info_pub = self.points_pub = None
        if self.align_depth:
            self.aligned_pub = publisher(Image, "aligned_depth_to_color/image_raw", depth_qos)
            self.aligned_info_pub = publisher(CameraInfo, "aligned_depth_to_color/camera_info",
                                              depth_qos)
        if self.pointcloud:  # ~5 MB a cloud: not a second of them
            self.points_pub = publisher(PointCloud2, "depth/color/points", sensor_qos(
                depth=5, reliability=QOS_RELIABILITY[qos_names["depth"]]))
        imu_qos = sensor_qos(depth=50)  # 200-400 Hz: a deeper queue than images
        self.motion_pubs = ({"imu": publisher(Imu, "imu", imu_qos)} if unite else
                            {s: publisher(Imu, f"{s}/sample", imu_qos) for s in motion})
        self.tf_pub = None
        if self.publish_tf and TFMessage is not None:
            self.tf_pub = self.create_publisher(TFMessage, "/tf_static", latched_qos())
        elif self.publish_tf:
            self.get_logger().warning("tf2_msgs is not installed: the camera's static TF is not "
                                      "published")
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", event_qos())
        self._reset_requested = threading.Event()
        self.create_service(Empty, f"{prefix}/hw_reset", self._on_hw_reset)

        self.stats = StreamStats()
        self.device_clock = DeviceClock(lambda: self.get_clock().now().nanoseconds,
                                        recorded=bool(self.camera_config.rosbag_filename))
        self._stop = threading.Event()
        # A live device: its unplugging/plugging in is reported by librealsense the moment it
        # happens (a recording cannot be unplugged; its end is a stall).
        events = context = None
        if not self.camera_config.rosbag_filename:
            events = DeviceEvents(self.camera_config.serial_no)
            self._watcher = DeviceWatcher(events)
            context = self._watcher.context
        self.session = CameraSession(camera_opener(self.camera_config, context=context),
                                     session_config, sleep=self._stop.wait, log=self._log,
                                     events=events)
        self._connection = 0
        self._infos: dict[str, CameraInfo] = {}
        self._uniter: ImuUniter | None = None
        if diagnostics_period > 0:
            self.create_timer(diagnostics_period, self.publish_diagnostics)
        self._thread = threading.Thread(target=self._capture_loop, name="capture", daemon=True)
        self._thread.start()
        config = self.camera_config
        source = (f"recording {config.rosbag_filename} ("
                  f"{'recorded rate' if config.real_time else 'as fast as possible'})"
                  if config.rosbag_filename else
                  f"device {config.serial_no or '(any)'}, color {config.color_profile}, "
                  f"depth {config.depth_profile}")
        self.get_logger().info(f"RealSense camera on {prefix}/ from {source}; align_depth "
                               f"{self.align_depth}")

    @property
    def failed(self) -> bool:
        """The session gave up (see the error log); main() exits non-zero."""
        return self.session.state is State.FAILED

    def _log(self, level: str, message: str) -> None:
        log_at(self.get_logger(), level, message)

    # --- capture thread ---------------------------------------------------------------------
    def _capture_loop(self) -> None:
        while not self._stop.is_set() and not self.failed and self.context.ok():
            try:
                self._capture_once()
            except Exception as error:  # noqa: BLE001 - a dead thread would be a silent stall
                if not self.context.ok():  # SIGINT shut ROS down before main() stopped us
                    break
                self.get_logger().error(f"capture failed: {error!r}", throttle_duration_sec=5.0)
                self._stop.wait(0.1)
        self.session.close()

    def _on_hw_reset(self, _request, response):
        self._reset_requested.set()  # the capture thread owns the camera
        return response

    def _capture_once(self) -> None:
        if self._reset_requested.is_set():
            self._reset_requested.clear()
            self.session.reset()
        capture = self.session.poll()
        if capture is None:
            return
        if self.session.connections != self._connection:
            self._on_connected()
        for sample in capture.motion:
            self._publish_motion(sample)
        if capture.rgbd is not None:
            self._publish_frame(capture.rgbd)

    def _on_connected(self) -> None:
        """A (re)opened camera: its calibration may differ, so rebuild what depends on it."""
        self._connection = self.session.connections
        info = self.session.camera.info
        self.stats.restart()
        self._uniter = ImuUniter(self.unite) if self.unite else None
        color_frame = optical_frame(self.camera_name, "color")
        self._infos = {"color": camera_info_msg(Time(), color_frame, info.color),
                       "depth": camera_info_msg(Time(), optical_frame(self.camera_name, "depth"),
                                                info.depth)}
        if self.tf_pub is not None:
            stamp = self.get_clock().now().to_msg()
            transforms = camera_transforms(self.camera_name, info.to_depth, bool(self.unite))
            self.tf_pub.publish(TFMessage(transforms=transform_msgs(stamp, transforms)))
        self.get_logger().info(
            f"{info.name} {info.serial} (firmware {info.firmware or '-'}"
            f"{', playback' if info.playback else ''}): color {info.color.width}x"
            f"{info.color.height}, depth {info.depth.width}x{info.depth.height}, depth scale "
            f"{info.depth_scale:g} m")

    def _publish_frame(self, frame) -> None:
        stamp_ns = self.device_clock.reference(frame.timestamp_ms, frame.domain)
        stamp = ns_to_time(stamp_ns)
        depth_stamp = ns_to_time(self.device_clock.stamp(frame.depth_timestamp_ms, frame.domain))
        color_frame = self._infos["color"].header.frame_id
        # Like realsense-ros, an image nobody listens to (nor to its camera_info) is not built.
        if _listened(self.color_pub, self.color_info_pub):
            self.color_pub.publish(rgb_image_msg(stamp, color_frame, frame.color))
            self.color_info_pub.publish(self._stamped("color", stamp))
        if _listened(self.depth_pub, self.depth_info_pub):
            self.depth_pub.publish(depth_image_msg(
                depth_stamp, self._infos["depth"].header.frame_id, frame.depth_mm))
            self.depth_info_pub.publish(self._stamped("depth", depth_stamp))
        if self.aligned_pub is not None and _listened(self.aligned_pub, self.aligned_info_pub):
            # Registered to color: the color camera's frame and intrinsics, the color stamp.
            self.aligned_pub.publish(depth_image_msg(stamp, color_frame, frame.aligned_depth_mm))
            self.aligned_info_pub.publish(self._stamped("color", stamp))
        if self.points_pub is not None and _listened(self.points_pub):
            points, colors = colored_points(frame.aligned_depth_mm, frame.color,
                                            self.session.camera.info.color)
            self.points_pub.publish(pointcloud_msg(stamp, color_frame, points, colors))
        # From the frame's capture (its stamp) to now: the wait in librealsense's queue included.
        latency_s = (self.get_clock().now().nanoseconds - stamp_ns) / 1e9
        self.stats.record(frame.frame_number, latency_s)

    def _stamped(self, stream: str, stamp: Time) -> CameraInfo:
        info = self._infos[stream]
        info.header.stamp = stamp
        return info

    def _publish_motion(self, sample) -> None:
        if self._uniter is None:
            stamp = ns_to_time(self.device_clock.stamp(sample.timestamp_ms, sample.domain))
            frame = optical_frame(self.camera_name, sample.stream)
            gyro = sample.stream == "gyro"
            self.motion_pubs[sample.stream].publish(imu_msg(
                stamp, frame, sample.xyz if gyro else None, None if gyro else sample.xyz))
            return
        for united in self._uniter.add(sample):
            stamp = ns_to_time(self.device_clock.stamp(united.timestamp_ms, united.domain))
            self.motion_pubs["imu"].publish(imu_msg(
                stamp, optical_frame(self.camera_name, "imu"), united.angular_velocity,
                united.linear_acceleration))

    # --- diagnostics ------------------------------------------------------------------------
    def publish_diagnostics(self) -> None:
        """The stream's health: state, rate, drops, latency, reconnects, last error."""
        snapshot = self.stats.snapshot()
        state = self.session.state
        camera = self.session.camera
        info = camera.info if camera is not None else None

        def ms(value):
            return "-" if value is None else f"{value:.2f}"

        message = state.value
        if state is State.STALLED:
            message += f": no frame for {ms(snapshot.since_last_frame_s)} s"
        elif state is not State.STREAMING and self.session.last_error:
            message += f": {self.session.last_error}"
        values = {
            "state": state.value, "fps": f"{snapshot.fps:.2f}", "frames": snapshot.frames,
            "drops": snapshot.drops, "latency_median_ms": ms(snapshot.latency_median_ms),
            "latency_p95_ms": ms(snapshot.latency_p95_ms),
            "since_last_frame_s": ms(snapshot.since_last_frame_s),
            "reconnects": self.session.reconnects, "last_error": self.session.last_error,
            "device": info.name if info else "", "serial": info.serial if info else "",
            "source": self.camera_config.rosbag_filename or "device"}
        status = diagnostic_status_msg(f"{self.get_name()}: {self.camera_name}",
                                       info.serial if info else self.camera_config.serial_no,
                                       self.session.level(), message, values)
        self.diagnostics_pub.publish(DiagnosticArray(
            header=header(self.get_clock().now().to_msg()), status=[status]))

    def shutdown(self) -> None:
        """Stop the capture thread (it closes the camera)."""
        self._stop.set()
        self._thread.join(timeout=5.0)


def _listened(*publishers) -> bool:
    return any(p.get_subscription_count() for p in publishers)


def main(args: list[str] | None = None) -> int:
    """Entry point: stream until SIGINT.

    Exits 2 on bad parameters, 1 if the camera could never be used or the node broke (an
    exception out of a callback is logged as FATAL with its traceback, and the camera is closed
    cleanly, so a supervisor sees a reason and an exit code rather than a bare traceback).
    """
    entry.init(args)
    logger = rclpy.logging.get_logger("realsense_camera")
    try:
        node = RealSenseCameraNode()
    except ValueError as error:
        logger.fatal(f"bad parameters: {error}")
        rclpy.try_shutdown()
        return 2
    except Exception as error:  # noqa: BLE001 - reported, with an exit code
        logger.fatal(f"cannot start: {error!r}\n{traceback.format_exc()}")
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    broken = False
    try:
        while rclpy.ok() and not node.failed and not entry.shutdown_requested():
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as error:  # noqa: BLE001 - reported, with an exit code
        broken = True
        node.get_logger().fatal(f"stopping on an unexpected error: {error!r}\n"
                                f"{traceback.format_exc()}")
    finally:
        failed = node.failed
        node.shutdown()
        if failed:
            node.get_logger().fatal(f"giving up: {node.session.last_error}")
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 1 if failed or broken else 0
