"""The safety gate: workspace and table through FK, trajectory checks, and a 10k-correction fuzz.

The fuzz is the property the executor relies on: whatever trajectory a correction turns into
(planned carefully, interpolated carelessly, or corrupted), none that the gate passes breaks a
limit when played the way a controller plays it. The oracle is independent of the gate: the
controller's own interpolation (``core.trajectory.TrajectorySampler``), MuJoCo's forward
kinematics of the simulated arm (not pinocchio's), and its own finite differences.
"""

import math

import numpy as np
import pytest

from failrecov_ros.core.safety import (
    REST_START_SAMPLES,
    SafetyGate,
    Workspace,
    check_joint_path,
    densify,
    played_from_rest,
)
from failrecov_ros.core.schema import Correction, CorrectionKind, Directive
from failrecov_ros.core.trajectory import JointTrajectory, TrajectoryPoint, TrajectorySampler
from failrecov_ros.robots import fr3
from failrecov_ros.robots.kinematics import UnreachableError, make_kinematics
from failrecov_ros.sim.scene import Simulation
from failrecov_ros.sim.tasks import make_task
from failrecov_ros.skills.correction import plan_correction
from failrecov_ros.skills.motion import MotionLimits

WORKSPACE = Workspace((0.15, -0.6, 0.0), (0.85, 0.6, 0.8), table_z=0.0, table_clearance=0.008)
MARGIN, MAX_STEP = 0.02, 0.1
TRIALS = 10_000
HOME = np.array(fr3.HOME)


@pytest.fixture(scope="module")
def kin():
    return make_kinematics("fr3")


@pytest.fixture(scope="module")
def gate(kin):
    return SafetyGate(kin.limits, margin=MARGIN, max_step=MAX_STEP, workspace=WORKSPACE,
                      fk=kin.fk, gripper_range=(0.0, fr3.MAX_GRIPPER_WIDTH),
                      max_grasp_force=fr3.MAX_GRASP_FORCE)


def _line(start, goal, duration, count=40):
    times = np.linspace(duration / count, duration, count)
    s = 10 * (times / duration) ** 3 - 15 * (times / duration) ** 4 + 6 * (times / duration) ** 5
    return times, start + s[:, None] * (np.asarray(goal) - start)


# --- workspace and the extended check_joint_path -----------------------------------------
def test_workspace_reports_the_table_and_the_box():
    points = np.array([[0.5, 0.0, 0.3], [0.5, 0.0, 0.004], [0.9, 0.0, 0.3]])
    problems = WORKSPACE.violations(points)
    assert len(problems) == 2
    text = "\n".join(problems)
    assert "z = 0.0040 m is below the table top + clearance bound 0.0080 m (sample 1)" in text
    assert "x = 0.9000 m is above the workspace bound 0.8500 m (sample 2)" in text
    assert WORKSPACE.violations(points[:1]) == []
    assert WORKSPACE.floor == pytest.approx(0.008)
    with pytest.raises(ValueError):
        Workspace((0, 0, 0), (0, 1, 1))
    with pytest.raises(ValueError):
        Workspace((0, 0, 0), (1, 1, 1), table_z=math.nan)


def test_check_joint_path_keeps_its_uniform_behaviour_and_takes_sample_times():
    limits = fr3.ARM_LIMITS
    q = np.array([HOME + [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1 * k] for k in range(4)])
    uniform = check_joint_path(q, 0.1, limits)
    timed = check_joint_path(q, None, limits, times=np.arange(4) * 0.1)
    assert uniform.ok and timed.ok
    assert timed.peak_velocity == pytest.approx(uniform.peak_velocity)
    # Squeezing one interval raises the speed there past joint 7's 5.26 rad/s.
    fast = check_joint_path(q, None, limits, times=[0.0, 0.1, 0.11, 0.2])
    assert not fast.ok and "fr3_joint7 speed" in fast.violations[0]
    assert not check_joint_path(q, None, limits, times=[0.0, 0.1, 0.1, 0.2]).ok


def test_check_joint_path_places_the_tool_through_fk(kin):
    q = np.array([HOME, HOME])
    report = check_joint_path(q, 0.1, kin.limits, workspace=WORKSPACE, fk=kin.fk)
    assert report.ok and report.min_tcp_height == pytest.approx(kin.fk(HOME)[2, 3])
    with pytest.raises(ValueError, match="needs the forward kinematics"):
        check_joint_path(q, 0.1, kin.limits, workspace=WORKSPACE)


def test_densify_keeps_ends_and_bounds_the_step():
    path = np.array([[0.0, 0.0], [0.1, -0.05], [0.1, -0.05]])
    dense = densify(path, 0.02)
    assert np.allclose(dense[0], path[0]) and np.allclose(dense[-1], path[-1])
    assert np.abs(np.diff(dense, axis=0)).max() <= 0.02 + 1e-12


# --- the gate on trajectories ---------------------------------------------------------------
def test_a_planned_move_passes(gate, kin):
    goal = kin.fk(HOME)
    goal[:3, 3] += [0.05, 0.05, -0.1]
    q_goal = kin.ik(goal, HOME)
    times, positions = _line(HOME, q_goal, 2.0)
    report = gate.check_trajectory(HOME, times, positions)
    assert report.ok, report.violations


@pytest.mark.parametrize("mutate, reason", [
    (lambda t, p: (t, p[:, :6]), "positions must be"),
    (lambda t, p: (t * 0 + 1.0, p), "strictly increase"),
    (lambda t, p: (t - t[0], p), "must be > 0"),
    (lambda t, p: (t, np.where(np.arange(len(p))[:, None] == 5, np.nan, p)), "non-finite"),
    (lambda t, p: (t * 0.05, p), "speed"),
    (lambda t, p: (t, p + [0, 0, 0, 0, 0, 0, 3.2]), "limits"),
    (lambda t, p: (t[:1], p[-1:]), "waypoint step"),
    (lambda t, p: (np.array([]), p[:0]), "no points"),
])
def test_bad_trajectories_are_rejected_with_a_reason(gate, kin, mutate, reason):
    goal = kin.fk(HOME)
    goal[:3, 3] += [0.0, 0.1, -0.1]
    times, positions = _line(HOME, kin.ik(goal, HOME), 2.0)
    report = gate.check_trajectory(HOME, *mutate(times, positions))
    assert not report.ok
    assert any(reason in v for v in report.violations), report.violations


def test_the_table_and_the_box_are_enforced_between_points(gate, kin):
    goal = kin.fk(HOME)
    goal[:3, 3] = [0.5, 0.0, -0.01]  # 1 cm into the table
    q_goal = kin.ik(goal, HOME)
    report = gate.check_trajectory(HOME, *_line(HOME, q_goal, 4.0))
    assert not report.ok and "table top" in report.violations[-1]
    goal[:3, 3] = [0.3, 0.65, 0.3]  # beside the workspace box
    report = gate.check_trajectory(HOME, *_line(HOME, kin.ik(goal, HOME), 4.0))
    assert not report.ok and "y = " in report.violations[-1]


def test_the_start_state_is_part_of_the_trajectory(gate, kin):
    goal = kin.fk(HOME)
    goal[:3, 3] += [0.0, 0.0, -0.05]
    times, positions = _line(HOME, kin.ik(goal, HOME), 2.0)
    elsewhere = HOME + [0.3, 0, 0, 0, 0, 0, 0]  # the arm is not where the trajectory starts
    report = gate.check_trajectory(elsewhere, times, positions)
    assert not report.ok and any("waypoint step" in v for v in report.violations)


def test_the_margin_applies_to_commands_not_to_where_the_arm_rests(gate, kin):
    """An arm resting within the margin of a limit may move away from it, not further in."""
    upper = kin.limits.upper[6]  # joint 7 turns the hand about its axis: the TCP stays put
    near = HOME.copy()
    near[6] = upper - MARGIN / 2
    away = gate.check_trajectory(near, *_line(near, near - [0, 0, 0, 0, 0, 0, 0.2], 2.0))
    assert away.ok, away.violations
    closer = gate.check_trajectory(near, *_line(near, near + [0, 0, 0, 0, 0, 0, MARGIN / 4],
                                                2.0))
    assert not closer.ok
    assert any("fr3_joint7" in v and "closer than its start" in v for v in closer.violations)
    # Holding where it rests (a controller hold after a recovery) is no closer: allowed.
    assert gate.check_trajectory(near, [0.5], [near]).ok
    # An arm outside the margin still may not enter it.
    clear = HOME.copy()
    clear[6] = upper - 2 * MARGIN
    report = gate.check_trajectory(clear, *_line(clear, near, 2.0))
    assert not report.ok and any(f"within {MARGIN} of its limits [" in v
                                 for v in report.violations)
    # A start beyond the hard limits is reported as such, whatever the motion.
    beyond = near.copy()
    beyond[6] = upper + 0.01
    report = gate.check_trajectory(beyond, *_line(beyond, near - [0, 0, 0, 0, 0, 0, 0.2], 2.0))
    assert not report.ok and any("fr3_joint7 starts at" in v for v in report.violations)


def test_played_from_rest_adds_one_rest_sample_either_side():
    stamps, path = played_from_rest([0.0], [0.5, 1.5], [[1.0], [2.0]])
    assert stamps.tolist() == [-0.5, 0.0, 0.5, 1.5, 2.5]
    assert path[:, 0].tolist() == [0.0, 0.0, 1.0, 2.0, 2.0]
    assert REST_START_SAMPLES == 2


def test_gripper_commands(gate):
    assert gate.check_gripper(0.04).ok and gate.check_gripper(0.0, 20.0).ok
    assert not gate.check_gripper(0.09).ok
    assert not gate.check_gripper(math.nan).ok
    assert not gate.check_gripper(-0.05).ok  # no squeeze allowance on the FR3
    report = gate.check_gripper(0.0, fr3.MAX_GRASP_FORCE + 1)
    assert not report.ok and "exceeds the hand's 70.0 N" in report.violations[0]
    assert gate.check_gripper(0.0, fr3.MAX_GRASP_FORCE).ok
    assert not gate.check_gripper(0.04, math.nan).ok and not gate.check_gripper(0.04, -1.0).ok
    # A gripper that grasps by stalling is allowed exactly its squeeze target below closed.
    squeeze = SafetyGate(gate.limits, gripper_range=(0.0, 0.1286), squeeze_width=-0.05)
    assert squeeze.check_gripper(-0.05, 20.0).ok
    report = squeeze.check_gripper(-0.04)
    assert not report.ok and "or the squeeze width -0.0500 m" in report.violations[0]
    assert squeeze.check_gripper(0.1286).ok and not squeeze.check_gripper(math.nan).ok
    with pytest.raises(ValueError):
        SafetyGate(gate.limits, max_grasp_force=0.0)


# --- the property: 10k random corrections ---------------------------------------------------------
class _Oracle:
    """Judges a trajectory independently of the gate, as the controller would play it."""

    def __init__(self):
        task = make_task("pick_cube", 0)
        self.sim = Simulation(task.scene)
        self.limits = fr3.ARM_LIMITS

    def tcp(self, q):
        self.sim.place_arm(q)
        return self.sim.tcp_pose()[0]

    def violations(self, start, times, positions, dt=0.04):
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(positions))):
            return ["not finite"]
        problems = []
        names = self.limits.names
        trajectory = JointTrajectory(names, tuple(TrajectoryPoint(t, tuple(p))
                                                  for t, p in zip(times, positions, strict=True)))
        sampler = TrajectorySampler(trajectory, start)
        lower, upper = self.limits.lower, self.limits.upper
        speed_limit = self.limits.velocity
        for t in np.arange(0.0, times[-1] + dt, dt):
            sample = sampler.sample(t)
            q = sample.positions
            if np.any(q < lower) or np.any(q > upper):
                problems.append(f"position outside the limits at t={t:.2f}")
            if np.any(np.abs(sample.velocities) > speed_limit * (1 + 1e-9)):
                problems.append(f"velocity over the limit at t={t:.2f}")
            x, y, z = self.tcp(q)
            if z < WORKSPACE.floor - 1e-3 or not (
                    WORKSPACE.lower[0] - 1e-3 <= x <= WORKSPACE.upper[0] + 1e-3
                    and WORKSPACE.lower[1] - 1e-3 <= y <= WORKSPACE.upper[1] + 1e-3
                    and z <= WORKSPACE.upper[2] + 1e-3):
                problems.append(f"TCP {np.round([x, y, z], 3).tolist()} out of the workspace")
            if problems:
                return problems
        # Accelerations: slope changes at the knots, from rest before and to rest after.
        knots_t = [0.0, *times]
        knots_q = [np.asarray(start), *positions]
        slopes = [np.zeros(len(names))]
        spans = [times[0]]
        for i in range(1, len(knots_t)):
            span = knots_t[i] - knots_t[i - 1]
            slopes.append((knots_q[i] - knots_q[i - 1]) / span)
            spans.append(span)
        slopes.append(np.zeros(len(names)))
        spans.append(spans[-1])
        for i in range(1, len(slopes)):
            accel = np.abs(slopes[i] - slopes[i - 1]) / ((spans[i - 1] + spans[i]) / 2)
            if np.any(accel > self.limits.acceleration * (1 + 1e-6)):
                return [f"acceleration over the limit at knot {i}"]
        return []


def _random_correction(rng):
    if rng.random() < 0.5:
        delta = np.concatenate([rng.uniform(-0.35, 0.35, 3), rng.uniform(-0.6, 0.6, 3), [0.0]])
        return Correction(CorrectionKind.EE_DELTA, tuple(delta))
    dirs = rng.integers(-1, 2, 3)
    bins = np.where(dirs != 0, rng.integers(1, 11, 3), 0)
    return Correction(CorrectionKind.DIRECTIVE, directive=Directive(
        int(dirs[0]), int(bins[0]), int(dirs[1]), int(bins[1]), int(dirs[2]), int(bins[2])))


def test_fuzz_10k_random_corrections_no_limit_violating_trajectory_passes(gate, kin):
    rng = np.random.default_rng(20261121)
    oracle = _Oracle()
    motion = MotionLimits(waypoint_spacing=0.03)
    lower, upper = kin.limits.lower, kin.limits.upper
    counts = {"passed": 0, "rejected": 0, "careful": 0, "careless": 0, "corrupted": 0}
    bad = []
    for trial in range(TRIALS):
        q0 = np.clip(HOME + rng.normal(0.0, 0.35, 7), lower + 0.01, upper - 0.01)
        if rng.random() < 0.05:  # starts right at a limit
            j = rng.integers(7)
            q0[j] = lower[j] if rng.random() < 0.5 else upper[j]
        correction = _random_correction(rng)
        metres_per_bin = float(rng.uniform(0.005, 0.04))
        mode = rng.random()
        times = positions = None
        if mode < 0.1:  # the executor's (and the monitor's) own planner
            plan = plan_correction(kin, q0, correction, metres_per_bin, motion=motion)
            if plan.ok and plan.has_motion:
                times, positions = plan.times_from_start, plan.positions
                counts["careful"] += 1
        if times is None and mode < 0.8:  # a careless planner: IK at the goal, any duration
            target = kin.fk(q0)
            if correction.ee_delta is not None:
                target[:3, 3] += correction.ee_delta[:3]
            else:
                target[:3, 3] += correction.directive.displacement(metres_per_bin)
            try:
                goal = kin.ik(target, q0)
            except UnreachableError:
                goal = q0 + rng.normal(0.0, 0.3, 7)
            count = int(rng.integers(1, 60))
            times, positions = _line(q0, goal, float(rng.uniform(0.05, 6.0)), count)
            counts["careless"] += 1
        if times is None:  # corrupted trajectories
            goal = q0 + rng.normal(0.0, 0.2, 7)
            times, positions = _line(q0, goal, float(rng.uniform(0.5, 4.0)))
            positions = positions.copy()
            k = int(rng.integers(len(times)))
            kind = rng.integers(3)
            if kind == 0:
                positions[k, rng.integers(7)] += rng.normal(0.0, 0.5)
            elif kind == 1:
                positions[k:, rng.integers(7)] = upper[0] + 10.0 * rng.random()
            else:
                times = times.copy()
                times[k] *= rng.uniform(0.0, 1.0)
            counts["corrupted"] += 1
        report = gate.check_trajectory(q0, times, positions)
        if not report.ok:
            counts["rejected"] += 1
            continue
        counts["passed"] += 1
        problems = oracle.violations(q0, np.asarray(times), np.asarray(positions))
        if problems:
            bad.append((trial, problems))
    print(counts)
    assert not bad, f"{len(bad)} limit-violating trajectories passed the gate: {bad[:5]}"
    # Both outcomes must be common, or the property says nothing.
    assert counts["passed"] > 1000 and counts["rejected"] > 1000, counts
    assert min(counts["careful"], counts["careless"], counts["corrupted"]) > 300, counts
