"""stretch_driver's FollowJointTrajectory server and robot services, without ROS.

What ``stretch_core``'s driver decides for a goal: joint names as stretch_driver takes them
(``robots.stretch.expand_command``: the arm split over its four links, ``gripper_aperture`` to
both fingers, ``translate_mobile_base``/``rotate_mobile_base`` relative and position mode only),
the result codes of ``control_msgs`` with a reason, one goal at a time (a new goal is refused
while one runs, unlike joint_trajectory_controller), the position/navigation/trajectory modes,
``stop_the_robot`` (which here also aborts the active goal: stretch_ros2 #188 left it running),
``home_the_robot``/``stow_the_robot`` and the runstop. The expanded goal is validated and played
with ``core.trajectory``. It steps with the physics of a ``Simulation`` of the Stretch.

Simplifications: in position and navigation mode the points' times are replaced by times from
the joints' speed limits (stretch_driver moves each point at the robot's own speeds); in
trajectory mode the given times are used, with linear interpolation between points (velocities
and accelerations in the goal are ignored) and the multi-DOF base trajectory is not supported;
the goal's path and goal tolerances are ignored (the driver's own tolerances apply).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from failrecov_ros.core.limits import JointLimit, JointLimits
from failrecov_ros.core.trajectory import (
    ExecutionMonitor,
    JointTrajectory,
    ResultCode,
    Tolerance,
    TrajectoryGoal,
    TrajectoryPoint,
    TrajectorySampler,
    Verdict,
    resolve_goal_time_tolerance,
    validate_goal,
)
from failrecov_ros.robots import stretch
from failrecov_ros.sim import stretch_model
from failrecov_ros.sim.scene import Simulation

BASE_X, BASE_Y, BASE_YAW = stretch_model.BASE_JOINTS
#: Limits of every joint the controller drives: the planar base, then ``stretch.JOINTS``.
LIMITS = JointLimits.of([
    JointLimit(BASE_X, -1e3, 1e3, stretch.BASE_MAX_SPEED, stretch.BASE_MAX_ACCELERATION),
    JointLimit(BASE_Y, -1e3, 1e3, stretch.BASE_MAX_SPEED, stretch.BASE_MAX_ACCELERATION),
    JointLimit(BASE_YAW, -1e3, 1e3, stretch.BASE_MAX_TURN_RATE),
    *(stretch.JOINT_LIMITS[n] for n in stretch.JOINTS),
])
#: Result code of a goal aborted by a stop, a mode switch or the runstop (control_msgs has no
#: better one; the message says what happened).
ABORTED = ResultCode.INVALID_GOAL


@dataclasses.dataclass(frozen=True)
class StretchDefaults:
    """The driver's own success criteria and speeds."""

    slide_tolerance: float = 0.01  # m: lift and arm links
    hinge_tolerance: float = 0.05  # rad: wrist and head
    base_translate_tolerance: float = stretch.BASE_TRANSLATE_TOLERANCE
    base_rotate_tolerance: float = stretch.BASE_ROTATE_TOLERANCE
    goal_time_tolerance: float = 3.0  # s after the last point for the joints to settle
    speed_fraction: float = 0.6  # of the velocity limits, for position-mode timing
    min_segment_s: float = 0.2


def _tolerance(name: str, defaults: StretchDefaults) -> float:
    if name in stretch.FINGER_JOINTS:
        return 0.0  # unchecked: the fingers stall on what they grasp, as the real gripper does
    if name in (BASE_X, BASE_Y):
        return defaults.base_translate_tolerance
    if name == BASE_YAW:
        return defaults.base_rotate_tolerance
    if name == stretch.LIFT or name in stretch.TELESCOPING_JOINTS:
        return defaults.slide_tolerance
    return defaults.hinge_tolerance


class StretchController:
    """One goal at a time for the Stretch, with stretch_driver's modes, stop, home/stow, runstop.

    ``start``, ``home``, ``stow`` return a Verdict (SUCCESSFUL = started); ``update`` is called
    every physics step and returns the running motion's verdict once it ends; ``stop``,
    ``set_mode`` and ``set_runstop`` return the aborted motion's verdict, if one was running.
    """

    def __init__(self, sim: Simulation, defaults: StretchDefaults = StretchDefaults()) -> None:
        if sim.config.robot != "stretch":
            raise ValueError(f"a Stretch controller needs a Stretch scene, not {sim.config.robot}")
        self.sim, self.defaults = sim, defaults
        model = sim.model
        self._qpos = {n: model.joint(n).qposadr[0] for n in LIMITS.names}
        self._dof = {n: model.joint(n).dofadr[0] for n in LIMITS.names}
        self._ctrl = {n: model.actuator(stretch_model.actuator_name(n)).id for n in LIMITS.names}
        self.mode = stretch.POSITION_MODE
        self.runstopped = False
        self.motion: str | None = None  # "goal", "home" or "stow" while something runs
        self._sampler: TrajectorySampler | None = None
        self._monitor: ExecutionMonitor | None = None
        self._names: tuple[str, ...] = ()

    # --- state ---------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while a goal or a home/stow motion runs."""
        return self.motion is not None

    def positions(self, names=None) -> np.ndarray:
        """Joint positions (default: every joint of LIMITS, in its order)."""
        names = LIMITS.names if names is None else names
        return np.array([self.sim.data.qpos[self._qpos[n]] for n in names])

    def velocities(self, names=None) -> np.ndarray:
        """Joint velocities (default: every joint of LIMITS, in its order)."""
        names = LIMITS.names if names is None else names
        return np.array([self.sim.data.qvel[self._dof[n]] for n in names])

    def targets(self, names=None) -> np.ndarray:
        """The servos' current position targets."""
        names = LIMITS.names if names is None else names
        return np.array([self.sim.data.ctrl[self._ctrl[n]] for n in names])

    def joint_positions(self) -> dict[str, float]:
        """Every joint's position by name (base joints included)."""
        return dict(zip(LIMITS.names, self.positions().tolist(), strict=True))

    def joint_velocities(self) -> dict[str, float]:
        """Every joint's velocity by name (base joints included)."""
        return dict(zip(LIMITS.names, self.velocities().tolist(), strict=True))

    def joint_state(self) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
        """Names, positions and velocities as stretch_driver publishes them on joint_states."""
        names, positions = stretch.joint_state(self.joint_positions())
        _, velocities = stretch.joint_state(self.joint_velocities())  # linear, so this holds
        return names, positions, velocities

    def _set_targets(self, names, values) -> None:
        for name, value in zip(names, values, strict=True):
            self.sim.data.ctrl[self._ctrl[name]] = value

    # --- goals -------------------------------------------------------------------------------
    def _refusal(self) -> Verdict | None:
        if self.runstopped:
            return Verdict(ResultCode.INVALID_GOAL,
                           "runstop is active: the robot does not move until runstop is released")
        if self.active:
            return Verdict(ResultCode.INVALID_GOAL,
                           f"a {self.motion} motion is active; stretch_driver takes one goal at a "
                           "time (wait for it or stop_the_robot)")
        return None

    def start(self, goal: TrajectoryGoal) -> Verdict:
        """Validate ``goal`` (stretch_driver names) and, if valid and idle, start it now."""
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        trajectory = goal.trajectory
        names = tuple(trajectory.joint_names)
        if not names:
            return Verdict(ResultCode.INVALID_GOAL, "trajectory has no joint_names")
        unknown = [n for n in names if n not in stretch.COMMAND_NAMES]
        if unknown:
            return Verdict(ResultCode.INVALID_JOINTS,
                           f"unknown joints {unknown}; stretch_driver accepts "
                           f"{', '.join(stretch.COMMAND_NAMES)}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            return Verdict(ResultCode.INVALID_JOINTS,
                           f"duplicate joint names: {', '.join(duplicates)}")
        if not trajectory.points:
            return Verdict(ResultCode.INVALID_GOAL, "trajectory has no points")
        base_start = self.positions((BASE_X, BASE_Y, BASE_YAW))
        rows: list[dict[str, float]] = []
        for index, point in enumerate(trajectory.points):
            try:
                command = stretch.expand_command(names, point.positions, mode=self.mode)
            except stretch.CommandError as error:
                return Verdict(ResultCode.INVALID_GOAL, f"point {index}: {error}")
            row = dict(command.joints)
            if any(n in names for n in stretch.BASE_COMMANDS):
                row.update(zip((BASE_X, BASE_Y, BASE_YAW),
                               stretch.base_goal(*base_start, command.translate, command.rotate),
                               strict=True))
            rows.append(row)
        joints = tuple(n for n in LIMITS.names if n in rows[0])
        if self.mode == stretch.TRAJECTORY_MODE:
            times = [p.time_from_start for p in trajectory.points]
        else:
            times = self._timing(joints, [[row[n] for n in joints] for row in rows])
        expanded = TrajectoryGoal(JointTrajectory(joints, tuple(
            TrajectoryPoint(t, tuple(row[n] for n in joints))
            for t, row in zip(times, rows, strict=True))))
        verdict = validate_goal(expanded, LIMITS, allow_partial_joints=True)
        if not verdict.ok:
            return verdict
        try:
            goal_time = resolve_goal_time_tolerance(self.defaults.goal_time_tolerance,
                                                    goal.goal_time_tolerance)
        except ValueError as error:
            return Verdict(ResultCode.INVALID_GOAL, str(error))
        self._play(expanded.trajectory, "goal", goal_time)
        return Verdict(ResultCode.SUCCESSFUL)

    def _timing(self, joints, rows) -> list[float]:
        """Point times from the speed limits: each point reached at the robot's own speed."""
        speeds = np.array([LIMITS[n].velocity for n in joints]) * self.defaults.speed_fraction
        previous, elapsed, times = self.targets(joints), 0.0, []
        for row in rows:
            row = np.asarray(row, float)
            span = float(np.max(np.abs(row - previous) / speeds)) if len(row) else 0.0
            elapsed += max(span, self.defaults.min_segment_s)
            times.append(elapsed)
            previous = row
        return times

    def _play(self, trajectory: JointTrajectory, motion: str, goal_time: float) -> None:
        names = trajectory.joint_names
        goal_tol = {n: Tolerance(position=_tolerance(n, self.defaults)) for n in names}
        # Start from the commanded state, so a motion right after another is continuous.
        start = dict(zip(names, self.targets(names), strict=True))
        self._sampler = TrajectorySampler(trajectory, start, start_time=self.sim.time)
        self._monitor = ExecutionMonitor(self._sampler, {}, goal_tol, goal_time)
        self._names, self.motion = names, motion

    def _pose(self, pose: dict[str, float], motion: str) -> Verdict:
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        joints = tuple(n for n in LIMITS.names if n in pose)
        values = [pose[n] for n in joints]
        times = self._timing(joints, [values])
        self._play(JointTrajectory(joints, (TrajectoryPoint(times[0], tuple(values)),)), motion,
                   self.defaults.goal_time_tolerance)
        return Verdict(ResultCode.SUCCESSFUL)

    def home(self) -> Verdict:
        """Start moving to ``stretch.HOME`` (home_the_robot; the real one also calibrates)."""
        return self._pose(stretch.HOME, "home")

    def stow(self) -> Verdict:
        """Start moving to ``stretch.STOW`` (stow_the_robot)."""
        return self._pose(stretch.STOW, "stow")

    def update(self) -> Verdict | None:
        """Command the setpoint for the current sim time; the motion's verdict once it ends."""
        if self._monitor is None:
            return None
        now = self.sim.time
        self._set_targets(self._names, self._sampler.sample(now).positions)
        verdict = self._monitor.update(now, self.positions(self._names),
                                       self.velocities(self._names))
        if verdict is not None:
            if not verdict.ok:
                self._hold()
            self._clear()
        return verdict

    def feedback(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
        """Joint names, desired, actual and error positions of the running motion."""
        names = self._names if self.active else ()
        desired, actual = self.targets(names), self.positions(names)
        return names, desired, actual, desired - actual

    # --- stops, modes, runstop ----------------------------------------------------------------
    def _clear(self) -> None:
        self._monitor = self._sampler = None
        self._names, self.motion = (), None

    def _hold(self) -> None:
        self._set_targets(LIMITS.names, self.positions())

    def stop(self, reason: str = "stopped by stop_the_robot") -> Verdict | None:
        """Stop every joint where it is and abort the running motion (its verdict, if any)."""
        was = self.motion
        self._hold()
        self._clear()
        return None if was is None else Verdict(ABORTED, f"{was} aborted: {reason}")

    def set_mode(self, mode: str) -> tuple[bool, str, Verdict | None]:
        """Switch mode: (success, message, verdict of a motion the switch aborted)."""
        if mode not in stretch.MODES:
            return False, f"unknown mode {mode!r}; modes: {', '.join(stretch.MODES)}", None
        if self.runstopped:
            return False, f"cannot switch to {mode} mode while runstop is active", None
        aborted = self.stop(f"switched to {mode} mode") if self.active else None
        previous, self.mode = self.mode, mode
        return True, f"switched from {previous} to {mode} mode", aborted

    def set_runstop(self, on: bool) -> tuple[str, Verdict | None]:
        """Set or release the runstop: (message, verdict of a motion it aborted)."""
        aborted = self.stop("runstop activated") if on else None
        if on:
            self._hold()
        self.runstopped = bool(on)
        return ("runstop activated: motion stopped, goals are refused" if on
                else "runstop released"), aborted
