"""The MuJoCo simulator's ROS face: it looks like franka_ros2 plus a realsense-ros D435i.

With ``robot:=fr3`` (default) it serves ``fr3_arm_controller/follow_joint_trajectory``
(joint_trajectory_controller semantics), the ``franka_gripper`` actions (move, grasp, homing,
gripper_action) and ``action_server/error_recovery``. With ``robot:=stretch`` it looks like
stretch_driver instead: ``stretch_controller/follow_joint_trajectory`` (one goal at a time, a new
goal is rejected while one runs), the mode, stop, home, stow Trigger services and ``runstop``
(SetBool). Either way it publishes ``joint_states`` with the driver's names, the camera topics
(a world camera) with realsense-ros names and encodings, and ``/clock`` when asked; as a
perception stand-in, every scene object's true pose in the robot base frame on
``objects/<name>/pose`` (geometry_msgs/PoseStamped). Physics runs in its own thread at a fixed
step paced to ``real_time_factor``; the camera renders in another thread (an EGL context belongs
to one thread). All behaviour lives in ``failrecov_ros.sim``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
import time

import numpy as np
import yaml
from control_msgs.action import FollowJointTrajectory, GripperCommand
from franka_msgs.action import ErrorRecovery, Grasp, Homing, Move
from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_srvs.srv import SetBool, Trigger

from failrecov_ros.core.camera import depth_to_z16
from failrecov_ros.core.geometry import quat_about_z, quat_multiply
from failrecov_ros.core.trajectory import ResultCode
from failrecov_ros.robots import fr3, stretch
from failrecov_ros.ros.conversions import ns_to_time, trajectory_goal_from_msg
from failrecov_ros.ros.entry import spin_until_shutdown, start_node
from failrecov_ros.ros.qos import sensor_qos
from failrecov_ros.ros.requests import TaskSlot
from failrecov_ros.ros.sensors import (
    camera_info_msg,
    depth_image_msg,
    joint_state_msg,
    rgb_image_msg,
)
from failrecov_ros.sim.camera import RgbdCamera
from failrecov_ros.sim.controllers import (
    GripperController,
    GripperResult,
    InjectedFaults,
    TrajectoryController,
    TrajectoryDefaults,
)
from failrecov_ros.sim.scene import CameraSpec, stretch_scene
from failrecov_ros.sim.scene import Simulation as _Simulation
from failrecov_ros.sim.stretch_controller import BASE_X, BASE_Y, BASE_YAW, StretchController
from failrecov_ros.sim.tasks import TARGET, TASKS, make_task
from failrecov_ros.sim.variations import validate

#: s clients get to cancel their goals at shutdown before the simulator aborts them.
SHUTDOWN_GRACE = 0.5


@dataclasses.dataclass
class _Pending:
    """A goal waiting for the physics thread to finish it."""

    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outcome: object = None
    superseded: bool = False


def _variation(text: str) -> dict:
    """The ``variation`` parameter: a YAML/JSON mapping of sim.variations factors, or ''."""
    value = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(value, dict):
        raise ValueError(f"variation must be a mapping of variation factors, got {text!r}")
    validate(value)
    return value


class MujocoSim(Node):
    """Simulated FR3 + Franka Hand (or Stretch) + D435i behind the real drivers' interfaces."""

    ROBOTS = ("fr3", "stretch")

    def __init__(self) -> None:
        super().__init__("mujoco_sim")
        p = self.declare_parameter
        self.robot = p("robot", "fr3").value
        if self.robot not in self.ROBOTS:
            raise ValueError(f"robot must be one of {', '.join(self.ROBOTS)}, got {self.robot!r}")
        self.task_name = p("task", "pick_cube").value
        if self.task_name not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task_name!r}")
        self.seed = int(p("seed", 0).value)
        self.variation = _variation(p("variation", "").value)
        self.rtf = float(p("real_time_factor", 1.0).value)
        self.control_period = float(p("control_period", 0.01).value)
        self.joint_state_rate = float(p("joint_state_rate", 100.0).value)
        self.publish_clock = bool(p("publish_clock", False).value)
        self.camera_enable = bool(p("camera.enable", True).value)
        self.camera_fps = float(p("camera.fps", 10.0).value)
        self.camera_width = int(p("camera.width", 640).value)
        self.camera_height = int(p("camera.height", 480).value)
        camera_ns = p("camera_namespace", "camera").value.strip("/")
        camera_name = p("camera_name", "camera").value.strip("/")
        self.color_frame = p("camera.color_optical_frame", "camera_color_optical_frame").value
        reliability = p("camera.image_reliability", "reliable").value
        controller = p("arm_controller", fr3.ARM_CONTROLLER).value
        gripper = p("gripper_node", fr3.GRIPPER_NODE).value
        defaults = TrajectoryDefaults(
            goal_position_tolerance=float(p("constraints.goal_position", 0.05).value),
            stopped_velocity_tolerance=float(p("constraints.stopped_velocity_tolerance",
                                               0.01).value),
            goal_time_tolerance=float(p("constraints.goal_time", 0.5).value))
        p("faults.grasp_force_scale", 1.0)
        p("faults.weak_grasps", 0)
        p("faults.close_failures", 0)
        p("faults.pose_offset", [0.0, 0.0, 0.0])
        self.faults = self._read_faults()
        if not (self.rtf >= 0 and math.isfinite(self.rtf)):
            raise ValueError(f"real_time_factor must be >= 0 (0 = as fast as possible), "
                             f"got {self.rtf}")
        if not 0 < self.camera_fps <= 90 or self.control_period <= 0:
            raise ValueError("camera.fps must be in (0, 90] and control_period > 0")

        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._draining = threading.Event()  # shutdown requested: abort goals, take no more
        self._drain_started: float | None = None
        self._running_goals = 0
        self.steps_done = 0
        self.frames_published = 0
        self._epoch = 0.0  # s of simulated time before the last reset: time never runs back
        self._scene_version = 0  # bumped when ~/reset loads another task: the camera re-creates
        group = ReentrantCallbackGroup()
        if self.robot == "stretch":
            self._init_stretch(group)
        else:
            self._init_fr3(group, controller, gripper, defaults)
        self.clock_pub = (self.create_publisher(Clock, "/clock", QoSProfile(depth=10))
                          if self.publish_clock else None)
        prefix = "/".join(x for x in (camera_ns, camera_name) if x)
        qos = sensor_qos(depth=2, reliability=reliability)
        self.color_pub = self.create_publisher(Image, f"{prefix}/color/image_raw", qos)
        self.color_info_pub = self.create_publisher(CameraInfo, f"{prefix}/color/camera_info", qos)
        self.depth_pub = self.create_publisher(
            Image, f"{prefix}/aligned_depth_to_color/image_raw", qos)
        self.depth_info_pub = self.create_publisher(
            CameraInfo, f"{prefix}/aligned_depth_to_color/camera_info", qos)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=group)
        self.create_service(Trigger, "~/task_success", self._on_task_success,
                            callback_group=group)
        object_rate = float(p("object_poses.rate", 10.0).value)
        if not (object_rate >= 0 and math.isfinite(object_rate)):
            raise ValueError(f"object_poses.rate must be >= 0, got {object_rate}")
        self.base_frame = stretch.BASE_FRAME if self.robot == "stretch" else fr3.BASE_FRAME
        self.object_pubs = {}
        if object_rate > 0:
            self._advertise_objects()
        if object_rate > 0:
            self.create_timer(1.0 / object_rate, self._publish_object_poses, callback_group=group)
        self._threads = [threading.Thread(target=self._physics_loop, daemon=True,
                                          name="physics")]
        if self.camera_enable:
            self._threads.append(threading.Thread(target=self._camera_loop, daemon=True,
                                                  name="camera"))
        for thread in self._threads:
            thread.start()
        self.get_logger().info(
            f"simulating {self.robot}: {self.task_name} seed {self.seed} ('{self.instruction}'), "
            f"real-time factor {self.rtf or 'max'}, camera {self.camera_width}x"
            f"{self.camera_height}@{self.camera_fps if self.camera_enable else 0} Hz "
            f"on {prefix}/")

    def _camera_spec(self, scene) -> CameraSpec:
        # The task's camera (a camera_jitter variation moves it), at the node's resolution.
        base = scene.cameras[0] if scene.cameras else CameraSpec()
        return dataclasses.replace(base, width=self.camera_width, height=self.camera_height)

    def _read_faults(self) -> InjectedFaults:
        """The ``faults.*`` parameters, checked (read at start and by every ``~/reset``)."""
        value = lambda name: self.get_parameter(f"faults.{name}").value  # noqa: E731
        try:
            return InjectedFaults(float(value("grasp_force_scale")), int(value("weak_grasps")),
                                  int(value("close_failures")),
                                  tuple(float(v) for v in value("pose_offset")))
        except ValueError as error:
            raise ValueError(f"faults.{error}") from None

    def _load_fr3_scene(self, defaults: TrajectoryDefaults) -> None:
        """Build the task's scene and the controllers that drive it (lock held after start)."""
        task = make_task(self.task_name, self.seed, self.variation)
        self.task = task
        scene = dataclasses.replace(task.scene, cameras=(self._camera_spec(task.scene),))
        self.sim = _Simulation(scene)
        self.instruction = task.instruction
        self.arm = TrajectoryController(self.sim, fr3.ARM_LIMITS, defaults)
        self.gripper = GripperController(self.sim, fr3.MAX_GRIPPER_WIDTH, fr3.MAX_GRIPPER_SPEED,
                                         fr3.MAX_GRASP_FORCE)
        self.faults.apply_to(self.gripper)

    def _advertise_objects(self) -> None:
        """A pose publisher per scene object (new objects appear when another task loads)."""
        for o in self.sim.config.objects:
            if o.name not in self.object_pubs:
                self.object_pubs[o.name] = self.create_publisher(
                    PoseStamped, f"objects/{o.name}/pose", sensor_qos(depth=1))

    def _init_fr3(self, group, controller: str, gripper: str,
                  defaults: TrajectoryDefaults) -> None:
        self._defaults = defaults
        self._load_fr3_scene(defaults)
        self._arm_goal: _Pending | None = None
        self._gripper_goal: _Pending | None = None
        self.joint_pub = self.create_publisher(JointState, "joint_states", 10)
        self.gripper_joint_pub = self.create_publisher(JointState, f"{gripper}/joint_states", 10)

        def server(action, name, execute, goal=None):
            return ActionServer(self, action, name, execute_callback=execute,
                                goal_callback=goal or (lambda _: GoalResponse.ACCEPT),
                                cancel_callback=lambda _: CancelResponse.ACCEPT,
                                callback_group=group)

        self._servers = [
            server(FollowJointTrajectory, f"{controller}/follow_joint_trajectory",
                   self._execute_trajectory),
            server(Move, f"{gripper}/move", self._execute_move),
            server(Grasp, f"{gripper}/grasp", self._execute_grasp),
            server(Homing, f"{gripper}/homing", self._execute_homing),
            server(GripperCommand, f"{gripper}/gripper_action", self._execute_gripper_command),
            server(ErrorRecovery, fr3.ERROR_RECOVERY_ACTION, self._execute_error_recovery),
        ]

    def _init_stretch(self, group) -> None:
        scene = stretch_scene()
        scene = dataclasses.replace(scene, cameras=(self._camera_spec(scene),))
        self.sim = _Simulation(scene)
        self.instruction = "pick up the red cube"
        self.stretch = StretchController(self.sim)
        self._stretch_goal: _Pending | None = None
        # stretch_driver runs one goal at a time; the slot is claimed when a goal is judged, so
        # two arriving together are not both accepted, and lapses if the answer was lost.
        self._stretch_slot = TaskSlot()
        self.joint_pub = self.create_publisher(JointState, "joint_states", 10)
        self._servers = [ActionServer(
            self, FollowJointTrajectory, stretch.FOLLOW_JOINT_TRAJECTORY_ACTION,
            execute_callback=self._execute_stretch_trajectory,
            goal_callback=self._stretch_goal_callback,
            handle_accepted_callback=self._stretch_goal_accepted,
            cancel_callback=lambda _: CancelResponse.ACCEPT, callback_group=group)]
        for mode, name in stretch.MODE_SERVICES.items():
            self.create_service(Trigger, name, self._mode_service(mode), callback_group=group)
        self.create_service(Trigger, stretch.STOP_SERVICE, self._on_stop_the_robot,
                            callback_group=group)
        self.create_service(Trigger, stretch.HOME_SERVICE, self._pose_service("home"),
                            callback_group=group)
        self.create_service(Trigger, stretch.STOW_SERVICE, self._pose_service("stow"),
                            callback_group=group)
        self.create_service(SetBool, stretch.RUNSTOP_SERVICE, self._on_runstop,
                            callback_group=group)

    # --- time ----------------------------------------------------------------------------------
    def stamp(self, sim_time: float):
        """Header stamp: simulated time under use_sim_time, the node's clock otherwise."""
        if self.get_parameter("use_sim_time").value:
            return ns_to_time(int(round((self._epoch + sim_time) * 1e9)))
        return self.get_clock().now().to_msg()

    # --- physics thread --------------------------------------------------------------------------
    def _physics_loop(self) -> None:
        with self._quiet_at_shutdown():
            self._run_physics()

    @contextlib.contextmanager
    def _quiet_at_shutdown(self):
        """A publish from a worker thread fails once SIGINT has shut the context down: stop."""
        try:
            yield
        except Exception:
            if self._stop.is_set() or not self.context.ok():
                return
            raise

    def _run_physics(self) -> None:
        steps = max(1, round(self.control_period / self.sim.timestep))
        publish_every = max(1, round(1.0 / (self.joint_state_rate * self.control_period)))
        start_wall, start_sim, tick = time.monotonic(), self.sim.time, 0
        while not self._stop.is_set():
            with self.lock:
                for _ in range(steps):
                    self._control_step()
                    self.sim.step()
                self.steps_done += steps
                sim_time, epoch = self.sim.time, self._epoch
                if tick % publish_every == 0:
                    self._publish_joint_states(sim_time)
            if self.clock_pub is not None:
                self.clock_pub.publish(Clock(clock=ns_to_time(
                    int(round((epoch + sim_time) * 1e9)))))
            tick += 1
            if self.rtf > 0:
                ahead = (sim_time - start_sim) / self.rtf - (time.monotonic() - start_wall)
                if ahead > 0:
                    self._stop.wait(ahead)
                elif ahead < -0.5:  # fell behind (slow machine): do not try to catch up
                    start_wall, start_sim = time.monotonic(), sim_time

    def _control_step(self) -> None:
        if self.robot == "stretch":
            self._finish_stretch(self.stretch.update())
            return
        verdict = self.arm.update()
        if verdict is not None and self._arm_goal is not None:
            self._arm_goal.outcome = verdict
            self._arm_goal.done.set()
        result = self.gripper.update(self.sim.timestep)
        if result is not None and self._gripper_goal is not None:
            self._gripper_goal.outcome = result
            self._gripper_goal.done.set()

    def _publish_joint_states(self, sim_time: float) -> None:
        stamp = self.stamp(sim_time)
        if self.robot == "stretch":
            names, positions, velocities = self.stretch.joint_state()
            self.joint_pub.publish(joint_state_msg(stamp, names, positions, velocities))
            return
        arm_effort = self.sim.data.actuator_force[self.sim._arm_ctrl]
        fingers = self.sim.finger_positions()
        self.joint_pub.publish(joint_state_msg(
            stamp, fr3.ARM_JOINTS + fr3.FINGER_JOINTS,
            np.concatenate([self.sim.arm_positions(), fingers]),
            np.concatenate([self.sim.arm_velocities(), self.sim.finger_velocities()]),
            np.concatenate([arm_effort, [0.0, 0.0]])))
        self.gripper_joint_pub.publish(joint_state_msg(
            stamp, fr3.FINGER_JOINTS, fingers, self.sim.finger_velocities()))

    def _publish_object_poses(self) -> None:
        """Ground-truth object poses in the robot base frame (the Stretch's base may move)."""
        with self.lock:
            sim_time = self.sim.time
            names = [o.name for o in self.sim.config.objects if o.name in self.object_pubs]
            poses = {name: self.sim.object_pose(name) for name in names}
            offset = np.asarray(self.faults.pose_offset) if self.robot == "fr3" else np.zeros(3)
            if TARGET in poses:  # a perception fault: the target is reported off where it is
                position, quat = poses[TARGET]
                poses[TARGET] = (position + offset, quat)
            if self.robot == "stretch":
                x, y, yaw = self.stretch.positions((BASE_X, BASE_Y, BASE_YAW))
            else:
                (x, y, _), yaw = self.sim.binding.base_position, 0.0
        c, s = math.cos(yaw), math.sin(yaw)
        turn = quat_about_z(-yaw)
        stamp = self.stamp(sim_time)
        for name, (position, quat) in poses.items():
            dx, dy = position[0] - x, position[1] - y
            msg = PoseStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.base_frame
            msg.pose.position.x, msg.pose.position.y = c * dx + s * dy, -s * dx + c * dy
            msg.pose.position.z = float(position[2])
            w, qx, qy, qz = quat_multiply(turn, quat)
            msg.pose.orientation.w, msg.pose.orientation.x = w, qx
            msg.pose.orientation.y, msg.pose.orientation.z = qy, qz
            self.object_pubs[name].publish(msg)

    # --- camera thread ---------------------------------------------------------------------------
    def _camera_loop(self) -> None:
        with self._quiet_at_shutdown():
            self._run_camera()

    def _run_camera(self) -> None:
        period = 1.0 / self.camera_fps
        camera, version, next_sim = None, -1, 0.0
        try:
            while not self._stop.is_set():
                with self.lock:
                    if version != self._scene_version:  # another task's scene: new renderer
                        if camera is not None:
                            camera.close()
                        camera = None
                        try:
                            camera = RgbdCamera(self.sim.model, "camera", self.camera_width,
                                                self.camera_height)
                        except Exception as error:  # noqa: BLE001 - any GL failure: no camera
                            self.get_logger().error(
                                f"camera disabled: cannot create the renderer: {error}")
                            return
                        version, next_sim = self._scene_version, self.sim.time
                    sim_time = self.sim.time
                    if next_sim - sim_time > period:  # the scene was reset: time restarted
                        next_sim = sim_time
                    due = sim_time >= next_sim
                    if due:
                        camera.capture(self.sim.data)
                if not due:
                    self._stop.wait(min(period, (next_sim - sim_time) / max(self.rtf, 1e-3))
                                    if self.rtf > 0 else 0.001)
                    continue
                next_sim += period
                if next_sim < sim_time:  # rendering fell behind: skip, never queue up
                    next_sim = sim_time + period
                rgb, depth = camera.read()
                stamp = self.stamp(sim_time)
                info = camera_info_msg(stamp, self.color_frame, camera.intrinsics)
                self.color_pub.publish(rgb_image_msg(stamp, self.color_frame, rgb))
                self.color_info_pub.publish(info)
                self.depth_pub.publish(depth_image_msg(stamp, self.color_frame,
                                                       depth_to_z16(depth)))
                self.depth_info_pub.publish(info)
                self.frames_published += 1
        finally:
            if camera is not None:
                camera.close()

    # --- arm -------------------------------------------------------------------------------------
    def _execute_trajectory(self, goal_handle):
        return self._follow_trajectory(goal_handle, self.arm, "_arm_goal", self.arm.hold)

    def _follow_trajectory(self, goal_handle, controller, slot: str, on_cancel):
        """Run one FollowJointTrajectory goal on ``controller`` (FR3 or Stretch).

        ``slot`` names the attribute holding the goal the physics thread finishes; a goal
        already there is preempted (JTC). ``on_cancel`` stops the motion (lock held).
        """
        with self._goal_running():
            return self._follow(goal_handle, controller, slot, on_cancel)

    def _follow(self, goal_handle, controller, slot: str, on_cancel):
        result = FollowJointTrajectory.Result()
        if self._draining.is_set():
            result.error_string = "the simulator is shutting down"
            goal_handle.abort()
            return result
        goal = trajectory_goal_from_msg(goal_handle.request)
        pending = _Pending()
        with self.lock:
            verdict = controller.start(goal)
            if verdict.ok:
                previous = getattr(self, slot)
                if previous is not None:
                    previous.superseded = True
                    previous.done.set()
                setattr(self, slot, pending)
        if not verdict.ok:
            self.get_logger().warning(f"trajectory rejected ({verdict.code.name}): "
                                      f"{verdict.message}")
            result.error_code, result.error_string = int(verdict.code), verdict.message
            goal_handle.abort()
            return result
        feedback = FollowJointTrajectory.Feedback()
        while not pending.done.wait(0.05):
            if goal_handle.is_cancel_requested or self._draining.is_set():
                with self.lock:
                    if getattr(self, slot) is pending:
                        on_cancel()
                        setattr(self, slot, None)
                if goal_handle.is_cancel_requested:
                    result.error_string = "canceled by the client; holding position"
                    goal_handle.canceled()
                else:
                    result.error_string = "the simulator is shutting down; holding position"
                    goal_handle.abort()
                return result
            with self.lock:
                names, desired, actual, error = controller.feedback()
            feedback.header.stamp = self.stamp(self.sim.time)
            feedback.joint_names = list(names)
            feedback.desired.positions = desired.tolist()
            feedback.actual.positions = actual.tolist()
            feedback.error.positions = error.tolist()
            goal_handle.publish_feedback(feedback)
        if pending.superseded:
            result.error_string = "preempted by a new goal"
            goal_handle.canceled() if goal_handle.is_cancel_requested else goal_handle.abort()
            return result
        with self.lock:
            if getattr(self, slot) is pending:
                setattr(self, slot, None)
        verdict = pending.outcome
        result.error_code, result.error_string = int(verdict.code), verdict.message
        if verdict.code == ResultCode.SUCCESSFUL:
            goal_handle.succeed()
        else:
            self.get_logger().warning(f"trajectory aborted ({verdict.code.name}): "
                                      f"{verdict.message}")
            goal_handle.abort()
        return result

    # --- gripper ---------------------------------------------------------------------------------
    def _run_gripper(self, goal_handle, start) -> GripperResult:
        """Start a gripper command under the lock and wait for it (or a cancel/preemption)."""
        with self._goal_running():
            return self._gripper_wait(goal_handle, start)

    def _gripper_wait(self, goal_handle, start) -> GripperResult:
        if self._draining.is_set():
            return GripperResult(False, self.sim.gripper_width(), "the simulator is shutting down")
        pending = _Pending()
        with self.lock:
            error = start()
            if not error:
                if self._gripper_goal is not None:
                    self._gripper_goal.superseded = True
                    self._gripper_goal.done.set()
                self._gripper_goal = pending
        if error:
            self.get_logger().warning(f"gripper command rejected: {error}")
            return GripperResult(False, self.sim.gripper_width(), error)
        while not pending.done.wait(0.05):
            if goal_handle.is_cancel_requested or self._draining.is_set():
                with self.lock:
                    if self._gripper_goal is pending:
                        self.gripper.stop()
                        self._gripper_goal = None
                return GripperResult(False, self.sim.gripper_width(),
                                     "canceled" if goal_handle.is_cancel_requested
                                     else "the simulator is shutting down")
        if pending.superseded:
            return GripperResult(False, self.sim.gripper_width(), "preempted by a new command")
        with self.lock:
            if self._gripper_goal is pending:
                self._gripper_goal = None
        return pending.outcome

    def _finish(self, goal_handle, outcome: GripperResult, result):
        if outcome.error == "canceled":
            goal_handle.canceled()
        elif outcome.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def _execute_move(self, goal_handle):
        request = goal_handle.request
        outcome = self._run_gripper(
            goal_handle, lambda: self.gripper.move(request.width, request.speed))
        return self._finish(goal_handle, outcome,
                            Move.Result(success=outcome.success, error=outcome.error))

    def _execute_grasp(self, goal_handle):
        r = goal_handle.request
        outcome = self._run_gripper(goal_handle, lambda: self.gripper.grasp(
            r.width, r.speed, r.force, r.epsilon.inner, r.epsilon.outer))
        return self._finish(goal_handle, outcome,
                            Grasp.Result(success=outcome.success, error=outcome.error))

    def _execute_homing(self, goal_handle):
        outcome = self._run_gripper(goal_handle, self.gripper.homing)
        return self._finish(goal_handle, outcome,
                            Homing.Result(success=outcome.success, error=outcome.error))

    def _execute_gripper_command(self, goal_handle):
        # control_msgs semantics: a position (per finger, half the width) reached with at
        # most max_effort; blocked by an object it stalls, which is how a grasp ends.
        command = goal_handle.request.command
        width = 2.0 * command.position
        start = lambda: self.gripper.move(width, fr3.MAX_GRIPPER_SPEED,  # noqa: E731
                                          command.max_effort)
        outcome = self._run_gripper(goal_handle, start)
        result = GripperCommand.Result(
            position=self.sim.gripper_width() / 2, effort=float(command.max_effort),
            stalled=not outcome.success, reached_goal=outcome.success)
        return self._finish(goal_handle, outcome, result)

    def _execute_error_recovery(self, goal_handle):
        with self.lock:
            self.arm.hold()
            if self._arm_goal is not None:
                self._arm_goal.superseded = True
                self._arm_goal.done.set()
                self._arm_goal = None
        goal_handle.succeed()
        return ErrorRecovery.Result()

    # --- stretch ---------------------------------------------------------------------------------
    def _finish_stretch(self, verdict) -> None:
        """Hand a finished or aborted Stretch motion's verdict to whoever waits (lock held)."""
        if verdict is not None and self._stretch_goal is not None:
            self._stretch_goal.outcome = verdict
            self._stretch_goal.done.set()
            self._stretch_goal = None

    def _stretch_goal_callback(self, _request):
        # stretch_driver takes one goal at a time: a new goal is rejected while one runs.
        with self.lock:
            if self.stretch.active or not self._stretch_slot.claim():
                self.get_logger().warning("goal rejected: another goal or motion is active")
                return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _stretch_goal_accepted(self, goal_handle) -> None:
        self._stretch_slot.hold(goal_handle)
        goal_handle.execute()

    def _execute_stretch_trajectory(self, goal_handle):
        if goal_handle is not self._stretch_slot.holder:
            # Accepted on a claim that lapsed while another goal took the slot: one runs.
            result = FollowJointTrajectory.Result()
            result.error_code = int(ResultCode.INVALID_GOAL)
            result.error_string = "another goal is active"
            goal_handle.abort()
            return result
        try:
            return self._run_stretch_trajectory(goal_handle)
        finally:
            self._stretch_slot.release()

    def _run_stretch_trajectory(self, goal_handle):
        return self._follow_trajectory(goal_handle, self.stretch, "_stretch_goal",
                                       lambda: self.stretch.stop("canceled by the client"))

    def _mode_service(self, mode: str):
        def switch(_request, response):
            with self.lock:
                ok, message, aborted = self.stretch.set_mode(mode)
                self._finish_stretch(aborted)
            response.success, response.message = ok, message
            return response
        return switch

    def _on_stop_the_robot(self, _request, response):
        with self.lock:
            aborted = self.stretch.stop()
            self._finish_stretch(aborted)
        response.success = True
        response.message = "stopped the robot" + ("; aborted the active goal" if aborted else "")
        return response

    def _pose_service(self, pose: str):
        def move(_request, response):
            pending = _Pending()
            with self.lock:
                verdict = self.stretch.home() if pose == "home" else self.stretch.stow()
                if verdict.ok:
                    self._stretch_goal = pending
            if verdict.ok and not pending.done.wait(60.0):
                with self.lock:
                    if self._stretch_goal is pending:
                        self.stretch.stop(f"{pose} timed out")
                        self._stretch_goal = None
                verdict = None
            elif verdict.ok:
                verdict = pending.outcome
            response.success = verdict is not None and verdict.ok
            response.message = (f"{pose} done" if response.success else
                                f"{pose} failed: {verdict.message if verdict else 'timed out'}")
            return response
        return move

    def _on_runstop(self, request, response):
        with self.lock:
            message, aborted = self.stretch.set_runstop(request.data)
            self._finish_stretch(aborted)
        response.success, response.message = True, message
        return response

    def _on_reset(self, _request, response):
        """Put the scene back; FR3: first re-read task, seed, variation and faults.

        ``ros2 param set`` those, then call ``~/reset``: a changed task, seed or variation
        loads its scene (and the camera's renderer), so one simulator serves a whole suite.
        """
        if self.robot == "stretch":
            with self.lock:
                self._finish_stretch(self.stretch.stop("simulation reset"))
                self.sim.reset()
            response.success, response.message = True, "reset the stretch scene"
            return response
        try:
            task = self.get_parameter("task").value
            if task not in TASKS:
                raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
            seed = int(self.get_parameter("seed").value)
            variation = _variation(self.get_parameter("variation").value)
            faults = self._read_faults()
        except (ValueError, TypeError) as error:
            response.success, response.message = False, f"not reset: {error}"
            return response
        with self.lock:
            for pending in (self._arm_goal, self._gripper_goal):
                if pending is not None:
                    pending.superseded = True
                    pending.done.set()
            self._arm_goal = self._gripper_goal = None
            self.faults = faults
            self._epoch += self.sim.time + self.control_period
            if (task, seed, variation) != (self.task_name, self.seed, self.variation):
                self.task_name, self.seed, self.variation = task, seed, variation
                self._load_fr3_scene(self._defaults)
                self._scene_version += 1
                if self.object_pubs:
                    self._advertise_objects()
            else:
                self.arm.hold()
                self.gripper.stop()
                self.sim.reset()
                self.faults.apply_to(self.gripper)
        response.success = True
        response.message = (f"reset {self.task_name} seed {self.seed} ('{self.instruction}')"
                            f"{' with faults ' + faults.describe() if faults.any else ''}")
        self.get_logger().info(response.message)
        return response

    def _on_task_success(self, _request, response):
        """The task's success predicate now (ground truth for trials), details as JSON."""
        if self.robot == "stretch":
            response.success, response.message = False, "no success predicate for the stretch"
            return response
        with self.lock:
            details = self.task.success_details(self.sim)
        response.success = bool(details["success"])
        response.message = json.dumps(details)
        return response

    @contextlib.contextmanager
    def _goal_running(self):
        """Count an action goal being executed, for ``drain``."""
        with self.lock:
            self._running_goals += 1
        try:
            yield
        finally:
            with self.lock:
                self._running_goals -= 1

    def drain(self) -> bool:
        """On a shutdown request: abort running goals (the arm holds); True once none runs.

        Clients get ``SHUTDOWN_GRACE`` s to cancel their goals first: a launch stops them
        together with the simulator, and a client that stops its own motion says why.
        """
        now = time.monotonic()
        if self._drain_started is None:
            self._drain_started = now
        if now - self._drain_started >= SHUTDOWN_GRACE:
            self._draining.set()
        with self.lock:
            return self._running_goals == 0

    def shutdown(self) -> None:
        """Stop the physics and camera threads and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    """Entry point: spin the simulator until SIGINT."""
    node = start_node("mujoco_sim", MujocoSim, args)
    if node is None:
        return 2
    spin_until_shutdown(node, MultiThreadedExecutor(num_threads=4), drain=node.drain,
                        cleanup=node.shutdown)
    return 0
