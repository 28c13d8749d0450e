"""Joint-trajectory semantics of ros2_control's joint_trajectory_controller (JTC), without ROS.

The simulated FollowJointTrajectory server and the safety gate must accept, reject, interpolate
and finish goals exactly as the controller on the robot does, so a correction that passes here
behaves the same on franka_ros2. References below are to ros-controls/ros2_controllers,
``joint_trajectory_controller/src/{joint_trajectory_controller,trajectory,tolerances}.cpp``.

Times are float seconds. A goal is checked with :func:`validate_goal`, played with
:class:`TrajectorySampler` and judged tick by tick with :class:`ExecutionMonitor` (or the
:func:`path_violation` / :func:`goal_state` functions it is made of).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional, Union

import numpy as np

from failrecov_ros.core.limits import JointLimits

#: JointTolerance's "erase" value: the joint is not checked even if a default exists.
ERASE_TOLERANCE = -1.0
#: JTC's default ``constraints.stopped_velocity_tolerance`` (goal velocity tolerance).
DEFAULT_STOPPED_VELOCITY_TOLERANCE = 0.01
_TOLERANCE_FIELDS = ("position", "velocity", "acceleration")
_POINT_FIELDS = ("positions", "velocities", "accelerations")

#: Joint values keyed by name, or ordered like the joint names they go with.
JointValues = Union[Mapping[str, float], Sequence[float], np.ndarray]
#: (positions[, velocities[, accelerations]]) ordered like the joint names; None = not known.
StateLike = Sequence[Optional[Union[Sequence[float], np.ndarray]]]


class ResultCode(enum.IntEnum):
    """``control_msgs/action/FollowJointTrajectory`` result error codes."""

    SUCCESSFUL = 0
    INVALID_GOAL = -1
    INVALID_JOINTS = -2
    OLD_HEADER_TIMESTAMP = -3
    PATH_TOLERANCE_VIOLATED = -4
    GOAL_TOLERANCE_VIOLATED = -5


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


@dataclasses.dataclass(frozen=True)
class TrajectoryPoint:
    """One ``trajectory_msgs/JointTrajectoryPoint``; empty velocities/accelerations mean unset."""

    time_from_start: float
    positions: tuple[float, ...]
    velocities: tuple[float, ...] = ()
    accelerations: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_from_start", float(self.time_from_start))
        for field in _POINT_FIELDS:
            object.__setattr__(self, field, _floats(getattr(self, field)))


@dataclasses.dataclass(frozen=True)
class JointTrajectory:
    """Joint names and points of a ``trajectory_msgs/JointTrajectory`` (header left out)."""

    joint_names: tuple[str, ...]
    points: tuple[TrajectoryPoint, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        object.__setattr__(self, "points", tuple(self.points))


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A ``control_msgs/JointTolerance``: >0 checked, 0 default/unchecked, -1 erased."""

    position: float = 0.0
    velocity: float = 0.0
    acceleration: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrajectoryGoal:
    """The parts of a FollowJointTrajectory goal that decide acceptance and outcome."""

    trajectory: JointTrajectory
    path_tolerance: Mapping[str, Tolerance] = dataclasses.field(default_factory=dict)
    goal_tolerance: Mapping[str, Tolerance] = dataclasses.field(default_factory=dict)
    goal_time_tolerance: float = 0.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A result code with the reason, ready for the action result's error_code/error_string."""

    code: ResultCode
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the code is SUCCESSFUL."""
        return self.code == ResultCode.SUCCESSFUL


_SUCCESS = Verdict(ResultCode.SUCCESSFUL, "")


def _invalid_goal(message: str) -> Verdict:
    return Verdict(ResultCode.INVALID_GOAL, message)


def _invalid_joints(message: str) -> Verdict:
    return Verdict(ResultCode.INVALID_JOINTS, message)


# --------------------------------------------------------------------------------- validation


def validate_goal(
    goal: TrajectoryGoal,
    limits: JointLimits,
    *,
    allow_partial_joints: bool = False,
    check_velocity_limits: bool = False,
    allow_nonzero_velocity_at_trajectory_end: bool = False,
) -> Verdict:
    """Accept or reject ``goal`` for a controller driving the joints of ``limits``.

    JTC's ``validate_trajectory_msg`` checks joints, sizes and strictly increasing times; this
    adds what a safety gate needs before anything moves: finite numbers, positions inside the
    limits, legal tolerances and (optionally) velocities within the joint limits. The first
    problem found is reported, naming the joint and point index. A last point with non-zero
    velocity is rejected unless allowed, as JTC does by default since Jazzy.
    """
    trajectory = goal.trajectory
    names = trajectory.joint_names
    known = ", ".join(limits.names)
    if not names:
        return _invalid_goal("trajectory has no joint_names")
    if not trajectory.points:
        return _invalid_goal("trajectory has no points")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        return _invalid_joints(f"duplicate joint names: {', '.join(duplicates)}")
    for name in names:
        if name not in limits:
            return _invalid_joints(f"unknown joint {name!r}; this controller drives {known}")
    missing = [n for n in limits.names if n not in names]
    if missing and not allow_partial_joints:
        return _invalid_joints(
            f"goal lacks joints {', '.join(missing)}; partial goals are not allowed, "
            f"this controller needs all of {known}"
        )

    problem = _tolerance_problem(goal, limits)
    if problem:
        return _invalid_goal(problem)
    problem = _structure_problem(trajectory)
    if problem:
        return _invalid_goal(problem)
    problem = _position_limit_problem(trajectory, limits)
    if problem:
        return _invalid_goal(problem)
    last = trajectory.points[-1]
    if not allow_nonzero_velocity_at_trajectory_end:
        for name, velocity in zip(names, last.velocities, strict=False):
            if velocity != 0.0:
                return _invalid_goal(
                    f"point {len(trajectory.points) - 1}: {name} velocity {_fmt(velocity)} at "
                    "the trajectory end is not zero"
                )
    if check_velocity_limits:
        problem = _velocity_limit_problem(trajectory, limits)
        if problem:
            return _invalid_goal(problem)
    return _SUCCESS


def _tolerance_problem(goal: TrajectoryGoal, limits: JointLimits) -> Optional[str]:
    # JTC (tolerances.cpp, resolve_tolerance_source) treats a negative value other than -1 and a
    # tolerance for an unknown joint as illegal, warns and falls back to its defaults; a safety
    # gate rejects instead, so the sender learns its tolerances were not what it asked for.
    gtt = goal.goal_time_tolerance
    if math.isnan(gtt) or gtt < 0:
        return f"goal_time_tolerance {gtt} s must be >= 0 (0 waits for the goal indefinitely)"
    for kind, table in (("path", goal.path_tolerance), ("goal", goal.goal_tolerance)):
        for name, tolerance in table.items():
            if name not in limits:
                return (
                    f"{kind}_tolerance names unknown joint {name!r}; this controller drives "
                    f"{', '.join(limits.names)}"
                )
            for field in _TOLERANCE_FIELDS:
                value = float(getattr(tolerance, field))
                if math.isnan(value):
                    return f"{kind}_tolerance of {name}: {field} is NaN"
                if value < 0 and value != ERASE_TOLERANCE:
                    return (
                        f"{kind}_tolerance of {name}: {field} {_fmt(value)} is negative; "
                        "use -1 to erase a tolerance or 0 for the default"
                    )
    return None


def _structure_problem(trajectory: JointTrajectory) -> Optional[str]:
    names = trajectory.joint_names
    count = len(names)
    previous: Optional[float] = None
    for index, point in enumerate(trajectory.points):
        time = point.time_from_start
        if not math.isfinite(time):
            return f"point {index}: time_from_start {time} is not finite"
        if time < 0:
            return f"point {index}: time_from_start {_fmt(time)} s is negative"
        if previous is not None and time <= previous:
            return (
                f"point {index}: time_from_start {_fmt(time)} s is not after point {index - 1} "
                f"({_fmt(previous)} s); times must strictly increase"
            )
        previous = time
        if len(point.positions) != count:
            return f"point {index}: {len(point.positions)} positions for {count} joints"
        for field in _POINT_FIELDS[1:]:
            values = getattr(point, field)
            if values and len(values) != count:
                return (
                    f"point {index}: {len(values)} {field} for {count} joints "
                    "(give none or one per joint)"
                )
        for field in _POINT_FIELDS:
            for name, value in zip(names, getattr(point, field), strict=False):
                if not math.isfinite(value):
                    return f"point {index}: {name} {field[:-1]} {value} is not finite"
    return None


def _position_limit_problem(trajectory: JointTrajectory, limits: JointLimits) -> Optional[str]:
    for index, point in enumerate(trajectory.points):
        for name, position in zip(trajectory.joint_names, point.positions, strict=True):
            joint = limits[name]
            if not joint.contains(position):
                return (
                    f"point {index}: {name} position {_fmt(position)} outside "
                    f"[{_fmt(joint.lower)}, {_fmt(joint.upper)}]"
                )
    return None


def _velocity_limit_problem(trajectory: JointTrajectory, limits: JointLimits) -> Optional[str]:
    # The mean velocity between waypoints is a lower bound on the peak any interpolation reaches;
    # a small relative slack keeps trajectories timed exactly at the limit acceptable.
    slack = 1.0 + 1e-9
    names = trajectory.joint_names
    bounds = [limits[n].velocity for n in names]
    points = trajectory.points
    for index, point in enumerate(points):
        for name, velocity, bound in zip(names, point.velocities, bounds, strict=False):
            if abs(velocity) > bound * slack:
                return (
                    f"point {index}: {name} velocity {_fmt(velocity)} exceeds the limit "
                    f"{_fmt(bound)}"
                )
        if index == 0:
            continue
        before = points[index - 1]
        dt = point.time_from_start - before.time_from_start
        pairs = zip(names, before.positions, point.positions, bounds, strict=True)
        for name, p0, p1, bound in pairs:
            implied = abs(p1 - p0) / dt
            if implied > bound * slack:
                return (
                    f"points {index - 1}->{index}: {name} moves {_fmt(p1 - p0)} in {_fmt(dt)} s "
                    f"({_fmt(implied)}/s), above the velocity limit {_fmt(bound)}"
                )
    return None


# ----------------------------------------------------------------------------------- sampling


class Sample(NamedTuple):
    """Desired state at one instant, ordered like the trajectory's joint names."""

    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Knot:
    time: float
    positions: np.ndarray
    velocities: Optional[np.ndarray]
    accelerations: Optional[np.ndarray]


def _ordered(values: JointValues, names: Sequence[str], what: str) -> np.ndarray:
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"{what} lacks joints {', '.join(missing)}")
        return np.array([float(values[n]) for n in names])
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size != len(names):
        raise ValueError(f"{what} has {array.size} values for {len(names)} joints")
    return array


def _ordered_or_none(
    values: Optional[JointValues], names: Sequence[str], what: str
) -> Optional[np.ndarray]:
    return None if values is None else _ordered(values, names, what)


def _optional(values: Sequence[float]) -> Optional[np.ndarray]:
    return np.array(values, dtype=float) if values else None


def _interpolate(a: _Knot, b: _Knot, time: float) -> Sample:
    """JTC's ``interpolate_between_points``: the spline degree follows what both ends give."""
    duration = b.time - a.time
    s = min(max(time - a.time, 0.0), duration)
    p0, p1 = a.positions, b.positions
    zeros = np.zeros_like(p0)
    if a.velocities is None or b.velocities is None:
        # Linear. JTC also lands here (with zero output, a bug) for accelerations without
        # velocities; linear is what the sender most likely meant.
        slope = (p1 - p0) / duration if duration > 0 else zeros
        return Sample(p0 + slope * s, slope.copy(), zeros)
    v0, v1 = a.velocities, b.velocities
    if duration <= 0:
        return Sample(p0.copy(), v0.copy(), zeros)
    T = duration  # noqa: N806 (the segment duration, as in JTC)
    if a.accelerations is None or b.accelerations is None:
        c2 = (-3.0 * p0 + 3.0 * p1 - 2.0 * v0 * T - v1 * T) / T**2
        c3 = (2.0 * p0 - 2.0 * p1 + v0 * T + v1 * T) / T**3
        return Sample(
            p0 + v0 * s + c2 * s**2 + c3 * s**3,
            v0 + 2.0 * c2 * s + 3.0 * c3 * s**2,
            2.0 * c2 + 6.0 * c3 * s,
        )
    a0, a1 = a.accelerations, b.accelerations
    c2 = 0.5 * a0
    c3 = (20.0 * (p1 - p0) - (3.0 * a0 - a1) * T**2 - (12.0 * v0 + 8.0 * v1) * T) / (2.0 * T**3)
    c4 = (30.0 * (p0 - p1) + (3.0 * a0 - 2.0 * a1) * T**2 + (16.0 * v0 + 14.0 * v1) * T) / (
        2.0 * T**4
    )
    c5 = (12.0 * (p1 - p0) + (a1 - a0) * T**2 - 6.0 * (v0 + v1) * T) / (2.0 * T**5)
    return Sample(
        p0 + v0 * s + c2 * s**2 + c3 * s**3 + c4 * s**4 + c5 * s**5,
        v0 + 2.0 * c2 * s + 3.0 * c3 * s**2 + 4.0 * c4 * s**3 + 5.0 * c5 * s**4,
        2.0 * c2 + 6.0 * c3 * s + 12.0 * c4 * s**2 + 20.0 * c5 * s**3,
    )


class TrajectorySampler:
    """The desired state of a trajectory at any time, as JTC's ``Trajectory::sample`` gives it.

    The trajectory starts at ``start_time`` from the given start state. If the first point's
    time_from_start is > 0 the arm is interpolated from the start state to it; if it is 0 the
    first point is commanded at once. Each segment is linear, cubic or quintic depending on
    whether both of its ends carry velocities and accelerations (the start state carries them
    when ``start_velocities`` / ``start_accelerations`` are given). The trajectory should have
    passed :func:`validate_goal`; only sizes are checked here.
    """

    def __init__(
        self,
        trajectory: JointTrajectory,
        start_positions: JointValues,
        start_velocities: Optional[JointValues] = None,
        start_accelerations: Optional[JointValues] = None,
        start_time: float = 0.0,
    ) -> None:
        names = trajectory.joint_names
        if not names or not trajectory.points:
            raise ValueError("trajectory needs joint names and at least one point")
        self.trajectory = trajectory
        self.start_time = float(start_time)
        self._start = _Knot(
            self.start_time,
            _ordered(start_positions, names, "start_positions"),
            _ordered_or_none(start_velocities, names, "start_velocities"),
            _ordered_or_none(start_accelerations, names, "start_accelerations"),
        )
        knots = []
        for index, point in enumerate(trajectory.points):
            if len(point.positions) != len(names):
                raise ValueError(
                    f"point {index}: {len(point.positions)} positions for {len(names)} joints"
                )
            knots.append(
                _Knot(
                    self.start_time + point.time_from_start,
                    np.array(point.positions, dtype=float),
                    _optional(point.velocities),
                    _optional(point.accelerations),
                )
            )
        self._knots = knots
        self._times = [k.time for k in knots]

    @property
    def joint_names(self) -> tuple[str, ...]:
        """The order of every array this sampler returns."""
        return self.trajectory.joint_names

    @property
    def duration(self) -> float:
        """Seconds from ``start_time`` to the last point."""
        return self.trajectory.points[-1].time_from_start

    @property
    def end_time(self) -> float:
        """Absolute time of the last point."""
        return self.start_time + self.duration

    def reached_end(self, time: float) -> bool:
        """True once ``time`` is at or past the last point (JTC's "whole animation played")."""
        return time >= self.end_time

    def sample(self, time: float) -> Sample:
        """Desired (positions, velocities, accelerations) at absolute ``time``.

        Before ``start_time`` this is the start state; from the last point on it holds the last
        positions with zero velocity and acceleration (JTC copies the last point's velocities,
        which :func:`validate_goal` requires to be zero unless told otherwise).
        """
        start = self._start
        if time < self.start_time:
            zeros = np.zeros_like(start.positions)
            velocities = zeros if start.velocities is None else start.velocities.copy()
            accelerations = zeros if start.accelerations is None else start.accelerations.copy()
            return Sample(start.positions.copy(), velocities, accelerations)
        if self.reached_end(time):
            last = self._knots[-1].positions
            return Sample(last.copy(), np.zeros_like(last), np.zeros_like(last))
        if time < self._times[0]:
            return _interpolate(start, self._knots[0], time)
        index = bisect.bisect_right(self._times, time) - 1
        return _interpolate(self._knots[index], self._knots[index + 1], time)


# --------------------------------------------------------------------------------- tolerances


def _resolve(default: float, requested: float) -> float:
    # tolerances.cpp resolve_tolerance_source: >0 wins, -1 erases (0 = unchecked), 0 keeps the
    # default, any other negative value is illegal.
    if requested > 0:
        return requested
    if requested == ERASE_TOLERANCE:
        return 0.0
    if requested < 0 or math.isnan(requested):
        raise ValueError(f"illegal tolerance {requested}; use -1 to erase or 0 for the default")
    return default


def resolve_tolerances(
    defaults: Mapping[str, Tolerance], requested: Mapping[str, Tolerance]
) -> dict[str, Tolerance]:
    """Goal tolerances laid over the controller's defaults with JointTolerance's 0/-1 rules."""
    resolved = dict(defaults)
    for name, tolerance in requested.items():
        base = defaults.get(name, Tolerance())
        resolved[name] = Tolerance(
            *(_resolve(getattr(base, f), float(getattr(tolerance, f))) for f in _TOLERANCE_FIELDS)
        )
    return resolved


def resolve_goal_time_tolerance(default: float, requested: float) -> float:
    """The goal's goal_time_tolerance over the controller's ``constraints.goal_time``."""
    return _resolve(default, requested)


def _components(state: StateLike) -> list[Optional[np.ndarray]]:
    parts: list[Optional[np.ndarray]] = []
    for index in range(3):
        value = state[index] if index < len(state) else None
        if value is None or len(value) == 0:
            parts.append(None)
        else:
            parts.append(np.asarray(value, dtype=float))
    return parts


def _tolerance_errors(
    names: Sequence[str],
    desired: StateLike,
    actual: StateLike,
    tolerances: Mapping[str, Tolerance],
    kind: str,
) -> list[str]:
    # check_state_tolerance_per_joint: a component is checked when its tolerance is > 0 and both
    # states carry it; the error is desired - actual.
    want, have = _components(desired), _components(actual)
    problems = []
    for j, name in enumerate(names):
        tolerance = tolerances.get(name)
        if tolerance is None:
            continue
        for field, wanted, measured in zip(_TOLERANCE_FIELDS, want, have, strict=True):
            limit = float(getattr(tolerance, field))
            if limit <= 0 or wanted is None or measured is None:
                continue
            error = float(wanted[j] - measured[j])
            if abs(error) > limit:
                problems.append(
                    f"{name} {kind} {field} error {_fmt(error)} exceeds tolerance {_fmt(limit)} "
                    f"(desired {_fmt(float(wanted[j]))}, actual {_fmt(float(measured[j]))})"
                )
    return problems


def path_violation(
    joint_names: Sequence[str],
    desired: StateLike,
    actual: StateLike,
    path_tolerance: Mapping[str, Tolerance],
) -> Optional[str]:
    """Why the arm left the path tolerance, or None while it tracks.

    ``desired`` and ``actual`` are (positions[, velocities[, accelerations]]) ordered like
    ``joint_names``; a missing or None component is not checked. Tolerances <= 0 are unchecked,
    so pass tolerances already merged with :func:`resolve_tolerances`.
    """
    problems = _tolerance_errors(joint_names, desired, actual, path_tolerance, "path")
    return "; ".join(problems) if problems else None


class GoalStatus(str, enum.Enum):
    """Where a finished trajectory stands against its goal tolerance."""

    REACHED = "reached"
    WAITING = "waiting"
    VIOLATED = "violated"


@dataclasses.dataclass(frozen=True)
class GoalCheck:
    """A goal status with the joints and errors that explain it (empty when reached)."""

    status: GoalStatus
    message: str = ""


def goal_state(
    joint_names: Sequence[str],
    actual_positions: Sequence[float],
    actual_velocities: Optional[Sequence[float]],
    last_point: TrajectoryPoint,
    goal_tolerance: Mapping[str, Tolerance],
    elapsed_after_end: float,
    goal_time_tolerance: float,
    actual_accelerations: Optional[Sequence[float]] = None,
) -> GoalCheck:
    """Reached, still settling, or failed: JTC's end-of-trajectory decision.

    The desired end state is the last point, with zero velocity/acceleration where it gives
    none. Inside the goal tolerance -> REACHED. Outside it -> VIOLATED once
    ``elapsed_after_end`` exceeds ``goal_time_tolerance``, otherwise WAITING. A
    ``goal_time_tolerance`` of 0 waits indefinitely, as JTC does (``constraints.goal_time``:
    "If set to zero, the controller will wait a potentially infinite amount of time";
    joint_trajectory_controller.cpp only aborts when ``goal_time_tolerance != 0.0``). Before the
    end (negative ``elapsed_after_end``) the answer is WAITING.
    """
    count = len(joint_names)
    zeros = (0.0,) * count
    desired = (
        last_point.positions,
        last_point.velocities or zeros,
        last_point.accelerations or zeros,
    )
    actual = (actual_positions, actual_velocities, actual_accelerations)
    if elapsed_after_end < 0:
        return GoalCheck(GoalStatus.WAITING, f"trajectory ends in {_fmt(-elapsed_after_end)} s")
    problems = _tolerance_errors(joint_names, desired, actual, goal_tolerance, "goal")
    if not problems:
        return GoalCheck(GoalStatus.REACHED)
    detail = "; ".join(problems)
    if goal_time_tolerance > 0 and elapsed_after_end > goal_time_tolerance:
        return GoalCheck(
            GoalStatus.VIOLATED,
            f"{detail} {_fmt(elapsed_after_end)} s after the trajectory end "
            f"(goal_time_tolerance {_fmt(goal_time_tolerance)} s)",
        )
    return GoalCheck(GoalStatus.WAITING, detail)


class ExecutionMonitor:
    """Decides a running goal's outcome each control tick, following JTC's ``update()``.

    Path tolerance is checked while a segment is active (and on the first tick, in case the
    trajectory is already over); after the last point the goal tolerance decides between
    SUCCESSFUL, GOAL_TOLERANCE_VIOLATED and carrying on (None). Tolerances are taken as
    resolved (see :func:`resolve_tolerances`).
    """

    def __init__(
        self,
        sampler: TrajectorySampler,
        path_tolerance: Mapping[str, Tolerance],
        goal_tolerance: Mapping[str, Tolerance],
        goal_time_tolerance: float = 0.0,
    ) -> None:
        self.sampler = sampler
        self.path_tolerance = dict(path_tolerance)
        self.goal_tolerance = dict(goal_tolerance)
        self.goal_time_tolerance = float(goal_time_tolerance)
        self._sampled = False

    def update(
        self,
        time: float,
        actual_positions: Sequence[float],
        actual_velocities: Optional[Sequence[float]] = None,
    ) -> Optional[Verdict]:
        """The goal's final verdict at ``time``, or None while it is still running."""
        names = self.sampler.joint_names
        desired = self.sampler.sample(time)
        first = not self._sampled
        self._sampled = True
        moving = not self.sampler.reached_end(time)
        if moving or first:
            problem = path_violation(
                names, desired, (actual_positions, actual_velocities), self.path_tolerance
            )
            if problem:
                return Verdict(ResultCode.PATH_TOLERANCE_VIOLATED, problem)
        if moving:
            return None
        check = goal_state(
            names,
            actual_positions,
            actual_velocities,
            self.sampler.trajectory.points[-1],
            self.goal_tolerance,
            time - self.sampler.end_time,
            self.goal_time_tolerance,
        )
        if check.status is GoalStatus.REACHED:
            return _SUCCESS
        if check.status is GoalStatus.VIOLATED:
            return Verdict(ResultCode.GOAL_TOLERANCE_VIOLATED, check.message)
        return None


# ------------------------------------------------------------------------------ partial goals


def merge_partial_goal(
    trajectory: JointTrajectory,
    controller_joints: Sequence[str],
    hold_positions: JointValues,
) -> JointTrajectory:
    """A partial trajectory completed to all ``controller_joints``, in the controller's order.

    JTC's ``fill_partial_goal`` + ``sort_to_local_joint_order``: joints the goal leaves out hold
    ``hold_positions`` (keyed by name or ordered like ``controller_joints``) with zero velocity
    and acceleration wherever a point gives those.
    """
    unknown = [n for n in trajectory.joint_names if n not in controller_joints]
    if unknown:
        raise ValueError(
            f"unknown joints {', '.join(unknown)}; the controller drives "
            f"{', '.join(controller_joints)}"
        )
    if isinstance(hold_positions, Mapping):
        hold = dict(hold_positions)
    else:
        ordered = _ordered(hold_positions, controller_joints, "hold_positions")
        hold = dict(zip(controller_joints, ordered, strict=True))
    source = {n: i for i, n in enumerate(trajectory.joint_names)}
    missing = [n for n in controller_joints if n not in source and n not in hold]
    if missing:
        raise ValueError(f"hold_positions lacks joints {', '.join(missing)}")

    def pick(values: tuple[float, ...], fill: Mapping[str, float]) -> tuple[float, ...]:
        if not values:
            return ()
        return tuple(values[source[n]] if n in source else fill[n] for n in controller_joints)

    zero = dict.fromkeys(controller_joints, 0.0)
    points = tuple(
        TrajectoryPoint(
            p.time_from_start,
            pick(p.positions, hold),
            pick(p.velocities, zero),
            pick(p.accelerations, zero),
        )
        for p in trajectory.points
    )
    return JointTrajectory(tuple(controller_joints), points)
