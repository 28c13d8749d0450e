"""Forward and inverse kinematics of the arms we drive, on their real URDFs (pinocchio).

One small interface for every robot: ``joint_names`` (the joints a trajectory commands, in
order), ``fk(q)`` (4x4 pose of the tool centre point in the robot base frame) and
``ik(target, q_seed)`` (joints reaching a 4x4 target, or :class:`UnreachableError` saying how far it
got). The skill planner, the correction planner (shared with the recovery monitor) and the
safety gate's workspace check all go through it, so they agree on where the tool is.

FR3: the ``franka-sim`` URDF (joints ``joint1..7``, renamed to franka_ros2's ``fr3_jointN``)
plus franka_description's hand mount; the TCP sits between the fingertips. Stretch: the SE3 URDF
with the base parked; the command joints are stretch_driver's ``joint_lift``, ``joint_arm``
(the whole telescoping extension, split equally over the four links as the driver does) and
the three wrist joints; the TCP is the grasp point between the fingertip pads. With five joints
the Stretch cannot reach every 6-D pose: its IK weights orientation less and refuses targets it
cannot reach within tolerance (a sideways step along the base's x axis needs the base).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Sequence

import numpy as np
import pinocchio as pin

from failrecov_ros.core.limits import JointLimits
from failrecov_ros.robots import fr3, stretch

ROBOTS = ("fr3", "stretch")


class UnreachableError(ValueError):
    """IK found no joint solution within tolerance (the message says how close it got)."""


@dataclasses.dataclass(frozen=True)
class IkSettings:
    """Damped least squares settings; tolerances decide when a target counts as reached."""

    iterations: int = 300
    position_tolerance: float = 1e-3  # m
    rotation_tolerance: float = 1e-2  # rad
    rotation_weight: float = 1.0  # weight of 1 rad of orientation error against 1 m
    damping: float = 1e-4
    max_step: float = 0.2  # largest joint change per iteration (rad or m)
    seed_gain: float = 0.05  # null-space pull toward the seed (keeps redundant arms near it)
    limit_margin: float = 0.0  # solutions stay this far inside the joint limits


class Kinematics:
    """FK/IK of one arm's command joints, with the base fixed at the origin of ``base_frame``.

    The pinocchio model's joint vector is an affine map of the command joints
    (``q_model = mapping @ q + offset``), which is how the Stretch's one arm command drives four
    telescoping links.
    """

    def __init__(self, robot: str, model: pin.Model, parent_frame: str, tcp_offset: pin.SE3,
                 joint_names: Sequence[str], limits: JointLimits, mapping: np.ndarray,
                 offset: np.ndarray, base_frame: str, tcp_frame: str,
                 settings: IkSettings = IkSettings()) -> None:
        self.robot = robot
        self.model = model
        parent = model.frames[model.getFrameId(parent_frame)]
        self.frame_id = model.addFrame(pin.Frame(
            tcp_frame, parent.parentJoint, parent.placement * tcp_offset, pin.FrameType.OP_FRAME))
        self.data = model.createData()
        self.joint_names = tuple(joint_names)
        self.limits = limits.subset(self.joint_names)
        self.mapping = np.asarray(mapping, float)
        self.offset = np.asarray(offset, float)
        self.base_frame, self.tcp_frame = base_frame, tcp_frame
        self.settings = settings

    def _model_q(self, q: np.ndarray) -> np.ndarray:
        return self.mapping @ q + self.offset

    def _check(self, q) -> np.ndarray:
        q = np.asarray(q, float).reshape(-1)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f"{self.robot}: expected {len(self.joint_names)} joint values "
                             f"({', '.join(self.joint_names)}), got {q.shape[0]}")
        return q

    def fk(self, q) -> np.ndarray:
        """4x4 pose of the TCP in the base frame for command joints ``q``."""
        q = self._check(q)
        pin.framesForwardKinematics(self.model, self.data, self._model_q(q))
        return self.data.oMf[self.frame_id].homogeneous.copy()

    def jacobian(self, q) -> np.ndarray:
        """6 x n Jacobian (linear; angular) of the TCP in base-frame axes."""
        return self._pose_and_jacobian(self._check(q))[1]

    def _pose_and_jacobian(self, q: np.ndarray) -> tuple[pin.SE3, np.ndarray]:
        model_q = self._model_q(q)
        pin.computeJointJacobians(self.model, self.data, model_q)
        pin.updateFramePlacements(self.model, self.data)
        jac = pin.getFrameJacobian(self.model, self.data, self.frame_id,
                                   pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
        return self.data.oMf[self.frame_id], jac @ self.mapping

    def ik(self, target, q_seed, settings: IkSettings | None = None) -> np.ndarray:
        """Command joints putting the TCP at ``target`` (4x4), starting from ``q_seed``.

        Damped least squares with joint-limit clamping and a null-space pull toward the seed, so
        consecutive waypoints solved from each other's solutions stay on one branch. Gives up
        after ``iterations`` or once an iteration stops improving; raises
        :class:`UnreachableError` when the tolerances are not met.
        """
        s = settings or self.settings
        target = np.asarray(target, float)
        if target.shape != (4, 4) or not np.all(np.isfinite(target)):
            raise UnreachableError(f"{self.robot}: target must be a finite 4x4 pose")
        goal = pin.SE3(target[:3, :3], target[:3, 3])
        if abs(np.linalg.det(goal.rotation) - 1.0) > 1e-6:
            raise UnreachableError(f"{self.robot}: target rotation is not a rotation matrix")
        seed = self._check(q_seed)
        lower = self.limits.lower + s.limit_margin
        upper = self.limits.upper - s.limit_margin
        q = np.clip(seed, lower, upper)
        weights = np.array([1.0, 1.0, 1.0] + [s.rotation_weight] * 3)
        damping = s.damping * np.eye(6)
        identity = np.eye(len(q))
        best, best_q, stalled = np.inf, q, 0
        p_err = r_err = np.inf
        for _ in range(s.iterations):
            pose, jac = self._pose_and_jacobian(q)
            error = np.concatenate([goal.translation - pose.translation,
                                    pin.log3(goal.rotation @ pose.rotation.T)])
            p_err, r_err = float(np.linalg.norm(error[:3])), float(np.linalg.norm(error[3:]))
            if p_err < s.position_tolerance and r_err < s.rotation_tolerance:
                return q
            score = p_err + s.rotation_weight * r_err
            if score < 0.99 * best:
                best, best_q, stalled = score, q, 0
            else:
                stalled += 1
                if stalled >= 12:  # a joint limit or an unreachable pose: no more progress
                    break
            jac = jac * weights[:, None]
            solved = np.linalg.solve(jac @ jac.T + damping,
                                     np.column_stack([error * weights, jac]))
            step = jac.T @ solved[:, 0]
            step += (identity - jac.T @ solved[:, 1:]) @ (s.seed_gain * (seed - q))
            scale = min(1.0, s.max_step / max(float(np.max(np.abs(step))), 1e-12))
            q = np.clip(q + scale * step, lower, upper)
        pose = pin.SE3(self.fk(best_q))
        p_err = float(np.linalg.norm(goal.translation - pose.translation))
        r_err = float(np.linalg.norm(pin.log3(goal.rotation @ pose.rotation.T)))
        raise UnreachableError(
            f"{self.robot}: no joint solution reaches the target within "
            f"{s.position_tolerance} m / {s.rotation_tolerance} rad (closest: {p_err:.4f} m, "
            f"{r_err:.4f} rad off; target position {np.round(goal.translation, 4).tolist()})")


def _urdf_text(resource: tuple[str, str]) -> str:
    package, path = resource
    return importlib.resources.files(package).joinpath(path).read_text()


def _fr3() -> Kinematics:
    model = pin.buildModelFromXML(_urdf_text(fr3.URDF_RESOURCE))
    urdf_joints = tuple(f"joint{i}" for i in range(1, 8))
    if tuple(model.names[1:]) != urdf_joints:
        raise ValueError(f"unexpected FR3 URDF joints {list(model.names[1:])}")
    hand = pin.SE3(pin.utils.rotate("z", fr3.HAND_YAW), np.array([0.0, 0.0, fr3.HAND_TO_TCP]))
    n = len(fr3.ARM_JOINTS)
    return Kinematics("fr3", model, fr3.URDF_FLANGE_FRAME, hand, fr3.ARM_JOINTS, fr3.ARM_LIMITS,
                      np.eye(n), np.zeros(n), fr3.BASE_FRAME, fr3.TCP_FRAME)


def _stretch() -> Kinematics:
    full = pin.buildModelFromXML(_urdf_text(stretch.URDF_RESOURCE))
    kept = (stretch.LIFT, *stretch.TELESCOPING_JOINTS, *stretch.WRIST_JOINTS)
    locked = [full.getJointId(name) for name in full.names[1:] if name not in kept]
    model = pin.buildReducedModel(full, locked, pin.neutral(full))
    order = [model.joints[model.getJointId(name)].idx_q for name in kept]
    if sorted(order) != list(range(model.nq)):
        raise ValueError(f"unexpected Stretch URDF joints {list(model.names[1:])}")
    # Command joints (lift, arm, yaw, pitch, roll) -> model joints (lift, l3..l0, yaw, ...).
    mapping = np.zeros((model.nq, len(stretch.ARM_COMMAND_JOINTS)))
    mapping[order[0], 0] = 1.0
    for link in range(len(stretch.TELESCOPING_JOINTS)):
        mapping[order[1 + link], 1] = 1.0 / len(stretch.TELESCOPING_JOINTS)
    for wrist in range(len(stretch.WRIST_JOINTS)):
        mapping[order[5 + wrist], 2 + wrist] = 1.0
    grasp = pin.SE3(np.eye(3), np.array(stretch.GRASP_FRAME_OFFSET))
    settings = IkSettings(rotation_weight=0.3, rotation_tolerance=0.03)
    return Kinematics("stretch", model, stretch.GRASP_FRAME_PARENT, grasp,
                      stretch.ARM_COMMAND_JOINTS, stretch.ARM_COMMAND_LIMITS, mapping,
                      np.zeros(model.nq), stretch.BASE_FRAME, stretch.TCP_FRAME, settings)


def make_kinematics(robot: str) -> Kinematics:
    """A fresh Kinematics for ``robot`` (``fr3`` or ``stretch``); each has its own workspace.

    Instances are not thread-safe (pinocchio's data is scratch space): one per thread.
    """
    if robot not in ROBOTS:
        raise ValueError(f"unknown robot {robot!r}; known: {', '.join(ROBOTS)}")
    return {"fr3": _fr3, "stretch": _stretch}[robot]()
