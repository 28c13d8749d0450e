"""Scripted expert: waypoint plans through IK that solve each task, with fault hooks.

The expert is where successful demonstrations come from, and the fault hooks are how the data
engine turns them into failures: a plan is a list of named stages (``approach``, ``pre_grasp``,
``grasp`` ...) whose gripper segments are the keyframes; ``Faults`` perturbs one stage's target
pose, stalls, delays/weakens/skips the close, lowers friction (slip) or opens early. Running a
plan records the robot and object state at a fixed rate together with the stage and keyframe
events.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import mujoco
import numpy as np

from failrecov_ros.sim.ik import DlsIk
from failrecov_ros.sim.scene import SimSnapshot, SimState, Simulation
from failrecov_ros.sim.tasks import TARGET, Task

CARRY_HEIGHT = 0.15
APPROACH_HEIGHT = 0.10
GRASP_FORCE = 20.0
CLOSE_WAIT_S = 0.5
OPEN_WAIT_S = 0.4
SETTLE_S = 0.15
FAST_SPEED = 0.3  # m/s for free-space moves
SLOW_SPEED = 0.1  # m/s near objects
VELOCITY_FRACTION = 0.4  # of each joint's velocity limit at the peak of a move
DOWN = np.diag([1.0, -1.0, -1.0])  # TCP z pointing down, fingers closing along world y


@dataclasses.dataclass(frozen=True)
class Segment:
    """One step of a plan: a TCP move (``kind='move'``) or a gripper command (a keyframe)."""

    stage: str
    kind: str
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: tuple[float, ...] = tuple(DOWN.reshape(9))
    speed: float = FAST_SPEED
    straight: bool = False
    width: float = 0.0
    force: float = GRASP_FORCE
    wait_s: float = 0.0

    @property
    def keyframe(self) -> str | None:
        """'close' or 'open' for a gripper segment, None for a move."""
        if self.kind != "gripper":
            return None
        return "close" if self.width < 0.04 else "open"


@dataclasses.dataclass(frozen=True)
class Faults:
    """Perturbations applied while a plan runs (all default to none).

    ``stage``: the stage whose target pose is offset by ``translation`` (m, world) and
    ``rotation`` (roll, pitch, yaw in rad about the TCP), and at whose start the robot stalls
    for ``stall_s``. Gripper faults act on the first close keyframe: ``close_delay_s``,
    ``grasp_force_scale`` (weak close) and ``skip_close`` (force open). ``slip_stage`` lowers the
    target's friction to ``slip_friction`` when that stage starts; ``early_open_stage`` opens
    the gripper at ``early_open_fraction`` of that stage.
    """

    stage: str | None = None
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stall_s: float = 0.0
    close_delay_s: float = 0.0
    grasp_force_scale: float = 1.0
    skip_close: bool = False
    slip_stage: str | None = None
    slip_friction: float = 0.01
    early_open_stage: str | None = None
    early_open_fraction: float = 0.5

    def __post_init__(self) -> None:
        values = (*self.translation, *self.rotation, self.stall_s, self.close_delay_s,
                  self.grasp_force_scale, self.slip_friction, self.early_open_fraction)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"faults must be finite: {self}")
        if (self.stall_s < 0 or self.close_delay_s < 0 or not 0 <= self.grasp_force_scale <= 1
                or not 0 <= self.early_open_fraction <= 1):
            raise ValueError(f"bad fault magnitudes: {self}")

    @property
    def any(self) -> bool:
        """True when at least one fault is set."""
        return self != Faults()

    def perturbs_pose(self, stage: str) -> bool:
        """True when this fault set offsets the target pose of ``stage``."""
        return self.stage == stage and (any(self.translation) or any(self.rotation))

    def first_segment(self, plan: list[Segment]) -> int:
        """Index of the first segment of ``plan`` these faults can change (len(plan): none).

        Before it, a faulted run is the clean run step for step: stage faults act from their
        stage's first segment on, gripper faults from the first close keyframe on.
        """
        stages = {self.stage, self.slip_stage, self.early_open_stage} - {None}
        gripper = self.close_delay_s > 0 or self.grasp_force_scale < 1 or self.skip_close
        for index, segment in enumerate(plan):
            if segment.stage in stages or (gripper and segment.keyframe == "close"):
                return index
        return len(plan)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A run's full state as it starts plan segment ``segment``: resume a branch from here.

    Taken by runs with ``keep_states`` (before the segment's stage-start bookkeeping), it holds
    the physics state and everything the runner carries between segments, so that
    :meth:`ExpertRunner.resume` continues exactly as the original run would have.
    """

    segment: int
    state: SimSnapshot
    step: int
    rows: int  # recorded rows before this instant
    events: int  # events before this instant
    stage: int
    gripper_command: float
    closed_once: bool
    scheduled: tuple[tuple[int, float, float, str], ...]


@dataclasses.dataclass
class Episode:
    """What a run recorded: state at ``record_hz``, events, the plan and the outcome."""

    task: str
    seed: int
    instruction: str
    variation: dict[str, Any]
    faults: Faults
    record_hz: float
    stages: tuple[str, ...]
    times: np.ndarray
    arm_q: np.ndarray
    arm_dq: np.ndarray
    fingers: np.ndarray
    tcp_position: np.ndarray
    tcp_quat: np.ndarray
    target_pose: np.ndarray
    stage_index: np.ndarray
    segment_index: np.ndarray
    gripper_command: np.ndarray
    events: list[dict[str, Any]]
    plan: list[Segment]
    success: bool
    details: dict[str, Any]
    timed_out: bool
    states: list[SimState] = dataclasses.field(default_factory=list, repr=False)
    checkpoints: dict[int, Checkpoint] = dataclasses.field(default_factory=dict, repr=False)
    deadline_step: float = math.inf  # the time limit the run had, in physics steps

    def keyframes(self) -> list[dict[str, Any]]:
        """The gripper keyframe events, in order."""
        return [e for e in self.events if e["event"].startswith("keyframe_")]

    def stage_at(self, index: int) -> str:
        """Stage name of recorded row ``index``."""
        return self.stages[int(self.stage_index[index])]


def _rz(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def grasp_rotation(object_yaw: float, reference: np.ndarray) -> np.ndarray:
    """TCP pointing down with the fingers across two cube faces, the yaw nearest ``reference``."""
    ref_yaw = math.atan2(reference[1, 0], reference[0, 0])
    candidates = [object_yaw + k * math.pi / 2 for k in range(-4, 5)]
    yaw = min(candidates, key=lambda a: abs(math.remainder(a - ref_yaw, 2 * math.pi)))
    return _rz(yaw) @ DOWN


def _yaw_of(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def make_plan(task: Task, sim: Simulation) -> list[Segment]:
    """The expert's segments for ``task`` in the scene as it is now."""
    table = task.scene.table_top_z
    spec = task.scene.object(TARGET)
    cube, quat = sim.object_pose(TARGET)
    _, home_rotation = sim.tcp_pose()
    rot = grasp_rotation(_yaw_of(quat), home_rotation)
    r = tuple(rot.reshape(9))
    grasp_z = table + max(spec.size / 2, 0.015)
    opened = sim.binding.max_gripper_width

    def at(xy, z):
        return (float(xy[0]), float(xy[1]), float(z))

    if task.name == "push_cube":
        goal = np.array(task.goal_position)
        direction = (goal - cube[:2]) / np.linalg.norm(goal - cube[:2])
        heading = math.atan2(direction[1], direction[0]) + math.pi / 2
        push_rot = tuple((_rz(heading) @ DOWN).reshape(9))
        pre = cube[:2] - direction * (spec.size / 2 + 0.035)
        end = goal - direction * (spec.size / 2 + 0.006)
        z = table + max(spec.size / 2, 0.016)
        return [
            Segment("approach", "gripper", width=0.0, force=GRASP_FORCE, wait_s=OPEN_WAIT_S),
            Segment("approach", "move", at(pre, z + APPROACH_HEIGHT), push_rot),
            Segment("approach", "move", at(pre, z), push_rot, SLOW_SPEED, True),
            Segment("push", "move", at(end, z), push_rot, 0.06, True),
            Segment("retreat", "move", at(end - direction * 0.03, z + APPROACH_HEIGHT), push_rot,
                    SLOW_SPEED, True),
        ]
    plan = [
        Segment("approach", "gripper", width=opened, force=GRASP_FORCE, wait_s=0.0),
        Segment("approach", "move", at(cube, grasp_z + APPROACH_HEIGHT), r),
        Segment("pre_grasp", "move", at(cube, grasp_z), r, SLOW_SPEED, True),
        Segment("grasp", "gripper", width=0.0, force=GRASP_FORCE, wait_s=CLOSE_WAIT_S),
        Segment("lift", "move", at(cube, table + CARRY_HEIGHT), r, SLOW_SPEED, True),
    ]
    if task.name == "pick_cube":
        return plan
    other, other_quat = sim.object_pose(task.other)
    other_spec = task.scene.object(task.other)
    if task.name == "place_in_bowl":
        place_z = table + 0.01 + spec.size / 2 + 0.03
        place_rot = r
    else:  # stack_cube: align the held cube with the base cube's faces
        place_z = table + other_spec.size + spec.size / 2 + 0.006
        yaw_in_hand = _yaw_of(quat) - math.atan2(rot[1, 0], rot[0, 0])
        place_rot = tuple(grasp_rotation(_yaw_of(other_quat) - yaw_in_hand + 0.0,
                                         rot).reshape(9))
    return plan + [
        Segment("transport", "move", at(other, table + CARRY_HEIGHT), place_rot),
        Segment("place", "move", at(other, place_z), place_rot, SLOW_SPEED, True),
        Segment("release", "gripper", width=opened, force=GRASP_FORCE, wait_s=OPEN_WAIT_S),
        Segment("retreat", "move", at(other, table + CARRY_HEIGHT), place_rot, SLOW_SPEED, True),
    ]


def _min_jerk(s: np.ndarray | float) -> np.ndarray | float:
    return 10 * s**3 - 15 * s**4 + 6 * s**5


class ExpertRunner:
    """Executes a plan on a simulation with optional faults and records the episode."""

    def __init__(self, sim: Simulation, task: Task, faults: Faults | None = None, *,
                 record_hz: float = 10.0,
                 on_record: Callable[[Simulation, int], None] | None = None,
                 time_limit_margin: float = 1.25, keep_states: bool = False,
                 gripper_command: float | None = None) -> None:
        self.sim, self.task, self.faults = sim, task, faults or Faults()
        self.record_hz, self.on_record = record_hz, on_record
        self.ik = DlsIk(sim.model, sim.binding.tcp_site, sim.binding.arm_joints,
                        rest=sim.binding.home)
        from failrecov_ros.robots import fr3

        self.velocity_limit = fr3.ARM_LIMITS.velocity
        self.time_limit_margin = time_limit_margin
        self.keep_states = keep_states
        self._states: list[SimState] = []
        self._segment = 0
        self._gripper_command = (sim.binding.max_gripper_width if gripper_command is None
                                 else float(gripper_command))
        self._record_every = max(1, round(1.0 / (record_hz * sim.timestep)))
        self._step = 0
        self._rows: list[tuple] = []
        self.events: list[dict[str, Any]] = []
        self._stage = 0
        self._scheduled: list[tuple[int, float, float, str]] = []
        self._deadline = math.inf
        self.timed_out = False

    # --- bookkeeping -------------------------------------------------------------------------
    def _event(self, event: str, **extra: Any) -> None:
        self.events.append({"event": event, "step": self._step, "time": round(self.sim.time, 4),
                            "stage": self.stages[self._stage], **extra})

    def _advance(self, n: int = 1) -> None:
        end = self._step + n
        while self._step < end:
            if self._step >= self._deadline:
                self.timed_out = True
                raise _TimeUpError
            # Nothing happens between records, scheduled commands and the deadline: step the
            # physics there in one call (mj_step with nstep is the same steps, minus Python).
            stop = (self._step // self._record_every + 1) * self._record_every
            if end < stop:
                stop = end
            if self._scheduled:
                for item in [s for s in self._scheduled if s[0] <= self._step]:
                    self._scheduled.remove(item)
                    _, width, force, name = item
                    self.sim.set_gripper(width, force)
                    self._gripper_command = width
                    self._event(name, width=width, force=force)
                if self._scheduled:
                    stop = min(stop, min(s[0] for s in self._scheduled))
            if self._step % self._record_every == 0:
                self._record()
            if self._deadline < stop:
                stop = max(self._step + 1, math.ceil(self._deadline))
            self.sim.step(stop - self._step)
            self._step = stop

    def _record(self) -> None:
        sim = self.sim
        pos, mat = sim.tcp_pose()
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, mat.reshape(9))
        tpos, tquat = sim.object_pose(TARGET)
        self._rows.append((sim.time, sim.arm_positions(), sim.arm_velocities(),
                           sim.finger_positions(), pos, quat, np.concatenate([tpos, tquat]),
                           self._stage, self._segment, self._gripper_command))
        if self.keep_states:
            self._states.append(sim.save_state())
        if self.on_record is not None:
            self.on_record(sim, len(self._rows) - 1)

    # --- motion ------------------------------------------------------------------------------
    def _target(self, segment: Segment) -> tuple[np.ndarray, np.ndarray]:
        position = np.array(segment.position)
        rotation = np.array(segment.rotation).reshape(3, 3)
        if self.faults.perturbs_pose(segment.stage):
            position = position + np.array(self.faults.translation)
            quat = np.empty(4)
            mujoco.mju_euler2Quat(quat, np.array(self.faults.rotation), "xyz")
            delta = np.empty(9)
            mujoco.mju_quat2Mat(delta, quat)
            rotation = rotation @ delta.reshape(3, 3)
        return position, rotation

    def _move(self, segment: Segment) -> None:
        start_q = self.sim.arm_targets()
        start_pos, start_rot = self.ik.forward(start_q)
        goal_pos, goal_rot = self._target(segment)
        distance = float(np.linalg.norm(goal_pos - start_pos))
        count = max(2, int(distance / 0.01)) if segment.straight else 1
        path = [start_q]
        for k in range(1, count + 1):
            s = k / count
            waypoint = start_pos + s * (goal_pos - start_pos) if segment.straight else goal_pos
            solution = self.ik.solve(waypoint, goal_rot, path[-1])
            path.append(solution.q)
        path = np.array(path)
        joint_span = np.max(np.abs(np.diff(path, axis=0)).sum(axis=0) / self.velocity_limit)
        duration = max(distance / segment.speed, 1.875 * joint_span / VELOCITY_FRACTION, 0.3)
        steps = max(1, round(duration / self.sim.timestep))
        knots = np.linspace(0.0, 1.0, len(path))
        s = _min_jerk(np.arange(1, steps + 1) / steps)
        targets = np.stack([np.interp(s, knots, path[:, j]) for j in range(path.shape[1])], 1)
        for q in targets:
            self.sim.set_arm_targets(q)
            self._advance()
        self._advance(round(SETTLE_S / self.sim.timestep))

    def _gripper(self, segment: Segment) -> None:
        faults = self.faults
        width, force, delay = segment.width, segment.force, 0.0
        name = f"keyframe_{segment.keyframe}"
        if segment.keyframe == "close" and not self._closed_once:
            self._closed_once = True
            force *= faults.grasp_force_scale
            delay = faults.close_delay_s
            if faults.skip_close:
                self._event("fault_skip_close")
                self._advance(round(segment.wait_s / self.sim.timestep))
                return
            if faults.grasp_force_scale < 1:
                self._event("fault_weak_close", scale=faults.grasp_force_scale)
        at = self._step + round(delay / self.sim.timestep)
        if delay:
            self._event("fault_delay_close", delay_s=delay)
        self._scheduled.append((at, width, force, name))
        self._advance(round(segment.wait_s / self.sim.timestep))

    def run(self, plan: list[Segment] | None = None) -> Episode:
        """Execute ``plan`` (default: the expert's) and return the recorded episode."""
        sim = self.sim
        plan = plan if plan is not None else make_plan(self.task, sim)
        self.stages = tuple(dict.fromkeys(s.stage for s in plan))
        self._closed_once = False
        nominal = self._nominal_duration(plan)
        self._deadline = round(nominal * self.time_limit_margin / sim.timestep) + 500
        return self._execute(plan, 0)

    def resume(self, episode: Episode, segment: int) -> Episode:
        """``episode``'s run as if it had had this runner's faults: a branch at ``segment``.

        ``episode`` must have been recorded with ``keep_states`` (so it holds the checkpoint
        of ``segment``) by a runner with the same simulation, task and recording rate; the
        result equals a run from the start with these faults as long as they change nothing
        before ``segment`` (see :meth:`Faults.first_segment`). The recorded prefix is
        ``episode``'s; from the checkpoint on the physics runs again.
        """
        if segment not in episode.checkpoints:
            raise ValueError(f"episode has no checkpoint at segment {segment}")
        point = episode.checkpoints[segment]
        plan = episode.plan
        self.stages = episode.stages
        self._deadline = episode.deadline_step
        self._step, self._stage = point.step, point.stage
        self._gripper_command, self._closed_once = point.gripper_command, point.closed_once
        self._scheduled = list(point.scheduled)
        self.events = [dict(e) for e in episode.events[:point.events]]
        self._rows = [(episode.times[i], episode.arm_q[i], episode.arm_dq[i],
                       episode.fingers[i], episode.tcp_position[i], episode.tcp_quat[i],
                       episode.target_pose[i], int(episode.stage_index[i]),
                       int(episode.segment_index[i]), episode.gripper_command[i])
                      for i in range(point.rows)]
        if self.keep_states:
            self._states = list(episode.states[:point.rows])
        self.sim.restore_snapshot(point.state)
        self._segment = min(segment, len(plan) - 1)  # where the final rest is recorded
        current = plan[segment - 1].stage if segment > 0 else None
        return self._execute(plan, segment, current)

    def _checkpoint(self, segment: int) -> Checkpoint:
        return Checkpoint(segment, self.sim.snapshot(), self._step, len(self._rows),
                          len(self.events), self._stage, self._gripper_command,
                          self._closed_once, tuple(self._scheduled))

    def _execute(self, plan: list[Segment], start: int, current: str | None = None) -> Episode:
        sim, faults = self.sim, self.faults
        checkpoints: dict[int, Checkpoint] = {}
        try:
            for self._segment in range(start, len(plan)):
                segment = plan[self._segment]
                if self.keep_states:
                    checkpoints[self._segment] = self._checkpoint(self._segment)
                if segment.stage != current:
                    current = segment.stage
                    self._stage = self.stages.index(current)
                    self._event("stage_start")
                    if faults.stage == current and faults.stall_s:
                        self._event("fault_stall", duration_s=faults.stall_s)
                        self._advance(round(faults.stall_s / sim.timestep))
                    if faults.slip_stage == current:
                        sim.set_friction(TARGET, faults.slip_friction)
                        self._event("fault_slip", friction=faults.slip_friction)
                    if faults.perturbs_pose(current):
                        self._event("fault_pose", translation=list(faults.translation),
                                    rotation=list(faults.rotation))
                if faults.early_open_stage == segment.stage and segment.kind == "move":
                    self._move_with_early_open(segment)
                elif segment.kind == "move":
                    self._move(segment)
                else:
                    self._gripper(segment)
            if self.keep_states:
                checkpoints[len(plan)] = self._checkpoint(len(plan))
            self._advance(round(0.5 / sim.timestep))  # let the scene come to rest
        except _TimeUpError:
            pass
        self._record()
        details = self.task.success_details(sim)
        success = bool(details["success"]) and not self.timed_out
        episode = self._episode(plan, success, details)
        episode.checkpoints = checkpoints
        return episode

    def _move_with_early_open(self, segment: Segment) -> None:
        fraction = self.faults.early_open_fraction
        steps_before = self._step
        first = dataclasses.replace(segment, position=tuple(
            np.array(self.ik.forward(self.sim.arm_targets())[0]) * (1 - fraction)
            + np.array(self._target(segment)[0]) * fraction))
        self._move(first)
        self.sim.set_gripper(self.sim.binding.max_gripper_width, GRASP_FORCE)
        self._gripper_command = self.sim.binding.max_gripper_width
        self._event("fault_early_open", after_steps=self._step - steps_before)
        self._move(segment)

    def _nominal_duration(self, plan: list[Segment]) -> float:
        total = 0.5
        previous = np.array(self.ik.forward(self.sim.arm_targets())[0])
        for segment in plan:
            if segment.kind == "move":
                distance = float(np.linalg.norm(np.array(segment.position) - previous))
                total += max(distance / segment.speed, 0.6) + SETTLE_S + 0.6
                previous = np.array(segment.position)
            else:
                total += segment.wait_s
        return total

    def _episode(self, plan: list[Segment], success: bool, details: dict) -> Episode:
        columns = list(zip(*self._rows, strict=True))
        return Episode(
            task=self.task.name, seed=self.task.seed, instruction=self.task.instruction,
            variation=dict(self.task.variation), faults=self.faults, record_hz=self.record_hz,
            stages=self.stages, times=np.array(columns[0]), arm_q=np.array(columns[1]),
            arm_dq=np.array(columns[2]), fingers=np.array(columns[3]),
            tcp_position=np.array(columns[4]), tcp_quat=np.array(columns[5]),
            target_pose=np.array(columns[6]), stage_index=np.array(columns[7]),
            segment_index=np.array(columns[8]), gripper_command=np.array(columns[9]),
            events=self.events, plan=plan, success=success, details=details,
            timed_out=self.timed_out, states=self._states, deadline_step=self._deadline)


class _TimeUpError(Exception):
    """The episode ran past its time limit (a stall that never recovered)."""


def run_expert(task: Task, faults: Faults | None = None, **kwargs: Any) -> Episode:
    """Build the task's scene, run the expert (with ``faults``) and return the episode."""
    sim = Simulation(task.scene)
    sim.step(50)  # let the objects settle on the table before planning
    return ExpertRunner(sim, task, faults, **kwargs).run()
