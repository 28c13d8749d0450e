"""The simulated robot's controllers: joint_trajectory_controller and Franka gripper semantics.

These are the parts of franka_ros2 / ros2_control that decide what a goal does (validate,
interpolate, preempt, check tolerances; move, grasp within epsilon, home). They step with the
physics and never touch ROS, so the simulator node only converts messages and the same
behaviour is tested without a graph.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from failrecov_ros.core.limits import JointLimits
from failrecov_ros.core.trajectory import (
    ExecutionMonitor,
    ResultCode,
    Tolerance,
    TrajectoryGoal,
    TrajectorySampler,
    Verdict,
    resolve_goal_time_tolerance,
    resolve_tolerances,
    validate_goal,
)
from failrecov_ros.sim.scene import Simulation


@dataclasses.dataclass(frozen=True)
class TrajectoryDefaults:
    """Controller-side constraints (franka_ros2's fr3_arm_controller ``constraints`` block)."""

    goal_position_tolerance: float = 0.05
    path_position_tolerance: float = 0.0  # 0: path not checked unless the goal asks
    stopped_velocity_tolerance: float = 0.01
    goal_time_tolerance: float = 0.5


class TrajectoryController:
    """One active FollowJointTrajectory goal at a time; a new goal preempts the old one."""

    def __init__(self, sim: Simulation, limits: JointLimits,
                 defaults: TrajectoryDefaults = TrajectoryDefaults()) -> None:
        self.sim, self.limits, self.defaults = sim, limits, defaults
        if tuple(limits.names) != tuple(sim.binding.arm_joints):
            raise ValueError(f"limits {limits.names} do not match the arm {sim.binding.arm_joints}")
        self._monitor: ExecutionMonitor | None = None
        self._sampler: TrajectorySampler | None = None
        self._order: np.ndarray | None = None

    @property
    def joint_names(self) -> tuple[str, ...]:
        """The arm joints this controller drives, in order."""
        return self.limits.names

    @property
    def active(self) -> bool:
        """True while a command is running."""
        return self._monitor is not None

    def start(self, goal: TrajectoryGoal) -> Verdict:
        """Validate and, if valid, start ``goal`` now (an invalid goal leaves the arm alone)."""
        verdict = validate_goal(goal, self.limits)
        if not verdict.ok:
            return verdict
        try:
            defaults = {n: Tolerance(position=self.defaults.goal_position_tolerance,
                                     velocity=self.defaults.stopped_velocity_tolerance)
                        for n in self.joint_names}
            goal_tol = resolve_tolerances(defaults, goal.goal_tolerance)
            path_defaults = {n: Tolerance(position=self.defaults.path_position_tolerance)
                             for n in self.joint_names}
            path_tol = resolve_tolerances(path_defaults, goal.path_tolerance)
            goal_time = resolve_goal_time_tolerance(self.defaults.goal_time_tolerance,
                                                    goal.goal_time_tolerance)
        except ValueError as error:
            return Verdict(ResultCode.INVALID_GOAL, str(error))
        names = goal.trajectory.joint_names
        self._order = np.array([self.joint_names.index(n) for n in names])
        now = self.sim.time
        # Start from the commanded state, as JTC does, so a preempting goal is continuous.
        start = dict(zip(self.joint_names, self.sim.arm_targets(), strict=True))
        self._sampler = TrajectorySampler(goal.trajectory, start, start_time=now)
        self._monitor = ExecutionMonitor(self._sampler, path_tol, goal_tol, goal_time)
        return Verdict(ResultCode.SUCCESSFUL)

    def hold(self) -> None:
        """Stop where the arm is (cancel, preemption by a stop, or an error)."""
        self._monitor = self._sampler = None
        self.sim.set_arm_targets(self.sim.arm_positions())

    def update(self) -> Verdict | None:
        """Command the sampled setpoint for the current sim time; the verdict when finished."""
        if self._monitor is None:
            return None
        now = self.sim.time
        desired = self._sampler.sample(now)
        targets = self.sim.arm_targets()
        targets[self._order] = desired.positions
        self.sim.set_arm_targets(targets)
        actual_q = self.sim.arm_positions()[self._order]
        actual_dq = self.sim.arm_velocities()[self._order]
        verdict = self._monitor.update(now, actual_q, actual_dq)
        if verdict is not None:
            if not verdict.ok:
                self.hold()
            self._monitor = self._sampler = None
        return verdict

    def feedback(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
        """Joint names, desired, actual and error positions of the active goal."""
        names = tuple(self.joint_names[i] for i in self._order) if self._order is not None else ()
        actual = self.sim.arm_positions()[self._order] if names else np.zeros(0)
        desired = self.sim.arm_targets()[self._order] if names else np.zeros(0)
        return names, desired, actual, desired - actual


@dataclasses.dataclass(frozen=True)
class GripperResult:
    """Outcome of a gripper command, in franka_msgs terms (success + error string)."""

    success: bool
    width: float
    error: str = ""


@dataclasses.dataclass(frozen=True)
class InjectedFaults:
    """Failures injected into the simulated robot for closed-loop trials (all off by default).

    The simulator node's ``faults.*`` parameters and the lockstep loop share this one meaning:
    ``grasp_force_scale`` < 1 weakens every grasp (weak_close as force); ``weak_grasps`` > 0
    makes the first N grasps close short of the object instead (weak_close as scaled closure:
    the gripper reports success, the object stays behind); ``close_failures`` grasps leave the
    hand open (force_open); ``pose_offset`` (m, base frame) is added to the target's reported
    pose (a perception error: the grasp or push misses, translation_x/y).
    """

    grasp_force_scale: float = 1.0
    weak_grasps: int = 0
    close_failures: int = 0
    pose_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pose_offset", tuple(float(v) for v in self.pose_offset))
        if not 0.0 <= self.grasp_force_scale <= 1.0:
            raise ValueError(f"grasp_force_scale must be in [0, 1], got {self.grasp_force_scale}")
        if self.weak_grasps < 0 or self.close_failures < 0:
            raise ValueError(f"weak_grasps and close_failures must be >= 0, got "
                             f"{self.weak_grasps}, {self.close_failures}")
        if len(self.pose_offset) != 3 or not all(map(math.isfinite, self.pose_offset)) \
                or max(map(abs, self.pose_offset)) > 0.2:
            raise ValueError(f"pose_offset must be 3 finite values within 0.2 m, got "
                             f"{list(self.pose_offset)}")

    @property
    def any(self) -> bool:
        """True when some fault is injected."""
        return self != InjectedFaults()

    def describe(self) -> str:
        """The injected faults as ``name=value, ...``."""
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                         if getattr(self, f.name) != f.default)

    def apply_to(self, gripper: GripperController) -> None:
        """Arm the gripper's fault hooks (counters restart)."""
        gripper.force_scale = self.grasp_force_scale
        gripper.close_failures = self.close_failures
        gripper.weak_grasps = self.weak_grasps or None


class GripperController:
    """Franka Hand behaviour: move to a width at a speed, grasp with force and epsilon, home.

    The commanded width ramps at the requested speed; a command ends when the fingers reach
    the width or stall against something (no motion for ``stall_s``).
    """

    STALL_SPEED = 0.002  # m/s
    WEAK_GAP = 0.004  # m a weak (scaled) closure stays open beyond the expected object width
    REACHED = 0.002  # m

    def __init__(self, sim: Simulation, max_width: float, max_speed: float, max_force: float,
                 move_force: float = 20.0, stall_s: float = 0.2) -> None:
        self.sim = sim
        self.max_width, self.max_speed, self.max_force = max_width, max_speed, max_force
        self.move_force, self.stall_s = move_force, stall_s
        self.force_scale = 1.0  # fault hook: weakens every grasp (1 = healthy)
        self.close_failures = 0  # fault hook: this many grasps leave the hand open (force_open)
        self.weak_grasps: int | None = None  # grasps force_scale weakens (None: every one)
        self._command: dict | None = None
        self._setpoint = sim.gripper_width()

    @property
    def active(self) -> bool:
        """True while a command is running."""
        return self._command is not None

    def _check(self, width: float, speed: float, force: float | None = None) -> str:
        if not math.isfinite(width) or not 0.0 <= width <= self.max_width + 1e-9:
            return f"width {width} m is outside [0, {self.max_width}] m"
        if not math.isfinite(speed) or not 0.0 < speed <= self.max_speed + 1e-9:
            return f"speed {speed} m/s is outside (0, {self.max_speed}] m/s"
        if force is not None and (not math.isfinite(force) or not 0.0 <= force <= self.max_force):
            return f"force {force} N is outside [0, {self.max_force}] N"
        return ""

    def move(self, width: float, speed: float, force: float | None = None) -> str:
        """Start moving the fingers to ``width``; returns an error message or ''.

        The fingers push with at most ``force`` (default: the move force).
        """
        force = self.move_force if force is None else force
        error = self._check(width, speed, force)
        if not error:
            self._start("move", width, width, speed, force)
        return error

    def grasp(self, width: float, speed: float, force: float, epsilon_inner: float = 0.005,
              epsilon_outer: float = 0.005) -> str:
        """Start a grasp expecting an object ``width`` wide (within the epsilons)."""
        error = self._check(width, speed, force)
        if not error and not (epsilon_inner >= 0 and epsilon_outer >= 0):  # NaN fails too
            error = f"epsilon must be >= 0 (inf: any width), got {epsilon_inner}, {epsilon_outer}"
        if not error and self.close_failures > 0:
            # force_open: the fingers do not move; the grasp ends as an empty, open hand.
            self.close_failures -= 1
            width_now = self.sim.gripper_width()
            self._start("grasp", width_now, width, speed, force,
                        (width - epsilon_inner, width + epsilon_outer))
        elif not error:
            # Close fully: the force limit, not a position, holds the object (as the real hand
            # does), and an empty hand closes to ~0 and fails the width window.
            target, scale = 0.0, self.force_scale
            if self.weak_grasps is not None:
                if self.weak_grasps > 0:
                    # Dream2Fix weak_close as scaled closure: the fingers stop short of the
                    # object they expect, inside the width window, so the grasp "succeeds"
                    # and the object stays behind on the lift (only a camera can tell).
                    target = width + self.WEAK_GAP
                else:
                    scale = 1.0
                self.weak_grasps = max(0, self.weak_grasps - 1)
            self._start("grasp", target, width, speed,
                        force * scale, (width - epsilon_inner, width + epsilon_outer))
        return error

    def homing(self) -> str:
        """Open fully at maximum speed (franka's homing calibrates the width the same way)."""
        self._start("homing", self.max_width, self.max_width, self.max_speed, self.move_force)
        return ""

    def stop(self) -> GripperResult | None:
        """Abort the running command, holding the current width."""
        command, self._command = self._command, None
        self._setpoint = self.sim.gripper_width()
        self.sim.set_gripper(self._setpoint, self.move_force)
        if command is None:
            return None
        return GripperResult(False, self._setpoint, "stopped")

    def _start(self, kind: str, target: float, nominal: float, speed: float, force: float,
               window: tuple[float, float] | None = None) -> None:
        self._setpoint = self.sim.gripper_width()
        self._command = {"kind": kind, "target": target, "nominal": nominal, "speed": speed,
                         "force": force, "window": window, "still": 0.0}

    def update(self, dt: float) -> GripperResult | None:
        """Advance the command by ``dt`` seconds; its result once it has finished."""
        command = self._command
        if command is None:
            return None
        step = command["speed"] * dt
        self._setpoint += float(np.clip(command["target"] - self._setpoint, -step, step))
        self.sim.set_gripper(self._setpoint, command["force"])
        width = self.sim.gripper_width()
        ramp_done = abs(self._setpoint - command["target"]) < 1e-9
        moving = float(np.max(np.abs(self.sim.finger_velocities()))) > self.STALL_SPEED
        blocked = not moving and abs(width - self._setpoint) > self.REACHED
        command["still"] = command["still"] + dt if blocked else 0.0
        reached = ramp_done and abs(width - command["target"]) < self.REACHED
        stalled = command["still"] >= self.stall_s
        if not (reached or stalled):
            return None
        self._command = None
        if command["kind"] == "grasp":
            low, high = command["window"]
            if low <= width <= high:
                return GripperResult(True, width)
            return GripperResult(False, width, f"grasp failed: width {width:.4f} m outside "
                                 f"[{low:.4f}, {high:.4f}] m")
        if reached:
            return GripperResult(True, width)
        return GripperResult(False, width, f"{command['kind']} stopped at {width:.4f} m before "
                             f"{command['target']:.4f} m (blocked)")


def trajectory_goal_from_lists(joint_names, points, path_tolerance: Mapping | None = None,
                               goal_tolerance: Mapping | None = None,
                               goal_time_tolerance: float = 0.0) -> TrajectoryGoal:
    """Convenience for callers that hold plain lists (tests, the expert replaying over ROS)."""
    from failrecov_ros.core.trajectory import JointTrajectory, TrajectoryPoint

    return TrajectoryGoal(
        JointTrajectory(tuple(joint_names), tuple(TrajectoryPoint(*p) for p in points)),
        dict(path_tolerance or {}), dict(goal_tolerance or {}), goal_time_tolerance)
