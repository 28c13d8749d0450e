"""Damped least-squares inverse kinematics on a MuJoCo model, for the scripted expert.

Works on its own ``MjData`` so solving never disturbs the simulation; a null-space pull toward
a rest posture keeps the elbow where a human operator would put it.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np


@dataclasses.dataclass(frozen=True)
class IkResult:
    """Joint solution and the remaining position (m) and orientation (rad) errors."""

    q: np.ndarray
    position_error: float
    rotation_error: float
    converged: bool


class DlsIk:
    """Solves for the joints in ``joint_names`` so that ``site`` reaches a pose in the world."""

    def __init__(self, model: mujoco.MjModel, site: str, joint_names, rest=None,
                 damping: float = 1e-3, rest_gain: float = 0.05) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.site_id = model.site(site).id
        self.qpos_index = np.array([model.joint(n).qposadr[0] for n in joint_names])
        self.dof_index = np.array([model.joint(n).dofadr[0] for n in joint_names])
        self.lower = np.array([model.joint(n).range[0] for n in joint_names])
        self.upper = np.array([model.joint(n).range[1] for n in joint_names])
        self.rest = None if rest is None else np.asarray(rest, float)
        self.damping = damping
        self.rest_gain = rest_gain

    def forward(self, q) -> tuple[np.ndarray, np.ndarray]:
        """Site position and rotation matrix for joints ``q`` (other joints as last set)."""
        self.data.qpos[self.qpos_index] = q
        mujoco.mj_kinematics(self.model, self.data)
        rotation = self.data.site_xmat[self.site_id].reshape(3, 3).copy()
        return self.data.site_xpos[self.site_id].copy(), rotation

    def solve(self, position, rotation, q_init, *, iterations: int = 200,
              position_tolerance: float = 5e-4, rotation_tolerance: float = 5e-3,
              stall_iterations: int = 12) -> IkResult:
        """Joints reaching ``position`` (3,) with site orientation ``rotation`` (3x3).

        Stops after ``iterations`` or once ``stall_iterations`` pass without a 1% gain.
        """
        q = np.clip(np.asarray(q_init, float).copy(), self.lower, self.upper)
        target_quat = np.empty(4)
        mujoco.mju_mat2Quat(target_quat, np.asarray(rotation, float).reshape(9))
        jac_pos = np.zeros((3, self.model.nv))
        jac_rot = np.zeros((3, self.model.nv))
        best, since_best = np.inf, 0
        for _ in range(iterations):
            pos, mat = self.forward(q)
            error_pos = np.asarray(position, float) - pos
            error_rot = _rotation_error(target_quat, mat)
            p_err, r_err = float(np.linalg.norm(error_pos)), float(np.linalg.norm(error_rot))
            if p_err < position_tolerance and r_err < rotation_tolerance:
                return IkResult(q, p_err, r_err, True)
            # Unreachable targets (a joint pinned at its limit) stop improving: give up early.
            total = p_err + 0.1 * r_err
            if total < 0.99 * best:
                best, since_best = total, 0
            else:
                since_best += 1
                if since_best >= stall_iterations:
                    break
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, jac_pos, jac_rot, self.site_id)
            jac = np.vstack([jac_pos[:, self.dof_index], jac_rot[:, self.dof_index]])
            error = np.concatenate([error_pos, error_rot])
            jjt = jac @ jac.T + self.damping * np.eye(6)
            step = jac.T @ np.linalg.solve(jjt, error)
            if self.rest is not None:
                null = np.eye(len(q)) - jac.T @ np.linalg.solve(jjt, jac)
                step += null @ (self.rest_gain * (self.rest - q))
            scale = min(1.0, 0.2 / max(np.max(np.abs(step)), 1e-12))
            q = np.clip(q + scale * step, self.lower, self.upper)
        pos, mat = self.forward(q)
        return IkResult(q, float(np.linalg.norm(np.asarray(position) - pos)),
                        float(np.linalg.norm(_rotation_error(target_quat, mat))), False)


def _rotation_error(target_quat: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Axis-angle (rad) taking ``rotation`` (3x3) to the orientation ``target_quat``."""
    quat, diff, error = np.empty(4), np.empty(4), np.empty(3)
    mujoco.mju_mat2Quat(quat, np.asarray(rotation).reshape(9))
    mujoco.mju_mulQuat(diff, target_quat, quat * np.array([1, -1, -1, -1]))
    mujoco.mju_quat2Vel(error, diff, 1.0)
    return error
