"""The skill executor: runs tasks on an FR3 or a Stretch and hands control to recovery and back.

Serves ``execute_task`` (failrecov_ros/action/ExecuteTask: one active goal, cancel, feedback),
publishes ``skill_status`` (latched) for the recovery monitor, takes ``diagnosis``
(FailureDiagnosis) and ``correction_trajectory`` (trajectory_msgs/JointTrajectory, header stamp =
the diagnosis's) from it, and end-effector deltas for an external base policy on
``ee_delta_command`` (std_msgs/Float64MultiArray: exactly 7 values dx dy dz [m] droll dpitch
dyaw [rad] dgripper [m], base frame, ``core.geometry`` convention; applied while a ``policy``
skill runs). Object poses for named targets come from ``objects/<name>/pose``
(geometry_msgs/PoseStamped in the robot base frame): a skill waits for one stamped after it
asked, when it starts and after a recovery for a lost object.

The robot is reached through the drivers' own interfaces: FR3 via franka_ros2's
``fr3_arm_controller/follow_joint_trajectory``, the franka_gripper actions (node name resolved
at run time) and ``action_server/error_recovery``; Stretch via stretch_driver's
``stretch_controller/follow_joint_trajectory`` in trajectory mode (one goal at a time, the
gripper as ``gripper_aperture``) - see ``failrecov_ros.ros.backends``. All decisions live in
``failrecov_ros.skills`` (parameters and their defaults in ``skills.settings``); this module
declares parameters and wires ROS.
"""

from __future__ import annotations

import re
import threading

from ament_index_python.packages import get_package_share_directory
from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from failrecov_ros.action import ExecuteTask
from failrecov_ros.core.schema import SchemaError
from failrecov_ros.msg import FailureDiagnosis, SkillStatus
from failrecov_ros.robots.kinematics import make_kinematics
from failrecov_ros.ros.backends import Fr3Backend, StretchBackend
from failrecov_ros.ros.conversions import (
    duration_to_s,
    feedback_to_msg,
    msg_to_diagnosis,
    pose_from_msg,
    skill_from_msg,
    status_to_msg,
    task_result_to_msg,
    time_to_ns,
)
from failrecov_ros.ros.entry import spin_until_shutdown, start_node
from failrecov_ros.ros.logs import log_at
from failrecov_ros.ros.qos import event_qos, latched_qos, sensor_qos
from failrecov_ros.ros.requests import TaskSlot
from failrecov_ros.skills.library import Pose, TaskError, TaskSpec, load_task_library
from failrecov_ros.skills.objects import ObjectPoseError, PoseBoard
from failrecov_ros.skills.runner import (
    Feedback,
    Request,
    ResultCode,
    TaskResult,
    TaskRunner,
)
from failrecov_ros.skills.settings import ROBOTS, executor_settings, parameter_defaults

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SkillExecutor(Node):
    """Thin ROS face of ``skills.runner.TaskRunner``."""

    def __init__(self) -> None:
        super().__init__("skill_executor")
        self.robot = self.declare_parameter("robot", ROBOTS[0]).value
        if self.robot not in ROBOTS:
            raise ValueError(f"robot must be one of {', '.join(ROBOTS)}, got {self.robot!r}")
        values = {name: self.declare_parameter(name, default).value
                  for name, default in parameter_defaults(self.robot).items()}
        self.kinematics = make_kinematics(self.robot)
        settings = executor_settings(self.robot, values, self.kinematics)
        self.gate = settings.gate
        # Callback groups: the goal runs in its own, action/service answers in one (rclpy's
        # action client is not safe to take from in parallel), inputs in a reentrant one.
        clients = MutuallyExclusiveCallbackGroup()
        self.inputs = io = ReentrantCallbackGroup()
        backend = Fr3Backend if self.robot == "fr3" else StretchBackend
        self.backend = backend(self, clients, io, settings.backend, settings.controllers)
        library = settings.task_library or (
            f"{get_package_share_directory('failrecov_ros')}/config/skills/tasks.yaml")
        self.library = load_task_library(library)
        self.poses = PoseBoard()
        self._pose_topics: set[str] = set()
        self._pose_lock = threading.Lock()
        self.status_pub = self.create_publisher(SkillStatus, "skill_status", latched_qos())
        self.runner = TaskRunner(
            self.backend, self.kinematics, self.gate, settings.config,
            publish_status=lambda s: self.status_pub.publish(status_to_msg(s, self.robot)),
            publish_feedback=self._feedback, log=self._log, object_pose=self._object_pose,
            now_ns=lambda: self.get_clock().now().nanoseconds)
        self.create_subscription(FailureDiagnosis, "diagnosis", self._on_diagnosis, event_qos(),
                                 callback_group=io)
        self.create_subscription(JointTrajectory, "correction_trajectory",
                                 self._on_trajectory, event_qos(), callback_group=io)
        self.create_subscription(Float64MultiArray, "ee_delta_command", self._on_policy,
                                 event_qos(), callback_group=io)
        self._slot = TaskSlot()  # one task at a time, claimed when its goal is accepted
        self._stopping = False  # a shutdown was requested: stop the running task
        self.server = ActionServer(
            self, ExecuteTask, "execute_task", execute_callback=self._execute,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup())
        self.status_pub.publish(status_to_msg(self.runner.status, self.robot))
        self.get_logger().info(
            f"skill executor for {self.robot}: {len(self.library)} named tasks from {library}; "
            f"controller {self.backend.action_name}")

    def drain(self) -> bool:
        """On a shutdown request: stop the running task (arm stopped); True once none runs."""
        self._stopping = True
        return not self._slot.busy

    def _cancel_reason(self, goal_handle) -> str:
        if goal_handle.is_cancel_requested:
            return "canceled by the client"
        return "the skill executor is shutting down" if self._stopping else ""

    def close(self) -> None:
        """Destroy the action server and clients before the node (their futures first)."""
        self.server.destroy()
        for client in self.backend.clients():
            client.destroy()

    def _log(self, level: str, message: str) -> None:
        log_at(self.get_logger(), level, message)

    # --- inputs ----------------------------------------------------------------------------------
    def _on_diagnosis(self, msg: FailureDiagnosis) -> None:
        try:
            diagnosis = msg_to_diagnosis(msg)
        except SchemaError as error:
            self.get_logger().warning(f"ignored a malformed diagnosis: {error}")
            return
        self.runner.offer_diagnosis(diagnosis)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        self.runner.offer_trajectory(
            time_to_ns(msg.header.stamp), list(msg.joint_names),
            [duration_to_s(p.time_from_start) for p in msg.points],
            [list(p.positions) for p in msg.points])

    def _on_policy(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 7:
            self.get_logger().warning(f"ignored an ee_delta_command with {len(msg.data)} values "
                                      "(expected 7: dx dy dz droll dpitch dyaw dgripper)")
            return
        self.runner.offer_policy_command(list(msg.data), self.get_clock().now().nanoseconds)

    def _object_pose(self, name: str, after_ns: int, timeout: float) -> Pose:
        """The first pose on ``objects/<name>/pose`` stamped at or after ``after_ns``.

        Subscribes on first use; raises ObjectPoseError with the reason after ``timeout`` s.
        """
        if not _NAME.match(name):
            raise ObjectPoseError(f"object name {name!r} cannot be part of a topic name")
        with self._pose_lock:
            if name not in self._pose_topics:
                self._pose_topics.add(name)
                self.create_subscription(PoseStamped, f"objects/{name}/pose",
                                         lambda msg, n=name: self._on_pose(n, msg),
                                         sensor_qos(1), callback_group=self.inputs)
        return self.poses.fresh(name, after_ns, timeout)

    def _on_pose(self, name: str, msg: PoseStamped) -> None:
        frame = msg.header.frame_id
        if frame not in ("", self.kinematics.base_frame):
            pose = (f"objects/{name}/pose is in {frame!r}, not the base frame "
                    f"{self.kinematics.base_frame!r}")
        else:
            try:
                pose = pose_from_msg(msg.pose)
            except TaskError as error:
                pose = str(error)
        self.poses.offer(name, time_to_ns(msg.header.stamp), pose)

    # --- the action ------------------------------------------------------------------------------
    def _on_goal(self, goal) -> GoalResponse:
        if self._stopping:
            self.get_logger().warning("rejected a task goal: the executor is shutting down")
            return GoalResponse.REJECT
        if not self._slot.claim():
            self.get_logger().warning("rejected a task goal: another task is running (one "
                                      "active goal at a time)")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_accepted(self, goal_handle) -> None:
        self._slot.hold(goal_handle)
        goal_handle.execute()

    def _feedback(self, feedback: Feedback) -> None:
        handle = self._slot.holder
        if handle is not None:
            handle.publish_feedback(feedback_to_msg(feedback))

    def _request(self, goal) -> Request:
        if goal.skills:
            skills = [skill_from_msg(s, self.kinematics.base_frame) for s in goal.skills]
            task = TaskSpec(goal.task_name or "custom", goal.instruction, tuple(skills))
        elif goal.task_name in self.library:
            task = self.library[goal.task_name]
            if goal.instruction:
                task = TaskSpec(task.name, goal.instruction, task.skills)
        else:
            raise TaskError(f"unknown task {goal.task_name!r} and no skills given; named "
                            f"tasks: {', '.join(sorted(self.library))}")
        return Request(task, goal.episode_id, bool(goal.enable_recovery),
                       int(goal.max_recoveries))

    def _run(self, goal_handle) -> TaskResult:
        try:
            request = self._request(goal_handle.request)
        except TaskError as error:
            self.get_logger().warning(f"invalid task goal: {error}")
            return TaskResult(ResultCode.INVALID_GOAL, str(error))
        return self.runner.run(request, lambda: self._cancel_reason(goal_handle))

    def _execute(self, goal_handle):
        if goal_handle is not self._slot.holder:
            outcome = TaskResult(ResultCode.INVALID_GOAL, "another task is running (one active "
                                                          "goal at a time)")
        else:
            try:
                if self._stopping:
                    outcome = TaskResult(ResultCode.CANCELED, "the skill executor is shutting "
                                                              "down; the task was not started")
                else:
                    outcome = self._run(goal_handle)
            finally:
                self._slot.release()
        if outcome.code is ResultCode.SUCCEEDED:
            goal_handle.succeed()
        elif outcome.code is ResultCode.CANCELED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return task_result_to_msg(outcome)


def main(args: list[str] | None = None) -> int:
    """Entry point: spin the executor until SIGINT."""
    node = start_node("skill_executor", SkillExecutor, args,
                      errors=(ValueError, TaskError, OSError), what="cannot start")
    if node is None:
        return 2
    spin_until_shutdown(node, MultiThreadedExecutor(num_threads=6), drain=node.drain,
                        cleanup=node.close)
    return 0
