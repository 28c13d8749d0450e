"""One simulator serves a whole suite: ``~/reset`` loads the task, seed, variation and faults.

Over real DDS against the installed ``mujoco_sim``, as episode_runner drives it: parameters
through ``set_parameters``, then ``~/reset``. Checks that a perception fault shifts only the
reported target pose, a close failure leaves the hand open once, a weak closure stops short
once, the task's success predicate is served, another task's scene (and its
objects' topics, and the camera) comes up, simulated time never runs back, and bad parameters
are refused with the reason.
"""

import json

import numpy as np
import pytest
import rclpy
from franka_msgs.action import Grasp
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from sim_process import SpunClient, running_sim, wait_until
from std_srvs.srv import Trigger

from failrecov_ros.evaluation.closed_loop import EpisodeSpec
from failrecov_ros.ros.conversions import time_to_ns
from failrecov_ros.ros.qos import sensor_qos


class Client(SpunClient):
    def __init__(self, context):
        super().__init__(context, "sim_episode_client")
        self.poses: dict[str, list] = {}
        self.frames: list = []
        self.clock: list[int] = []
        for name in ("target_cube", "base_cube"):
            self.node.create_subscription(PoseStamped, f"objects/{name}/pose",
                                          self._keep(name), sensor_qos(depth=5))
        self.node.create_subscription(Image, "camera/camera/color/image_raw",
                                      lambda m: self._append(self.frames, m),
                                      sensor_qos(depth=5))
        self.node.create_subscription(Clock, "/clock",
                                      lambda m: self._append(self.clock, time_to_ns(m.clock)),
                                      10)
        self.set_params = self.node.create_client(SetParameters, "/mujoco_sim/set_parameters")
        self.reset = self.node.create_client(Trigger, "/mujoco_sim/reset")
        self.grasp = ActionClient(self.node, Grasp, "franka_gripper/grasp")
        self.start()

    def _append(self, store, item):
        with self.lock:
            store.append(item)
            del store[:-50]

    def _keep(self, name):
        return lambda msg: self._append(self.poses.setdefault(name, []), msg)

    def load(self, **values) -> Trigger.Response:
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        assert self.set_params.wait_for_service(timeout_sec=30)
        answers = self.ask(lambda: self.set_params.call_async(request))
        assert all(r.successful for r in answers.results), answers
        assert self.reset.wait_for_service(timeout_sec=30)
        return self.ask(lambda: self.reset.call_async(Trigger.Request()))

    def fresh_pose(self, name) -> np.ndarray:
        """Position of a pose published after this call."""
        with self.lock:
            self.poses[name] = []
        assert wait_until(lambda: len(self.poses.get(name, [])) >= 2, 20), f"no {name} pose"
        p = self.poses[name][-1].pose.position
        return np.array([p.x, p.y, p.z])

    def width_after_grasp(self) -> tuple[bool, str]:
        assert self.grasp.wait_for_server(timeout_sec=30)
        goal = Grasp.Goal(width=0.04, speed=0.1, force=20.0)
        goal.epsilon.inner = goal.epsilon.outer = 0.01  # as the executor sends (grasp_epsilon)
        handle = self.ask(lambda: self.grasp.send_goal_async(goal))
        result = self.wait(handle.get_result_async(), 30).result
        return result.success, result.error


@pytest.fixture(scope="module")
def sim():
    with running_sim("task:=pick_cube", "seed:=0", "camera.width:=160", "camera.height:=120",
                     "use_sim_time:=true", "publish_clock:=true"):
        context = rclpy.Context()
        rclpy.init(context=context)
        client = Client(context)
        try:
            yield client
        finally:
            client.close()
            rclpy.shutdown(context=context)


def test_a_perception_fault_shifts_only_the_reported_target(sim):
    spec = EpisodeSpec(0, "pick_cube", 0, "translation_x", sign=-1)
    clean = sim.load(**EpisodeSpec(0, "pick_cube", 0).sim_parameters())
    assert clean.success, clean.message
    before = sim.fresh_pose("target_cube")
    faulty = sim.load(**spec.sim_parameters())
    assert faulty.success and "pose_offset" in faulty.message, faulty.message
    after = sim.fresh_pose("target_cube")
    np.testing.assert_allclose(after - before, [-0.04, 0.0, 0.0], atol=1e-3)


def test_a_close_failure_leaves_the_hand_open_once(sim):
    answer = sim.load(**EpisodeSpec(0, "pick_cube", 0, "force_open").sim_parameters())
    assert answer.success and "close_failures=1" in answer.message, answer.message
    ok, error = sim.width_after_grasp()
    assert not ok and "width 0.08" in error, error  # the fingers never moved
    ok, error = sim.width_after_grasp()
    assert not ok and "width 0.00" in error, error  # the next grasp closes (on nothing)


def test_a_weak_closure_reports_a_grasp_but_stops_short_once(sim):
    answer = sim.load(**EpisodeSpec(0, "pick_cube", 0, "weak_close").sim_parameters())
    assert answer.success and "weak_grasps=1" in answer.message, answer.message
    ok, error = sim.width_after_grasp()
    assert ok, error  # inside the expected-width window: the gripper believes it holds
    ok, error = sim.width_after_grasp()
    assert not ok and "width 0.00" in error, error


def test_the_task_success_predicate_is_served(sim):
    assert sim.load(**EpisodeSpec(0, "pick_cube", 0).sim_parameters()).success
    client = sim.node.create_client(Trigger, "/mujoco_sim/task_success")
    assert client.wait_for_service(timeout_sec=30)
    answer = sim.wait(client.call_async(Trigger.Request()))
    details = json.loads(answer.message)
    assert not answer.success and details["lift"] < 0.01 and not details["held"]


def test_another_task_loads_its_scene_objects_and_camera_and_time_runs_on(sim):
    with sim.lock:
        clock_before = sim.clock[-1]
        frames_before = len(sim.frames)
    answer = sim.load(**EpisodeSpec(3, "stack_cube", 7).sim_parameters())
    assert answer.success and "stack_cube seed 7" in answer.message, answer.message
    assert "stack the" in answer.message
    base = sim.fresh_pose("base_cube")
    assert np.all(np.isfinite(base))
    with sim.lock:
        sim.frames.clear()
    assert wait_until(lambda: len(sim.frames) >= 3, 30), "the camera stopped after the switch"
    with sim.lock:
        stamps = [time_to_ns(f.header.stamp) for f in sim.frames]
        assert min(sim.clock[-5:]) > clock_before
    assert min(stamps) > clock_before and frames_before > 0
    assert stamps == sorted(stamps)


def test_bad_episode_parameters_are_refused_with_the_reason(sim):
    answer = sim.load(variation='{"bogus_factor": 1}')
    assert not answer.success and "bogus_factor" in answer.message, answer.message
    answer = sim.load(**{"faults.pose_offset": [0.5, 0.0, 0.0], "variation": ""})
    assert not answer.success and "pose_offset" in answer.message, answer.message
    restored = sim.load(**EpisodeSpec(0, "pick_cube", 0).sim_parameters())
    assert restored.success, restored.message
