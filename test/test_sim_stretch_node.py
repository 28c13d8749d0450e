"""The simulator node as a Stretch (``-p robot:=stretch``) over real DDS.

Driven from this process as stretch_driver's clients would drive the robot.

One ``mujoco_sim`` process (the installed executable) serves every test in this module.
"""

import time

import pytest
import rclpy
from action_msgs.msg import GoalStatus
from control_msgs.action import FollowJointTrajectory
from rclpy.action import ActionClient
from sensor_msgs.msg import Image
from sim_process import SpunClient, running_sim, wait_still, wait_until
from std_srvs.srv import SetBool, Trigger

from failrecov_ros.robots import stretch
from failrecov_ros.ros.conversions import joint_trajectory_msg
from failrecov_ros.ros.qos import sensor_qos

CAMERA = "camera/camera"


class Client(SpunClient):
    """joint_states and camera subscriptions, the action client and the service clients."""

    wait_timeout = 60.0

    def __init__(self, context):
        super().__init__(context, "stretch_sim_test_client")
        self.images: list[Image] = []
        self.node.create_subscription(Image, f"{CAMERA}/color/image_raw", self._on_image,
                                      sensor_qos(depth=5))
        self.action = ActionClient(self.node, FollowJointTrajectory,
                                   stretch.FOLLOW_JOINT_TRAJECTORY_ACTION)
        self.triggers = {name: self.node.create_client(Trigger, name)
                         for name in stretch.TRIGGER_SERVICES}
        self.runstop_client = self.node.create_client(SetBool, stretch.RUNSTOP_SERVICE)
        self.start()

    def _on_image(self, msg):
        with self.lock:
            self.images.append(msg)
            del self.images[:-10]

    def send(self, names, positions, accepted=True):
        goal = FollowJointTrajectory.Goal()
        goal.trajectory = joint_trajectory_msg(names, [(0.0, positions)])
        handle = self.ask(lambda: self.action.send_goal_async(goal))
        assert handle.accepted == accepted
        return handle

    def run(self, names, positions):
        return self.wait(self.send(names, positions).get_result_async())

    def trigger(self, name):
        return self.ask(lambda: self.triggers[name].call_async(Trigger.Request()))

    def runstop(self, on):
        return self.ask(lambda: self.runstop_client.call_async(SetBool.Request(data=on)))


@pytest.fixture(scope="module")
def sim():
    with running_sim("robot:=stretch", "camera.fps:=5.0", "camera.width:=320",
                     "camera.height:=240"):
        context = rclpy.Context()
        rclpy.init(context=context)
        client = Client(context)
        try:
            assert wait_until(lambda: client.joint_states and client.images, 90), (
                "simulator did not come up")
            assert client.action.wait_for_server(timeout_sec=20)
            for service in (*client.triggers.values(), client.runstop_client):
                assert service.wait_for_service(timeout_sec=20)
            yield client
        finally:
            client.close()
            rclpy.try_shutdown(context=context)


def test_joint_states_use_stretch_driver_names(sim):
    msg = sim.joint_states[-1]
    assert list(msg.name) == list(stretch.JOINT_STATE_NAMES)
    assert len(msg.position) == len(msg.velocity) == len(stretch.JOINT_STATE_NAMES)
    joints = sim.joints()
    assert joints["joint_lift"] == pytest.approx(stretch.HOME["joint_lift"], abs=0.02)


def test_lift_and_arm_goal_succeeds_and_converges(sim):
    response = sim.run(["joint_lift", "wrist_extension"], [0.75, 0.25])
    assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.error_string
    assert response.result.error_code == FollowJointTrajectory.Result.SUCCESSFUL
    assert wait_until(lambda: abs(sim.joints()["joint_lift"] - 0.75) < 0.01
                      and abs(sim.joints()["wrist_extension"] - 0.25) < 0.02, 5), sim.joints()


def test_second_goal_is_rejected_while_one_is_active(sim):
    first = sim.send(["joint_lift"], [0.4])
    time.sleep(0.3)
    sim.send(["joint_lift"], [0.9], accepted=False)
    result = sim.wait(first.get_result_async())
    assert result.status == GoalStatus.STATUS_SUCCEEDED, result.result.error_string


def test_of_two_goals_sent_together_one_is_accepted_and_the_next_gets_in(sim):
    sim.run(["joint_lift"], [0.5])  # an answered goal first: neither answer below is lost
    goals = []
    for lift in (0.6, 0.7):
        goal = FollowJointTrajectory.Goal()
        goal.trajectory = joint_trajectory_msg(["joint_lift"], [(0.0, [lift])])
        goals.append(goal)
    futures = [sim.action.send_goal_async(goal) for goal in goals]
    handles = [sim.wait(future) for future in futures]
    accepted = [handle for handle in handles if handle.accepted]
    assert len(accepted) == 1, [handle.accepted for handle in handles]
    result = sim.wait(accepted[0].get_result_async())
    assert result.status == GoalStatus.STATUS_SUCCEEDED, result.result.error_string
    assert sim.run(["joint_lift"], [0.5]).status == GoalStatus.STATUS_SUCCEEDED  # slot freed


def test_unknown_joint_is_invalid_joints(sim):
    response = sim.run(["joint_lift", "panda_joint2"], [0.5, 0.0])
    assert response.status == GoalStatus.STATUS_ABORTED
    assert response.result.error_code == FollowJointTrajectory.Result.INVALID_JOINTS
    assert "panda_joint2" in response.result.error_string


def test_stop_the_robot_aborts_the_active_goal(sim):
    start = sim.joints()["joint_lift"]
    handle = sim.send(["joint_lift"], [1.0])
    time.sleep(0.8)
    stopped = sim.trigger(stretch.STOP_SERVICE)
    assert stopped.success and "aborted" in stopped.message
    result = sim.wait(handle.get_result_async())
    assert result.status == GoalStatus.STATUS_ABORTED
    assert "stop_the_robot" in result.result.error_string
    held = wait_still(lambda: sim.joints()["joint_lift"], sim.stamp)
    assert start + 0.01 < held < 0.98  # stopped part-way
    time.sleep(0.5)
    assert sim.joints()["joint_lift"] == pytest.approx(held, abs=0.005)


def test_runstop_refuses_goals_until_released(sim):
    assert sim.runstop(True).success
    before = wait_still(lambda: sim.joints()["joint_lift"], sim.stamp)
    response = sim.run(["joint_lift"], [0.6])
    assert response.status == GoalStatus.STATUS_ABORTED
    assert "runstop" in response.result.error_string
    time.sleep(0.3)
    assert sim.joints()["joint_lift"] == pytest.approx(before, abs=0.005)
    assert sim.runstop(False).success
    response = sim.run(["joint_lift"], [0.6])
    assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.error_string


def test_modes_and_stow(sim):
    response = sim.trigger(stretch.MODE_SERVICES[stretch.NAVIGATION_MODE])
    assert response.success and "navigation" in response.message
    base = sim.run(["translate_mobile_base"], [0.1])
    assert base.status == GoalStatus.STATUS_ABORTED and "position mode" in base.result.error_string
    assert sim.trigger(stretch.MODE_SERVICES[stretch.POSITION_MODE]).success
    stowed = sim.trigger(stretch.STOW_SERVICE)
    assert stowed.success, stowed.message
    # joint_states can lag the reply
    lift = wait_still(lambda: sim.joints()["joint_lift"], sim.stamp)
    assert lift == pytest.approx(stretch.STOW["joint_lift"], abs=0.02)


def test_camera_publishes(sim):
    assert wait_until(lambda: len(sim.images) >= 3, 20)
    with sim.lock:
        image = sim.images[-1]
    assert (image.encoding, image.width, image.height) == ("rgb8", 320, 240)
