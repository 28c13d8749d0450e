"""The Stretch controller (stretch_driver semantics) stepping a MuJoCo Stretch scene, no ROS."""

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from failrecov_ros.core.trajectory import ResultCode  # noqa: E402
from failrecov_ros.robots import stretch  # noqa: E402
from failrecov_ros.sim.controllers import trajectory_goal_from_lists  # noqa: E402
from failrecov_ros.sim.scene import Simulation, stretch_scene  # noqa: E402
from failrecov_ros.sim.stretch_controller import StretchController  # noqa: E402


@pytest.fixture()
def rig():
    sim = Simulation(stretch_scene())
    return sim, StretchController(sim)


def run(sim, controller, seconds=15.0):
    for _ in range(int(seconds / sim.timestep)):
        verdict = controller.update()
        sim.step()
        if verdict is not None:
            return verdict
    return None


def test_scene_puts_the_stretch_on_the_floor_beside_a_reachable_table(rig):
    sim, _ = rig
    assert sim.model.geom("floor").pos[2] == 0.0
    table = sim.config.table_top_z
    assert 0.6 <= table <= 0.75
    cube, _ = sim.object_pose("cube")
    assert cube[2] == pytest.approx(table + 0.02, abs=0.002)
    assert cube[1] < -0.6  # on the arm's side (-y)
    assert sim.gripper_width() == pytest.approx(sim.binding.max_gripper_width, abs=1e-6)


def test_lift_and_arm_goal_succeeds(rig):
    sim, controller = rig
    goal = trajectory_goal_from_lists(["joint_lift", "wrist_extension"], [(0.0, (0.7, 0.3))])
    assert controller.start(goal).ok
    verdict = run(sim, controller)
    assert verdict is not None and verdict.ok, verdict
    joints = dict(zip(*controller.joint_state()[:2], strict=True))
    assert joints["joint_lift"] == pytest.approx(0.7, abs=0.01)
    assert joints["wrist_extension"] == pytest.approx(0.3, abs=0.02)


def test_second_goal_is_refused_while_one_runs(rig):
    _, controller = rig
    goal = trajectory_goal_from_lists(["joint_lift"], [(0.0, (0.9,))])
    assert controller.start(goal).ok
    refused = controller.start(goal)
    assert refused.code == ResultCode.INVALID_GOAL and "one goal at a time" in refused.message


@pytest.mark.parametrize(("names", "code", "mentions"), [
    (["joint_lift", "panda_joint2"], ResultCode.INVALID_JOINTS, "panda_joint2"),
    (["joint_lift", "joint_lift"], ResultCode.INVALID_JOINTS, "duplicate"),
    (["joint_arm", "wrist_extension"], ResultCode.INVALID_GOAL, "mutually exclusive"),
])
def test_bad_goals_get_their_codes(rig, names, code, mentions):
    _, controller = rig
    verdict = controller.start(trajectory_goal_from_lists(names, [(0.0, (0.5, 0.1))]))
    assert verdict.code == code and mentions in verdict.message
    assert not controller.active


def test_base_translation_needs_position_mode_and_moves_relative(rig):
    sim, controller = rig
    ok, _, _ = controller.set_mode(stretch.NAVIGATION_MODE)
    assert ok
    goal = trajectory_goal_from_lists(["translate_mobile_base"], [(0.0, (0.1,))])
    refused = controller.start(goal)
    assert refused.code == ResultCode.INVALID_GOAL and "position mode" in refused.message
    controller.set_mode(stretch.POSITION_MODE)
    assert controller.start(goal).ok
    assert run(sim, controller).ok
    assert controller.joint_positions()["base_x"] == pytest.approx(0.1, abs=0.01)


def test_stop_aborts_and_runstop_refuses(rig):
    sim, controller = rig
    assert controller.start(trajectory_goal_from_lists(["joint_lift"], [(0.0, (1.0,))])).ok
    sim.step(100)
    aborted = controller.stop()
    assert aborted is not None and not aborted.ok and "stop_the_robot" in aborted.message
    assert not controller.active
    controller.set_runstop(True)
    refused = controller.start(trajectory_goal_from_lists(["joint_lift"], [(0.0, (0.5,))]))
    assert not refused.ok and "runstop" in refused.message
    assert not controller.stow().ok
    controller.set_runstop(False)
    assert controller.stow().ok
    assert run(sim, controller, 30.0).ok
    assert controller.joint_positions()["joint_lift"] == pytest.approx(0.3, abs=0.01)
