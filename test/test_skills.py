"""The ROS-free skill layer: kinematics, motion and correction planning, tasks, recovery, runner.

The runner runs against a kinematic fake robot (trajectories advance a few points per poll,
stop leaves the arm where it is, grasps close to a scripted width), so every decision of the
takeover loop is checked without a ROS graph.
"""

import dataclasses
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from failrecov_ros.core.safety import SafetyGate, Workspace
from failrecov_ros.core.schema import (
    Correction,
    CorrectionKind,
    Diagnosis,
    Directive,
    GripperCommand,
)
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.robots import fr3, stretch
from failrecov_ros.robots.kinematics import UnreachableError, make_kinematics
from failrecov_ros.sim.scene import Simulation, stretch_scene
from failrecov_ros.sim.stretch_model import grasp_site_pose, set_joint_positions
from failrecov_ros.sim.tasks import make_task
from failrecov_ros.skills.correction import (
    MalformedTrajectoryError,
    plan_correction,
    trajectory_from_fields,
)
from failrecov_ros.skills.library import (
    Pose,
    SkillSpec,
    TaskError,
    TaskSpec,
    load_task_library,
    skill_from_dict,
)
from failrecov_ros.skills.motion import MotionLimits, plan_cartesian, plan_joint
from failrecov_ros.skills.objects import ObjectPoseError, PoseBoard
from failrecov_ros.skills.recovery import (
    Action,
    RecoveryConfig,
    RetryBudget,
    assess,
    resume_point,
)
from failrecov_ros.skills.runner import (
    SUCCEEDED,
    ExecutorConfig,
    MotionStatus,
    Outcome,
    Request,
    ResultCode,
    State,
    TaskRunner,
)
from failrecov_ros.skills.settings import ROBOTS, executor_settings, parameter_defaults
from failrecov_ros.skills.steps import (
    CLOSE,
    GRASP,
    GRIPPER,
    OPEN,
    SkillProfile,
    World,
    default_grasp,
    expand,
    face_yaw,
    resolve_target,
    tool_yaw,
)

TASKS = Path(__file__).resolve().parents[1] / "config" / "skills" / "tasks.yaml"
HOME = np.array(fr3.HOME)
WORKSPACE = Workspace((0.15, -0.6, 0.0), (0.85, 0.6, 0.8), table_z=0.0, table_clearance=0.008)
CUBE = Pose((0.5, 0.05, 0.02), (math.cos(0.15), 0.0, 0.0, math.sin(0.15)))


@pytest.fixture(scope="module")
def kin():
    return make_kinematics("fr3")


@pytest.fixture(scope="module")
def profile(kin):
    rotation, align = default_grasp(kin)
    return SkillProfile(home=fr3.HOME, grasp_rotation=rotation, align_grasp_yaw=align,
                        open_width=fr3.MAX_GRIPPER_WIDTH)


def _gate(kin, **kwargs):
    return SafetyGate(kin.limits, margin=0.02, max_step=0.1, workspace=WORKSPACE, fk=kin.fk,
                      gripper_range=(0.0, fr3.MAX_GRIPPER_WIDTH),
                      max_grasp_force=fr3.MAX_GRASP_FORCE, **kwargs)


# --- kinematics ---------------------------------------------------------------------------------
def test_fr3_fk_matches_the_simulator(kin):
    sim = Simulation(make_task("pick_cube", 0).scene)
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.uniform(kin.limits.lower, kin.limits.upper)
        sim.place_arm(q)
        position, rotation = sim.tcp_pose()
        pose = kin.fk(q)
        assert np.allclose(pose[:3, 3], position, atol=1e-6)
        assert np.allclose(pose[:3, :3], rotation, atol=1e-6)
    assert kin.joint_names == fr3.ARM_JOINTS and kin.base_frame == "fr3_link0"


def test_stretch_fk_matches_the_simulator():
    kin = make_kinematics("stretch")
    sim = Simulation(stretch_scene())
    rng = np.random.default_rng(2)
    for _ in range(20):
        q = rng.uniform(kin.limits.lower, kin.limits.upper)
        command = stretch.expand_command(stretch.ARM_COMMAND_JOINTS, q)
        set_joint_positions(sim.model, sim.data, command.joints)
        position, rotation = grasp_site_pose(sim.model, sim.data)
        pose = kin.fk(q)
        assert np.allclose(pose[:3, 3], position, atol=1e-6)
        assert np.allclose(pose[:3, :3], rotation, atol=1e-6)
    assert kin.joint_names == ("joint_lift", "joint_arm", "joint_wrist_yaw",
                               "joint_wrist_pitch", "joint_wrist_roll")


def test_ik_reaches_targets_and_refuses_what_it_cannot(kin):
    rng = np.random.default_rng(3)
    for _ in range(10):
        q = np.clip(HOME + rng.normal(0.0, 0.3, 7), kin.limits.lower, kin.limits.upper)
        target = kin.fk(q)
        solution = kin.ik(target, HOME)
        assert np.allclose(kin.fk(solution)[:3, 3], target[:3, 3], atol=1e-3)
        assert np.all(solution >= kin.limits.lower) and np.all(solution <= kin.limits.upper)
    far = kin.fk(HOME)
    far[:3, 3] = [1.5, 0.0, 0.3]
    with pytest.raises(UnreachableError, match="closest"):
        kin.ik(far, HOME)
    with pytest.raises(UnreachableError, match="finite"):
        kin.ik(np.full((4, 4), np.nan), HOME)


def test_stretch_ik_moves_lift_and_arm_but_not_sideways():
    kin = make_kinematics("stretch")
    home = np.array(stretch.ARM_HOME)
    target = kin.fk(home)
    target[:3, 3] += [0.0, -0.2, -0.05]
    q = kin.ik(target, home)
    assert q[0] == pytest.approx(home[0] - 0.05, abs=2e-3)
    assert q[1] == pytest.approx(home[1] + 0.2, abs=2e-3)
    sideways = kin.fk(home)
    sideways[0, 3] += 0.1
    with pytest.raises(UnreachableError):
        kin.ik(sideways, home)
    with pytest.raises(ValueError, match="unknown robot"):
        make_kinematics("ur5")


# --- motion -------------------------------------------------------------------------------------
def test_cartesian_moves_are_straight_and_within_the_limit_fractions(kin):
    motion = MotionLimits()
    target = kin.fk(HOME)
    target[:3, 3] += [0.1, -0.15, -0.2]
    path = plan_cartesian(kin, HOME, target, motion)
    start = kin.fk(HOME)[:3, 3]
    direction = (target[:3, 3] - start) / np.linalg.norm(target[:3, 3] - start)
    for q in path.positions:
        offset = kin.fk(q)[:3, 3] - start
        assert np.linalg.norm(offset - offset @ direction * direction) < 2e-3
    assert np.allclose(kin.fk(path.positions[-1])[:3, 3], target[:3, 3], atol=1e-3)
    times = np.concatenate([[0.0], path.times])
    q = np.vstack([HOME, path.positions])
    speed = np.abs(np.diff(q, axis=0)) / np.diff(times)[:, None]
    assert np.all(speed <= kin.limits.velocity * motion.velocity_fraction * 1.01)
    tool_speed = np.linalg.norm(np.diff([kin.fk(x)[:3, 3] for x in q], axis=0), axis=1)
    assert np.max(tool_speed / np.diff(times)) <= motion.speed * 1.05


def test_joint_moves_and_no_motion(kin):
    goal = HOME + 0.3
    path = plan_joint(kin.limits, HOME, goal, MotionLimits())
    assert np.allclose(path.positions[-1], goal) and path.duration > 0.3
    assert len(plan_joint(kin.limits, HOME, HOME, MotionLimits())) == 0
    assert len(plan_cartesian(kin, HOME, kin.fk(HOME), MotionLimits())) == 0


# --- corrections --------------------------------------------------------------------------------
def test_an_ee_delta_becomes_a_path_to_the_corrected_pose(kin):
    delta = (0.03, -0.02, 0.05, 0.0, 0.0, 0.2, -0.01)
    plan = plan_correction(kin, HOME, Correction(CorrectionKind.EE_DELTA, delta), 0.01,
                           gripper_width=0.05, max_gripper_width=0.08)
    assert plan.ok and plan.has_motion and plan.source == "ee_delta"
    start, end = kin.fk(HOME), kin.fk(plan.positions[-1])
    assert np.allclose(end[:3, 3], start[:3, 3] + delta[:3], atol=1e-3)
    yaw = math.atan2((end[:3, :3] @ start[:3, :3].T)[1, 0], (end[:3, :3] @ start[:3, :3].T)[0, 0])
    assert yaw == pytest.approx(0.2, abs=0.01)
    assert plan.gripper_command is GripperCommand.CLOSE
    assert plan.gripper_width == pytest.approx(0.04)
    assert plan.joint_names == fr3.ARM_JOINTS
    assert plan.positions.shape == (len(plan.times_from_start), 7)


def test_a_directive_moves_its_bins(kin):
    directive = Directive(dir_x=1, bins_x=3, dir_y=-1, bins_y=2, gripper=GripperCommand.CLOSE,
                          keyframe=5)
    plan = plan_correction(kin, HOME, Correction(CorrectionKind.DIRECTIVE, directive=directive),
                           0.01, max_gripper_width=0.08)
    assert plan.ok and plan.translation == pytest.approx((0.03, -0.02, 0.0))
    moved = kin.fk(plan.positions[-1])[:3, 3] - kin.fk(HOME)[:3, 3]
    assert moved == pytest.approx([0.03, -0.02, 0.0], abs=1e-3)
    assert plan.gripper_command is GripperCommand.CLOSE and plan.gripper_width == 0.0
    only_gripper = Directive(gripper=GripperCommand.OPEN, keyframe=2)
    plan = plan_correction(kin, HOME, Correction(CorrectionKind.DIRECTIVE,
                                                 directive=only_gripper), 0.01,
                           max_gripper_width=0.08)
    assert plan.ok and not plan.has_motion and plan.gripper_width == 0.08


@pytest.mark.parametrize("correction, kwargs, reason", [
    (Correction(), {}, "empty"),
    (Correction(CorrectionKind.NEEDS_HELP), {}, "asks for help"),
    (Correction(CorrectionKind.EE_DELTA, (0.0,) * 6 + (0.01,)), {}, "current gripper width"),
    (Correction(CorrectionKind.EE_DELTA, (0.1,) + (0.0,) * 6, ee_frame="camera"), {},
     "not the base frame"),
    (Correction(CorrectionKind.EE_DELTA, (0.7, 0.0, 0.0, 0, 0, 0, 0)), {}, "cannot reach"),
    (Correction(CorrectionKind.DIRECTIVE), {}, "without a directive"),
])
def test_corrections_that_cannot_be_planned_say_why(kin, correction, kwargs, reason):
    q = HOME + [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    plan = plan_correction(kin, q, correction, 0.01, **kwargs)
    assert not plan.ok and reason in plan.reason and not plan.has_motion
    replan = plan_correction(kin, q, Correction(CorrectionKind.REPLAN), 0.01)
    assert replan.ok and not replan.has_motion and replan.source == "replan"
    with pytest.raises(ValueError):
        plan_correction(kin, q, Correction(CorrectionKind.REPLAN), 0.0)


def test_received_trajectories_are_reordered_or_refused():
    arm = ("a", "b")
    path = trajectory_from_fields(["b", "a"], [0.5, 1.0], [[2.0, 1.0], [4.0, 3.0]], arm)
    assert path.joint_names == arm and path.positions.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    for names, times, positions, reason in [
        ([], [1.0], [[]], "no joint_names"),
        (["a", "a"], [1.0], [[1, 2]], "duplicate"),
        (["a", "c"], [1.0], [[1, 2]], "not the arm's joints"),
        (["a", "b"], [], [], "no points"),
        (["a", "b"], [1.0], [[1.0]], "1 positions for 2 joints"),
        (["a", "b"], [1.0], [[1.0, math.nan]], "non-finite"),
        (["a", "b"], [1.0, 1.0], [[1, 2], [1, 2]], "strictly increase"),
        (["a", "b"], [1.0, 2.0], [[1, 2]], "1 points for 2 times"),
    ]:
        with pytest.raises(MalformedTrajectoryError, match=reason):
            trajectory_from_fields(names, times, positions, arm)


# --- tasks --------------------------------------------------------------------------------------
def test_the_task_library_loads_and_expands(kin, profile):
    library = load_task_library(TASKS)
    assert {"pick_cube", "place_in_bowl", "stack_cube", "push_cube",
            "stretch_pick_cube"} <= set(library)
    stretch_kin = make_kinematics("stretch")
    for name, task in library.items():
        joints = 5 if name.startswith("stretch") else 7
        if joints == 5:
            rotation, align = default_grasp(stretch_kin)
            robot = SkillProfile(home=stretch.ARM_HOME, grasp_rotation=rotation,
                                 align_grasp_yaw=align, open_width=0.12)
        else:
            robot = profile
        assert expand(task, robot, joints)


def test_pick_expands_into_the_dataset_stages(profile):
    task = load_task_library(TASKS)["pick_cube"]
    steps = expand(task, profile, 7)
    assert [s.stage for s in steps] == ["home", "approach", "approach", "pre_grasp", "grasp",
                                        "lift"]
    assert [s.keyframe for s in steps if s.kind == GRIPPER] == ["gripper_open",
                                                                "gripper_close"]
    assert [s.skill_index for s in steps] == [0, 1, 1, 1, 2, 3]


@pytest.mark.parametrize("data, reason", [
    ({"name": "fly"}, "unknown skill"),
    ({"name": "lift", "params": {"speeed": 1}}, "unknown parameter"),
    ({"name": "lift", "params": {"height": "high"}}, "must be a number"),
    ({"name": "lift", "params": {"height": -0.1}}, ">= 0"),
    ({"name": "approach"}, "needs a target"),
    ({"name": "move_to_joint"}, "needs joint_positions"),
    ({"name": "move_to_pose"}, "needs a pose"),
    ({"name": "push", "target": "cube"}, "goal"),
    ({"name": "lift", "colour": "red"}, "unknown keys"),
    ({"name": "move_to_pose", "pose": {"position": [0, 0]}}, "3 finite"),
])
def test_bad_skills_are_refused_with_a_reason(data, reason):
    with pytest.raises(TaskError, match=reason):
        skill_from_dict(data)


def test_library_errors_name_the_task_and_skill(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  t:\n    skills:\n      - {name: home}\n      - {name: nope}\n")
    with pytest.raises(TaskError, match="task 't' skill 1: unknown skill"):
        load_task_library(path)
    path.write_text("tasks: []\n")
    with pytest.raises(TaskError, match="'tasks' mapping"):
        load_task_library(path)


def test_wrong_joint_count_is_an_invalid_task(profile):
    task = TaskSpec("t", "", (SkillSpec("move_to_joint", joint_positions=(0.0,) * 6),))
    with pytest.raises(TaskError, match="6 joint positions for an arm of 7"):
        expand(task, profile, 7)


def test_grasp_targets_turn_to_the_cube_faces_and_carry_offsets(kin, profile):
    step = expand(TaskSpec("t", "", (SkillSpec("approach", "cube"),)), profile, 7)[2]
    world = World()
    world.observe("cube", CUBE)
    target = resolve_target(step, world, profile, kin.fk(HOME))
    assert target[:3, 3] == pytest.approx(CUBE.position)
    yaw = tool_yaw(target[:3, :3], profile.grasp_rotation)
    assert math.remainder(yaw - CUBE.yaw, math.pi / 2) == pytest.approx(0.0, abs=1e-9)
    assert yaw == pytest.approx(face_yaw(CUBE.yaw, tool_yaw(kin.fk(HOME)[:3, :3],
                                                            profile.grasp_rotation)))
    world.add_offset("cube", [0.01, -0.02, 0.0], np.eye(3))
    shifted = resolve_target(step, world, profile, kin.fk(HOME))
    assert shifted[:3, 3] == pytest.approx(np.add(CUBE.position, [0.01, -0.02, 0.0]))
    world.observe("cube", CUBE)  # a fresh observation replaces the recovery offset
    assert resolve_target(step, world, profile, kin.fk(HOME))[:3, 3] == \
        pytest.approx(CUBE.position)


def test_push_sets_down_behind_the_object(kin, profile):
    task = TaskSpec("t", "", (SkillSpec("push", "cube", params={"goal": "goal"}),))
    steps = expand(task, profile, 7)
    assert [s.stage for s in steps] == ["approach", "approach", "approach", "push", "retreat"]
    assert steps[0].gripper == CLOSE
    world = World()
    world.observe("cube", Pose((0.5, 0.0, 0.02)))
    world.observe("goal", Pose((0.5, 0.1, 0.0)))
    start = resolve_target(steps[2], world, profile, kin.fk(HOME))
    end = resolve_target(steps[3], world, profile, kin.fk(HOME))
    assert start[:3, 3] == pytest.approx([0.5, -0.055, 0.02])
    assert end[:3, 3] == pytest.approx([0.5, 0.1 - 0.026, 0.02])


# --- recovery decisions ---------------------------------------------------------------------------
def _diagnosis(stamp_ns=100, **fields):
    values = dict(failed=True, failure_type=FailureType.TRANSLATION_X, confidence=0.9,
                  stage="pre_grasp", summary="missed the cube",
                  correction=Correction(CorrectionKind.DIRECTIVE,
                                        directive=Directive(dir_x=1, bins_x=2)),
                  episode_id="ep", stamp_ns=stamp_ns)
    values.update(fields)
    return Diagnosis(**values)


def test_a_window_that_began_before_the_last_correction_is_stale():
    """It ends after the correction but its first frames still show the undone failure."""
    straddling = _diagnosis(stamp_ns=1_500, window_start_ns=500,
                            failure_type=FailureType.FORCE_OPEN)
    after = dataclasses.replace(straddling, window_start_ns=1_200)
    common = dict(episode_id="ep", since_ns=0, enabled=True, threshold=0.5,
                  budget=RetryBudget(2))
    verdict = assess(straddling, window_since_ns=1_000, **common)
    assert verdict.action is Action.IGNORE and "window began" in verdict.reason
    assert assess(after, window_since_ns=1_000, **common).action is Action.TAKEOVER
    # Without a window start (a model that gives none) the stamp stands for it.
    assert assess(dataclasses.replace(straddling, window_start_ns=0), window_since_ns=1_000,
                  **common).action is Action.TAKEOVER


def test_a_stall_is_ignored_while_the_executor_drives_its_own_plan():
    stall = _diagnosis(failure_type=FailureType.STALL)
    planned = assess(stall, episode_id="ep", since_ns=50, enabled=True, threshold=0.5,
                     budget=RetryBudget(1), planned_motion=True)
    assert planned.action is Action.IGNORE and "not stalled" in planned.reason
    policy = assess(stall, episode_id="ep", since_ns=50, enabled=True, threshold=0.5,
                    budget=RetryBudget(1), planned_motion=False)
    assert policy.action is Action.TAKEOVER


def test_a_force_open_is_ignored_once_the_fingers_have_closed():
    force_open = _diagnosis(failure_type=FailureType.FORCE_OPEN)
    common = dict(episode_id="ep", since_ns=50, enabled=True, threshold=0.5)
    closed = assess(force_open, **common, budget=RetryBudget(1), finger_gap=0.04)
    assert closed.action is Action.IGNORE and "did close" in closed.reason
    still_open = assess(force_open, **common, budget=RetryBudget(1), finger_gap=0.002)
    assert still_open.action is Action.TAKEOVER
    unknown = assess(force_open, **common, budget=RetryBudget(1), finger_gap=None)
    assert unknown.action is Action.TAKEOVER
    assert closed.failure_type is still_open.failure_type is unknown.failure_type is None


def test_a_force_open_with_closed_fingers_and_the_object_left_behind_is_a_weak_close():
    """The hand closed but held nothing: the regrasp of a weak close, not an ignored verdict."""
    force_open = _diagnosis(failure_type=FailureType.FORCE_OPEN)
    verdict = assess(force_open, episode_id="ep", since_ns=50, enabled=True, threshold=0.5,
                     budget=RetryBudget(1), finger_gap=0.04, object_left=True)
    assert verdict.action is Action.TAKEOVER
    assert verdict.failure_type is FailureType.WEAK_CLOSE
    assert "read as weak_close" in verdict.reason and "40 mm" in verdict.reason
    # Other failure types are taken as the model named them.
    slip = assess(_diagnosis(failure_type=FailureType.SLIP), episode_id="ep", since_ns=50,
                  enabled=True, threshold=0.5, budget=RetryBudget(1), finger_gap=0.04,
                  object_left=True)
    assert slip.action is Action.TAKEOVER and slip.failure_type is None


@pytest.mark.parametrize("fields, kwargs, action, reason", [
    ({}, {}, Action.TAKEOVER, "taking over for translation_x at pre_grasp"),
    ({"episode_id": "other"}, {}, Action.IGNORE, "episode 'other'"),
    ({"stamp_ns": 10}, {}, Action.IGNORE, "stale"),
    ({"failed": False, "failure_type": FailureType.NONE, "correction": Correction()}, {},
     Action.IGNORE, "no failure"),
    ({"confidence": 0.2}, {}, Action.IGNORE, "below the confidence threshold"),
    ({}, {"enabled": False}, Action.IGNORE, "disabled"),
    ({"correction": Correction(CorrectionKind.NEEDS_HELP)}, {}, Action.NEEDS_HELP,
     "asks for help"),
    ({}, {"spent": True}, Action.NEEDS_HELP, "retry budget of 1 recoveries is spent"),
    ({"failure_type": FailureType.UNKNOWN, "failed": False, "error": "bad json"}, {},
     Action.IGNORE, "could not parse"),
])
def test_assess_decides_with_a_reason(fields, kwargs, action, reason):
    budget = RetryBudget(1)
    if kwargs.pop("spent", False):
        budget.consume()
    verdict = assess(_diagnosis(**fields), episode_id="ep", since_ns=50,
                     enabled=kwargs.get("enabled", True), threshold=0.5, budget=budget)
    assert verdict.action is action and reason in verdict.reason


def test_the_retry_budget_counts_down():
    budget = RetryBudget(2)
    budget.consume()
    budget.consume()
    assert budget.remaining == 0
    with pytest.raises(ValueError):
        budget.consume()
    with pytest.raises(ValueError):
        RecoveryConfig(confidence_threshold=2.0)


def test_resume_points(profile):
    task = load_task_library(TASKS)["place_in_bowl"]
    steps = expand(task, profile, 7)
    stages = [s.stage for s in steps]
    grasp, lift = stages.index("grasp"), stages.index("lift")
    pre_grasp, approach = stages.index("pre_grasp"), stages.index("approach")
    transport = stages.index("transport")
    # A miss diagnosed at pre_grasp while the grasp (closed on nothing) holds: open, re-descend.
    point = resume_point(steps, grasp, "pre_grasp", FailureType.TRANSLATION_X, True)
    assert (point.index, point.reopen, point.refresh) == (pre_grasp, True, False)
    # A gripper fault found while lifting: re-approach and regrasp.
    point = resume_point(steps, lift, "grasp", FailureType.WEAK_CLOSE, True)
    assert (point.index, point.reopen) == (pre_grasp, True)
    # The cube slipped during transport: go back to it where it now lies.
    point = resume_point(steps, transport, "transport", FailureType.SLIP, True)
    assert (point.index, point.reopen, point.refresh) == (approach, True, True)
    # A lift that went wrong: lift again; an unknown stage: the current one.
    assert resume_point(steps, lift, "lift", FailureType.TRANSLATION_Z, True).index == lift
    assert resume_point(steps, transport, "nowhere", FailureType.OTHER, True).index == transport


# --- the runner on a fake robot -------------------------------------------------------------------
class FakeMotion:
    def __init__(self, robot, positions=None, finish=None, outcome=SUCCEEDED):
        self.robot, self.positions, self.finish, self._outcome = robot, positions, finish, outcome
        self.index, self.finished = 0, False

    def done(self):
        if self.finished:
            return True
        if self.positions is not None and self.index < len(self.positions):
            self.robot.q = self.positions[self.index].copy()
            self.index += self.robot.points_per_poll
            return False
        if self.positions is not None:
            self.robot.q = self.positions[-1].copy()
        if self.finish:
            self.finish()
        self.finished = True
        return True

    def outcome(self):
        return self._outcome


class FakeRobot:
    """A kinematic FR3: trajectories play a few points per poll; grasps close as scripted."""

    robot = "fr3"
    joint_names = fr3.ARM_JOINTS

    def __init__(self):
        self.q, self.width = HOME.copy(), 0.08
        self.calls, self.grasp_widths, self.follow_outcomes = [], [], []
        self.prepare_outcome, self.active, self.points_per_poll = SUCCEEDED, None, 4
        self.stop_outcome = SUCCEEDED
        self.joint_states = True

    def prepare(self, timeout):
        self.calls.append(("prepare",))
        return self.prepare_outcome

    def joint_positions(self):
        return self.q.copy() if self.joint_states else None

    def gripper_width(self):
        return self.width if self.joint_states else None

    def follow(self, path):
        self.calls.append(("follow", path))
        outcome = self.follow_outcomes.pop(0) if self.follow_outcomes else SUCCEEDED
        self.active = FakeMotion(self, path.positions, outcome=outcome)
        return self.active

    def gripper(self, goal):
        self.calls.append(("gripper", goal))
        if goal.kind == OPEN:
            return FakeMotion(self, finish=lambda: setattr(self, "width", goal.width))
        width = self.grasp_widths.pop(0) if self.grasp_widths else goal.width
        ok = goal.kind == CLOSE or abs(width - goal.width) <= goal.epsilon
        outcome = SUCCEEDED if ok else Outcome(MotionStatus.ABORTED, f"width {width:.3f}")
        return FakeMotion(self, finish=lambda: setattr(self, "width", width), outcome=outcome)

    def stop(self):
        self.calls.append(("stop",))
        if not self.stop_outcome.ok:  # the controller never confirmed: the arm runs on
            return self.stop_outcome
        if self.active is not None and not self.active.finished:
            self.active.finished = True
            self.active._outcome = Outcome(MotionStatus.CANCELED, "stopped")
        return SUCCEEDED

    def recover(self):
        self.calls.append(("recover",))
        return SUCCEEDED

    def follows(self):
        return [c[1] for c in self.calls if c[0] == "follow"]


class Clock:
    def __init__(self, step_ns=1_000_000):
        self.ns, self.step_ns = 1_000_000_000, step_ns

    def __call__(self):
        self.ns += self.step_ns
        return self.ns


class Harness:
    def __init__(self, kin, profile, poses=None, gate=None, **config):
        self.robot = FakeRobot()
        self.clock = Clock()
        self.statuses, self.feedback, self.hooks = [], [], []
        self.pose_requests = []  # (name, after_ns) the runner asked for
        recovery = RecoveryConfig(diagnosis_wait=config.pop("diagnosis_wait", 2.0),
                                  trajectory_wait=0.0,
                                  max_recoveries=config.pop("max_recoveries", 2),
                                  interrupt_confirmations=config.pop("confirmations", 1),
                                  regrasp_left_behind=config.pop("regrasp_left_behind", True))
        self.poses = {"cube": CUBE} if poses is None else poses
        # These poses stay where they are, a grasped cube too: no held-object check unless asked.
        config.setdefault("held_max_distance", 0.0)
        self.runner = TaskRunner(
            self.robot, kin, gate or _gate(kin),
            ExecutorConfig(profile, recovery=recovery, poll_period=0.001, **config),
            publish_status=self._status, publish_feedback=self.feedback.append,
            object_pose=self._object_pose, now_ns=self.clock, sleep=lambda s: None)

    def _object_pose(self, name, after_ns, timeout):
        self.pose_requests.append((name, after_ns))
        if name not in self.poses:
            raise ObjectPoseError(f"no pose of object {name!r} stamped after the request "
                                  f"arrived within {timeout:.1f} s (none has arrived)")
        return self.poses[name]

    def _status(self, status):
        self.statuses.append(status)
        for hook in list(self.hooks):
            if hook(status):
                self.hooks.remove(hook)

    def when(self, predicate, action):
        """Run ``action`` once, at the first status that satisfies ``predicate``."""
        def hook(status):
            if predicate(status):
                action()
                return True
            return False
        self.hooks.append(hook)

    def events(self):
        return [s.event for i, s in enumerate(self.statuses)
                if s.event and (i == 0 or s.event_stamp_ns != self.statuses[i - 1].event_stamp_ns)]

    def messages(self):
        return "\n".join(s.message for s in self.statuses)


PICK = TaskSpec("pick", "pick up the cube", (
    SkillSpec("home"), SkillSpec("approach", "cube"),
    SkillSpec("grasp", "cube", params={"width": 0.04}), SkillSpec("lift")))


def test_a_nominal_task_succeeds_and_reports_its_keyframes(kin, profile):
    h = Harness(kin, profile)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert result.skills_completed == 4 and result.recoveries_attempted == 0
    assert h.events() == ["skill_start", "skill_end", "skill_start", "gripper_open", "skill_end",
                          "skill_start", "gripper_close", "skill_end", "skill_start",
                          "skill_end"]
    assert h.statuses[-1].state is State.SUCCEEDED
    assert {s.stage for s in h.statuses} >= {"approach", "pre_grasp", "grasp", "lift"}
    progress = [f.progress for f in h.feedback]
    assert progress == sorted(progress) and progress[-1] > 0.8
    tcp = kin.fk(h.robot.q)[:3, 3]
    assert tcp == pytest.approx(np.add(CUBE.position, [0, 0, 0.10]), abs=2e-3)
    assert h.runner.status.step == len([c for c in h.robot.calls if c[0] != "prepare"])


def _injected_miss(h, kin, correction_stamp_offset=0, **diagnosis_fields):
    """The cube is 3 cm off where the executor believes: the grasp closes on nothing."""
    h.robot.grasp_widths = [0.0]
    fields = dict(failure_type=FailureType.TRANSLATION_Y, stage="pre_grasp",
                  correction=Correction(CorrectionKind.EE_DELTA, (0.0, 0.03, 0, 0, 0, 0, 0)))
    fields.update(diagnosis_fields)
    h.when(lambda s: "holding up to" in s.message, lambda: h.runner.offer_diagnosis(
        _diagnosis(stamp_ns=h.clock() + correction_stamp_offset, **fields)))


def test_a_missed_grasp_is_corrected_and_the_task_completes(kin, profile):
    h = Harness(kin, profile)
    _injected_miss(h, kin)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert (result.recoveries_attempted, result.recoveries_succeeded) == (1, 1)
    events = h.events()
    assert events.index("recovery_start") < events.index("recovery_end")
    grippers = [c[1].kind for c in h.robot.calls if c[0] == "gripper"]
    assert grippers == [OPEN, "grasp", OPEN, "grasp"]  # the regrasp opens first
    # The rest of the task follows the corrected object: lifted 3 cm further along y.
    tcp = kin.fk(h.robot.q)[:3, 3]
    assert tcp == pytest.approx(np.add(CUBE.position, [0, 0.03, 0.10]), abs=2e-3)
    assert any(s.state is State.RECOVERING for s in h.statuses)


def test_the_monitors_trajectory_is_used_when_it_passes_the_gate(kin, profile):
    h = Harness(kin, profile)
    h.robot.grasp_widths = [0.0]

    def offer():
        stamp = h.clock()
        plan = plan_correction(kin, h.robot.q, Correction(CorrectionKind.EE_DELTA,
                                                          (0.0, 0.03, 0, 0, 0, 0, 0)), 0.01)
        h.runner.offer_trajectory(stamp, list(reversed(plan.joint_names)),
                                  plan.times_from_start, plan.positions[:, ::-1])
        h.runner.offer_diagnosis(_diagnosis(
            stamp_ns=stamp, failure_type=FailureType.TRANSLATION_Y,
            correction=Correction(CorrectionKind.EE_DELTA, (0.0, 0.03, 0, 0, 0, 0, 0))))
    h.when(lambda s: "holding up to" in s.message, offer)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert "monitor trajectory" in h.messages()


def test_a_malformed_monitor_trajectory_is_refused_and_the_own_plan_runs(kin, profile):
    h = Harness(kin, profile)
    h.robot.grasp_widths = [0.0]

    def offer():
        stamp = h.clock()
        h.runner.offer_trajectory(stamp, ["fr3_joint1"], [0.5], [[0.0]])
        h.runner.offer_diagnosis(_diagnosis(
            stamp_ns=stamp, failure_type=FailureType.TRANSLATION_Y,
            correction=Correction(CorrectionKind.EE_DELTA, (0.0, 0.03, 0, 0, 0, 0, 0))))
    h.when(lambda s: "holding up to" in s.message, offer)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert "rejected the monitor's correction trajectory: joint_names" in h.messages()


def test_an_unsafe_correction_is_rejected_and_nothing_moves(kin, profile):
    h = Harness(kin, profile)
    _injected_miss(h, kin, correction=Correction(CorrectionKind.EE_DELTA,
                                                 (0.0, 0.0, -0.05, 0, 0, 0, 0)))
    at_takeover = []
    h.when(lambda s: s.event == "recovery_start",
           lambda: at_takeover.append((len(h.robot.calls), h.robot.q.copy(), h.robot.width)))
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SAFETY_REJECTED
    assert "table top" in result.message and "needs help" in result.message
    assert h.statuses[-1].state is State.NEEDS_HELP
    calls, q, width = at_takeover[0]
    # After the takeover only a stop reached the robot: no trajectory, no gripper command.
    assert [c[0] for c in h.robot.calls[calls:]] == ["stop"]
    assert np.allclose(h.robot.q, q) and h.robot.width == width


def test_a_spent_budget_needs_help(kin, profile):
    h = Harness(kin, profile, max_recoveries=1)
    h.robot.grasp_widths = [0.0, 0.0]
    offered = []

    def offer():
        offered.append(True)
        h.runner.offer_diagnosis(_diagnosis(stamp_ns=h.clock(), stage="grasp",
                                            failure_type=FailureType.WEAK_CLOSE,
                                            correction=Correction(
                                                CorrectionKind.DIRECTIVE, directive=Directive(
                                                    gripper=GripperCommand.CLOSE, keyframe=3))))
    h.when(lambda s: "holding up to" in s.message, offer)
    h.when(lambda s: s.event == "recovery_end",
           lambda: h.when(lambda s: "holding up to" in s.message, offer))
    result = h.runner.run(Request(PICK, "ep"))
    assert len(offered) == 2
    assert result.code is ResultCode.NEEDS_HELP and "retry budget of 1" in result.message
    assert (result.recoveries_attempted, result.recoveries_succeeded) == (1, 0)
    forces = [c[1].force for c in h.robot.calls if c[0] == "gripper" and c[1].kind == "grasp"]
    assert forces == pytest.approx([20.0, 30.0])  # the regrasp after weak_close squeezes harder


def test_stale_and_unconvincing_diagnoses_are_ignored(kin, profile):
    h = Harness(kin, profile)
    h.when(lambda s: s.skill == "lift", lambda: (
        h.runner.offer_diagnosis(_diagnosis(stamp_ns=5)),
        h.runner.offer_diagnosis(_diagnosis(stamp_ns=h.clock(), confidence=0.1)),
        h.runner.offer_diagnosis(_diagnosis(stamp_ns=h.clock(), episode_id="old"))))
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED and result.recoveries_attempted == 0
    text = h.messages()
    assert "stale" in text and "below the confidence threshold" in text and "'old'" in text


def test_a_window_ending_just_before_the_skill_counts_one_before_a_recovery_does_not(
        kin, profile):
    h = Harness(kin, profile)
    h.clock.step_ns = 100_000_000  # every clock reading 0.1 s later: a slow-moving episode
    weak = dict(stage="grasp", failure_type=FailureType.WEAK_CLOSE, correction=Correction(
        CorrectionKind.DIRECTIVE, directive=Directive(gripper=GripperCommand.CLOSE, keyframe=3)))
    # The monitor's window closed 0.5 s before lift began (it waited for the close to show).
    h.when(lambda s: s.skill == "lift" and s.event == "skill_start",
           lambda: h.runner.offer_diagnosis(_diagnosis(
               stamp_ns=h.statuses[-1].event_stamp_ns - 500_000_000, **weak)))
    # A window from before the correction finished is about the old situation: stale.
    h.when(lambda s: s.event == "recovery_end",
           lambda: h.runner.offer_diagnosis(_diagnosis(
               stamp_ns=h.statuses[-1].event_stamp_ns - 150_000_000, **weak)))
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert (result.recoveries_attempted, result.recoveries_succeeded) == (1, 1)
    assert "ignored a stale diagnosis (weak_close at grasp" in h.messages()


def test_a_diagnosis_mid_motion_stops_it_and_takes_over(kin, profile):
    h = Harness(kin, profile)
    h.robot.points_per_poll = 1
    h.when(lambda s: s.stage == "pre_grasp", lambda: h.runner.offer_diagnosis(_diagnosis(
        stamp_ns=h.clock(), stage="pre_grasp", failure_type=FailureType.TRANSLATION_X,
        correction=Correction(CorrectionKind.EE_DELTA, (0.02, 0.0, 0, 0, 0, 0, 0)))))
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert ("stop",) in h.robot.calls and result.recoveries_succeeded == 1
    tcp = kin.fk(h.robot.q)[:3, 3]
    assert tcp == pytest.approx(np.add(CUBE.position, [0.02, 0, 0.10]), abs=2e-3)


def _miss(h, **fields):
    return _diagnosis(stamp_ns=h.clock(), stage="pre_grasp",
                      correction=Correction(CorrectionKind.EE_DELTA, (0.02, 0.0, 0, 0, 0, 0, 0)),
                      **fields)


@pytest.mark.parametrize("offered, recoveries", [
    ([FailureType.TRANSLATION_X], 0),  # one window: a false alarm costs nothing
    ([FailureType.TRANSLATION_X, FailureType.TRANSLATION_X], 1),  # confirmed: take over
    ([FailureType.TRANSLATION_X, FailureType.TRANSLATION_Y], 0),  # they disagree
    ([FailureType.TRANSLATION_X, FailureType.NONE, FailureType.TRANSLATION_X], 0),
])
def test_an_interrupt_needs_agreeing_windows_in_a_row(kin, profile, offered, recoveries):
    h = Harness(kin, profile, confirmations=2)
    h.robot.points_per_poll = 1

    def offer():
        for failure_type in offered:
            h.runner.offer_diagnosis(_miss(h, failure_type=failure_type,
                                           failed=failure_type is not FailureType.NONE))
    h.when(lambda s: s.stage == "pre_grasp", offer)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert result.recoveries_attempted == recoveries
    assert (("stop",) in h.robot.calls) is bool(recoveries)
    if not recoveries:
        assert any("window 1 of 2 needed to interrupt" in s.message for s in h.statuses)


def test_an_unconfirmed_diagnosis_is_enough_once_the_executor_sees_the_failure(kin, profile):
    """Named during the descent, the miss shows in the grasp: no second window is waited for."""
    h = Harness(kin, profile, confirmations=2, diagnosis_wait=30.0)
    h.robot.points_per_poll = 1
    h.robot.grasp_widths = [0.0]  # the grasp closes on nothing
    h.when(lambda s: s.stage == "pre_grasp", lambda: h.runner.offer_diagnosis(_miss(h)))
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert (result.recoveries_attempted, result.recoveries_succeeded) == (1, 1)
    held = [s for s in h.statuses if "holding up to" in s.message]
    assert held and h.clock() - held[0].stamp_ns < 1e9  # acted at once, not after 30 s


def test_a_failure_named_once_then_not_still_counts_when_the_executor_sees_it(kin, profile):
    """The demo's weak close: named at the keyframe, then windows of a lift that looks fine.

    When the lift ends with the cube left behind, that single verdict is what is acted on,
    though a 'none' window came in between (it breaks the streak, not the record).
    """
    h = Harness(kin, profile, confirmations=2, held_max_distance=0.05, diagnosis_wait=30.0)
    h.robot.points_per_poll = 1

    def named_then_not():
        h.runner.offer_diagnosis(_diagnosis(stamp_ns=h.clock(), stage="grasp",
                                            failure_type=FailureType.WEAK_CLOSE))
        h.runner.offer_diagnosis(_diagnosis(stamp_ns=h.clock(), stage="lift", failed=False,
                                            failure_type=FailureType.NONE))

    _only_a_harder_grasp_holds(h, kin)
    h.when(lambda s: s.skill == "lift" and s.event == "skill_start", named_then_not)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert (result.recoveries_attempted, result.recoveries_succeeded) == (1, 1)
    assert "window 1 of 2 needed" in h.messages()
    forces = [c[1].force for c in h.robot.calls if c[0] == "gripper" and c[1].kind == "grasp"]
    assert forces == pytest.approx([20.0, 30.0])
    held = [s for s in h.statuses if "holding up to" in s.message]
    assert held and h.clock() - held[0].stamp_ns < 1e9  # acted at once, not after 30 s


def test_cancel_stops_the_robot(kin, profile):
    h = Harness(kin, profile)
    h.robot.points_per_poll = 1
    cancel = []
    h.when(lambda s: s.stage == "approach" and s.event == "gripper_open",
           lambda: cancel.append(True))
    result = h.runner.run(Request(PICK, "ep"), cancelled=lambda: bool(cancel))
    assert result.code is ResultCode.CANCELED
    assert h.robot.calls[-1] == ("stop",) and h.statuses[-1].state is State.CANCELED


def test_a_stop_that_is_not_confirmed_is_a_controller_error(kin, profile):
    """No correction is planned from an arm that may still be moving; a cancel is not 'done'."""
    unconfirmed = Outcome(MotionStatus.TIMED_OUT, "1 goal(s) did not confirm the cancel")
    h = Harness(kin, profile)
    h.robot.points_per_poll = 1
    h.robot.stop_outcome = unconfirmed
    h.when(lambda s: s.stage == "pre_grasp", lambda: h.runner.offer_diagnosis(_diagnosis(
        stamp_ns=h.clock(), stage="pre_grasp", failure_type=FailureType.TRANSLATION_X,
        correction=Correction(CorrectionKind.EE_DELTA, (0.02, 0.0, 0, 0, 0, 0, 0)))))
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.CONTROLLER_ERROR, result.message
    assert "stopping the robot failed" in result.message and "did not confirm" in result.message
    assert h.robot.calls[-1] == ("stop",) and result.recoveries_attempted == 0
    assert "recovery_start" not in h.events()

    h = Harness(kin, profile)
    h.robot.points_per_poll = 1
    h.robot.stop_outcome = unconfirmed
    cancel = []
    h.when(lambda s: s.stage == "approach" and s.event == "gripper_open",
           lambda: cancel.append(True))
    result = h.runner.run(Request(PICK, "ep"), cancelled=lambda: bool(cancel))
    assert result.code is ResultCode.CONTROLLER_ERROR
    assert "canceled by the client: stopping the robot failed" in result.message
    assert h.statuses[-1].state is State.FAILED


def test_gripper_commands_pass_the_gate(kin, profile):
    # A grasp force over the hand's limit is refused before the gripper gets it.
    h = Harness(kin, profile)
    task = TaskSpec("t", "", (SkillSpec("grasp", params={"width": 0.04, "force": 100.0}),))
    result = h.runner.run(Request(task, "ep"))
    assert result.code is ResultCode.SAFETY_REJECTED
    assert "gripper force 100.0 N exceeds the hand's 70.0 N" in result.message
    assert not [c for c in h.robot.calls if c[0] == "gripper"]
    # A squeeze past closed (the Stretch's grasp) needs the gate's explicit allowance.
    squeezing = dataclasses.replace(profile, squeeze_width=-0.05)
    grasp = TaskSpec("t", "", (SkillSpec("grasp", params={"width": 0.04}),))
    h = Harness(kin, squeezing)
    result = h.runner.run(Request(grasp, "ep"))
    assert result.code is ResultCode.SAFETY_REJECTED
    assert "gripper width -0.0500 m outside [0.0000, 0.0800] m" in result.message
    h = Harness(kin, squeezing, gate=_gate(kin, squeeze_width=-0.05))
    result = h.runner.run(Request(grasp, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    (goal,) = [c[1] for c in h.robot.calls if c[0] == "gripper"]
    assert (goal.width, goal.command_width) == (0.04, -0.05)


def test_regrasps_after_weak_closes_squeeze_harder_up_to_the_hand_limit(kin, profile):
    h = Harness(kin, profile, max_recoveries=3,
                gate=dataclasses.replace(_gate(kin), max_grasp_force=40.0))
    h.robot.grasp_widths = [0.0, 0.0, 0.0, 0.04]

    def offer():
        h.runner.offer_diagnosis(_diagnosis(stamp_ns=h.clock(), stage="grasp",
                                            failure_type=FailureType.WEAK_CLOSE,
                                            correction=Correction(
                                                CorrectionKind.DIRECTIVE, directive=Directive(
                                                    gripper=GripperCommand.CLOSE, keyframe=3))))
        h.when(lambda s: "holding up to" in s.message, offer)
    h.when(lambda s: "holding up to" in s.message, offer)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    forces = [c[1].force for c in h.robot.calls if c[0] == "gripper" and c[1].kind == "grasp"]
    assert forces == pytest.approx([20.0, 30.0, 40.0, 40.0])
    assert "regrasp force 45.0 N capped at the hand's 40.0 N" in h.messages()


def test_a_grasped_object_left_behind_fails_the_move_that_should_have_carried_it(kin, profile):
    h = Harness(kin, profile, held_max_distance=0.05)  # the cube's pose never leaves the table
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is not ResultCode.SUCCEEDED
    assert "cube is" in result.message and "did not move with it" in result.message


def _only_a_harder_grasp_holds(h, kin):
    """Perception of a weak close: the cube stays on the table until a regrasp squeezes harder."""
    on_table = h.runner._object_pose

    def perceived(name, after_ns, timeout):
        forces = [c[1].force for c in h.robot.calls if c[0] == "gripper"
                  and c[1].kind == "grasp"]
        if h.runner.world.held == name and forces[-1] > forces[0]:
            return Pose(tuple(kin.fk(h.robot.q)[:3, 3]))
        return on_table(name, after_ns, timeout)

    h.runner._object_pose = perceived


def test_a_cube_left_behind_with_no_diagnosis_is_regrasped_harder(kin, profile):
    """The executor's own evidence (closed hand, cube left behind) is enough for a regrasp."""
    h = Harness(kin, profile, held_max_distance=0.05, diagnosis_wait=0.2)
    _only_a_harder_grasp_holds(h, kin)
    asked = []  # no monitor saw this diagnosis: waiting for its trajectory would only cost time
    h.runner._monitor_trajectory = lambda stamp_ns, wait: asked.append(stamp_ns)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert (result.recoveries_attempted, result.recoveries_succeeded) == (1, 1)
    forces = [c[1].force for c in h.robot.calls if c[0] == "gripper" and c[1].kind == "grasp"]
    assert forces == pytest.approx([20.0, 30.0])
    assert "taking over for weak_close on the executor's own evidence" in h.messages()
    assert asked == []

    h = Harness(kin, profile, held_max_distance=0.05, diagnosis_wait=0.2,
                regrasp_left_behind=False)
    _only_a_harder_grasp_holds(h, kin)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.FAILED and "no diagnosis within" in result.message
    assert result.recoveries_attempted == 0


def test_a_force_open_verdict_on_a_cube_left_behind_regrasps_harder(kin, profile):
    """The demo's weak_close, diagnosed force_open: the executor regrasps with more force."""
    h = Harness(kin, profile, held_max_distance=0.05)

    _only_a_harder_grasp_holds(h, kin)
    h.when(lambda s: "did not move with it" in s.message,
           lambda: h.runner.offer_diagnosis(_diagnosis(
               stamp_ns=h.clock(), stage="lift", failure_type=FailureType.FORCE_OPEN,
               correction=Correction(CorrectionKind.DIRECTIVE, directive=Directive(
                   gripper=GripperCommand.CLOSE, keyframe=3)))))
    asked = []  # a monitor's diagnosis: its trajectory may come, so the executor asks for it
    h.runner._monitor_trajectory = lambda stamp_ns, wait: asked.append(stamp_ns)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    forces = [c[1].force for c in h.robot.calls if c[0] == "gripper" and c[1].kind == "grasp"]
    assert forces == pytest.approx([20.0, 30.0])
    assert "read as weak_close" in h.messages()
    assert h.runner.recoveries_attempted == 1
    assert len(asked) == 1


def test_a_grasped_object_that_rides_with_the_gripper_passes_the_check(kin, profile):
    h = Harness(kin, profile, held_max_distance=0.05)
    on_table, in_hand = h.runner._object_pose, []

    def perceived(name, after_ns, timeout):
        if h.runner.world.held == name:  # in the hand: where the tool point is
            in_hand.append(name)
            return Pose(tuple(kin.fk(h.robot.q)[:3, 3]))
        return on_table(name, after_ns, timeout)

    h.runner._object_pose = perceived
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert in_hand == ["cube"]  # asked once: after the lift, the one move made holding it


def test_a_lost_object_is_looked_for_again_with_a_pose_newer_than_the_recovery(kin, profile):
    h = Harness(kin, profile)
    moved = Pose((0.52, 0.03, 0.02), CUBE.quaternion)

    def slip():
        h.poses["cube"] = moved  # where perception sees the cube after it fell
        h.runner.offer_diagnosis(_diagnosis(
            stamp_ns=h.clock(), stage="lift", failure_type=FailureType.SLIP,
            correction=Correction(CorrectionKind.EE_DELTA, (0.0, 0.0, 0.02, 0, 0, 0, 0))))
    h.when(lambda s: s.skill == "lift" and s.event == "skill_start", slip)
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert result.recoveries_succeeded == 1
    recovery = next(s.event_stamp_ns for s in h.statuses if s.event == "recovery_start")
    first, refresh = h.pose_requests
    assert first[0] == refresh[0] == "cube"
    assert first[1] < recovery < refresh[1]  # only a pose from after the slip counts
    tcp = kin.fk(h.robot.q)[:3, 3]
    assert tcp == pytest.approx(np.add(moved.position, [0, 0, 0.10]), abs=2e-3)


def test_the_pose_board_waits_for_a_pose_newer_than_the_request():
    board = PoseBoard()
    with pytest.raises(ObjectPoseError, match="none has arrived"):
        board.fresh("cube", 0, 0.01)
    board.offer("cube", 1_000_000_000, CUBE)
    with pytest.raises(ObjectPoseError, match=r"stamped 2\.00 s before the request"):
        board.fresh("cube", 3_000_000_000, 0.01)
    moved = Pose((0.4, 0.0, 0.02))
    timer = threading.Timer(0.05, board.offer, ("cube", 3_500_000_000, moved))
    timer.start()
    try:
        assert board.fresh("cube", 3_000_000_000, 60.0) == moved  # woken by the new pose
    finally:
        timer.cancel()
    assert board.fresh("cube", 3_500_000_000, 0.0) == moved
    board.offer("cube", 4_000_000_000, "objects/cube/pose is in 'map'")
    with pytest.raises(ObjectPoseError, match="unusable: objects/cube/pose is in 'map'"):
        board.fresh("cube", 4_000_000_000, 0.01)


def test_controller_problems_map_to_result_codes(kin, profile):
    h = Harness(kin, profile)
    h.robot.prepare_outcome = Outcome(MotionStatus.UNAVAILABLE,
                                      "action server /fr3_arm_controller/x not available")
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.CONTROLLER_ERROR and "not available" in result.message
    h = Harness(kin, profile, joint_state_timeout=0.05)
    h.robot.joint_states = False
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.CONTROLLER_ERROR and "no joint states" in result.message
    h = Harness(kin, profile, diagnosis_wait=0.0)
    h.robot.follow_outcomes = [Outcome(MotionStatus.ABORTED, "PATH_TOLERANCE_VIOLATED", -4)]
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.CONTROLLER_ERROR
    assert "PATH_TOLERANCE_VIOLATED" in result.message and "holding" in result.message
    assert ("recover",) in h.robot.calls
    h = Harness(kin, profile, poses={})
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.FAILED and "no pose of object 'cube' stamped after" in \
        result.message
    bad = TaskSpec("t", "", (SkillSpec("move_to_joint", joint_positions=(0.0,) * 3),))
    assert h.runner.run(Request(bad, "ep")).code is ResultCode.INVALID_GOAL


def test_a_grasp_failure_without_a_diagnosis_fails_the_task(kin, profile):
    h = Harness(kin, profile, diagnosis_wait=0.05)
    h.robot.grasp_widths = [0.0]
    result = h.runner.run(Request(PICK, "ep"))
    assert result.code is ResultCode.FAILED
    assert "the grasp failed" in result.message and "no diagnosis within" in result.message


def test_policy_deltas_are_executed_after_the_gate(kin, profile):
    h = Harness(kin, profile)
    task = TaskSpec("vla", "follow the policy", (SkillSpec("policy",
                                                           params={"max_steps": 4}),))
    start = kin.fk(HOME)[:3, 3]

    def send():
        for delta in ([0, 0, 0.02], [0, 0, -0.5], [0.02, 0, 0], [0, 0, 0.0]):
            h.runner.offer_policy_command([*delta, 0, 0, 0, -0.02 if delta[0] else 0.0],
                                          h.clock())
    h.when(lambda s: s.event == "skill_start", send)
    result = h.runner.run(Request(task, "ep"))
    assert result.code is ResultCode.SUCCEEDED, result.message
    assert kin.fk(h.robot.q)[:3, 3] == pytest.approx(start + [0.02, 0, 0.02], abs=2e-3)
    assert "policy command rejected by the safety gate" in h.messages()
    assert h.robot.width == pytest.approx(0.06)
    assert "gripper_close" in h.events()


# --- robot helpers and settings ------------------------------------------------------------------
def test_gripper_width_from_joint_states():
    assert fr3.gripper_width({"fr3_finger_joint1": 0.01, "fr3_finger_joint2": 0.015,
                              "fr3_joint1": 0.3}) == pytest.approx(0.025)
    assert fr3.gripper_width({"fr3_finger_joint1": 0.01}) is None
    # The Stretch: what stretch_driver publishes for a 5 cm aperture reads back as 5 cm.
    pose = dict(stretch.HOME, **dict.fromkeys(stretch.FINGER_JOINTS,
                                              stretch.aperture_to_finger(0.05)))
    names, values = stretch.joint_state(pose)
    assert stretch.gripper_width(dict(zip(names, values, strict=True))) == pytest.approx(0.05)
    assert stretch.gripper_width({stretch.LIFT: 0.5}) is None
    assert stretch.stall_grasp_failure(0.041, 0.04, 0.02) is None
    assert "aperture -0.0300 m outside 0.0400 +- 0.0200 m" in stretch.stall_grasp_failure(
        -0.03, 0.04, 0.02)


def test_gripper_commands_go_where_the_profile_says(profile):
    assert profile.command_width(OPEN, 0.06) == 0.06
    assert profile.command_width(GRASP, 0.04) == 0.04  # the FR3's Grasp: the object's width
    assert profile.command_width(CLOSE, 0.04) == 0.0
    stretchy = dataclasses.replace(profile, squeeze_width=stretch.GRIPPER_SQUEEZE_APERTURE)
    assert stretchy.command_width(GRASP, 0.04) == stretchy.command_width(CLOSE, 0.0) == -0.05
    assert stretchy.command_width(OPEN, 0.1) == 0.1
    with pytest.raises(ValueError):
        dataclasses.replace(profile, squeeze_width=math.nan)


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_yaml_restates_the_declared_defaults():
    """One source of truth: the dataclass defaults; the shipped YAML must say the same."""
    path = Path(__file__).resolve().parents[1] / "config" / "skill_executor.yaml"
    yaml_values = dict(_flatten(yaml.safe_load(path.read_text())["/**/skill_executor"]
                                ["ros__parameters"]))
    assert yaml_values.pop("robot") in ROBOTS
    for robot in ROBOTS:
        others = tuple(f"{r}." for r in ROBOTS if r != robot)
        expected = {k: v for k, v in yaml_values.items() if not k.startswith(others)}
        defaults = parameter_defaults(robot)
        assert set(defaults) == set(expected), set(defaults) ^ set(expected)
        for name, value in defaults.items():
            assert value == expected[name] and type(value) is type(expected[name]), (
                name, value, expected[name])


def test_settings_build_the_gate_and_the_profile_per_robot(kin):
    fr3_settings = executor_settings("fr3", parameter_defaults("fr3"), kin)
    gate = fr3_settings.gate
    assert gate.max_grasp_force == fr3.MAX_GRASP_FORCE and gate.squeeze_width is None
    assert gate.gripper_range == (0.0, fr3.MAX_GRIPPER_WIDTH) and gate.margin == 0.02
    assert fr3_settings.backend.gripper_nodes == ("franka_gripper", "fr3_gripper")
    assert fr3_settings.config.motion.speed == fr3_settings.config.profile.speed == 0.2
    values = dict(parameter_defaults("stretch"), **{"stretch.grasp_height": 0.05,
                                                    "safety.joint_margin": 0.01})
    stretch_settings = executor_settings("stretch", values, make_kinematics("stretch"))
    gate = stretch_settings.gate
    assert gate.squeeze_width == stretch.GRIPPER_SQUEEZE_APERTURE and gate.margin == 0.01
    assert gate.check_gripper(stretch.GRIPPER_SQUEEZE_APERTURE, 20.0).ok
    assert stretch_settings.config.profile.grasp_height == 0.05
    assert stretch_settings.backend.workspace.table_z == 0.62
    with pytest.raises(ValueError, match="robot must be one of"):
        parameter_defaults("ur5")
    with pytest.raises(ValueError, match="kinematics are the fr3's"):
        executor_settings("stretch", parameter_defaults("stretch"), kin)


def test_codes_and_states_match_the_interfaces():
    from failrecov_ros.action import ExecuteTask
    from failrecov_ros.msg import SkillStatus

    for code in ResultCode:
        assert getattr(ExecuteTask.Result, code.name) == code.value
    for state in State:
        assert getattr(SkillStatus, f"STATE_{state.name}") == state.value
    for event in ("skill_start", "skill_end", "gripper_close", "gripper_open",
                  "recovery_start", "recovery_end"):
        assert event in {getattr(SkillStatus, n) for n in dir(SkillStatus)
                         if n.startswith("EVENT_")}
