"""The task state machine: run skills on a robot backend, hand control to recovery and back.

``TaskRunner.run`` executes a task's steps one by one through a :class:`RobotBackend` (FR3 or
Stretch behind the same interface; a fake in tests), publishing a :class:`Status` at every
stage, keyframe and decision. While a motion runs it watches for cancellation and diagnoses: a
diagnosis that calls for a takeover stops the motion, its correction is planned (or the
monitor's trajectory taken), passed through the safety gate, executed, and the task resumes at
the point ``skills.recovery.resume_point`` chooses. A failure the executor notices itself (a
grasp that closed on nothing, an aborted trajectory, a dropped object) holds the task for a while
so the monitor can diagnose it. Nothing reaches the backend without passing the gate.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from failrecov_ros.core.safety import SafetyGate, SafetyReport
from failrecov_ros.core.schema import Correction, CorrectionKind, Diagnosis, GripperCommand
from failrecov_ros.core.taxonomy import FailureType, Family, family
from failrecov_ros.robots.kinematics import Kinematics, UnreachableError
from failrecov_ros.skills.correction import (
    CorrectionPlan,
    MalformedTrajectoryError,
    plan_correction,
    trajectory_from_fields,
)
from failrecov_ros.skills.library import Pose, TaskError, TaskSpec
from failrecov_ros.skills.motion import JointPath, MotionLimits, plan_cartesian, plan_joint
from failrecov_ros.skills.objects import ObjectPoseError
from failrecov_ros.skills.recovery import (
    EXECUTOR_MODEL_NAME,
    Action,
    Confirmations,
    RecoveryConfig,
    RetryBudget,
    assess,
    left_behind,
    resume_point,
)
from failrecov_ros.skills.steps import (
    CLOSE,
    GRASP,
    GRIPPER,
    JOINT,
    MOVE,
    OPEN,
    SkillProfile,
    Step,
    World,
    expand,
    resolve_target,
    tool_yaw,
)


class ResultCode(enum.IntEnum):
    """ExecuteTask result codes (the action's constants)."""

    SUCCEEDED = 0
    FAILED = 1
    INVALID_GOAL = 2
    CANCELED = 3
    NEEDS_HELP = 4
    CONTROLLER_ERROR = 5
    SAFETY_REJECTED = 6


class State(enum.IntEnum):
    """SkillStatus states (the message's constants)."""

    IDLE = 0
    RUNNING = 1
    RECOVERING = 2
    SUCCEEDED = 3
    FAILED = 4
    NEEDS_HELP = 5
    CANCELED = 6


_FINAL_STATE = {
    ResultCode.SUCCEEDED: State.SUCCEEDED, ResultCode.CANCELED: State.CANCELED,
    ResultCode.NEEDS_HELP: State.NEEDS_HELP, ResultCode.SAFETY_REJECTED: State.NEEDS_HELP,
}


class MotionStatus(str, enum.Enum):
    """How a backend command ended."""

    SUCCEEDED = "succeeded"
    ABORTED = "aborted"  # the controller gave up (tolerance violated, reflex, ...)
    REJECTED = "rejected"  # the controller refused the goal
    CANCELED = "canceled"
    UNAVAILABLE = "unavailable"  # no server or service answered in time
    TIMED_OUT = "timed_out"  # no result within the expected time


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A backend command's end: status, controller code and message, gripper width."""

    status: MotionStatus
    message: str = ""
    code: int = 0
    width: float = math.nan

    @property
    def ok(self) -> bool:
        """True when the command succeeded."""
        return self.status is MotionStatus.SUCCEEDED


SUCCEEDED = Outcome(MotionStatus.SUCCEEDED)
#: s at most to wait for a pose of a held object: in the hand it may be out of sight, and then
#: there is nothing to check rather than something to wait for.
HELD_POSE_WAIT = 1.0


@dataclasses.dataclass(frozen=True)
class GripperGoal:
    """A gripper command: open/move to ``width``, grasp an object ``width`` wide, or close.

    ``command_width`` is what the controller is sent (``SkillProfile.command_width``), the
    value the safety gate checks; backends send it and nothing else.
    """

    kind: str  # OPEN | GRASP | CLOSE
    width: float = 0.0
    force: float = 0.0
    epsilon: float = 0.0
    command_width: float = 0.0


class Motion(Protocol):
    """A command in flight."""

    def done(self) -> bool:
        """True once the command has ended."""

    def outcome(self) -> Outcome:
        """How it ended (valid once done)."""


class RobotBackend(Protocol):
    """What the runner needs from a robot: joint state, trajectories, gripper, stop, recover."""

    robot: str
    joint_names: tuple[str, ...]

    def prepare(self, timeout: float) -> Outcome:
        """Make sure the controllers answer (and the robot is in the right mode)."""

    def joint_positions(self) -> np.ndarray | None:
        """Latest arm joint positions in ``joint_names`` order (None before the first)."""

    def gripper_width(self) -> float | None:
        """Latest gripper width in metres (None before the first)."""

    def follow(self, path: JointPath) -> Motion:
        """Start a joint trajectory (already checked by the safety gate)."""

    def gripper(self, goal: GripperGoal) -> Motion:
        """Start a gripper command."""

    def stop(self) -> Outcome:
        """Stop whatever moves and wait until it has stopped (not ok: it may still move)."""

    def recover(self) -> Outcome:
        """Clear a controller error after an aborted motion (FR3 reflex recovery)."""


@dataclasses.dataclass(frozen=True)
class Status:
    """Latched executor status (mirrors ``SkillStatus``)."""

    state: State
    episode_id: str = ""
    task: str = ""
    instruction: str = ""
    skill: str = ""
    skill_index: int = 0
    skill_count: int = 0
    stage: str = ""
    step: int = 0
    event: str = ""
    event_stamp_ns: int = 0
    event_step: int = 0
    message: str = ""
    stamp_ns: int = 0


@dataclasses.dataclass(frozen=True)
class Feedback:
    """Action feedback (mirrors ``ExecuteTask`` feedback)."""

    skill: str
    skill_index: int
    skill_count: int
    stage: str
    progress: float
    recovering: bool


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """Action result (mirrors ``ExecuteTask`` result)."""

    code: ResultCode
    message: str
    skills_completed: int = 0
    recoveries_attempted: int = 0
    recoveries_succeeded: int = 0
    duration_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class Request:
    """One episode: the task and its recovery settings."""

    task: TaskSpec
    episode_id: str = ""
    recovery_enabled: bool = True
    max_recoveries: int = 0  # 0: the configured default


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    """Everything the runner is tuned by (the node fills it from its parameters)."""

    profile: SkillProfile
    motion: MotionLimits = MotionLimits()
    recovery: RecoveryConfig = RecoveryConfig()
    poll_period: float = 0.02
    prepare_timeout: float = 10.0
    joint_state_timeout: float = 10.0
    motion_timeout_margin: float = 10.0
    gripper_timeout: float = 15.0
    object_pose_timeout: float = 5.0
    held_min_width: float = 0.005
    #: m: after a move with an object grasped, its perceived centre must be this close to the
    #: tool point (0: no check). The fingers' width cannot tell a cube squeezed too weakly to
    #: lift, left on the table between open-ish fingers, from one held.
    held_max_distance: float = 0.05
    policy_history: int = 32

    def __post_init__(self) -> None:
        for name in ("poll_period", "prepare_timeout", "joint_state_timeout",
                     "motion_timeout_margin", "gripper_timeout", "object_pose_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value}")
        if not (math.isfinite(self.held_max_distance) and self.held_max_distance >= 0):
            raise ValueError(f"held_max_distance must be >= 0 (0: off), got "
                             f"{self.held_max_distance}")


class _FinishError(Exception):
    def __init__(self, code: ResultCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _TakeoverError(Exception):
    def __init__(self, diagnosis: Diagnosis, reason: str) -> None:
        super().__init__(reason)
        self.diagnosis, self.reason = diagnosis, reason


class _CanceledError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class _Failure:
    code: ResultCode
    message: str
    object_left: bool = False  # the held object stayed behind when the arm moved


def _report_text(report: SafetyReport) -> str:
    return "; ".join(report.violations)


def _no_perception(name: str, after_ns: int, timeout: float) -> Pose:
    raise ObjectPoseError(f"no pose of object {name!r}: the executor has no perception")


class TaskRunner:
    """Runs one episode at a time; ``offer_*`` may be called from any thread meanwhile.

    ``object_pose(name, after_ns, timeout)`` gives a pose of ``name`` stamped at or after
    ``after_ns`` or raises ObjectPoseError (``skills.objects.PoseBoard.fresh`` does).
    """

    def __init__(self, backend: RobotBackend, kinematics: Kinematics, gate: SafetyGate,
                 config: ExecutorConfig, *,
                 publish_status: Callable[[Status], None] = lambda status: None,
                 publish_feedback: Callable[[Feedback], None] = lambda feedback: None,
                 log: Callable[[str, str], None] = lambda level, message: None,
                 object_pose: Callable[[str, int, float], Pose] | None = None,
                 now_ns: Callable[[], int] = time.time_ns,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if tuple(backend.joint_names) != tuple(kinematics.joint_names):
            raise ValueError(f"backend joints {backend.joint_names} differ from the kinematics' "
                             f"{kinematics.joint_names}")
        self.backend, self.kin, self.gate, self.config = backend, kinematics, gate, config
        self._publish_status, self._publish_feedback = publish_status, publish_feedback
        self._log, self._object_pose = log, object_pose or _no_perception
        # Waits and timeouts run on ``monotonic`` and ``sleep``: the wall clock on a robot, the
        # simulated one when a caller steps the physics itself (lockstep), which then stays
        # deterministic however fast it runs.
        self.now_ns, self._sleep, self._monotonic = now_ns, sleep, monotonic
        self._diagnoses: queue.Queue[Diagnosis] = queue.Queue()
        self._policy: queue.Queue[tuple[int, np.ndarray]] = queue.Queue()
        self._trajectories: OrderedDict[int, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self.running = False
        self._in_policy_step = False  # an external policy acts: its stalls are real
        self._status = Status(State.IDLE)
        self._confirmations = Confirmations(config.recovery.interrupt_confirmations)

    # --- inputs from other threads ---------------------------------------------------------------
    def offer_diagnosis(self, diagnosis: Diagnosis) -> None:
        """A validated diagnosis from the monitor; decided on by the running episode."""
        if not self.running:
            self._log("info", f"ignored a diagnosis ({diagnosis.failure_type.value}): no task "
                              "is running")
            return
        self._diagnoses.put(diagnosis)

    def offer_trajectory(self, stamp_ns: int, joint_names: Sequence[str],
                         times: Sequence[float], positions: Sequence[Sequence[float]]) -> None:
        """The monitor's correction trajectory for the diagnosis stamped ``stamp_ns``."""
        with self._lock:
            self._trajectories[int(stamp_ns)] = (tuple(joint_names), tuple(times),
                                                 tuple(tuple(p) for p in positions))
            while len(self._trajectories) > 16:
                self._trajectories.popitem(last=False)

    def offer_policy_command(self, delta: Sequence[float], stamp_ns: int) -> None:
        """An external base policy's 7-DoF end-effector delta (see core.geometry)."""
        if not self.running:
            self._log("debug", "ignored a policy command: no task is running")
            return
        if self._policy.qsize() >= self.config.policy_history:
            self._log("warn", "policy commands arrive faster than they execute; dropped one")
            return
        self._policy.put((int(stamp_ns), np.asarray(delta, dtype=float)))

    @property
    def status(self) -> Status:
        """The last published status."""
        return self._status

    # --- the episode ----------------------------------------------------------------------------
    def run(self, request: Request,
            cancelled: Callable[[], bool | str] = lambda: False) -> TaskResult:
        """Execute ``request`` to its end (success, failure, help needed or cancel).

        ``cancelled``: polled while the task runs; truthy stops the arm and ends the task as
        canceled, a string saying why (default: the client canceled).
        """
        self._begin(request, cancelled)
        try:
            steps = self._expand(request)
            self._prepare()
            index = 0
            while index < len(steps):
                try:
                    self._enter(steps, index)
                    failure = self._execute(steps[index])
                    if failure is not None:
                        self._await_diagnosis(failure)
                    self._leave(steps, index)
                    index += 1
                except _TakeoverError as takeover:
                    index = self._recover(steps, index, takeover)
            self._count_success(len(steps))
            return self._end(ResultCode.SUCCEEDED, f"task {request.task.name} completed")
        except _CanceledError as canceled:
            return self._end(ResultCode.CANCELED, f"{canceled}; the arm was stopped")
        except _FinishError as finish:
            return self._end(finish.code, finish.message)
        finally:
            self.running = False

    def _begin(self, request: Request, cancelled: Callable[[], bool | str]) -> None:
        self.request, self._cancelled = request, cancelled
        limit = request.max_recoveries or self.config.recovery.max_recoveries
        self.budget = RetryBudget(limit)
        self.world = World()
        self.steps: tuple[Step, ...] = ()
        self._current = 0
        self.step_count = 0
        self.skill_index = -1
        self.since_ns = self.now_ns()  # start of the current skill
        self.started_ns = self.since_ns
        self.hard_since_ns = self.since_ns  # episode start, then the last recovery's end
        self.skills_completed = 0
        self.recoveries_attempted = self.recoveries_succeeded = 0
        self._pending_success: int | None = None
        self._gripper_closed = False
        self._grasp_force_scale = 1.0
        self._recovering = False
        self._progress = 0.0
        for inbox in (self._diagnoses, self._policy):
            while not inbox.empty():
                inbox.get_nowait()
        self._confirmations = Confirmations(self.config.recovery.interrupt_confirmations)
        self.running = True

    def _expand(self, request: Request) -> tuple[Step, ...]:
        try:
            self.steps = expand(request.task, self.config.profile, len(self.kin.joint_names))
        except TaskError as error:
            raise _FinishError(ResultCode.INVALID_GOAL, str(error)) from None
        self._status_update(State.RUNNING, message=f"starting task {request.task.name}")
        return self.steps

    def _prepare(self) -> None:
        outcome = self.backend.prepare(self.config.prepare_timeout)
        if not outcome.ok:
            raise _FinishError(ResultCode.CONTROLLER_ERROR, outcome.message)
        deadline = self._monotonic() + self.config.joint_state_timeout
        while self.backend.joint_positions() is None or self.backend.gripper_width() is None:
            self._check_cancel()
            if self._monotonic() > deadline:
                raise _FinishError(ResultCode.CONTROLLER_ERROR,
                                   f"no joint states (arm and gripper) within "
                                   f"{self.config.joint_state_timeout:.0f} s")
            self._sleep(self.config.poll_period)

    def _end(self, code: ResultCode, message: str) -> TaskResult:
        state = _FINAL_STATE.get(code, State.FAILED)
        self._status_update(state, message=f"{code.name}: {message}")
        return TaskResult(code, message, self.skills_completed, self.recoveries_attempted,
                          self.recoveries_succeeded, (self.now_ns() - self.started_ns) / 1e9)

    # --- status ---------------------------------------------------------------------------------
    def _status_update(self, state: State | None = None, *, event: str = "",
                       message: str | None = None, step: Step | None = None) -> None:
        previous = self._status
        now = self.now_ns()
        step = step or (self.steps[self._current] if self.steps else None)
        request = self.request
        status = Status(
            state=previous.state if state is None else state, episode_id=request.episode_id,
            task=request.task.name, instruction=request.task.instruction,
            skill=step.skill if step else "", skill_index=step.skill_index if step else 0,
            skill_count=len(request.task.skills), stage=step.stage if step else "",
            step=self.step_count, event=event or previous.event,
            event_stamp_ns=now if event else previous.event_stamp_ns,
            event_step=self.step_count if event else previous.event_step,
            message=previous.message if message is None else message, stamp_ns=now)
        self._status = status
        if message:
            self._log("info", message)
        self._publish_status(status)
        if step is not None:
            self._publish_feedback(Feedback(step.skill, step.skill_index, status.skill_count,
                                            step.stage, self._progress, self._recovering))

    # --- steps ----------------------------------------------------------------------------------
    def _enter(self, steps: Sequence[Step], index: int) -> None:
        self._current = index
        step = steps[index]
        self._progress = index / len(steps)
        if step.skill_index != self.skill_index:
            self.skill_index = step.skill_index
            self.since_ns = self.now_ns()
            self._observe([s for s in steps if s.skill_index == step.skill_index])
            self._status_update(State.RUNNING, event="skill_start",
                                message=f"skill {step.skill_index + 1}/"
                                        f"{len(self.request.task.skills)}: {step.skill}"
                                        + (f" {step.target}" if step.target else ""))
        elif index == 0 or steps[index - 1].stage != step.stage:
            self._status_update(State.RUNNING, message=f"{step.skill}: {step.stage}")

    def _leave(self, steps: Sequence[Step], index: int) -> None:
        self._count_success(index + 1)
        step = steps[index]
        if index + 1 == len(steps) or steps[index + 1].skill_index != step.skill_index:
            self.skills_completed = max(self.skills_completed, step.skill_index + 1)
            self._status_update(event="skill_end", message=f"{step.skill} done")

    def _count_success(self, completed: int) -> None:
        if self._pending_success is not None and completed > self._pending_success:
            self.recoveries_succeeded += 1
            self._pending_success = None

    def _observe(self, steps: Sequence[Step]) -> None:
        """Read the poses of the objects these steps move relative to.

        Only poses stamped after this request count: after a slip, a cached pose would be
        where the object was, not where it is.
        """
        requested = self.now_ns()
        for name in dict.fromkeys(n for s in steps for n in s.objects):
            try:
                pose = self._object_pose(name, requested, self.config.object_pose_timeout)
            except ObjectPoseError as error:
                raise _FinishError(ResultCode.FAILED, str(error)) from None
            self.world.observe(name, pose)

    def _execute(self, step: Step) -> _Failure | None:
        if step.kind == MOVE:
            return self._move(step)
        if step.kind == JOINT:
            return self._joint_move(step)
        if step.kind == GRIPPER:
            return self._gripper_step(step)
        self._in_policy_step = True
        try:
            return self._policy_step(step)
        finally:
            self._in_policy_step = False

    def _q(self) -> np.ndarray:
        q = self.backend.joint_positions()
        if q is None:
            raise _FinishError(ResultCode.CONTROLLER_ERROR, "joint states stopped")
        return q

    def _finger_gap(self) -> float | None:
        """How far the fingers are from fully open now (m); None when unknown."""
        width = self._width()
        return None if math.isnan(width) else self.config.profile.open_width - width

    def _width(self) -> float:
        width = self.backend.gripper_width()
        return math.nan if width is None else float(width)

    def _move(self, step: Step) -> _Failure | None:
        q = self._q()
        try:
            target = resolve_target(step, self.world, self.config.profile, self.kin.fk(q))
            path = plan_cartesian(self.kin, q, target, self.config.motion, speed=step.speed)
        except (TaskError, UnreachableError) as error:
            return _Failure(ResultCode.FAILED, f"{step.skill}/{step.stage}: cannot plan the "
                                               f"move: {error}")
        failure = self._run_path(path, q, f"{step.skill}/{step.stage}")
        if failure is None and self.world.held and self._width() < self.config.held_min_width:
            return _Failure(ResultCode.FAILED, f"{step.skill}/{step.stage}: the gripper closed "
                                               f"to {self._width():.4f} m: "
                                               f"{self.world.held} was lost")
        if failure is None and self.world.held and self.config.held_max_distance > 0:
            return self._check_held(step)
        return failure

    def _check_held(self, step: Step) -> _Failure | None:
        """The held object moved with the gripper, where perception can tell (else no check)."""
        name = self.world.held
        if name not in self.world.objects:  # a given pose, not a perceived object
            return None
        try:
            pose = self._object_pose(name, self.now_ns(),
                                     min(self.config.object_pose_timeout, HELD_POSE_WAIT))
        except ObjectPoseError:
            return None  # out of sight in the hand: nothing to go by
        distance = float(np.linalg.norm(np.asarray(pose.position)
                                        - self.kin.fk(self._q())[:3, 3]))
        if distance <= self.config.held_max_distance:
            return None
        return _Failure(ResultCode.FAILED, f"{step.skill}/{step.stage}: {name} is "
                                           f"{100 * distance:.1f} cm from the gripper: it did "
                                           f"not move with it", object_left=True)

    def _joint_move(self, step: Step) -> _Failure | None:
        q = self._q()
        motion = self.config.motion
        if step.speed:
            motion = dataclasses.replace(motion, velocity_fraction=step.speed)
        try:
            path = plan_joint(self.kin.limits, q, step.joints, motion)
        except (ValueError, UnreachableError) as error:
            return _Failure(ResultCode.INVALID_GOAL, f"{step.skill}: {error}")
        return self._run_path(path, q, step.skill)

    def _gate(self, path: JointPath, q: np.ndarray, what: str) -> None:
        report = self.gate.check_trajectory(q, path.times, path.positions)
        if not report.ok:
            raise _FinishError(ResultCode.SAFETY_REJECTED,
                               f"{what}: rejected by the safety gate: "
                               f"{_report_text(report)}; needs help")

    def _run_path(self, path: JointPath, q: np.ndarray, what: str, *,
                  interruptible: bool = True) -> _Failure | None:
        if not len(path):
            return None
        self._gate(path, q, what)
        self.step_count += 1
        motion = self.backend.follow(path)
        outcome = self._watch(motion, path.duration + self.config.motion_timeout_margin,
                              interruptible)
        if outcome.ok:
            return None
        self._check_cancel()  # ended by a cancel or a shutdown: that, not a controller fault
        message = f"{what}: the trajectory {outcome.status.value}: {outcome.message}"
        if outcome.status in (MotionStatus.ABORTED, MotionStatus.TIMED_OUT):
            message += f" ({self._recover_controller()})"
        return _Failure(ResultCode.CONTROLLER_ERROR, message)

    def _recover_controller(self) -> str:
        """Clear a controller error, then hold where the arm is.

        A controller reactivated after an error may resume a stale trajectory
        (ros2_control#674); a one-point goal at the current joints replaces it.
        """
        recovered = self.backend.recover()
        if not recovered.ok:
            return f"controller recovery failed: {recovered.message}"
        q = self._q()
        hold = JointPath(self.kin.joint_names, np.array([self.config.poll_period * 10]),
                         q[None, :])
        report = self.gate.check_trajectory(q, hold.times, hold.positions)
        if not report.ok:
            return f"controller recovered; holding refused: {_report_text(report)}"
        self.step_count += 1
        outcome = self._watch(self.backend.follow(hold), self.config.motion_timeout_margin,
                              False)
        return "controller recovered and holding" if outcome.ok else (
            f"controller recovered; holding failed: {outcome.message}")

    def _gripper_goal(self, kind: str, width: float = 0.0, force: float = 0.0,
                      epsilon: float = 0.0) -> GripperGoal:
        return GripperGoal(kind, width, force, epsilon,
                           self.config.profile.command_width(kind, width))

    def _check_gripper(self, goal: GripperGoal, what: str) -> None:
        """The gate on what the controller will be sent: width, and force unless opening."""
        report = self.gate.check_gripper(goal.command_width,
                                         None if goal.kind == OPEN else goal.force)
        if not report.ok:
            raise _FinishError(ResultCode.SAFETY_REJECTED,
                               f"{what}: rejected by the safety gate: {_report_text(report)}; "
                               "needs help")

    def _gripper_command(self, goal: GripperGoal, step: Step | None, *,
                         interruptible: bool = True) -> Outcome:
        self._check_gripper(goal, "gripper")
        self.step_count += 1
        # A move to a smaller width (an external policy closing) is a close keyframe too.
        closing = goal.kind != OPEN or goal.width < self._width() - 1e-3
        self._gripper_closed = closing
        self._status_update(event="gripper_close" if closing else "gripper_open", step=step)
        motion = self.backend.gripper(goal)
        return self._watch(motion, self.config.gripper_timeout, interruptible)

    def _gripper_step(self, step: Step) -> _Failure | None:
        force = step.force
        if step.gripper == GRASP and self._grasp_force_scale != 1.0:
            force = step.force * self._grasp_force_scale
            cap = self.gate.max_grasp_force
            if cap is not None and force > cap >= step.force:
                # Squeezing harder after weak closes saturates at the hand's limit; a task
                # asking for more than the limit itself is the gate's to refuse.
                self._status_update(message=f"{step.skill}: regrasp force {force:.1f} N capped "
                                            f"at the hand's {cap:.1f} N", step=step)
                force = cap
        goal = self._gripper_goal(step.gripper, step.width, force, step.epsilon)
        outcome = self._gripper_command(goal, step)
        if step.gripper == OPEN:
            self.world.held, self.world.held_yaw_offset = "", None
            if outcome.status not in (MotionStatus.SUCCEEDED, MotionStatus.ABORTED):
                return _Failure(ResultCode.CONTROLLER_ERROR,
                                f"{step.skill}: opening the gripper {outcome.status.value}: "
                                f"{outcome.message}")
            return None
        if step.gripper == CLOSE:
            if outcome.status in (MotionStatus.UNAVAILABLE, MotionStatus.TIMED_OUT):
                return _Failure(ResultCode.CONTROLLER_ERROR, f"{step.skill}: closing the "
                                                             f"gripper: {outcome.message}")
            return None
        if not outcome.ok:
            code = (ResultCode.CONTROLLER_ERROR if outcome.status in (
                MotionStatus.UNAVAILABLE, MotionStatus.TIMED_OUT, MotionStatus.REJECTED)
                else ResultCode.FAILED)
            return _Failure(code, f"{step.skill}: the grasp failed: {outcome.message}")
        self.world.held = step.object_key
        if step.target in self.world.objects:
            tcp = self.kin.fk(self._q())
            self.world.held_yaw_offset = (self.world.objects[step.target].yaw
                                          - tool_yaw(tcp[:3, :3],
                                                     self.config.profile.grasp_rotation))
        return None

    def _policy_step(self, step: Step) -> _Failure | None:
        """Execute an external policy's end-effector deltas until it stops or the quota is hit."""
        done, last = 0, self._monotonic()
        while step.max_steps == 0 or done < step.max_steps:
            self._check_cancel()
            self._check_diagnoses(stop=True)
            try:
                stamp, delta = self._policy.get(timeout=self.config.poll_period)
            except queue.Empty:
                if self._monotonic() - last > step.idle_timeout:
                    self._log("info", f"policy: no command for {step.idle_timeout:.1f} s; "
                                      "the policy phase ends")
                    break
                continue
            last = self._monotonic()
            if stamp < self.since_ns:  # queued before the policy phase began
                self._log("info", "policy: dropped a command older than the policy phase")
                continue
            done += 1
            failure = self._policy_command(step, delta)
            if failure is not None:
                return failure
        return None

    def _policy_command(self, step: Step, delta: np.ndarray) -> _Failure | None:
        q = self._q()
        plan = plan_correction(self.kin, q, Correction(CorrectionKind.EE_DELTA, tuple(delta)),
                               self.config.recovery.metres_per_bin, gripper_width=self._width(),
                               max_gripper_width=self.config.profile.open_width,
                               motion=self.config.motion)
        if not plan.ok:
            self._status_update(message=f"policy command rejected: {plan.reason}", step=step)
            return None
        if plan.has_motion:
            report = self.gate.check_trajectory(q, plan.times_from_start, plan.positions)
            if not report.ok:
                self._status_update(message=f"policy command rejected by the safety gate: "
                                            f"{_report_text(report)}", step=step)
                return None
            failure = self._run_path(plan.path, q, "policy")
            if failure is not None:
                return failure
        if plan.gripper_command is not GripperCommand.NONE:
            self._gripper_command(self._gripper_goal(OPEN, plan.gripper_width), step)
        return None

    # --- watching a command ---------------------------------------------------------------------
    def _stop(self, why: str) -> None:
        """Stop the robot; one that may still be moving ends the task as a controller error.

        Nothing is planned from a state that is still changing (a correction from a moving
        arm, a hold) and a cancel is not reported as done while the arm may run on.
        """
        outcome = self.backend.stop()
        if not outcome.ok:
            raise _FinishError(ResultCode.CONTROLLER_ERROR,
                               f"{why}: stopping the robot failed ({outcome.status.value}: "
                               f"{outcome.message}); it may still be moving")

    def _check_cancel(self) -> None:
        why = self._cancelled()
        if why:
            why = why if isinstance(why, str) else "canceled by the client"
            self._stop(why)
            raise _CanceledError(why)

    def _watch(self, motion: Motion, timeout: float, interruptible: bool) -> Outcome:
        deadline = self._monotonic() + timeout
        while not motion.done():
            self._check_cancel()
            if interruptible:
                self._check_diagnoses(stop=True)
            if self._monotonic() > deadline:
                self._stop(f"a command gave no result within {timeout:.1f} s")
                return Outcome(MotionStatus.TIMED_OUT, f"no result within {timeout:.1f} s")
            self._sleep(self.config.poll_period)
        return motion.outcome()

    def _check_diagnoses(self, stop: bool, object_left: bool = False) -> None:
        """Decide on queued diagnoses; a takeover or a call for help stops the robot first.

        ``object_left``: the failure the executor saw itself was a held object left behind.
        """
        while True:
            try:
                diagnosis = self._diagnoses.get_nowait()
            except queue.Empty:
                return
            verdict = assess(diagnosis, episode_id=self.request.episode_id,
                             since_ns=self._stale_before(),
                             window_since_ns=self.hard_since_ns,
                             enabled=self.request.recovery_enabled,
                             threshold=self.config.recovery.confidence_threshold,
                             budget=self.budget, planned_motion=not self._in_policy_step,
                             finger_gap=self._finger_gap(), object_left=object_left)
            if verdict.failure_type is not None:
                diagnosis = dataclasses.replace(diagnosis, failure_type=verdict.failure_type)
            if verdict.action is Action.IGNORE:
                self._confirmations.reset()
                self._status_update(message=verdict.reason)
                continue
            if stop and verdict.action is Action.TAKEOVER:
                agreeing = self._confirmations.add(diagnosis)
                if agreeing < self._confirmations.required:
                    self._status_update(message=f"{verdict.reason} (window {agreeing} of "
                                                f"{self._confirmations.required} needed to "
                                                "interrupt a skill that is going fine)")
                    continue
            self._confirmations.forget()
            if stop:
                self._stop(verdict.reason)
            if verdict.action is Action.NEEDS_HELP:
                raise _FinishError(ResultCode.NEEDS_HELP, verdict.reason)
            raise _TakeoverError(diagnosis, verdict.reason)

    def _stale_before(self) -> int:
        """Diagnoses of windows ending before this are stale.

        The current skill's start, less a grace period: the monitor analyses a window that ends
        a few frames after the event it was triggered by (a close, a skill's end), by when the
        executor may have moved on to the next skill. Nothing older than the episode or the
        last recovery counts, grace or not: it predates the correction.
        """
        grace = int(self.config.recovery.stale_grace * 1e9)
        return max(self.hard_since_ns, self.since_ns - grace)

    def _await_diagnosis(self, failure: _Failure) -> None:
        """After a failure the executor noticed itself, give the monitor time to diagnose it."""
        wait = self.config.recovery.diagnosis_wait
        if not self.request.recovery_enabled or wait <= 0:
            raise _FinishError(failure.code, failure.message)
        self._status_update(message=f"{failure.message}; holding up to {wait:.0f} s for a "
                                    "diagnosis")
        named = self._confirmations.latest
        if named is not None:  # named before the executor saw it fail: that confirms it
            self._diagnoses.put(named)
        deadline = self._monotonic() + wait
        while self._monotonic() < deadline:
            self._check_cancel()
            self._check_diagnoses(stop=False, object_left=failure.object_left)
            self._sleep(self.config.poll_period)
        message = f"{failure.message}; no diagnosis within {wait:.0f} s"
        if failure.object_left and self.config.recovery.regrasp_left_behind \
                and self.budget.remaining > 0:
            # Worded like every takeover ("taking over for TYPE ..."), which is how the
            # episode runner counts the failure types acted on.
            raise _TakeoverError(left_behind(self.request.episode_id, self.now_ns(),
                                             self.config.profile.open_width),
                                 f"taking over for weak_close on the executor's own evidence "
                                 f"(the hand closed and the object stayed behind): {message}")
        raise _FinishError(failure.code, message)

    # --- recovery -------------------------------------------------------------------------------
    def _recover(self, steps: Sequence[Step], index: int, takeover: _TakeoverError) -> int:
        diagnosis = takeover.diagnosis
        self.budget.consume()
        self.recoveries_attempted += 1
        self._pending_success = None
        self._recovering = True
        self._status_update(State.RECOVERING, event="recovery_start",
                            message=f"{takeover.reason} (recovery {self.budget.used}/"
                                    f"{self.budget.limit})")
        self._stop(takeover.reason)
        q, width = self._q(), self._width()
        resume = resume_point(steps, index, diagnosis.stage, diagnosis.failure_type,
                              self._gripper_closed)
        if diagnosis.failure_type is FailureType.WEAK_CLOSE:
            # Dream2Fix: re-close, harder (up to the gate's force limit, see _gripper_step).
            self._grasp_force_scale *= self.config.recovery.weak_close_force_scale
        plan, path = self._correction(diagnosis, q, width)
        if not plan.ok:
            raise _FinishError(ResultCode.NEEDS_HELP,
                               f"cannot execute the correction: {plan.reason}; needs help")
        if len(path):
            self._gate(path, q, "correction")
        grip = None
        if plan.gripper_command is not GripperCommand.NONE and not resume.reopen:
            if plan.gripper_command is GripperCommand.CLOSE:
                grip = self._gripper_goal(CLOSE, force=self.config.profile.grasp_force)
            else:
                grip = self._gripper_goal(OPEN, self.config.profile.open_width
                                          if plan.gripper_width is None else plan.gripper_width)
            self._check_gripper(grip, "correction")
        # Everything is checked; act.
        if resume.reopen and self._gripper_closed:
            outcome = self._gripper_command(self._gripper_goal(OPEN,
                                                               self.config.profile.open_width),
                                            steps[index], interruptible=False)
            self.world.held, self.world.held_yaw_offset = "", None
            if outcome.status in (MotionStatus.UNAVAILABLE, MotionStatus.TIMED_OUT):
                raise _FinishError(ResultCode.CONTROLLER_ERROR,
                                   f"opening for a regrasp: {outcome.message}")
        failure = self._run_path(path, q, "correction", interruptible=False)
        if failure is not None:
            raise _FinishError(ResultCode.NEEDS_HELP, f"{failure.message}; needs help")
        if grip is not None:
            self._gripper_command(grip, steps[index], interruptible=False)
        target = steps[resume.index]
        if resume.refresh:
            self._observe([s for s in steps if s.skill_index == target.skill_index])
        elif target.kind == MOVE and target.anchor != "tcp" or target.kind == GRIPPER:
            # The object is where the correction says along the diagnosed error only: a
            # translation error moves it, a rotation error turns it, nothing else persists.
            kind = family(diagnosis.failure_type)
            self.world.add_offset(
                target.object_key,
                plan.translation if kind is Family.TRANSLATION else np.zeros(3),
                plan.rotation if kind is Family.ROTATION else np.eye(3))
        self.skill_index = target.skill_index
        self.since_ns = self.hard_since_ns = self.now_ns()
        self._pending_success = index
        self._recovering = False
        self._current = resume.index
        self._status_update(State.RUNNING, event="recovery_end",
                            message=f"correction executed ({plan.source}); {resume.reason}",
                            step=target)
        return resume.index

    def _correction(self, diagnosis: Diagnosis, q: np.ndarray,
                    width: float) -> tuple[CorrectionPlan, JointPath]:
        """The correction to run: the monitor's trajectory when it is usable, else our plan."""
        rc = self.config.recovery
        plan = plan_correction(self.kin, q, diagnosis.correction, rc.metres_per_bin,
                               gripper_width=width,
                               max_gripper_width=self.config.profile.open_width,
                               motion=self.config.motion, speed=self.config.profile.slow_speed)
        if (not rc.use_monitor_trajectory or not plan.ok
                or diagnosis.model_name == EXECUTOR_MODEL_NAME):  # no monitor trajectory coming
            return plan, plan.path
        fields = self._monitor_trajectory(diagnosis.stamp_ns, rc.trajectory_wait)
        if fields is None:
            return plan, plan.path
        try:
            path = trajectory_from_fields(*fields, self.kin.joint_names)
        except MalformedTrajectoryError as error:
            self._status_update(message=f"rejected the monitor's correction trajectory: {error}; "
                                        "executing the executor's own plan of the correction")
            return plan, plan.path
        report = self.gate.check_trajectory(q, path.times, path.positions)
        if not report.ok:
            self._status_update(message=f"rejected the monitor's correction trajectory: "
                                        f"{_report_text(report)}; executing the executor's own "
                                        "plan of the correction")
            return plan, plan.path
        return dataclasses.replace(plan, source=f"{plan.source}, monitor trajectory"), path

    def _monitor_trajectory(self, stamp_ns: int, wait: float):
        deadline = self._monotonic() + wait
        while True:
            with self._lock:
                fields = self._trajectories.pop(int(stamp_ns), None)
            if fields is not None or self._monotonic() >= deadline:
                return fields
            self._sleep(self.config.poll_period)
