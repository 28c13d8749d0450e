"""Kinematic safety of a joint path: limits, speed, acceleration, step size and NaN.

One pure check shared by the data engine's kinematic verifier (Dream2Fix's joint-pose verifier:
reject a rollout if any joint leaves its range or any |q'| or |q''| exceeds thresholds calibrated
on successful demonstrations) and the skill executor's safety gate, so the data we train on and
the motions we send obey the same rules.

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
from collections.abc import Iterable

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


def finite_differences(q: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Forward-difference velocity (T-1, n) and acceleration (T-2, n) of positions (T, n)."""
    q = np.asarray(q, dtype=float)
    if q.ndim != 2:
        raise ValueError(f"joint path must be (T, n), got shape {q.shape}")
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    dq = np.diff(q, axis=0) / dt
    return dq, np.diff(dq, axis=0) / dt


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
class SafetyReport:
    """Outcome of a check: ``ok`` and, when not, one human-readable reason per violation."""

    ok: bool
    violations: tuple[str, ...]
    peak_velocity: float
    peak_acceleration: float
    min_limit_margin: float

    def scores(self) -> dict[str, float | bool]:
        """Numbers for provenance records."""
        return {"kinematic_ok": self.ok, "peak_joint_velocity": self.peak_velocity,
                "peak_joint_acceleration": self.peak_acceleration,
                "min_joint_limit_margin": self.min_limit_margin}


def check_joint_path(q: np.ndarray, dt: float, limits: JointLimits, *,
                     thresholds: MotionThresholds | None = None, margin: float = 0.0,
                     max_step: float | None = None) -> SafetyReport:
    """Check positions (T, n) in ``limits`` joint order, sampled every ``dt`` seconds.

    Rejects NaN/inf, positions within ``margin`` of a limit, per-joint speed above the joint's
    velocity limit, pooled |q'| / |q''| above ``thresholds``, per-joint acceleration above the
    joint's acceleration limit, and any waypoint-to-waypoint step above ``max_step``.
    """
    q = np.asarray(q, dtype=float)
    names = limits.names
    if q.ndim != 2 or q.shape[1] != len(names):
        raise ValueError(f"joint path must be (T, {len(names)}), got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        bad = sorted({names[j] for j in np.argwhere(~np.isfinite(q))[:, 1]})
        return SafetyReport(False, (f"non-finite positions in {', '.join(bad)}",),
                            float("nan"), float("nan"), float("nan"))
    violations: list[str] = []
    lower, upper = np.asarray(limits.lower), np.asarray(limits.upper)
    room = np.minimum(q - lower, upper - q)
    min_margin = float(room.min()) if q.size else float("inf")
    for j in np.flatnonzero((room < margin).any(axis=0)):
        t = int(np.argmin(room[:, j]))
        violations.append(f"{names[j]} at {q[t, j]:.4f} is within {margin} of its limits "
                          f"[{lower[j]:.4f}, {upper[j]:.4f}] (sample {t})")
    peak_v = peak_a = 0.0
    if len(q) >= 2:
        dq, ddq = finite_differences(q, dt)
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
    return SafetyReport(not violations, tuple(violations), peak_v, peak_a, min_margin)
