"""The simulator node over real DDS, driven from this process as franka_ros2 clients would.

One ``mujoco_sim`` process (the installed executable) serves every test in this module.
"""

import math
import time

import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalStatus
from control_msgs.action import FollowJointTrajectory, GripperCommand
from franka_msgs.action import Grasp, Homing, Move
from rclpy.action import ActionClient
from sensor_msgs.msg import CameraInfo, Image
from sim_process import SpunClient, running_sim, wait_still, wait_until

from failrecov_ros.robots import fr3
from failrecov_ros.ros.conversions import joint_trajectory_msg
from failrecov_ros.ros.qos import sensor_qos
from failrecov_ros.ros.sensors import image_to_array

CAMERA = "camera/camera"
HOME = np.array(fr3.HOME)


class Client(SpunClient):
    """Subscriptions and action clients against the simulator, spun in a background thread."""

    def __init__(self, context):
        super().__init__(context, "sim_test_client")
        self.images: dict[str, list] = {"color": [], "depth": [], "color_info": [],
                                        "depth_info": []}
        qos = sensor_qos(depth=5)
        for key, kind, topic in (
            ("color", Image, f"{CAMERA}/color/image_raw"),
            ("depth", Image, f"{CAMERA}/aligned_depth_to_color/image_raw"),
            ("color_info", CameraInfo, f"{CAMERA}/color/camera_info"),
            ("depth_info", CameraInfo, f"{CAMERA}/aligned_depth_to_color/camera_info"),
        ):
            self.node.create_subscription(kind, topic, self._keep(key), qos)
        self.arm = ActionClient(self.node, FollowJointTrajectory,
                                "fr3_arm_controller/follow_joint_trajectory")
        self.move = ActionClient(self.node, Move, "franka_gripper/move")
        self.grasp = ActionClient(self.node, Grasp, "franka_gripper/grasp")
        self.homing = ActionClient(self.node, Homing, "franka_gripper/homing")
        self.gripper_command = ActionClient(self.node, GripperCommand,
                                            "franka_gripper/gripper_action")
        self.start()

    def _keep(self, key):
        def keep(msg):
            with self.lock:
                self.images[key].append(msg)
                del self.images[key][:-30]
        return keep

    def arm_q(self) -> np.ndarray:
        joints = self.joints()
        return np.array([joints[n] for n in fr3.ARM_JOINTS])

    def send(self, client, goal, feedback=None):
        handle = self.ask(lambda: client.send_goal_async(goal, feedback_callback=feedback))
        assert handle.accepted
        return handle

    def run(self, client, goal, timeout=30.0):
        handle = self.send(client, goal)
        return self.wait(handle.get_result_async(), timeout)


@pytest.fixture(scope="module")
def sim():
    with running_sim("task:=pick_cube", "seed:=3", "camera.fps:=10.0", "camera.width:=320",
                     "camera.height:=240"):
        context = rclpy.Context()
        rclpy.init(context=context)
        client = Client(context)
        try:
            assert wait_until(lambda: client.joint_states and client.images["depth"], 60), (
                "simulator did not come up")
            for action in (client.arm, client.move, client.grasp, client.homing,
                           client.gripper_command):
                assert action.wait_for_server(timeout_sec=20)
            yield client
        finally:
            client.close()
            rclpy.try_shutdown(context=context)


def trajectory_goal(points, joints=fr3.ARM_JOINTS):
    goal = FollowJointTrajectory.Goal()
    goal.trajectory = joint_trajectory_msg(joints, points)
    return goal


def test_joint_states_use_franka_names(sim):
    msg = sim.joint_states[-1]
    assert list(msg.name) == list(fr3.ARM_JOINTS + fr3.FINGER_JOINTS)
    assert len(msg.position) == len(msg.velocity) == 9
    assert np.allclose(sim.arm_q(), HOME, atol=0.02)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in sim.joint_states[-20:]]
    assert stamps == sorted(stamps)


def test_trajectory_goal_converges_and_succeeds(sim):
    target = HOME + np.array([0.3, 0.2, -0.2, 0.25, 0.1, -0.2, 0.3])
    feedback = []
    handle = sim.send(sim.arm, trajectory_goal([(1.0, (HOME + target) / 2), (2.0, target)]),
                      feedback.append)
    response = sim.wait(handle.get_result_async())
    assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.error_string
    assert response.result.error_code == FollowJointTrajectory.Result.SUCCESSFUL
    assert feedback and list(feedback[-1].feedback.joint_names) == list(fr3.ARM_JOINTS)
    assert wait_until(lambda: np.max(np.abs(sim.arm_q() - target)) < 0.01, 5), sim.arm_q() - target
    back = sim.run(sim.arm, trajectory_goal([(1.5, HOME)]))
    assert back.result.error_code == 0
    assert np.max(np.abs(wait_still(sim.arm_q, sim.stamp) - HOME)) < 0.05


def test_new_goal_preempts_the_active_one(sim):
    far = HOME + np.array([0.8, 0, 0, 0, 0, 0, 0])
    other = HOME + np.array([-0.3, 0.1, 0, 0, 0, 0, 0])
    first = sim.send(sim.arm, trajectory_goal([(4.0, far)]))
    time.sleep(0.6)
    second = sim.send(sim.arm, trajectory_goal([(1.5, other)]))
    first_result = sim.wait(first.get_result_async())
    assert first_result.status in (GoalStatus.STATUS_ABORTED, GoalStatus.STATUS_CANCELED)
    assert "preempted" in first_result.result.error_string
    second_result = sim.wait(second.get_result_async())
    assert second_result.status == GoalStatus.STATUS_SUCCEEDED
    assert np.max(np.abs(wait_still(sim.arm_q, sim.stamp) - other)) < 0.05
    assert sim.run(sim.arm, trajectory_goal([(1.5, HOME)])).result.error_code == 0


def test_cancel_holds_position(sim):
    handle = sim.send(sim.arm, trajectory_goal([(3.0, HOME + np.array([0.6, 0, 0, 0, 0, 0, 0]))]))
    time.sleep(0.8)
    sim.wait(handle.cancel_goal_async())
    result = sim.wait(handle.get_result_async())
    assert result.status == GoalStatus.STATUS_CANCELED
    held = wait_still(sim.arm_q, sim.stamp)
    assert 0.02 < held[0] - HOME[0] < 0.5  # stopped part-way, not at the goal (+0.6)
    time.sleep(0.5)
    assert np.max(np.abs(sim.arm_q() - held)) < 0.005
    assert sim.run(sim.arm, trajectory_goal([(1.5, HOME)])).result.error_code == 0


BAD_GOALS = {
    "unknown joint": (trajectory_goal([(1.0, [0.0, -0.5])], ("fr3_joint1", "panda_joint2")),
                      FollowJointTrajectory.Result.INVALID_JOINTS, "panda_joint2"),
    "outside limits": (trajectory_goal([(1.0, HOME + np.array([0, 0, 0, 3.0, 0, 0, 0]))]),
                       FollowJointTrajectory.Result.INVALID_GOAL, "fr3_joint4"),
    "times not increasing": (
        trajectory_goal([(1.0, HOME), (1.0, HOME + 0.1)]),
        FollowJointTrajectory.Result.INVALID_GOAL, "point 1"),
    "nan": (trajectory_goal([(1.0, np.where(np.arange(7) == 2, math.nan, HOME))]),
            FollowJointTrajectory.Result.INVALID_GOAL, "fr3_joint3"),
    "inf": (trajectory_goal([(1.0, np.where(np.arange(7) == 5, math.inf, HOME))]),
            FollowJointTrajectory.Result.INVALID_GOAL, "fr3_joint6"),
    "no points": (trajectory_goal([]), FollowJointTrajectory.Result.INVALID_GOAL, "point"),
}


@pytest.mark.parametrize("case", BAD_GOALS, ids=list(BAD_GOALS))
def test_bad_trajectory_goals_get_their_code_and_never_move(sim, case):
    goal, code, mentions = BAD_GOALS[case]
    # at rest (and joint_states caught up) before the goal
    before = wait_still(sim.arm_q, sim.stamp)
    response = sim.run(sim.arm, goal)
    assert response.status == GoalStatus.STATUS_ABORTED
    assert response.result.error_code == code
    assert mentions in response.result.error_string
    time.sleep(0.3)
    assert np.max(np.abs(sim.arm_q() - before)) < 0.005


def test_gripper_move_grasp_homing_and_bad_width(sim):
    def width():
        return sum(sim.joints()[n] for n in fr3.FINGER_JOINTS)

    moved = sim.run(sim.move, Move.Goal(width=0.03, speed=0.1))
    assert moved.status == GoalStatus.STATUS_SUCCEEDED and moved.result.success
    # joint_states may still be in flight when the result arrives: wait for them to catch up.
    before = wait_still(width, sim.stamp)
    assert before == pytest.approx(0.03, abs=0.004)
    bad = sim.run(sim.move, Move.Goal(width=0.2, speed=0.1))
    assert bad.status == GoalStatus.STATUS_ABORTED and not bad.result.success
    assert "width 0.2" in bad.result.error
    time.sleep(0.3)
    assert width() == pytest.approx(before, abs=0.002)
    nan_speed = sim.run(sim.move, Move.Goal(width=0.05, speed=math.nan))
    assert not nan_speed.result.success and "speed" in nan_speed.result.error
    # Closing on nothing: the grasp ends at ~0 width, outside the expected 4 cm +- 5 mm.
    empty = Grasp.Goal(width=0.04, speed=0.1, force=20.0)
    empty.epsilon.inner = empty.epsilon.outer = 0.005
    missed = sim.run(sim.grasp, empty)
    assert missed.status == GoalStatus.STATUS_ABORTED and "outside" in missed.result.error
    homed = sim.run(sim.homing, Homing.Goal())
    assert homed.result.success
    assert wait_until(lambda: abs(width() - 0.08) < 0.004, 3), width()
    command = GripperCommand.Goal()
    command.command.position, command.command.max_effort = 0.02, 30.0
    result = sim.run(sim.gripper_command, command)
    assert result.status == GoalStatus.STATUS_SUCCEEDED
    assert result.result.position == pytest.approx(0.02, abs=0.003)


def test_camera_topics_follow_realsense_conventions(sim):
    assert wait_until(lambda: len(sim.images["depth"]) >= 5 and len(sim.images["color"]) >= 5)
    with sim.lock:
        color, depth = sim.images["color"][-1], sim.images["depth"][-1]
        info, depth_info = sim.images["color_info"][-1], sim.images["depth_info"][-1]
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in sim.images["color"]]
    assert (color.encoding, color.width, color.height) == ("rgb8", 320, 240)
    assert (depth.encoding, depth.width, depth.height) == ("16UC1", 320, 240)
    assert color.header.frame_id == depth.header.frame_id == info.header.frame_id
    assert info.k[2] == pytest.approx((320 - 1) / 2) and info.k[5] == pytest.approx((240 - 1) / 2)
    assert info.k[0] == pytest.approx(info.k[4]) and list(info.k) == list(depth_info.k)
    # D435i-like field of view: fy = (h/2) / tan(fovy/2) with fovy 42.5 degrees
    assert info.k[4] == pytest.approx(120 / math.tan(math.radians(42.5) / 2), rel=1e-3)
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    rgb, depth_mm = image_to_array(color), image_to_array(depth)
    assert rgb.std() > 5  # a scene, not a blank frame
    valid = depth_mm[depth_mm > 0]
    assert valid.size > 0.5 * depth_mm.size and 300 < np.median(valid) < 3000  # millimetres
