"""A diagnosis's correction as a joint trajectory: the one mapping the monitor and executor share.

FailSafe's 7-DoF end-effector delta and Dream2Fix's directives (axis direction x step bins, and
a gripper command at a keyframe) both become a target tool pose reached by a straight Cartesian
line from where the arm is now (``core.geometry.apply_ee_delta``: base frame, p' = p + d,
R' = R_rpy(d) R, the gripper width changed by dgripper metres; ``Directive.displacement`` with
the executor's metres per bin). The recovery monitor publishes the result as its
``correction_trajectory``; the executor plans the same thing itself when none arrives, and
re-validates either through the safety gate before it moves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from failrecov_ros.core.geometry import apply_ee_delta, matrix_from_rpy
from failrecov_ros.core.schema import Correction, CorrectionKind, GripperCommand
from failrecov_ros.robots.kinematics import Kinematics, UnreachableError
from failrecov_ros.skills.motion import DEFAULT_MOTION, JointPath, MotionLimits, plan_cartesian

#: Frame names an ee delta may be expressed in: the robot base frame under any of its names.
BASE_FRAME_ALIASES = ("", "base")
#: Below this translation (m) and rotation (rad) a correction has no arm motion.
MIN_TRANSLATION = 1e-4
MIN_ROTATION = 1e-4


@dataclasses.dataclass(frozen=True)
class CorrectionPlan:
    """What a correction asks the robot to do, planned from one joint state.

    ``positions`` (N x n) at ``times_from_start`` (N) move the arm (N = 0: no arm motion);
    ``gripper_command``/``gripper_width`` (m) the gripper, if the correction has a gripper part.
    ``translation`` (m) and ``rotation`` (3x3) are the tool displacement in the base frame
    (R' = rotation @ R). A plan that could not be made has a non-empty ``reason``.
    """

    joint_names: tuple[str, ...]
    positions: np.ndarray
    times_from_start: np.ndarray
    gripper_command: GripperCommand = GripperCommand.NONE
    gripper_width: float | None = None
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    target: np.ndarray | None = None
    source: str = ""  # which correction form was used: ee_delta | directive | replan
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the plan was made (it may still have no motion)."""
        return not self.reason

    @property
    def has_motion(self) -> bool:
        """True when the arm moves."""
        return len(self.times_from_start) > 0

    @property
    def path(self) -> JointPath:
        """The arm motion as a JointPath."""
        return JointPath(self.joint_names, self.times_from_start, self.positions)


def _failed(kinematics: Kinematics, reason: str, **fields) -> CorrectionPlan:
    names = kinematics.joint_names
    return CorrectionPlan(names, np.zeros((0, len(names))), np.zeros(0), reason=reason, **fields)


def plan_correction(kinematics: Kinematics, q_now: np.ndarray, correction: Correction,
                    metres_per_bin: float, *, gripper_width: float | None = None,
                    max_gripper_width: float | None = None,
                    motion: MotionLimits = DEFAULT_MOTION,
                    speed: float | None = None) -> CorrectionPlan:
    """Plan ``correction`` from joints ``q_now`` (``kinematics.joint_names`` order).

    ``gripper_width`` (m, now) is needed for an ee delta's dgripper; the resulting width is
    clipped into [0, ``max_gripper_width``]. A directive's CLOSE asks for width 0 (a grasp),
    OPEN for ``max_gripper_width``. The kind decides which form is used when both are present.
    Never raises for a bad correction: the reason is in the plan.
    """
    if not (math.isfinite(metres_per_bin) and metres_per_bin > 0):
        raise ValueError(f"metres_per_bin must be positive, got {metres_per_bin}")
    q_now = np.asarray(q_now, dtype=float).reshape(-1)
    if q_now.shape != (len(kinematics.joint_names),) or not np.all(np.isfinite(q_now)):
        return _failed(kinematics, f"joint state must be {len(kinematics.joint_names)} finite "
                                   f"values, got {q_now.tolist()}")
    kind = correction.kind
    if kind is CorrectionKind.NONE:
        return _failed(kinematics, "the correction is empty (kind none)")
    if kind is CorrectionKind.NEEDS_HELP:
        return _failed(kinematics, "the diagnosis asks for help (kind needs_help)")
    if kind is CorrectionKind.REPLAN:
        return dataclasses.replace(_failed(kinematics, ""), source="replan")

    current = kinematics.fk(q_now)
    command, width = GripperCommand.NONE, None
    if kind is CorrectionKind.EE_DELTA:
        delta = correction.ee_delta
        if delta is None:
            return _failed(kinematics, "kind ee_delta without an ee_delta")
        if correction.ee_frame not in (*BASE_FRAME_ALIASES, kinematics.base_frame):
            return _failed(kinematics, f"ee_frame {correction.ee_frame!r} is not the base frame "
                                       f"{kinematics.base_frame!r}")
        delta = np.asarray(delta, dtype=float)
        if delta.shape != (7,) or not np.all(np.isfinite(delta)):
            return _failed(kinematics, f"ee_delta must be 7 finite numbers, got {delta.tolist()}")
        if delta[6] != 0.0:
            if gripper_width is None or not math.isfinite(gripper_width):
                return _failed(kinematics, "dgripper needs the current gripper width")
            _, _, width = apply_ee_delta(current[:3, 3], current[:3, :3], gripper_width, delta)
            high = max_gripper_width if max_gripper_width is not None else math.inf
            width = float(min(max(width, 0.0), high))
            command = GripperCommand.CLOSE if delta[6] < 0 else GripperCommand.OPEN
        translation = tuple(float(v) for v in delta[:3])
        rotation = matrix_from_rpy(*delta[3:6])
        source = "ee_delta"
    else:
        directive = correction.directive
        if directive is None:
            return _failed(kinematics, "kind directive without a directive")
        translation = directive.displacement(metres_per_bin)
        rotation = np.eye(3)
        command = directive.gripper
        if command is GripperCommand.CLOSE:
            width = 0.0
        elif command is GripperCommand.OPEN:
            width = max_gripper_width
        source = "directive"

    fields = dict(gripper_command=command, gripper_width=width, translation=translation,
                  rotation=rotation, source=source)
    turn = float(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)))
    if np.linalg.norm(translation) < MIN_TRANSLATION and turn < MIN_ROTATION:
        return dataclasses.replace(_failed(kinematics, ""), **fields)
    target = np.eye(4)
    target[:3, 3] = current[:3, 3] + np.asarray(translation)
    target[:3, :3] = rotation @ current[:3, :3]
    try:
        path = plan_cartesian(kinematics, q_now, target, motion, speed=speed)
    except UnreachableError as error:
        return _failed(kinematics, f"cannot reach the corrected pose: {error}", target=target,
                       **fields)
    return CorrectionPlan(kinematics.joint_names, path.positions, path.times, target=target,
                          **fields)


class MalformedTrajectoryError(ValueError):
    """A correction trajectory that cannot be executed as sent (the message says why)."""


def trajectory_from_fields(joint_names: Sequence[str], times: Sequence[float],
                           positions: Sequence[Sequence[float]],
                           arm_joints: Sequence[str]) -> JointPath:
    """A received joint trajectory's fields as a JointPath in ``arm_joints`` order.

    Checks what makes a trajectory executable at all (the arm's joints, each exactly once, one
    position per joint in every point, finite, strictly increasing times after 0); whether it is
    safe is the safety gate's call. Raises MalformedTrajectoryError with the reason.
    """
    names, arm = list(joint_names), list(arm_joints)
    if not names:
        raise MalformedTrajectoryError("trajectory has no joint_names")
    if len(set(names)) != len(names):
        raise MalformedTrajectoryError(f"duplicate joint names {names}")
    if set(names) != set(arm):
        raise MalformedTrajectoryError(f"joint_names {names} are not the arm's joints {arm}")
    if len(times) == 0:
        raise MalformedTrajectoryError("trajectory has no points")
    if len(positions) != len(times):
        raise MalformedTrajectoryError(f"{len(positions)} points for {len(times)} times")
    for index, point in enumerate(positions):
        if len(point) != len(names):
            raise MalformedTrajectoryError(
                f"point {index} has {len(point)} positions for {len(names)} joints")
    stamps = np.asarray(times, dtype=float)
    values = np.asarray(positions, dtype=float).reshape(len(stamps), len(names))
    if not (np.all(np.isfinite(stamps)) and np.all(np.isfinite(values))):
        raise MalformedTrajectoryError("trajectory holds non-finite numbers")
    if stamps[0] <= 0 or np.any(np.diff(stamps) <= 0):
        raise MalformedTrajectoryError("time_from_start must be > 0 and strictly increase")
    order = [names.index(name) for name in arm]
    return JointPath(tuple(arm), stamps, values[:, order])
