"""JTC semantics of the ROS-free trajectory core: validation, sampling, tolerances, merging."""

import math

import numpy as np
import pytest

from failrecov_ros.core.limits import JointLimit, JointLimits
from failrecov_ros.core.trajectory import (
    DEFAULT_STOPPED_VELOCITY_TOLERANCE,
    ExecutionMonitor,
    GoalStatus,
    JointTrajectory,
    ResultCode,
    Tolerance,
    TrajectoryGoal,
    TrajectoryPoint,
    TrajectorySampler,
    Verdict,
    goal_state,
    merge_partial_goal,
    path_violation,
    resolve_goal_time_tolerance,
    resolve_tolerances,
    validate_goal,
)
from failrecov_ros.robots.fr3 import ARM_JOINTS, ARM_LIMITS, HOME

# A two-joint toy arm keeps the interpolation numbers easy to check by hand.
TOY = JointLimits.of([JointLimit("a", -2.0, 2.0, 1.0), JointLimit("b", -2.0, 2.0, 3.0)])


def point(t, positions, velocities=(), accelerations=()):
    return TrajectoryPoint(t, tuple(positions), tuple(velocities), tuple(accelerations))


def fr3_goal(points=None, names=ARM_JOINTS, **kwargs):
    if points is None:
        shifted = list(HOME)
        shifted[0] += 0.2
        points = [point(0.5, HOME), point(1.5, shifted, [0.0] * 7)]
    return TrajectoryGoal(JointTrajectory(tuple(names), tuple(points)), **kwargs)


# ------------------------------------------------------------------------------ data classes


def test_result_codes_match_control_msgs():
    assert [int(c) for c in ResultCode] == [0, -1, -2, -3, -4, -5]
    assert ResultCode.PATH_TOLERANCE_VIOLATED == -4
    assert ResultCode.GOAL_TOLERANCE_VIOLATED == -5


def test_point_coerces_lists_to_float_tuples():
    p = TrajectoryPoint(1, [1, 2], [0, 0])
    assert p.time_from_start == 1.0 and isinstance(p.time_from_start, float)
    assert p.positions == (1.0, 2.0) and p.velocities == (0.0, 0.0) and p.accelerations == ()
    traj = JointTrajectory(["a", "b"], [p])
    assert traj.joint_names == ("a", "b") and traj.points == (p,)


def test_verdict_ok():
    assert Verdict(ResultCode.SUCCESSFUL).ok
    assert not Verdict(ResultCode.INVALID_GOAL, "x").ok


# -------------------------------------------------------------------------------- validation


def test_valid_fr3_goal_is_successful_with_empty_message():
    verdict = validate_goal(fr3_goal(), ARM_LIMITS, check_velocity_limits=True)
    assert verdict == Verdict(ResultCode.SUCCESSFUL, "")
    assert verdict.ok


def test_first_point_may_be_at_time_zero():
    assert validate_goal(fr3_goal([point(0.0, HOME), point(1.0, HOME)]), ARM_LIMITS).ok


def test_empty_joint_names_and_empty_points_are_invalid_goals():
    empty_names = TrajectoryGoal(JointTrajectory((), (point(1.0, ()),)))
    verdict = validate_goal(empty_names, ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL and "joint_names" in verdict.message
    verdict = validate_goal(fr3_goal([]), ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL and "no points" in verdict.message


def test_duplicate_joint_is_invalid_joints():
    names = ARM_JOINTS[:6] + ("fr3_joint1",)
    verdict = validate_goal(fr3_goal([point(1.0, HOME)], names=names), ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_JOINTS
    assert "fr3_joint1" in verdict.message and "duplicate" in verdict.message


def test_unknown_joint_is_invalid_joints_and_lists_the_controller_joints():
    names = ARM_JOINTS[:6] + ("elbow",)
    verdict = validate_goal(fr3_goal([point(1.0, HOME)], names=names), ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_JOINTS
    assert verdict.message.startswith(
        "unknown joint 'elbow'; this controller drives fr3_joint1, fr3_joint2,"
    )
    assert verdict.message.endswith("fr3_joint7")


def test_missing_joints_rejected_unless_partial_goals_are_allowed():
    goal = fr3_goal([point(1.0, HOME[:6])], names=ARM_JOINTS[:6])
    verdict = validate_goal(goal, ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_JOINTS
    assert "fr3_joint7" in verdict.message and "partial" in verdict.message
    assert validate_goal(goal, ARM_LIMITS, allow_partial_joints=True).ok


@pytest.mark.parametrize(
    ("bad_point", "fragment"),
    [
        (point(1.0, HOME[:6]), "point 1: 6 positions for 7 joints"),
        (point(1.0, HOME, [0.0] * 3), "point 1: 3 velocities for 7 joints"),
        (point(1.0, HOME, [0.0] * 7, [0.0] * 8), "point 1: 8 accelerations for 7 joints"),
    ],
)
def test_wrong_field_lengths_are_invalid_goals(bad_point, fragment):
    verdict = validate_goal(fr3_goal([point(0.5, HOME), bad_point]), ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL
    assert fragment in verdict.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("positions", math.nan), ("velocities", math.inf), ("accelerations", -math.inf)],
)
def test_non_finite_values_are_invalid_goals_naming_joint_and_point(field, value):
    values = {"positions": list(HOME), "velocities": [0.0] * 7, "accelerations": [0.0] * 7}
    values[field][2] = value
    bad = TrajectoryPoint(1.0, **values)
    verdict = validate_goal(fr3_goal([point(0.5, HOME), bad]), ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL
    assert verdict.message == f"point 1: fr3_joint3 {field[:-1]} {value} is not finite"


@pytest.mark.parametrize(
    ("times", "fragment"),
    [
        ((-0.1, 1.0), "point 0: time_from_start -0.1 s is negative"),
        ((1.0, 1.0), "point 1: time_from_start 1 s is not after point 0 (1 s)"),
        ((1.0, 0.5), "point 1: time_from_start 0.5 s is not after point 0 (1 s)"),
        ((0.0, math.nan), "point 1: time_from_start nan is not finite"),
    ],
)
def test_bad_times_are_invalid_goals(times, fragment):
    goal = fr3_goal([point(t, HOME) for t in times])
    verdict = validate_goal(goal, ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL
    assert fragment in verdict.message


def test_position_outside_limits_names_point_joint_and_range():
    bad = list(HOME)
    bad[3] = -0.01
    goal = fr3_goal([point(t, HOME) for t in (0.5, 1.0, 1.5)] + [point(2.0, bad)])
    verdict = validate_goal(goal, ARM_LIMITS)
    assert verdict == Verdict(
        ResultCode.INVALID_GOAL, "point 3: fr3_joint4 position -0.01 outside [-3.0421, -0.1518]"
    )


def test_tolerance_for_unknown_joint_is_invalid_goal():
    goal = fr3_goal(path_tolerance={"wrist": Tolerance(0.1)})
    verdict = validate_goal(goal, ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL
    assert verdict.message.startswith("path_tolerance names unknown joint 'wrist'")


def test_nan_and_illegal_negative_tolerances_are_invalid_goals():
    goal = fr3_goal(goal_tolerance={"fr3_joint2": Tolerance(0.1, math.nan)})
    verdict = validate_goal(goal, ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL
    assert verdict.message == "goal_tolerance of fr3_joint2: velocity is NaN"
    verdict = validate_goal(fr3_goal(path_tolerance={"fr3_joint5": Tolerance(-0.5)}), ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL
    assert "path_tolerance of fr3_joint5: position -0.5 is negative" in verdict.message


def test_erase_tolerance_minus_one_is_legal():
    goal = fr3_goal(path_tolerance={"fr3_joint5": Tolerance(-1.0, -1.0, -1.0)})
    assert validate_goal(goal, ARM_LIMITS).ok


@pytest.mark.parametrize("gtt", [-0.5, math.nan])
def test_bad_goal_time_tolerance_is_invalid_goal(gtt):
    verdict = validate_goal(fr3_goal(goal_time_tolerance=gtt), ARM_LIMITS)
    assert verdict.code == ResultCode.INVALID_GOAL
    assert "goal_time_tolerance" in verdict.message


def test_implied_velocity_over_limit_only_when_checked():
    fast = list(HOME)
    fast[4] += 1.0  # fr3_joint5 limit 5.26 rad/s; 1 rad in 0.1 s is 10 rad/s
    goal = fr3_goal([point(0.5, HOME), point(0.6, fast)])
    assert validate_goal(goal, ARM_LIMITS).ok
    verdict = validate_goal(goal, ARM_LIMITS, check_velocity_limits=True)
    assert verdict == Verdict(
        ResultCode.INVALID_GOAL,
        "points 0->1: fr3_joint5 moves 1 in 0.1 s (10/s), above the velocity limit 5.26",
    )


def test_trajectory_timed_exactly_at_the_velocity_limit_passes():
    goal = TrajectoryGoal(JointTrajectory(("a", "b"), (point(0, [0, 0]), point(1.5, [1.5, 0.0]))))
    assert validate_goal(goal, TOY, check_velocity_limits=True).ok


def test_given_velocity_over_limit_is_rejected_when_checked():
    goal = TrajectoryGoal(
        JointTrajectory(("a", "b"), (point(1, [0, 0], [1.5, 0.0]), point(2, [1, 0], [0, 0])))
    )
    assert validate_goal(goal, TOY).ok
    verdict = validate_goal(goal, TOY, check_velocity_limits=True)
    assert verdict == Verdict(
        ResultCode.INVALID_GOAL, "point 0: a velocity 1.5 exceeds the limit 1"
    )


def test_nonzero_velocity_at_end_rejected_unless_allowed():
    goal = TrajectoryGoal(JointTrajectory(("a", "b"), (point(1, [0, 0], [0.0, 0.2]),)))
    verdict = validate_goal(goal, TOY)
    assert verdict.code == ResultCode.INVALID_GOAL
    assert verdict.message == "point 0: b velocity 0.2 at the trajectory end is not zero"
    assert validate_goal(goal, TOY, allow_nonzero_velocity_at_trajectory_end=True).ok


# ---------------------------------------------------------------------------------- sampling


def test_linear_segments_hit_waypoints_and_move_at_constant_velocity():
    traj = JointTrajectory(("a", "b"), (point(0, [0, 0]), point(2, [1, -2]), point(3, [1, 0])))
    s = TrajectorySampler(traj, [0, 0])
    for t, expected in ((0, [0, 0]), (2, [1, -2]), (3, [1, 0])):
        np.testing.assert_allclose(s.sample(t).positions, expected, atol=1e-12)
    pos, vel, acc = s.sample(1.0)
    np.testing.assert_allclose(pos, [0.5, -1.0])
    np.testing.assert_allclose(vel, [0.5, -1.0])
    np.testing.assert_allclose(acc, [0, 0])
    np.testing.assert_allclose(s.sample(2.5).velocities, [0.0, 2.0])


def test_cubic_segment_matches_hermite_values_and_boundary_velocities():
    traj = JointTrajectory(("a", "b"), (point(0, [0, 1], [0, 0.5]), point(1, [1, 2], [0, -0.5])))
    s = TrajectorySampler(traj, [0, 1])
    pos, vel, acc = s.sample(0.0)
    np.testing.assert_allclose(pos, [0, 1], atol=1e-12)
    np.testing.assert_allclose(vel, [0, 0.5], atol=1e-12)
    # Joint a: p = 3t^2 - 2t^3, so p(0.5) = 0.5, v(0.5) = 1.5, a(0) = 6.
    np.testing.assert_allclose(acc[0], 6.0)
    pos, vel, _ = s.sample(0.5)
    np.testing.assert_allclose([pos[0], vel[0]], [0.5, 1.5])
    pos, vel, _ = s.sample(1.0 - 1e-12)
    np.testing.assert_allclose(pos, [1, 2], atol=1e-9)
    np.testing.assert_allclose(vel, [0, -0.5], atol=1e-9)


def test_quintic_segment_matches_boundary_position_velocity_acceleration():
    a_end = point(2, [1.0, -1.0], [0.3, 0.0], [0.5, -0.2])
    traj = JointTrajectory(("a", "b"), (point(0, [0, 0], [0.1, 0.2], [0.0, 0.4]), a_end))
    s = TrajectorySampler(traj, [0, 0])
    pos, vel, acc = s.sample(0.0)
    np.testing.assert_allclose(pos, [0, 0], atol=1e-12)
    np.testing.assert_allclose(vel, [0.1, 0.2], atol=1e-12)
    np.testing.assert_allclose(acc, [0.0, 0.4], atol=1e-12)
    pos, vel, acc = s.sample(2.0 - 1e-9)
    np.testing.assert_allclose(pos, [1.0, -1.0], atol=1e-7)
    np.testing.assert_allclose(vel, [0.3, 0.0], atol=1e-7)
    np.testing.assert_allclose(acc, [0.5, -0.2], atol=1e-6)


def test_quintic_rest_to_rest_is_the_minimum_jerk_profile():
    traj = JointTrajectory(("a",), (point(0, [0], [0], [0]), point(1, [1], [0], [0])))
    s = TrajectorySampler(traj, [0])
    for t in (0.25, 0.5, 0.8):
        pos, vel, acc = s.sample(t)
        assert pos[0] == pytest.approx(10 * t**3 - 15 * t**4 + 6 * t**5)
        assert vel[0] == pytest.approx(30 * t**2 - 60 * t**3 + 30 * t**4)
        assert acc[0] == pytest.approx(60 * t - 180 * t**2 + 120 * t**3)


def test_first_segment_interpolates_from_the_start_state():
    traj = JointTrajectory(("a", "b"), (point(2, [1, 1]), point(3, [2, 1])))
    s = TrajectorySampler(traj, {"b": -1.0, "a": 0.0}, start_time=10.0)
    np.testing.assert_allclose(s.sample(10.0).positions, [0, -1])
    pos, vel, _ = s.sample(11.0)
    np.testing.assert_allclose(pos, [0.5, 0.0])
    np.testing.assert_allclose(vel, [0.5, 1.0])
    np.testing.assert_allclose(s.sample(12.0).positions, [1, 1])
    np.testing.assert_allclose(s.sample(12.5).positions, [1.5, 1])


def test_first_segment_is_cubic_when_start_and_point_both_have_velocities():
    traj = JointTrajectory(("a",), (point(1, [1], [0]),))
    s = TrajectorySampler(traj, [0], start_velocities=[0])
    pos, vel, _ = s.sample(0.5)
    assert pos[0] == pytest.approx(0.5) and vel[0] == pytest.approx(1.5)
    linear = TrajectorySampler(traj, [0])  # no start velocity -> linear
    assert linear.sample(0.5).velocities[0] == pytest.approx(1.0)


def test_first_point_at_time_zero_is_commanded_at_once():
    traj = JointTrajectory(("a",), (point(0, [1.0]), point(1, [2.0])))
    s = TrajectorySampler(traj, [0.0])
    assert s.sample(0.0).positions[0] == pytest.approx(1.0)
    assert s.sample(0.5).positions[0] == pytest.approx(1.5)


def test_before_start_returns_start_state_and_after_end_holds_with_zero_velocity():
    traj = JointTrajectory(("a", "b"), (point(1, [1, 1], [0.2, 0.0]),))
    s = TrajectorySampler(traj, [0.3, 0.4], start_velocities=[0.1, 0.0], start_time=5.0)
    pos, vel, acc = s.sample(4.0)
    np.testing.assert_allclose(pos, [0.3, 0.4])
    np.testing.assert_allclose(vel, [0.1, 0.0])
    np.testing.assert_allclose(acc, [0, 0])
    pos, vel, acc = s.sample(100.0)
    np.testing.assert_allclose(pos, [1, 1])
    np.testing.assert_allclose(vel, [0, 0])
    np.testing.assert_allclose(acc, [0, 0])


def test_duration_end_time_and_reached_end():
    traj = JointTrajectory(("a",), (point(0.5, [0]), point(2.5, [1])))
    s = TrajectorySampler(traj, [0], start_time=1.0)
    assert s.duration == 2.5 and s.end_time == 3.5
    assert not s.reached_end(3.49) and s.reached_end(3.5) and s.reached_end(9.0)
    assert s.joint_names == ("a",)


def test_sampler_rejects_start_state_of_wrong_size_or_missing_joint():
    traj = JointTrajectory(("a", "b"), (point(1, [0, 0]),))
    with pytest.raises(ValueError, match="3 values for 2 joints"):
        TrajectorySampler(traj, [0, 0, 0])
    with pytest.raises(ValueError, match="lacks joints b"):
        TrajectorySampler(traj, {"a": 0.0})


def test_linear_samples_stay_inside_each_segments_box_over_random_trajectories():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n_joints = int(rng.integers(1, 8))
        n_points = int(rng.integers(1, 6))
        times = np.cumsum(rng.uniform(0.05, 2.0, n_points))
        if rng.random() < 0.3:
            times -= times[0]  # first point at t=0
        waypoints = rng.uniform(-2.0, 2.0, (n_points, n_joints))
        start = rng.uniform(-2.0, 2.0, n_joints)
        names = tuple(f"j{i}" for i in range(n_joints))
        points = tuple(point(t, w) for t, w in zip(times, waypoints, strict=True))
        traj = JointTrajectory(names, points)
        s = TrajectorySampler(traj, start)
        knots_t = np.concatenate([[0.0], times]) if times[0] > 0 else times
        knots_p = np.vstack([start, waypoints]) if times[0] > 0 else waypoints
        # Before the start the sampler holds the start state, so it belongs to the hull too.
        hull = np.vstack([start, waypoints])
        hull_lo, hull_hi = hull.min(axis=0), hull.max(axis=0)
        for t in rng.uniform(-0.5, times[-1] + 0.5, 50):
            pos = s.sample(t).positions
            assert np.all(pos >= hull_lo - 1e-12) and np.all(pos <= hull_hi + 1e-12)
            k = int(np.searchsorted(knots_t, t, side="right"))
            if 0 < k < len(knots_t):
                lo = np.minimum(knots_p[k - 1], knots_p[k])
                hi = np.maximum(knots_p[k - 1], knots_p[k])
                assert np.all(pos >= lo - 1e-12) and np.all(pos <= hi + 1e-12)


# -------------------------------------------------------------------------------- tolerances


def test_path_violation_names_joint_and_error():
    names = ("a", "b")
    tol = {"b": Tolerance(position=0.05)}
    assert path_violation(names, ([0.0, 0.3],), ([0.5, 0.27],), tol) is None
    message = path_violation(names, ([0.0, 0.3],), ([0.5, 0.2],), tol)
    assert message == "b path position error 0.1 exceeds tolerance 0.05 (desired 0.3, actual 0.2)"


def test_path_tolerance_zero_or_erased_is_not_checked():
    names = ("a",)
    for tolerance in (Tolerance(0.0), Tolerance(-1.0)):
        assert path_violation(names, ([0.0],), ([5.0],), {"a": tolerance}) is None


def test_velocity_tolerance_needs_both_velocities():
    names = ("a",)
    tol = {"a": Tolerance(velocity=0.1)}
    desired = ([0.0], [1.0], [0.0])
    assert path_violation(names, desired, ([0.0], None), tol) is None
    message = path_violation(names, desired, ([0.0], [0.5]), tol)
    assert message is not None and "a path velocity error 0.5 exceeds tolerance 0.1" in message


def test_goal_state_reached_waiting_violated():
    names = ("a", "b")
    last = point(2.0, [1.0, -1.0])
    tol = {"a": Tolerance(0.01), "b": Tolerance(0.01)}
    reached = goal_state(names, [1.005, -1.0], [0, 0], last, tol, 0.0, 0.5)
    assert reached.status == GoalStatus.REACHED and reached.message == ""
    waiting = goal_state(names, [1.0, -0.9], [0, 0], last, tol, 0.4, 0.5)
    assert waiting.status == "waiting"
    assert "b goal position error -0.1 exceeds tolerance 0.01" in waiting.message
    violated = goal_state(names, [1.0, -0.9], [0, 0], last, tol, 0.6, 0.5)
    assert violated.status == GoalStatus.VIOLATED
    assert violated.message.startswith("b goal position error -0.1 exceeds tolerance 0.01")
    assert "0.6 s after the trajectory end (goal_time_tolerance 0.5 s)" in violated.message


def test_goal_time_tolerance_zero_waits_indefinitely():
    last = point(1.0, [1.0])
    check = goal_state(("a",), [0.0], None, last, {"a": Tolerance(0.01)}, 1e6, 0.0)
    assert check.status == GoalStatus.WAITING


def test_goal_state_before_the_end_is_waiting():
    check = goal_state(("a",), [1.0], None, point(1.0, [1.0]), {}, -0.25, 1.0)
    assert check.status == GoalStatus.WAITING and "0.25 s" in check.message


def test_goal_velocity_tolerance_uses_zero_when_last_point_has_no_velocity():
    tol = {"a": Tolerance(0.1, DEFAULT_STOPPED_VELOCITY_TOLERANCE)}
    moving = goal_state(("a",), [1.0], [0.05], point(1.0, [1.0]), tol, 0.0, 1.0)
    assert moving.status == GoalStatus.WAITING and "a goal velocity error -0.05" in moving.message
    still = goal_state(("a",), [1.0], [0.005], point(1.0, [1.0]), tol, 0.0, 1.0)
    assert still.status == GoalStatus.REACHED


def test_resolve_tolerances_follows_joint_tolerance_rules():
    defaults = {"a": Tolerance(0.1, 0.01), "b": Tolerance(0.2, 0.01)}
    requested = {"a": Tolerance(0.0, -1.0, 0.5), "b": Tolerance(0.05)}
    assert resolve_tolerances(defaults, requested) == {
        "a": Tolerance(0.1, 0.0, 0.5),
        "b": Tolerance(0.05, 0.01, 0.0),
    }
    with pytest.raises(ValueError, match="illegal tolerance -2"):
        resolve_tolerances(defaults, {"a": Tolerance(-2.0)})
    assert resolve_goal_time_tolerance(1.0, 0.0) == 1.0
    assert resolve_goal_time_tolerance(1.0, 0.25) == 0.25
    assert resolve_goal_time_tolerance(1.0, -1.0) == 0.0


# --------------------------------------------------------------------------------- execution


def _monitor(goal_time=0.5):
    traj = JointTrajectory(("a",), (point(1.0, [1.0]),))
    sampler = TrajectorySampler(traj, [0.0])
    return ExecutionMonitor(sampler, {"a": Tolerance(0.1)}, {"a": Tolerance(0.01)}, goal_time)


def test_monitor_succeeds_when_tracking_perfectly():
    monitor = _monitor()
    for t in (0.0, 0.25, 0.5, 0.99):
        assert monitor.update(t, monitor.sampler.sample(t).positions) is None
    assert monitor.update(1.0, [1.0]) == Verdict(ResultCode.SUCCESSFUL, "")


def test_monitor_aborts_on_path_deviation():
    monitor = _monitor()
    verdict = monitor.update(0.5, [0.2])
    assert verdict is not None and verdict.code == ResultCode.PATH_TOLERANCE_VIOLATED
    assert verdict.message.startswith("a path position error 0.3 exceeds tolerance 0.1")


def test_monitor_waits_then_aborts_when_goal_is_not_reached_in_time():
    monitor = _monitor(goal_time=0.5)
    assert monitor.update(0.9, [0.9]) is None
    assert monitor.update(1.2, [0.95]) is None  # settling, path tolerance no longer checked
    verdict = monitor.update(1.6, [0.95])
    assert verdict is not None and verdict.code == ResultCode.GOAL_TOLERANCE_VIOLATED
    assert "a goal position error 0.05" in verdict.message


def test_monitor_checks_path_on_first_tick_even_past_the_end():
    monitor = _monitor()
    verdict = monitor.update(5.0, [0.0])
    assert verdict is not None and verdict.code == ResultCode.PATH_TOLERANCE_VIOLATED


# ----------------------------------------------------------------------------- partial goals


def test_merge_partial_goal_fills_held_joints_in_controller_order():
    traj = JointTrajectory(
        ("c", "a"), (point(1, [3.0, 1.0], [0.3, 0.1]), point(2, [3.5, 1.5]))
    )
    merged = merge_partial_goal(traj, ("a", "b", "c"), {"a": 9.0, "b": -0.5, "c": 9.0})
    assert merged.joint_names == ("a", "b", "c")
    assert merged.points[0] == point(1, [1.0, -0.5, 3.0], [0.1, 0.0, 0.3])
    assert merged.points[1] == point(2, [1.5, -0.5, 3.5])
    by_order = merge_partial_goal(traj, ("a", "b", "c"), [0.0, -0.5, 0.0])
    assert by_order == merged


def test_merge_partial_goal_rejects_unknown_joints():
    traj = JointTrajectory(("x",), (point(1, [0.0]),))
    with pytest.raises(ValueError, match="unknown joints x"):
        merge_partial_goal(traj, ("a", "b"), [0.0, 0.0])


def test_merged_partial_goal_validates_against_full_controller():
    partial = JointTrajectory(("fr3_joint2",), (point(1.0, [0.1]),))
    merged = merge_partial_goal(partial, ARM_JOINTS, HOME)
    assert validate_goal(TrajectoryGoal(merged), ARM_LIMITS).ok
    assert merged.points[0].positions[3] == HOME[3]
