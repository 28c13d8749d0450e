"""Joint trajectories for tool moves: straight Cartesian lines through IK, min-jerk timing.

Every motion the executor sends (skills, corrections, policy deltas) is planned here: IK
waypoints a centimetre apart along a straight line (orientation slerped), then a minimum-jerk
time law stretched until every joint stays within a fraction of its velocity and acceleration
limits, sampled into dense position-only points (a controller interpolates linearly between
them). The safety gate then judges the result; the planner only aims to pass it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pinocchio as pin

from failrecov_ros.core.limits import JointLimits
from failrecov_ros.core.safety import finite_differences, played_from_rest
from failrecov_ros.robots.kinematics import Kinematics, UnreachableError

#: Peak of ds/dtau and |d2s/dtau2| of the min-jerk law s = 10 t^3 - 15 t^4 + 6 t^5.
_MIN_JERK_PEAK_VELOCITY = 1.875
_MIN_JERK_PEAK_ACCELERATION = 10.0 / math.sqrt(3.0)


@dataclasses.dataclass(frozen=True)
class MotionLimits:
    """How fast planned moves go and how densely they are sampled."""

    speed: float = 0.2  # m/s of the TCP along a line (skills choose slower near objects)
    angular_speed: float = 0.8  # rad/s of the TCP orientation
    velocity_fraction: float = 0.4  # of each joint's velocity limit at the peak
    acceleration_fraction: float = 0.4  # of each joint's acceleration limit at the peak
    sample_period: float = 0.05  # s between trajectory points
    waypoint_spacing: float = 0.01  # m between IK waypoints (0.05 rad for rotations)
    min_duration: float = 0.3  # s
    max_branch_jump: float = 0.5  # rad (or m) between neighbouring IK waypoints: a flip

    def __post_init__(self) -> None:
        for name in ("speed", "angular_speed", "sample_period", "waypoint_spacing",
                     "min_duration", "max_branch_jump"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"motion {name} must be positive, got {value}")
        for name in ("velocity_fraction", "acceleration_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"motion {name} must be in (0, 1], got {value}")


DEFAULT_MOTION = MotionLimits()


@dataclasses.dataclass(frozen=True)
class JointPath:
    """Points of a joint trajectory after a start at t = 0 (which is not among them)."""

    joint_names: tuple[str, ...]
    times: np.ndarray  # (N,) s from the start
    positions: np.ndarray  # (N, n)

    @classmethod
    def empty(cls, joint_names) -> JointPath:
        """No motion."""
        names = tuple(joint_names)
        return cls(names, np.zeros(0), np.zeros((0, len(names))))

    def __len__(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        """Time of the last point (0 for no motion)."""
        return float(self.times[-1]) if len(self.times) else 0.0


def min_jerk(tau):
    """The min-jerk time law s(tau), 0 -> 0 and 1 -> 1 with zero speed and acceleration."""
    return 10 * tau**3 - 15 * tau**4 + 6 * tau**5


def _sample(waypoints: np.ndarray, duration: float, period: float) -> tuple[np.ndarray, ...]:
    count = max(1, int(math.ceil(duration / period - 1e-9)))
    tau = np.arange(1, count + 1) / count
    s = min_jerk(tau)
    knots = np.linspace(0.0, 1.0, len(waypoints))
    positions = np.stack([np.interp(s, knots, waypoints[:, j])
                          for j in range(waypoints.shape[1])], axis=1)
    return duration * tau, positions


def _peaks(start: np.ndarray, times: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-joint peak |q'| and |q''| as the safety gate computes them (at rest at both ends)."""
    stamps, path = played_from_rest(start, times, positions)
    dq, ddq = finite_differences(path, 0.0, stamps)
    return np.abs(dq).max(axis=0), np.abs(ddq).max(axis=0)


def time_parameterize(waypoints, limits: JointLimits, motion: MotionLimits, *,
                      min_duration: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Times and positions (start excluded) of a min-jerk pass through ``waypoints`` (K+1, n).

    ``waypoints[0]`` is the start. The duration is the longest of ``min_duration``, the motion's
    minimum and what keeps every joint within the velocity/acceleration fractions of ``limits``,
    checked on the sampled points and stretched until it holds.
    """
    waypoints = np.asarray(waypoints, dtype=float)
    if len(waypoints) < 2:
        raise ValueError("a move needs a start and at least one waypoint")
    k = len(waypoints) - 1
    slope = np.abs(np.diff(waypoints, axis=0)).max(axis=0) * k  # |dq/ds|
    bend = (np.abs(np.diff(waypoints, n=2, axis=0)).max(axis=0) * k * k
            if k > 1 else np.zeros(waypoints.shape[1]))
    v_max = limits.velocity * motion.velocity_fraction
    a_max = limits.acceleration * motion.acceleration_fraction
    duration = max(motion.min_duration, min_duration,
                   float(np.max(_MIN_JERK_PEAK_VELOCITY * slope / v_max)))
    with np.errstate(invalid="ignore"):
        need = (bend * _MIN_JERK_PEAK_VELOCITY**2 + slope * _MIN_JERK_PEAK_ACCELERATION) / a_max
    need = need[np.isfinite(need)]
    if need.size:
        duration = max(duration, math.sqrt(float(np.max(need))))
    for _ in range(30):
        times, positions = _sample(waypoints, duration, motion.sample_period)
        speed, accel = _peaks(waypoints[0], times, positions)
        if np.all(speed <= v_max * 1.001) and np.all(accel <= a_max * 1.001):
            return times, positions
        duration *= 1.25
    raise UnreachableError(f"cannot time a move within the joint limits (tried {duration:.1f} s)")


def interpolate_pose(start: np.ndarray, goal: np.ndarray, s: float) -> np.ndarray:
    """The pose a fraction ``s`` along the straight line (and the shortest rotation) to ``goal``."""
    out = np.eye(4)
    out[:3, 3] = start[:3, 3] + s * (goal[:3, 3] - start[:3, 3])
    turn = pin.log3(goal[:3, :3] @ start[:3, :3].T)
    out[:3, :3] = pin.exp3(s * turn) @ start[:3, :3]
    return out


def plan_cartesian(kinematics: Kinematics, q_start, target, motion: MotionLimits, *,
                   speed: float | None = None) -> JointPath:
    """Joint path moving the TCP in a straight line to ``target`` (4x4, base frame).

    Raises :class:`UnreachableError` (with the reason) when a waypoint has no IK solution or
    the solutions jump branches. A target already reached gives an empty path.
    """
    q_start = np.asarray(q_start, dtype=float)
    target = np.asarray(target, dtype=float)
    start = kinematics.fk(q_start)
    distance = float(np.linalg.norm(target[:3, 3] - start[:3, 3]))
    angle = float(np.linalg.norm(pin.log3(target[:3, :3] @ start[:3, :3].T)))
    count = int(math.ceil(max(distance / motion.waypoint_spacing, angle / 0.05)))
    if count == 0 or (distance < 1e-5 and angle < 1e-4):
        return JointPath.empty(kinematics.joint_names)
    waypoints = [q_start]
    for index in range(1, count + 1):
        pose = interpolate_pose(start, target, index / count)
        try:
            q = kinematics.ik(pose, waypoints[-1])
        except UnreachableError as error:
            raise UnreachableError(
                f"waypoint {index}/{count} of the line to {np.round(target[:3, 3], 4).tolist()}:"
                f" {error}") from None
        jump = float(np.max(np.abs(q - waypoints[-1])))
        if jump > motion.max_branch_jump:
            raise UnreachableError(f"IK jumps {jump:.2f} between waypoints {index - 1} and "
                                   f"{index} (a singularity or joint limit on the line)")
        waypoints.append(q)
    duration = max(distance / (speed or motion.speed), angle / motion.angular_speed)
    times, positions = time_parameterize(np.array(waypoints), kinematics.limits, motion,
                                         min_duration=_MIN_JERK_PEAK_VELOCITY * duration)
    return JointPath(kinematics.joint_names, times, positions)


def plan_joint(limits: JointLimits, q_start, q_goal, motion: MotionLimits) -> JointPath:
    """Joint path straight in joint space from ``q_start`` to ``q_goal`` (home, named poses)."""
    q_start = np.asarray(q_start, dtype=float)
    q_goal = np.asarray(q_goal, dtype=float)
    if q_goal.shape != q_start.shape:
        raise ValueError(f"goal has {q_goal.size} joints, the arm {q_start.size}")
    if float(np.max(np.abs(q_goal - q_start))) < 1e-5:
        return JointPath.empty(limits.names)
    times, positions = time_parameterize(np.array([q_start, q_goal]), limits, motion)
    return JointPath(limits.names, times, positions)
