"""Kinematic safety of a joint path: limits, speed, acceleration, step size, workspace and NaN.

One pure check shared by the data engine's kinematic verifier (Dream2Fix's joint-pose verifier:
reject a rollout if any joint leaves its range or any |q'| or |q''| exceeds thresholds calibrated
on successful demonstrations) and the skill executor's safety gate (:class:`SafetyGate`), so the
data we train on and the motions we send obey the same rules. The gate adds the tool's workspace
(a box in the robot base frame and the table top it must clear, through the forward kinematics
of every sample) and judges a trajectory the way a controller plays it: from the arm's current
state at rest, linearly between the points, to rest at the end.

Calibration note: Dream2Fix sets the thresholds to the 95th percentile of |q'| and |q''| pooled
over every time step and joint of the successful demonstrations. Applied literally with the
paper's "reject if any sample exceeds" rule, that rejects 5% of every clean demonstration's
samples, i.e. nearly every demonstration. We therefore pool over joints and time *within* a
demonstration (its peak) and take the percentile *across* demonstrations
(``statistic="episode_peak"``, the default), so the stated percentile of clean demonstrations
passes; ``statistic="samples"`` gives the paper's literal pooling.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from failrecov_ros.core.limits import JointLimits

STATISTICS = ("episode_peak", "samples")


@dataclasses.dataclass(frozen=True)
class MotionThresholds:
    """Bounds on |q'| (rad/s or m/s) and |q''| pooled over joints, and where they came from."""

    velocity: float
    acceleration: float
    percentile: float = 95.0
    statistic: str = "episode_peak"
    demonstrations: int = 0

    def scaled(self, factor: float) -> MotionThresholds:
        """The same thresholds times ``factor`` (a tolerance on top of the calibration)."""
        return dataclasses.replace(self, velocity=self.velocity * factor,
                                   acceleration=self.acceleration * factor)

    def to_dict(self) -> dict[str, float | int | str]:
        """JSON-ready form for provenance records."""
        return dataclasses.asdict(self)


def finite_differences(q: np.ndarray, dt: float,
                       times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Forward-difference velocity (T-1, n) and acceleration (T-2, n) of positions (T, n).

    With ``times`` (T,) strictly increasing sample times, ``dt`` is ignored and the differences
    use the actual spacing (acceleration over the mean of neighbouring intervals), which equals
    the uniform formula when the spacing is uniform.
    """
    q = np.asarray(q, dtype=float)
    if q.ndim != 2:
        raise ValueError(f"joint path must be (T, n), got shape {q.shape}")
    if times is None:
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        dq = np.diff(q, axis=0) / dt
        return dq, np.diff(dq, axis=0) / dt
    times = np.asarray(times, dtype=float)
    if times.shape != (len(q),):
        raise ValueError(f"times must be ({len(q)},), got shape {times.shape}")
    steps = np.diff(times)
    if not np.all(steps > 0):
        raise ValueError("times must be finite and strictly increasing")
    dq = np.diff(q, axis=0) / steps[:, None]
    return dq, np.diff(dq, axis=0) / ((steps[:-1] + steps[1:]) / 2.0)[:, None]


def calibrate_thresholds(paths: Iterable[np.ndarray], dt: float, *, percentile: float = 95.0,
                         statistic: str = "episode_peak") -> MotionThresholds:
    """Thresholds from successful demonstrations' joint paths sampled every ``dt`` seconds."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    speeds, accels, count = [], [], 0
    for path in paths:
        dq, ddq = finite_differences(path, dt)
        if len(ddq) == 0:
            continue
        count += 1
        if statistic == "episode_peak":
            speeds.append(np.abs(dq).max())
            accels.append(np.abs(ddq).max())
        else:
            speeds.append(np.abs(dq).ravel())
            accels.append(np.abs(ddq).ravel())
    if count == 0:
        raise ValueError("no demonstration with at least 3 samples to calibrate on")
    v = np.percentile(np.hstack(speeds), percentile)
    a = np.percentile(np.hstack(accels), percentile)
    return MotionThresholds(float(v), float(a), percentile, statistic, count)


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Where the tool centre point may go: a box in the robot base frame above a table top.

    ``table_z`` is the height of the table top (None: no table); the TCP must stay at least
    ``table_clearance`` above it everywhere in the box (the fingertips reach below the TCP).
    """

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    table_z: float | None = None
    table_clearance: float = 0.0

    def __post_init__(self) -> None:
        values = [*self.lower, *self.upper, self.table_clearance]
        if self.table_z is not None:
            values.append(self.table_z)
        if len(self.lower) != 3 or len(self.upper) != 3 or not all(
                math.isfinite(v) for v in values):
            raise ValueError(f"workspace needs finite 3-D bounds, got {self}")
        if any(lo >= hi for lo, hi in zip(self.lower, self.upper, strict=True)):
            raise ValueError(f"workspace lower {self.lower} must be below upper {self.upper}")
        if self.table_clearance < 0:
            raise ValueError(f"table_clearance must be >= 0, got {self.table_clearance}")

    @property
    def floor(self) -> float:
        """Lowest TCP height allowed: the box bottom or the table top plus clearance."""
        if self.table_z is None:
            return self.lower[2]
        return max(self.lower[2], self.table_z + self.table_clearance)

    def violations(self, points: np.ndarray) -> list[str]:
        """One line per bound the TCP ``points`` (T, 3) cross, naming the first sample."""
        points = np.asarray(points, dtype=float).reshape(-1, 3)
        problems = []
        for axis, name in enumerate("xyz"):
            low = self.floor if axis == 2 else self.lower[axis]
            for bad, bound, word in ((points[:, axis] < low, low, "below"),
                                     (points[:, axis] > self.upper[axis], self.upper[axis],
                                      "above")):
                if bad.any():
                    t = int(np.argmax(bad))
                    where = ("the table top + clearance" if axis == 2 and word == "below"
                             and self.table_z is not None and low > self.lower[2]
                             else "the workspace")
                    problems.append(f"TCP {name} = {points[t, axis]:.4f} m is {word} {where} "
                                    f"bound {bound:.4f} m (sample {t})")
        return problems


@dataclasses.dataclass(frozen=True)
class SafetyReport:
    """Outcome of a check: ``ok`` and, when not, one human-readable reason per violation."""

    ok: bool
    violations: tuple[str, ...]
    peak_velocity: float
    peak_acceleration: float
    min_limit_margin: float
    #: Lowest TCP height over the path (nan when no workspace was checked).
    min_tcp_height: float = float("nan")

    def scores(self) -> dict[str, float | bool]:
        """Numbers for provenance records."""
        return {"kinematic_ok": self.ok, "peak_joint_velocity": self.peak_velocity,
                "peak_joint_acceleration": self.peak_acceleration,
                "min_joint_limit_margin": self.min_limit_margin}


def check_joint_path(q: np.ndarray, dt: float | None, limits: JointLimits, *,
                     thresholds: MotionThresholds | None = None, margin: float = 0.0,
                     max_step: float | None = None, times: np.ndarray | None = None,
                     workspace: Workspace | None = None,
                     fk: Callable[[np.ndarray], np.ndarray] | None = None,
                     fk_resolution: float | None = None, measured: int = 0) -> SafetyReport:
    """Check positions (T, n) in ``limits`` joint order, sampled every ``dt`` seconds.

    Rejects NaN/inf, positions within ``margin`` of a limit, per-joint speed above the joint's
    velocity limit, pooled |q'| / |q''| above ``thresholds``, per-joint acceleration above the
    joint's acceleration limit, and any waypoint-to-waypoint step above ``max_step``. Non-uniform
    samples give their ``times`` (T,) instead of ``dt``. With a ``workspace``, ``fk`` (q -> 4x4
    TCP pose in the base frame) places the TCP at every sample and, on a path with no other
    violation, at points between samples no more than ``fk_resolution`` apart in any joint (the
    path is straight in joint space between samples, not in Cartesian space); a TCP that leaves
    the workspace is reported with the index of that (densified) point.

    The first ``measured`` samples are the arm's measured start, not commands: they only have to
    be inside the limits, and where the start is already within ``margin`` of a limit, the
    commanded samples may be as close as the start but no closer, so an arm resting near a
    limit can hold or move away from it but not further in.
    """
    q = np.asarray(q, dtype=float)
    names = limits.names
    if q.ndim != 2 or q.shape[1] != len(names):
        raise ValueError(f"joint path must be (T, {len(names)}), got shape {q.shape}")
    if workspace is not None and fk is None:
        raise ValueError("a workspace check needs the forward kinematics fk")
    if times is not None:
        times = np.asarray(times, dtype=float)
        if times.shape != (len(q),) or not np.all(np.isfinite(times)):
            return SafetyReport(False, (f"sample times must be {len(q)} finite numbers",),
                                float("nan"), float("nan"), float("nan"))
        if len(times) > 1 and not np.all(np.diff(times) > 0):
            return SafetyReport(False, ("sample times must strictly increase",),
                                float("nan"), float("nan"), float("nan"))
    if not np.all(np.isfinite(q)):
        bad = sorted({names[j] for j in np.argwhere(~np.isfinite(q))[:, 1]})
        return SafetyReport(False, (f"non-finite positions in {', '.join(bad)}",),
                            float("nan"), float("nan"), float("nan"))
    violations: list[str] = []
    lower, upper = np.asarray(limits.lower), np.asarray(limits.upper)
    below, above = q - lower, upper - q  # room to each limit
    room = np.minimum(below, above)
    min_margin = float(room.min()) if q.size else float("inf")
    # Room each sample must keep to each limit: the margin, relaxed for commands to what the
    # measured start already has where it is closer, and only the limit itself at the start.
    need_below, need_above = np.full(q.shape, float(margin)), np.full(q.shape, float(margin))
    if measured and len(q):
        need_below[measured:] = np.clip(below[:measured].min(axis=0), 0.0, margin)
        need_above[measured:] = np.clip(above[:measured].min(axis=0), 0.0, margin)
        need_below[:measured] = need_above[:measured] = 0.0
    short = (below < need_below) | (above < need_above)
    relaxed = (need_below < margin) | (need_above < margin)
    for j in np.flatnonzero(short.any(axis=0)):
        if short[:measured, j].any():
            t = int(np.argmax(short[:measured, j]))
            violations.append(f"{names[j]} starts at {q[t, j]:.4f}, outside its limits "
                              f"[{lower[j]:.4f}, {upper[j]:.4f}]")
        if short[measured:, j].any():
            bad = measured + np.flatnonzero(short[measured:, j])
            t = int(bad[np.argmin(room[bad, j])])
            closer = " and closer than its start" if relaxed[t, j] else ""
            violations.append(f"{names[j]} at {q[t, j]:.4f} is within {margin} of its limits "
                              f"[{lower[j]:.4f}, {upper[j]:.4f}]{closer} (sample {t})")
    peak_v = peak_a = 0.0
    if len(q) >= 2:
        dq, ddq = finite_differences(q, dt, times)
        peak_v = float(np.abs(dq).max())
        peak_a = float(np.abs(ddq).max()) if len(ddq) else 0.0
        velocity = np.asarray(limits.velocity)
        for j in np.flatnonzero((np.abs(dq) > velocity).any(axis=0)):
            violations.append(f"{names[j]} speed {np.abs(dq[:, j]).max():.3f} exceeds its limit "
                              f"{velocity[j]:.3f}")
        acceleration = limits.acceleration
        if acceleration is not None and len(ddq):
            acceleration = np.asarray(acceleration)
            for j in np.flatnonzero((np.abs(ddq) > acceleration).any(axis=0)):
                violations.append(f"{names[j]} acceleration {np.abs(ddq[:, j]).max():.3f} "
                                  f"exceeds its limit {acceleration[j]:.3f}")
        if thresholds is not None:
            if peak_v > thresholds.velocity:
                violations.append(f"peak joint speed {peak_v:.3f} exceeds the calibrated "
                                  f"{thresholds.velocity:.3f}")
            if peak_a > thresholds.acceleration:
                violations.append(f"peak joint acceleration {peak_a:.3f} exceeds the calibrated "
                                  f"{thresholds.acceleration:.3f}")
        if max_step is not None:
            step = np.abs(np.diff(q, axis=0)).max()
            if step > max_step:
                violations.append(f"waypoint step {step:.4f} exceeds {max_step}")
    min_height = float("nan")
    if workspace is not None:
        # Between samples only for a path that is otherwise fine: a rejected path needs no more
        # evidence, and densifying a wild jump (a corrupted point) would cost without bound.
        dense = densify(q, fk_resolution) if fk_resolution and not violations else q
        tcp = np.array([np.asarray(fk(row), dtype=float)[:3, 3] for row in dense])
        min_height = float(tcp[:, 2].min()) if len(tcp) else float("nan")
        if not np.all(np.isfinite(tcp)):
            violations.append("forward kinematics gave a non-finite TCP position")
        else:
            violations += workspace.violations(tcp)
    return SafetyReport(not violations, tuple(violations), peak_v, peak_a, min_margin,
                        min_height)


def densify(q: np.ndarray, resolution: float) -> np.ndarray:
    """The path (T, n) with points inserted on each straight segment, <= ``resolution`` apart."""
    q = np.asarray(q, dtype=float)
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if len(q) < 2:
        return q
    rows = [q[:1]]
    for a, b in zip(q[:-1], q[1:], strict=True):
        count = max(1, int(math.ceil(float(np.max(np.abs(b - a))) / resolution)))
        s = np.arange(1, count + 1)[:, None] / count
        rows.append(a + s * (b - a))
    return np.vstack(rows)


def played_from_rest(start, times, positions) -> tuple[np.ndarray, np.ndarray]:
    """Sample times and positions of points ``positions`` at ``times`` as a controller plays them.

    The arm rests at ``start`` before t = 0 and at the last point after the end: one virtual
    sample either side, spaced like the neighbouring interval, so starting or stopping abruptly
    shows as acceleration in finite differences. The two leading rows are the start (measured,
    not commanded). ``times`` must be non-empty.
    """
    times = np.asarray(times, dtype=float).reshape(-1)
    positions = np.asarray(positions, dtype=float)
    first, last = times[0], times[-1] - (times[-2] if len(times) > 1 else 0.0)
    stamps = np.concatenate([[-first, 0.0], times, [times[-1] + last]])
    return stamps, np.vstack([start, start, positions, positions[-1]])


#: Leading rows of :func:`played_from_rest`'s path that are the measured start state.
REST_START_SAMPLES = 2


@dataclasses.dataclass(frozen=True)
class SafetyGate:
    """The one check every motion passes before it reaches a controller.

    Whatever its source (a skill, the recovery monitor's correction, an external policy's
    end-effector delta), a trajectory is judged as the controller will play it: from ``start``
    (the arm's current joints, at rest) at t = 0, straight between the points (position-only
    points are interpolated linearly), coming to rest at the last point. The joint margin
    applies to the commanded points; the start, where the arm already is, only has to be inside
    the limits, and an arm resting within the margin may hold or move away, never further in
    (see :func:`check_joint_path`'s ``measured``). Gripper commands pass :meth:`check_gripper`.
    Rejections carry one reason per violation.
    """

    limits: JointLimits
    margin: float = 0.0
    max_step: float | None = None
    thresholds: MotionThresholds | None = None
    workspace: Workspace | None = None
    fk: Callable[[np.ndarray], np.ndarray] | None = None
    fk_resolution: float | None = 0.05
    gripper_range: tuple[float, float] | None = None
    #: A gripper target allowed outside ``gripper_range``: the squeeze (see check_gripper).
    squeeze_width: float | None = None
    max_grasp_force: float | None = None
    max_points: int = 10000
    max_duration: float = 120.0

    def __post_init__(self) -> None:
        if self.workspace is not None and self.fk is None:
            raise ValueError("a workspace check needs the forward kinematics fk")
        if self.margin < 0 or (self.max_step is not None and not self.max_step > 0):
            raise ValueError("margin must be >= 0 and max_step > 0")
        if self.max_grasp_force is not None and not (
                math.isfinite(self.max_grasp_force) and self.max_grasp_force > 0):
            raise ValueError(f"max_grasp_force must be positive, got {self.max_grasp_force}")
        if self.squeeze_width is not None and not math.isfinite(self.squeeze_width):
            raise ValueError(f"squeeze_width must be finite, got {self.squeeze_width}")

    def check_trajectory(self, start: Sequence[float], times: Sequence[float],
                         positions) -> SafetyReport:
        """Check points ``positions`` (N, n) at ``times`` (N,) s after a start at ``start``."""
        n = len(self.limits)

        def reject(reason: str) -> SafetyReport:
            return SafetyReport(False, (reason,), float("nan"), float("nan"), float("nan"))

        try:
            start = np.asarray(start, dtype=float).reshape(-1)
            times = np.asarray(times, dtype=float).reshape(-1)
            positions = np.asarray(positions, dtype=float)
        except (TypeError, ValueError) as error:
            return reject(f"trajectory is not numeric: {error}")
        if start.shape != (n,):
            return reject(f"start state has {start.size} joints, expected {n}")
        if not np.all(np.isfinite(start)):
            return reject("start state is not finite")
        if len(times) == 0:
            return reject("trajectory has no points")
        if len(times) > self.max_points:
            return reject(f"trajectory has {len(times)} points, more than {self.max_points}")
        if positions.ndim != 2 or positions.shape != (len(times), n):
            return reject(f"positions must be ({len(times)}, {n}), got {positions.shape}")
        if not np.all(np.isfinite(times)):
            return reject("time_from_start values must be finite")
        if times[0] <= 0:
            return reject(f"the first point's time_from_start {times[0]:.4g} s must be > 0 "
                          "(a point at t = 0 is a jump from the current state)")
        if np.any(np.diff(times) <= 0):
            return reject("time_from_start must strictly increase")
        if times[-1] > self.max_duration:
            return reject(f"trajectory lasts {times[-1]:.1f} s, more than {self.max_duration} s")
        # The margin is for what we command; the start is where the arm is, judged against
        # the hard limits only, so an arm resting near a limit can still move away from it.
        stamps, path = played_from_rest(start, times, positions)
        return check_joint_path(path, None, self.limits, thresholds=self.thresholds,
                                margin=self.margin, max_step=self.max_step, times=stamps,
                                workspace=self.workspace, fk=self.fk,
                                fk_resolution=self.fk_resolution, measured=REST_START_SAMPLES)

    def check_gripper(self, width: float, force: float | None = None) -> SafetyReport:
        """Check a gripper command: the width (m) it is sent to and its force (N), if any.

        The width must lie in ``gripper_range``, or be exactly ``squeeze_width``: the one
        allowed target outside it, for grippers that grasp by being driven past closed and
        stalling on what they hold (stretch_driver's gripper_aperture has no force command).
        A force must be finite, >= 0 and at most ``max_grasp_force`` when one is set.
        """
        problems = []
        squeeze = self.squeeze_width is not None and math.isfinite(width) and abs(
            width - self.squeeze_width) <= 1e-9
        if not math.isfinite(width):
            problems.append(f"gripper width {width} is not finite")
        elif self.gripper_range is not None and not squeeze:
            low, high = self.gripper_range
            if not low - 1e-9 <= width <= high + 1e-9:
                allowed = ("" if self.squeeze_width is None
                           else f" (or the squeeze width {self.squeeze_width:.4f} m)")
                problems.append(f"gripper width {width:.4f} m outside [{low:.4f}, {high:.4f}] m"
                                + allowed)
        if force is not None:
            if not (math.isfinite(force) and force >= 0):
                problems.append(f"gripper force {force} N must be finite and >= 0")
            elif self.max_grasp_force is not None and force > self.max_grasp_force + 1e-9:
                problems.append(f"gripper force {force:.1f} N exceeds the hand's "
                                f"{self.max_grasp_force:.1f} N")
        return SafetyReport(not problems, tuple(problems), 0.0, 0.0, float("nan"))
