"""The runner's robot backends (``skills.runner.RobotBackend``) on the real drivers' interfaces.

FR3 via franka_ros2: ``fr3_arm_controller/follow_joint_trajectory``, the franka_gripper Move and
Grasp actions (node name resolved at run time) and ``action_server/error_recovery``. Stretch via
stretch_driver: ``stretch_controller/follow_joint_trajectory`` in trajectory mode (one goal at a
time, the gripper as ``gripper_aperture``), the mode and stop Trigger services. Commands arrive
already checked by the safety gate; this layer sends them and maps results to
:class:`~failrecov_ros.skills.runner.Outcome`. Goals finish in the executor's callbacks, never by
spinning here, so the runner's thread can wait on them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
from action_msgs.msg import GoalStatus
from control_msgs.action import FollowJointTrajectory
from control_msgs.msg import JointTolerance
from franka_msgs.action import ErrorRecovery, Grasp, Move
from rclpy.action import ActionClient
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from failrecov_ros.core.trajectory import ResultCode as TrajectoryCode
from failrecov_ros.robots import fr3, stretch
from failrecov_ros.ros.conversions import joint_trajectory_msg, s_to_duration
from failrecov_ros.ros.qos import sensor_qos
from failrecov_ros.ros.requests import first_answer
from failrecov_ros.skills.motion import JointPath
from failrecov_ros.skills.runner import SUCCEEDED, GripperGoal, MotionStatus, Outcome
from failrecov_ros.skills.settings import ControllerSettings, Fr3Settings, StretchSettings
from failrecov_ros.skills.steps import GRASP, OPEN

#: Sends of a mode or stop request within its timeout (each gets a third).
TRIGGER_ATTEMPTS = 3


class ActionMotion:
    """One action goal in flight, finished by the executor's callbacks (never by spinning).

    A cancel asked for before the server has answered the goal is remembered and sent from the
    goal-response callback: otherwise a just-sent goal would run to its end after a stop.
    """

    def __init__(self, client: ActionClient, goal, interpret: Callable[[int, object], Outcome],
                 name: str) -> None:
        self._interpret, self._name = interpret, name
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._outcome: Outcome | None = None
        self._handle = None
        self._cancel_requested = False
        if not client.server_is_ready():
            self._finish(Outcome(MotionStatus.UNAVAILABLE, f"action server {name} is not "
                                                           "available"))
            return
        client.send_goal_async(goal).add_done_callback(self._on_goal)

    def _finish(self, outcome: Outcome) -> None:
        if self._outcome is None:
            self._outcome = outcome
        self._event.set()

    def _on_goal(self, future) -> None:
        handle = future.result()
        if handle is None or not handle.accepted:
            self._finish(Outcome(MotionStatus.REJECTED, f"{self._name} rejected the goal"))
            return
        with self._lock:
            self._handle = handle
            cancel = self._cancel_requested
        handle.get_result_async().add_done_callback(self._on_result)
        if cancel:
            handle.cancel_goal_async()

    def _on_result(self, future) -> None:
        response = future.result()
        self._finish(self._interpret(response.status, response.result))

    def done(self) -> bool:
        """True once the goal has a result (or was refused)."""
        return self._event.is_set()

    def outcome(self) -> Outcome:
        """The goal's outcome (valid once done)."""
        return self._outcome

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for the result; True when it came."""
        return self._event.wait(timeout)

    def cancel(self, timeout: float) -> bool:
        """Cancel the goal (now, or once it is accepted) and wait for its result.

        False if no result came within ``timeout`` s: the robot may still be moving.
        """
        if self._event.is_set():
            return True
        with self._lock:
            self._cancel_requested = True
            handle = self._handle
        if handle is not None:
            handle.cancel_goal_async()
        return self._event.wait(timeout)


def trajectory_outcome(name: str) -> Callable[[int, object], Outcome]:
    """Map a FollowJointTrajectory status and result to an Outcome."""
    def interpret(status: int, result) -> Outcome:
        code = int(result.error_code)
        try:
            label = TrajectoryCode(code).name
        except ValueError:
            label = f"error {code}"
        if status == GoalStatus.STATUS_SUCCEEDED and code == 0:
            return SUCCEEDED
        if status == GoalStatus.STATUS_CANCELED:
            return Outcome(MotionStatus.CANCELED, result.error_string or "canceled", code)
        kind = MotionStatus.REJECTED if code in (-1, -2, -3) else MotionStatus.ABORTED
        return Outcome(kind, f"{name}: {label}: {result.error_string}".rstrip(": "), code)
    return interpret


class _Backend:
    """What both robots share: joint_states, the trajectory client, waiting, stopping."""

    robot = ""
    joint_names: tuple[str, ...] = ()
    #: Command joint -> the name joint_states reports it under.
    aliases: Mapping[str, str] = {}
    #: The robot's gripper width from joint positions by name (robots.<robot>.gripper_width).
    width_from_joints: Callable[[Mapping[str, float]], float | None]

    def __init__(self, node: Node, group, inputs, action: str,
                 controllers: ControllerSettings) -> None:
        self.node, self.group = node, group
        self.action_name = action
        self.arm = ActionClient(node, FollowJointTrajectory, action, callback_group=group)
        self.goal_time_tolerance = controllers.goal_time_tolerance
        self.stop_timeout = controllers.stop_timeout
        self._lock = threading.Lock()
        self._positions: dict[str, float] = {}
        self._active: list[ActionMotion] = []
        node.create_subscription(JointState, "joint_states", self._on_joints, sensor_qos(5),
                                 callback_group=inputs)

    def clients(self) -> list[ActionClient]:
        """Every action client, for an orderly shutdown."""
        return [self.arm]

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            self._positions.update(zip(msg.name, msg.position, strict=False))

    def _snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._positions)

    def joint_positions(self) -> np.ndarray | None:
        """Arm joints in ``joint_names`` order, once every one has been seen."""
        positions = self._snapshot()
        values = [positions.get(self.aliases.get(n, n)) for n in self.joint_names]
        return None if any(v is None for v in values) else np.array(values, dtype=float)

    def gripper_width(self) -> float | None:
        """Gripper width (m) from the latest joint states (None before the fingers are seen)."""
        return self.width_from_joints(self._snapshot())

    def _wait_server(self, client: ActionClient, name: str, timeout: float) -> Outcome:
        if client.wait_for_server(timeout_sec=timeout):
            return SUCCEEDED
        return Outcome(MotionStatus.UNAVAILABLE,
                       f"action server {self.node.resolve_topic_name(name)} not available "
                       f"after {timeout:.0f} s")

    def _track(self, motion: ActionMotion) -> ActionMotion:
        self._active = [m for m in self._active if not m.done()] + [motion]
        return motion

    def _goal(self, path: JointPath) -> FollowJointTrajectory.Goal:
        goal = FollowJointTrajectory.Goal()
        goal.trajectory = joint_trajectory_msg(path.joint_names,
                                               zip(path.times, path.positions, strict=True))
        goal.goal_time_tolerance = s_to_duration(self.goal_time_tolerance)
        return goal

    def follow(self, path: JointPath) -> ActionMotion:
        """Send ``path`` to the trajectory controller."""
        return self._track(ActionMotion(self.arm, self._goal(path),
                                        trajectory_outcome(self.action_name), self.action_name))

    def stop(self) -> Outcome:
        """Cancel every goal in flight and wait for the controllers to confirm."""
        late = [m for m in self._active if not m.cancel(self.stop_timeout)]
        self._active = []
        if late:
            return Outcome(MotionStatus.TIMED_OUT, f"{len(late)} goal(s) did not confirm the "
                                                   f"cancel within {self.stop_timeout:.0f} s")
        return SUCCEEDED


class Fr3Backend(_Backend):
    """franka_ros2: JTC arm goals, franka_gripper actions, reflex error recovery."""

    robot = "fr3"
    joint_names = fr3.ARM_JOINTS
    aliases = fr3.JOINT_STATE_ALIASES
    width_from_joints = staticmethod(fr3.gripper_width)

    def __init__(self, node: Node, group, inputs, settings: Fr3Settings,
                 controllers: ControllerSettings) -> None:
        super().__init__(node, group, inputs, settings.trajectory_action, controllers)
        self.path_tolerance, self.gripper_speed = settings.path_tolerance, settings.gripper_speed
        self.gripper_nodes = list(settings.gripper_nodes)
        self._grippers = {name: (ActionClient(node, Move, f"{name}/move", callback_group=group),
                                 ActionClient(node, Grasp, f"{name}/grasp",
                                              callback_group=group))
                          for name in self.gripper_nodes}
        self.gripper_node: str | None = None
        self.error_recovery_name = settings.error_recovery_action
        self.error_recovery = ActionClient(node, ErrorRecovery, self.error_recovery_name,
                                           callback_group=group)
        for name in self.gripper_nodes:
            node.create_subscription(JointState, f"{name}/joint_states", self._on_joints,
                                     sensor_qos(5), callback_group=inputs)

    def clients(self) -> list[ActionClient]:
        """Every action client, for an orderly shutdown."""
        return [self.arm, self.error_recovery, *(c for pair in self._grippers.values()
                                                 for c in pair)]

    def prepare(self, timeout: float) -> Outcome:
        """The arm controller answers and one of the gripper node names has a grasp server."""
        outcome = self._wait_server(self.arm, self.action_name, timeout)
        if not outcome.ok:
            return outcome
        if self.gripper_node is not None and self._grippers[self.gripper_node][1].server_is_ready():
            return SUCCEEDED
        deadline = time.monotonic() + timeout
        while True:
            for name, (move, grasp) in self._grippers.items():
                if move.server_is_ready() and grasp.server_is_ready():
                    self.gripper_node = name
                    self.node.get_logger().info(f"gripper actions found under {name}/")
                    return SUCCEEDED
            if time.monotonic() > deadline:
                tried = ", ".join(f"{n}/grasp" for n in self.gripper_nodes)
                return Outcome(MotionStatus.UNAVAILABLE, f"no franka gripper action server "
                                                         f"after {timeout:.0f} s (tried {tried})")
            time.sleep(0.1)

    def _goal(self, path: JointPath) -> FollowJointTrajectory.Goal:
        goal = super()._goal(path)
        if self.path_tolerance > 0:
            goal.path_tolerance = [JointTolerance(name=n, position=self.path_tolerance)
                                   for n in path.joint_names]
        return goal

    def gripper(self, goal: GripperGoal) -> ActionMotion:
        """Move (open to a width) or Grasp (an object of a width; close = any width)."""
        name = self.gripper_node or self.gripper_nodes[0]
        move, grasp = self._grippers[name]

        def interpret(status: int, result) -> Outcome:
            width = self.gripper_width()
            width = math.nan if width is None else width
            if status == GoalStatus.STATUS_SUCCEEDED and result.success:
                return Outcome(MotionStatus.SUCCEEDED, width=width)
            kind = (MotionStatus.CANCELED if status == GoalStatus.STATUS_CANCELED
                    else MotionStatus.ABORTED)
            return Outcome(kind, result.error or "gripper command failed", width=width)

        if goal.kind == OPEN:
            return self._track(ActionMotion(
                move, Move.Goal(width=float(goal.command_width), speed=self.gripper_speed),
                interpret, f"{name}/move"))
        request = Grasp.Goal(width=float(goal.command_width), speed=self.gripper_speed,
                             force=float(goal.force))
        request.epsilon.inner = float(goal.epsilon) if goal.kind == GRASP else 0.005
        request.epsilon.outer = float(goal.epsilon) if goal.kind == GRASP else math.inf
        return self._track(ActionMotion(grasp, request, interpret, f"{name}/grasp"))

    def recover(self) -> Outcome:
        """franka_ros2's error recovery after a reflex (the controllers stay as they are)."""
        outcome = self._wait_server(self.error_recovery, self.error_recovery_name,
                                    self.stop_timeout)
        if not outcome.ok:
            return outcome
        motion = ActionMotion(self.error_recovery, ErrorRecovery.Goal(),
                              lambda status, result: SUCCEEDED if status ==
                              GoalStatus.STATUS_SUCCEEDED else Outcome(
                                  MotionStatus.ABORTED, "error recovery failed"),
                              self.error_recovery_name)
        if not motion.wait(self.stop_timeout):
            return Outcome(MotionStatus.TIMED_OUT, "error recovery gave no result")
        return motion.outcome()


class StretchBackend(_Backend):
    """stretch_driver: trajectory mode, one goal at a time, the gripper as an aperture."""

    robot = "stretch"
    joint_names = stretch.ARM_COMMAND_JOINTS
    aliases = stretch.JOINT_STATE_ALIASES
    width_from_joints = staticmethod(stretch.gripper_width)

    def __init__(self, node: Node, group, inputs, settings: StretchSettings,
                 controllers: ControllerSettings) -> None:
        super().__init__(node, group, inputs, settings.trajectory_action, controllers)
        self.mode_name, self.stop_name = settings.mode_service, settings.stop_service
        self.mode = node.create_client(Trigger, self.mode_name, callback_group=group)
        self.stop_client = node.create_client(Trigger, self.stop_name, callback_group=group)
        self.gripper_time = settings.gripper_time_s

    @staticmethod
    def _trigger(client, name: str, timeout: float) -> Outcome:
        """Call a mode or stop service, sent again when the answer is lost to discovery.

        Both are safe to repeat (a mode switch or a stop twice is one), and a just-discovered
        server may drop its first response (:mod:`failrecov_ros.ros.requests`): in CI the
        Stretch's first ``switch_to_trajectory_mode`` went unanswered for its whole 10 s.
        """
        if not client.wait_for_service(timeout_sec=timeout):
            return Outcome(MotionStatus.UNAVAILABLE, f"service {name} not available after "
                                                     f"{timeout:.0f} s")
        future = first_answer(lambda: client.call_async(Trigger.Request()),
                              timeout / TRIGGER_ATTEMPTS, TRIGGER_ATTEMPTS)
        if future is None:
            return Outcome(MotionStatus.TIMED_OUT, f"service {name} did not answer "
                                                   f"{TRIGGER_ATTEMPTS} requests in "
                                                   f"{timeout:.0f} s")
        response = future.result()
        if not response.success:
            return Outcome(MotionStatus.REJECTED, f"{name}: {response.message}")
        return SUCCEEDED

    def prepare(self, timeout: float) -> Outcome:
        """The controller answers and stretch_driver is in trajectory mode (timed goals)."""
        outcome = self._wait_server(self.arm, self.action_name, timeout)
        return self._trigger(self.mode, self.mode_name, timeout) if outcome.ok else outcome

    def gripper(self, goal: GripperGoal) -> ActionMotion:
        """The aperture as one timed point; a grasp is judged on the aperture it stalls at."""
        path = JointPath((stretch.GRIPPER_APERTURE,), np.array([self.gripper_time]),
                         np.array([[goal.command_width]]))
        check = trajectory_outcome(self.action_name)

        def interpret(status: int, result) -> Outcome:
            outcome = check(status, result)
            width = self.gripper_width()
            width = math.nan if width is None else width
            if outcome.ok and goal.kind == GRASP:
                failure = stretch.stall_grasp_failure(width, goal.width, goal.epsilon)
                if failure is not None:
                    return Outcome(MotionStatus.ABORTED, failure, width=width)
            return Outcome(outcome.status, outcome.message, outcome.code, width)

        return self._track(ActionMotion(self.arm, self._goal(path), interpret,
                                        self.action_name))

    def stop(self) -> Outcome:
        """Cancel; if the driver does not confirm, stop_the_robot (stretch_ros2#188)."""
        outcome = super().stop()
        if outcome.ok:
            return outcome
        return self._trigger(self.stop_client, self.stop_name, self.stop_timeout)

    def recover(self) -> Outcome:
        """Back to trajectory mode after an aborted goal (stretch_ros2#190)."""
        return self._trigger(self.mode, self.mode_name, self.stop_timeout)
