"""The recovery monitor node: frames + robot state + skill status in, diagnoses out.

A lifecycle node (``autostart`` configures and activates it at start-up, for launchers
without a lifecycle manager): configure creates the buffers and the ROS interfaces, activate
loads the model once (a failed load is logged with its reason, reported on /diagnostics and
leaves the node inactive, never a crash loop), deactivate releases it. Subscription callbacks
only store; triggers wake an inference callback in its own callback group through a guard
condition. Each result is published as a ``FailureDiagnosis`` stamped with the window's last
frame, a corrective ``JointTrajectory`` for the executor to validate, rviz markers, and
counters on /diagnostics. All decisions live in :mod:`failrecov_ros.monitor.supervisor`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from ament_index_python.packages import get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from failrecov_ros.core.schema import Diagnosis
from failrecov_ros.models.base import DiagnosisModel, ModelLoadError, Window, diagnose
from failrecov_ros.models.registry import ModelSpec, load_model
from failrecov_ros.monitor.supervisor import SkillContext, Supervisor, TriggerConfig
from failrecov_ros.msg import FailureDiagnosis, SkillStatus
from failrecov_ros.robots import fr3, stretch
from failrecov_ros.robots.kinematics import make_kinematics
from failrecov_ros.ros.conversions import diagnosis_to_msg, ns_to_time, s_to_duration, time_to_ns
from failrecov_ros.ros.entry import spin_until_shutdown, start_node
from failrecov_ros.ros.qos import event_qos, latched_qos, sensor_qos
from failrecov_ros.ros.sensors import image_to_array
from failrecov_ros.skills.correction import plan_correction

_ROBOTS = {"fr3": fr3, "stretch": stretch}
_RUNNING = (SkillStatus.STATE_RUNNING, SkillStatus.STATE_RECOVERING)


class RecoveryMonitor(LifecycleNode):
    """Watches the camera and the robot; publishes what went wrong and how to fix it."""

    def __init__(self, model_loader=load_model) -> None:
        super().__init__("recovery_monitor")
        self._load = model_loader
        p = self.declare_parameter
        self.autostart = bool(p("autostart", True).value)
        self.executor_threads = int(p("executor_threads", 1).value)
        if self.executor_threads < 1:
            raise ValueError(f"executor_threads must be >= 1, got {self.executor_threads}")
        p("robot", "fr3")
        p("base_frame", "")
        p("image_reliability", "reliable")
        p("metres_per_bin", 0.01)
        p("correction_speed", 0.06)
        p("diagnostics_period_s", 1.0)
        p("stale_frame_warning_s", 1.0)
        for name, default in (("backend", "compact"), ("path", ""), ("name", ""),
                              ("endpoint", ""), ("served_name", ""),
                              ("api_key_env", "OPENAI_API_KEY"), ("timeout_s", 10.0),
                              ("retries", 1), ("max_new_tokens", 512), ("max_images", 4),
                              ("threads", 1), ("device", "cpu")):
            p(f"model.{name}", default)
        defaults = TriggerConfig()
        for name in ("window_frames", "every_n_frames", "every_s", "event_delay_frames",
                     "action_budget_steps", "max_age_s", "min_frames", "state_max_gap_s"):
            p(f"trigger.{name}", getattr(defaults, name))
        p("trigger.on_events", list(defaults.on_events))
        self.model: DiagnosisModel | None = None
        self.model_error = ""
        self.supervisor: Supervisor | None = None
        self._entities: list = []
        self._rate_base: tuple[int, int, int] | None = None  # (stamp, frames, analysed)
        # Inference runs in its own callback group; deactivate/cleanup take this lock so they
        # never free the model or the publishers under a running analysis.
        self._infer_lock = threading.Lock()

    # --- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read and check parameters, create the supervisor and every ROS interface."""
        try:
            self._configure()
        except (ValueError, KeyError) as exc:
            self.get_logger().error(f"configuration rejected: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - rclpy would swallow it without a word
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        v = lambda name: self.get_parameter(name).value  # noqa: E731 - local shorthand
        robot = v("robot")
        if robot not in _ROBOTS:
            raise ValueError(f"robot must be one of {sorted(_ROBOTS)}, got {robot!r}")
        self.robot, self.robot_name = _ROBOTS[robot], robot
        model = {name: v(f"model.{name}") for name in (
            "backend", "path", "name", "endpoint", "served_name", "api_key_env", "timeout_s",
            "retries", "max_new_tokens", "max_images", "threads", "device")}
        if model["backend"] == "compact" and not model["path"]:
            model["path"] = str(Path(get_package_share_directory("failrecov_ros"))
                                / "checkpoints" / "compact")
        self.spec = ModelSpec(**model)
        trigger = TriggerConfig(
            **{name: v(f"trigger.{name}") for name in (
                "window_frames", "every_n_frames", "every_s", "event_delay_frames",
                "action_budget_steps", "max_age_s", "min_frames", "state_max_gap_s")},
            on_events=tuple(v("trigger.on_events")))
        self.metres_per_bin = float(v("metres_per_bin"))
        self.correction_speed = float(v("correction_speed"))
        if self.metres_per_bin <= 0 or self.correction_speed <= 0:
            raise ValueError(f"metres_per_bin and correction_speed must be > 0, got "
                             f"{self.metres_per_bin} and {self.correction_speed}")
        self.stale_warning_s = float(v("stale_frame_warning_s"))
        self.kinematics = make_kinematics(robot)
        self.base_frame = v("base_frame") or getattr(self.robot, "BASE_FRAME", "base_link")
        aliases = getattr(self.robot, "JOINT_STATE_ALIASES", {})
        self.supervisor = Supervisor(trigger, [aliases.get(n, n) for n in
                                               self.kinematics.joint_names],
                                     self.robot.gripper_width)
        qos = sensor_qos(depth=2, reliability=v("image_reliability"))
        self._infer_group = MutuallyExclusiveCallbackGroup()
        self._wake = self.create_guard_condition(self._on_wake, callback_group=self._infer_group)
        self.diagnosis_pub = self.create_lifecycle_publisher(FailureDiagnosis, "diagnosis",
                                                             event_qos())
        self.trajectory_pub = self.create_lifecycle_publisher(
            JointTrajectory, "correction_trajectory", event_qos())
        self.marker_pub = self.create_lifecycle_publisher(MarkerArray, "~/markers",
                                                          QoSProfile(depth=5))
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics",
                                                     QoSProfile(depth=10))
        self._entities = [
            self.create_subscription(Image, "camera/camera/color/image_raw", self._on_color, qos),
            self.create_subscription(JointState, "joint_states", self._on_joints, 20),
            self.create_subscription(SkillStatus, "skill_status", self._on_status, latched_qos()),
            self.create_service(Trigger, "~/analyze", self._on_analyze),
            self.create_timer(float(v("diagnostics_period_s")), self._publish_diagnostics),
        ]
        self.get_logger().info(f"configured: robot {robot}, model {self.spec.display_name}, "
                               f"window {trigger.window_frames} frames, every "
                               f"{trigger.every_n_frames} frames, events {trigger.on_events}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model once; a failure leaves the node inactive with the reason reported."""
        try:
            self.model = self._load(self.spec)
            self._check_robot(self.model)
        except (ModelLoadError, ValueError, OSError, ImportError) as exc:
            self.model_error = f"model {self.spec.display_name} failed to load: {exc}"
            self.get_logger().error(self.model_error)
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self.model_error = ""
        self.get_logger().info(f"model {self.model.name} loaded; monitoring")
        return super().on_activate(state)

    def _check_robot(self, model: DiagnosisModel) -> None:
        """Refuse a model trained on another robot's joints.

        A compact checkpoint's tool pose input is forward kinematics of one arm: fed another
        arm's angles, it would see a tool pose that is not there.
        """
        trained_for = getattr(getattr(model, "config", None), "robot", "")
        if trained_for and trained_for != self.robot_name:
            self.model = None
            model.close()
            raise ModelLoadError(f"it was trained on the {trained_for}'s joints and this "
                                 f"monitor's robot is the {self.robot_name}")

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop analysing and free the model."""
        with self._infer_lock:
            model, self.model = self.model, None
            if model is not None:
                model.close()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy what configure created."""
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and the interfaces from any state."""
        with self._infer_lock:
            if self.model is not None:
                self.model.close()
                self.model = None
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def _destroy_entities(self) -> None:
        with self._infer_lock:
            self._destroy_entities_locked()

    def _destroy_entities_locked(self) -> None:
        if hasattr(self, "_wake"):
            self.destroy_guard_condition(self._wake)
            del self._wake
        for entity in self._entities:
            if hasattr(entity, "cancel"):
                entity.cancel()
                self.destroy_timer(entity)
            elif hasattr(entity, "srv_type"):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._entities = []
        for publisher in ("diagnosis_pub", "trajectory_pub", "marker_pub"):
            if hasattr(self, publisher):
                self.destroy_lifecycle_publisher(getattr(self, publisher))
                delattr(self, publisher)
        self.supervisor = None

    # --- inputs -----------------------------------------------------------------------------
    def _on_color(self, msg: Image) -> None:
        supervisor = self.supervisor
        if supervisor is None or self.model is None:
            return
        stamp = time_to_ns(msg.header.stamp)
        try:
            rgb = image_to_array(msg)
            if rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ValueError(f"expected a colour image, got encoding {msg.encoding}")
        except ValueError as exc:
            supervisor.reject_frame()
            self.get_logger().warning(f"frame rejected: {exc}", throttle_duration_sec=5.0)
            return
        supervisor.frame_id = msg.header.frame_id
        if supervisor.add_frame(stamp, rgb):
            self._wake.trigger()

    def _on_joints(self, msg: JointState) -> None:
        if self.supervisor is not None:
            self.supervisor.add_joint_state(time_to_ns(msg.header.stamp), msg.name, msg.position)

    def _on_status(self, msg: SkillStatus) -> None:
        if self.supervisor is None:
            return
        self.supervisor.set_context(SkillContext(
            episode_id=msg.episode_id, task=msg.task, instruction=msg.instruction,
            skill=msg.skill, stage=msg.stage, step=int(msg.step), event=msg.event,
            event_stamp_ns=time_to_ns(msg.event_stamp), running=msg.state in _RUNNING))

    def _on_analyze(self, request: Trigger.Request, response: Trigger.Response):
        if self.supervisor is None or self.model is None:
            response.success, response.message = False, self.model_error or "monitor not active"
            return response
        self.supervisor.request()
        self._wake.trigger()
        response.success, response.message = True, "analysis requested"
        return response

    # --- inference --------------------------------------------------------------------------
    def _on_wake(self) -> None:
        with self._infer_lock:
            self._analyse()

    def _analyse(self) -> None:
        supervisor, model = self.supervisor, self.model
        if supervisor is None or model is None:
            return
        window = supervisor.take_pending(self.get_clock().now().nanoseconds)
        if window is None:
            return
        diagnosis = diagnose(model, window)
        supervisor.record(diagnosis)
        if diagnosis.is_unknown:
            self.get_logger().warning(f"model output rejected: {diagnosis.error}")
        elif diagnosis.failed:
            self.get_logger().info(f"failure: {diagnosis.failure_type.value} during "
                                   f"{diagnosis.stage} (confidence {diagnosis.confidence:.2f})")
        self._publish(diagnosis, window)

    def _publish(self, diagnosis: Diagnosis, window: Window) -> None:
        msg = diagnosis_to_msg(diagnosis)
        self.diagnosis_pub.publish(msg)
        joints = window.joint_positions
        q_now = joints[-1] if joints is not None else self.supervisor.latest_joint_positions()
        width = None if window.gripper_width is None else float(window.gripper_width[-1])
        if diagnosis.failed and q_now is not None:
            plan = plan_correction(self.kinematics, q_now, diagnosis.correction,
                                   self.metres_per_bin, gripper_width=width,
                                   max_gripper_width=getattr(self.robot, "MAX_GRIPPER_WIDTH",
                                                             None),
                                   speed=self.correction_speed)
            if plan.reason:
                self.get_logger().warning(f"no corrective trajectory: {plan.reason}")
            elif plan.has_motion:
                self.trajectory_pub.publish(self._trajectory(plan, msg.header))
        self.marker_pub.publish(self._markers(diagnosis, q_now, msg.header.stamp))

    def _trajectory(self, plan, header) -> JointTrajectory:
        trajectory = JointTrajectory()
        trajectory.header = header
        trajectory.joint_names = list(plan.joint_names)
        for positions, t in zip(plan.positions, plan.times_from_start, strict=True):
            trajectory.points.append(JointTrajectoryPoint(
                positions=[float(x) for x in positions], time_from_start=s_to_duration(t)))
        return trajectory

    def _markers(self, diagnosis: Diagnosis, q_now, stamp) -> MarkerArray:
        tcp = (self.kinematics.fk(q_now)[:3, 3] if q_now is not None else np.zeros(3))
        text = Marker(ns="diagnosis", id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        text.header.frame_id, text.header.stamp = self.base_frame, stamp
        text.pose.position = Point(x=float(tcp[0]), y=float(tcp[1]), z=float(tcp[2]) + 0.15)
        text.pose.orientation.w = 1.0
        text.scale.z = 0.04
        verdict = ("rejected: " + diagnosis.error[:60] if diagnosis.is_unknown else
                   f"{diagnosis.failure_type.value} ({diagnosis.confidence:.2f})"
                   if diagnosis.failed else "ok")
        text.text = f"{verdict} | {diagnosis.stage or diagnosis.skill}"
        red = diagnosis.failed or diagnosis.is_unknown
        text.color.r, text.color.g, text.color.b, text.color.a = (
            (1.0, 0.2, 0.2, 1.0) if red else (0.2, 1.0, 0.2, 1.0))
        arrow = Marker(ns="correction", id=1, type=Marker.ARROW)
        arrow.header.frame_id, arrow.header.stamp = self.base_frame, stamp
        delta = diagnosis.correction.ee_delta
        directive = diagnosis.correction.directive
        move = (np.asarray(directive.displacement(self.metres_per_bin))
                if directive is not None and any(directive.displacement(1.0))
                else np.asarray(delta[:3]) if delta is not None else np.zeros(3))
        if diagnosis.failed and q_now is not None and np.linalg.norm(move) > 1e-4:
            arrow.action = Marker.ADD
            arrow.points = [Point(x=float(tcp[0]), y=float(tcp[1]), z=float(tcp[2])),
                            Point(x=float(tcp[0] + move[0]), y=float(tcp[1] + move[1]),
                                  z=float(tcp[2] + move[2]))]
            arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.01, 0.02, 0.03
            arrow.color.r, arrow.color.g, arrow.color.b, arrow.color.a = 1.0, 0.6, 0.0, 1.0
        else:
            arrow.action = Marker.DELETE
        return MarkerArray(markers=[text, arrow])

    # --- diagnostics ------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"{self.get_name()}: recovery monitor",
                                  hardware_id=self.spec.display_name
                                  if hasattr(self, "spec") else "")
        supervisor = self.supervisor
        if self.model is None:
            status.level = DiagnosticStatus.ERROR if self.model_error else DiagnosticStatus.WARN
            status.message = self.model_error or "inactive"
        elif supervisor is not None:
            now = self.get_clock().now().nanoseconds
            age = supervisor.frame_age_s(now)
            s = supervisor.stats
            status.level, status.message = DiagnosticStatus.OK, "monitoring"
            if age is None or age > self.stale_warning_s:
                status.level = DiagnosticStatus.WARN
                status.message = ("no frames received" if age is None
                                  else f"frames stale ({age:.1f} s old)")
            base = self._rate_base or (now, s.frames, s.analysed)
            elapsed = (now - base[0]) / 1e9
            frame_rate = (s.frames - base[1]) / elapsed if elapsed > 0 else 0.0
            analysis_rate = (s.analysed - base[2]) / elapsed if elapsed > 0 else 0.0
            self._rate_base = (now, s.frames, s.analysed)
            status.values = [KeyValue(key=k, value=str(val)) for k, val in (
                ("frame_rate_hz", f"{frame_rate:.2f}"),
                ("analysis_rate_hz", f"{analysis_rate:.2f}"),
                ("frames", s.frames), ("rejected_frames", s.rejected_frames),
                ("buffer_resets", s.buffer_resets),
                ("windows_triggered", s.triggered), ("windows_superseded", s.superseded),
                ("windows_dropped_stale", s.dropped_stale), ("windows_analysed", s.analysed),
                ("outputs_rejected", s.unknown), ("failures_reported", s.failures_reported),
                ("latency_p50_ms", f"{1000 * s.latency_percentile(50):.1f}"),
                ("latency_p95_ms", f"{1000 * s.latency_percentile(95):.1f}"),
                ("frame_age_s", "none" if age is None else f"{age:.3f}"))]
        array = DiagnosticArray(status=[status])
        array.header.stamp = ns_to_time(self.get_clock().now().nanoseconds)
        self.diagnostics_pub.publish(array)


def main(args: list[str] | None = None) -> int:
    """Entry point: one node; ``executor_threads`` picks the executor.

    One thread (the default) runs inference between callbacks, which suits a fast model:
    rclpy's multi-threaded executor spends most of a core rebuilding its wait set at 100 Hz
    joint_states, and starved inference (frame -> diagnosis p95 399 ms against 35 ms, see
    benchmarks/monitor_benchmark.py). Slow VLM backends want 2+ threads, so frames and state
    keep arriving during a multi-second generation (inference has its own callback group).
    """
    node = start_node("recovery_monitor", RecoveryMonitor, args)
    if node is None:
        return 2
    def autostart() -> None:
        if node.autostart:
            node.trigger_configure()
            node.trigger_activate()
            if node.model is None:
                node.get_logger().error("not monitoring: see the error above; the node stays "
                                        "up (inactive) for diagnostics and a later activate")

    executor = (SingleThreadedExecutor() if node.executor_threads == 1
                else MultiThreadedExecutor(num_threads=node.executor_threads))
    spin_until_shutdown(node, executor, start=autostart)
    return 0
