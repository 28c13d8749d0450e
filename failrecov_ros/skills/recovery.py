"""When to take over from the running task, and where to hand back (FailSafe's takeover loop).

A diagnosis leads to a takeover only if it is about this episode, not stale (its window ended
after the current skill began, less a grace period, and after the last recovery), reports a
failure with enough confidence, recovery is enabled, and the episode's retry budget is not
spent; every other outcome is a decision with a reason the executor logs and publishes. After
the correction has run, the task resumes at a point that makes sense for the failure: the failed
stage itself, re-approach and regrasp for a failed grasp or a gripper fault, and a fresh approach
(with the object's pose read again) once the object has been lost.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence

from failrecov_ros.core.schema import Correction, CorrectionKind, Diagnosis
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.skills.steps import GRASP, GRIPPER, Step

#: Failures that leave the object out of the hand: re-approach it where it is now.
OBJECT_LOST = (FailureType.SLIP, FailureType.EARLY_RELEASE)
#: Failures of the close itself: re-approach and close again.
GRIPPER_FAULTS = (FailureType.DELAY_CLOSE, FailureType.WEAK_CLOSE, FailureType.FORCE_OPEN)
PRE_CONTACT_STAGES = ("approach", "pre_grasp")
#: m the fingers must have closed from fully open before a force_open is contradicted.
CLOSED_GAP = 0.01


@dataclasses.dataclass(frozen=True)
class RecoveryConfig:
    """Takeover policy: threshold, budget, bin size and how long to wait for the monitor."""

    confidence_threshold: float = 0.5
    max_recoveries: int = 2
    metres_per_bin: float = 0.01
    diagnosis_wait: float = 10.0  # s the executor waits for a diagnosis after its own failure
    stale_grace: float = 2.0  # s before the current skill's start a window may still end
    trajectory_wait: float = 0.5  # s it waits for the monitor's trajectory of a diagnosis
    use_monitor_trajectory: bool = True
    weak_close_force_scale: float = 1.5  # grasp force factor for the regrasp after weak_close
    # A closed hand that lifted without its object (the executor sees it stay behind) is
    # regrasped harder, as for a diagnosed weak_close, when no usable diagnosis comes in time.
    regrasp_left_behind: bool = True
    # Windows in a row that must name the same failure before the monitor may stop a skill
    # that is running fine by the executor's own measure (a failure the executor noticed
    # itself needs one).
    interrupt_confirmations: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got "
                             f"{self.confidence_threshold}")
        if self.max_recoveries < 0:
            raise ValueError(f"max_recoveries must be >= 0, got {self.max_recoveries}")
        if not (math.isfinite(self.metres_per_bin) and self.metres_per_bin > 0):
            raise ValueError(f"metres_per_bin must be positive, got {self.metres_per_bin}")
        if not (self.diagnosis_wait >= 0 and self.trajectory_wait >= 0
                and self.stale_grace >= 0):
            raise ValueError("diagnosis_wait, trajectory_wait and stale_grace must be >= 0")
        if self.interrupt_confirmations < 1:
            raise ValueError(f"interrupt_confirmations must be >= 1, got "
                             f"{self.interrupt_confirmations}")
        if not (math.isfinite(self.weak_close_force_scale) and self.weak_close_force_scale >= 1):
            raise ValueError(f"weak_close_force_scale must be >= 1, got "
                             f"{self.weak_close_force_scale}")


class Action(str, enum.Enum):
    """What the executor does with a diagnosis."""

    IGNORE = "ignore"
    TAKEOVER = "takeover"
    NEEDS_HELP = "needs_help"


@dataclasses.dataclass(frozen=True)
class Assessment:
    """A decision on one diagnosis and why."""

    action: Action
    reason: str
    #: The failure the executor acts on, where its own measurements read the diagnosis as a
    #: different failure of the same family (else the diagnosis's own type).
    failure_type: FailureType | None = None


class RetryBudget:
    """Recoveries left in an episode."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"retry budget must be >= 0, got {limit}")
        self.limit, self.used = int(limit), 0

    @property
    def remaining(self) -> int:
        """Recoveries still allowed."""
        return self.limit - self.used

    def consume(self) -> None:
        """Spend one recovery (ValueError when none is left)."""
        if self.remaining <= 0:
            raise ValueError(f"the retry budget of {self.limit} is spent")
        self.used += 1


def assess(diagnosis: Diagnosis, *, episode_id: str, since_ns: int, enabled: bool,
           threshold: float, budget: RetryBudget, planned_motion: bool = False,
           finger_gap: float | None = None, window_since_ns: int = 0,
           object_left: bool = False) -> Assessment:
    """Decide what a diagnosis means for the running episode (pure; the reason says why).

    ``since_ns``: a window ending before this is stale. ``window_since_ns`` (the episode's
    start, then the last recovery's end): a window that began before it shows, in its first
    frames, what came before, such as the failure a correction has just undone, so it is
    stale too, however recently it ended.

    A diagnosis is checked against what the executor measures itself before it may take over:
    ``planned_motion``: the executor is driving (or holding) a motion it planned itself, not an
    external policy. A stall (FailSafe: the policy stops acting) is then contradicted by the
    executor's own bookkeeping: its motions either progress or time out, which it reports
    itself; pauses between skills are deliberate and look like stalls to a model.
    ``finger_gap``: how far (m) the fingers are now from fully open. A force_open (the hand
    never closed) is contradicted once they have closed by more than ``CLOSED_GAP``, unless
    ``object_left``: the executor saw the object it closed on stay behind when the arm moved.
    The hand then closed without holding, a weak close (Dream2Fix's operators differ only in
    the closure), and the takeover regrasps harder, as for a diagnosed weak_close.
    """
    d = diagnosis
    what = f"{d.failure_type.value} at {d.stage or '?'} (confidence {d.confidence:.2f})"
    if d.is_unknown:
        return Assessment(Action.IGNORE, f"ignored a diagnosis the monitor could not parse: "
                                         f"{d.error}")
    if d.episode_id and episode_id and d.episode_id != episode_id:
        return Assessment(Action.IGNORE, f"ignored a diagnosis for episode {d.episode_id!r}, "
                                         f"not the running {episode_id!r}")
    if d.stamp_ns < since_ns:
        return Assessment(Action.IGNORE, f"ignored a stale diagnosis ({what}): its window ended "
                                         f"{(since_ns - d.stamp_ns) / 1e9:.2f} s before the "
                                         "current skill (less its grace) or the last recovery "
                                         "started")
    begun = d.window_start_ns or d.stamp_ns
    if begun < window_since_ns:
        return Assessment(Action.IGNORE, f"ignored a stale diagnosis ({what}): its window began "
                                         f"{(window_since_ns - begun) / 1e9:.2f} s before the "
                                         "episode started or the last correction ended")
    if not d.failed:
        return Assessment(Action.IGNORE, "the monitor reports no failure")
    if d.confidence < threshold:
        return Assessment(Action.IGNORE, f"ignored {what}: below the confidence threshold "
                                         f"{threshold:.2f}")
    if not enabled:
        return Assessment(Action.IGNORE, f"ignored {what}: recovery is disabled for this goal")
    if planned_motion and d.failure_type is FailureType.STALL:
        return Assessment(Action.IGNORE, f"ignored {what}: the executor's own planned motion is "
                                         "not stalled (it would time out and say so)")
    acted_on = None
    if d.failure_type is FailureType.FORCE_OPEN and finger_gap is not None \
            and finger_gap > CLOSED_GAP:
        if not object_left:
            return Assessment(Action.IGNORE, f"ignored {what}: the fingers have closed "
                                             f"{finger_gap * 1000:.0f} mm from open, so the hand "
                                             "did close")
        acted_on = FailureType.WEAK_CLOSE
        what += (f", read as weak_close: the fingers closed {finger_gap * 1000:.0f} mm but the "
                 "object stayed behind")
    if d.correction.kind is CorrectionKind.NEEDS_HELP:
        return Assessment(Action.NEEDS_HELP, f"{what}: the monitor asks for help: {d.summary}")
    if budget.remaining <= 0:
        return Assessment(Action.NEEDS_HELP, f"{what}: the retry budget of {budget.limit} "
                                             "recoveries is spent")
    return Assessment(Action.TAKEOVER, f"taking over for {what}: {d.summary}".rstrip(": "),
                      acted_on)


#: ``model_name`` of the diagnoses the executor makes itself: no monitor saw them, so no monitor
#: trajectory will come for them.
EXECUTOR_MODEL_NAME = "executor"


def left_behind(episode_id: str, stamp_ns: int, open_width: float) -> Diagnosis:
    """The executor's own account of a held object left behind: the hand closed but did not hold.

    That is a weak close whatever the monitor says (Dream2Fix's operators differ only in the
    closure), and its correction is the one a diagnosed weak_close gets: re-close, harder.
    """
    return Diagnosis(True, FailureType.WEAK_CLOSE, 1.0, "keyframe",
                     "The hand closed and lifted, but the object stayed behind. Regrasp harder.",
                     Correction.close_gripper(0, open_width),
                     episode_id=episode_id, stamp_ns=stamp_ns,
                     model_name=EXECUTOR_MODEL_NAME)


class Confirmations:
    """Debounces the monitor's interrupts of a skill that is going fine.

    ``required`` takeover verdicts in a row must name the same failure type; any other
    diagnosis in between starts the count again. One window's false alarm then costs nothing,
    where it would spend a recovery (and the retry budget) on a skill that was going fine.

    ``latest`` outlives the streak: a failure named once (a weak close at the keyframe), then
    not again by windows that see an arm moving as planned, is still the best account of what
    went wrong when the executor notices the failure itself (the object stayed behind).
    """

    def __init__(self, required: int) -> None:
        self.required = required
        self._count = 0
        #: The takeover diagnosis that started or continued the current streak.
        self.pending: Diagnosis | None = None
        #: The latest takeover diagnosis not acted on, streak or not: enough on its own once
        #: the executor notices a failure itself (if it is not stale by then).
        self.latest: Diagnosis | None = None

    def reset(self) -> None:
        """Forget the streak (a diagnosis that disagrees)."""
        self._count, self.pending = 0, None

    def forget(self) -> None:
        """Forget everything (a takeover acted on, a new episode)."""
        self.reset()
        self.latest = None

    def add(self, diagnosis: Diagnosis) -> int:
        """Count one takeover verdict; how many in a row now name its failure type."""
        if self.pending is None or diagnosis.failure_type is not self.pending.failure_type:
            self._count = 0
        self._count += 1
        self.pending = self.latest = diagnosis
        return self._count


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where the task continues after a correction, and what to do first."""

    index: int
    reopen: bool  # open the gripper before the correction (a regrasp follows)
    refresh: bool  # read the object's pose again (it is no longer where it was)
    reason: str


def _block_start(steps: Sequence[Step], index: int) -> int:
    """First index of the run of steps with the stage (and skill) of ``steps[index]``."""
    stage, skill = steps[index].stage, steps[index].skill_index
    while index > 0 and steps[index - 1].stage == stage and \
            steps[index - 1].skill_index == skill:
        index -= 1
    return index


def _last(steps: Sequence[Step], current: int, predicate) -> int | None:
    for index in range(min(current, len(steps) - 1), -1, -1):
        if predicate(steps[index]):
            return index
    return None


def resume_point(steps: Sequence[Step], current: int, stage: str,
                 failure_type: FailureType, gripper_closed: bool) -> ResumePoint:
    """Where to resume after a correction for a failure diagnosed at ``stage``.

    ``current`` is the step that was running (or had just failed). The stage is looked up among
    the steps up to it (the latest occurrence); an unknown stage means the current one.
    """
    current = min(max(current, 0), len(steps) - 1)
    grasp = _last(steps, current, lambda s: s.kind == GRIPPER and s.gripper == GRASP)
    failed = _last(steps, current, lambda s: s.stage == stage) if stage else None
    if failed is None:
        failed = current
    if grasp is not None and failure_type in OBJECT_LOST:
        approach = _last(steps, grasp, lambda s: s.stage == "approach")
        index = _block_start(steps, approach if approach is not None else grasp)
        return ResumePoint(index, True, True,
                           f"the object was lost: re-approach {steps[index].target or 'it'} "
                           "and regrasp")
    regrasp = grasp is not None and (steps[failed].stage == "grasp"
                                     or failure_type in GRIPPER_FAULTS)
    if regrasp:
        before = grasp - 1 if grasp > 0 else None
        if before is not None and steps[before].stage == "pre_grasp":
            index = _block_start(steps, before)
        else:
            index = grasp
        return ResumePoint(index, True, False, "re-approach and regrasp")
    index = _block_start(steps, failed)
    reopen = gripper_closed and steps[failed].stage in PRE_CONTACT_STAGES and \
        any(s.kind == GRIPPER and s.gripper == GRASP for s in steps[index:])
    return ResumePoint(index, reopen, False, f"resume at {steps[index].stage} of "
                                             f"{steps[index].skill}")
