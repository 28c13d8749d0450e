"""World models that roll an action stream out into observations: the physics one we ship.

Dream2Fix conditions a generative video model (Ctrl-World) on perturbed actions. The data
engine only needs "actions in, states and frames out", so that is the interface: a GPU user
can plug in a video model that implements :class:`WorldModel`; :class:`PhysicsWorldModel`
replays the stream in the MuJoCo scene (position servos tracking interpolated joint targets,
IK for the steps whose TCP pose an operator moved) and judges success with the task predicate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import mujoco
import numpy as np

from failrecov_ros.datagen.actions import ActionStream
from failrecov_ros.sim.expert import GRASP_FORCE
from failrecov_ros.sim.ik import DlsIk
from failrecov_ros.sim.scene import SimSnapshot, SimState, Simulation
from failrecov_ros.sim.tasks import TARGET, Task

SETTLE_STEPS = 50  # as run_expert: objects come to rest on the table before the first action


@dataclasses.dataclass(frozen=True)
class RolloutCheckpoint:
    """A rollout's exact state as action step ``index`` begins (``rollout``'s ``checkpoint_at``).

    The simulation (a full copy of its data) and the commands the steps before it read.
    """

    index: int
    snapshot: SimSnapshot
    closure: np.ndarray  # closure[: index], the gripper commands applied before ``index``
    targets: np.ndarray  # targets[: index + 1], all that steps before ``index`` read
    dt: float
    scene: object  # the task's scene config: a branch must run in the same scene


@dataclasses.dataclass
class Rollout:
    """What a world model produced: per action step states (and sim states to render from)."""

    times: np.ndarray
    arm_q: np.ndarray
    gripper_width: np.ndarray
    tcp_position: np.ndarray
    tcp_quat: np.ndarray
    target_pose: np.ndarray
    closure: np.ndarray
    success: bool
    details: dict[str, Any]
    states: list[SimState] = dataclasses.field(default_factory=list, repr=False)
    ik_failures: int = 0
    checkpoint: RolloutCheckpoint | None = dataclasses.field(default=None, repr=False)


class WorldModel(Protocol):
    """Anything that turns (task, action stream) into a :class:`Rollout`."""

    name: str

    def rollout(self, task: Task, stream: ActionStream, *, keep_states: bool = True) -> Rollout:
        """Execute ``stream`` in ``task``'s scene and report what happened."""
        ...


class PhysicsWorldModel:
    """MuJoCo rollouts; ``simulation_for`` supplies (and may cache) a Simulation per task."""

    name = "mujoco_physics"

    def __init__(self, simulation_for: Callable[[Task], Simulation] | None = None, *,
                 grasp_force: float = GRASP_FORCE, settle_s: float = 0.5) -> None:
        self._simulation_for = simulation_for or (lambda task: Simulation(task.scene))
        self.grasp_force, self.settle_s = grasp_force, settle_s
        self._ik: DlsIk | None = None  # for the last model only: one per episode would pile up

    def _solver(self, sim: Simulation) -> DlsIk:
        if self._ik is None or self._ik.model is not sim.model:
            b = sim.binding
            self._ik = DlsIk(sim.model, b.tcp_site, b.arm_joints, rest=b.home)
        return self._ik

    def joint_targets(self, sim: Simulation, stream: ActionStream) -> tuple[np.ndarray, int]:
        """Joint targets per step: recorded ones, IK where the TCP pose was edited."""
        targets = stream.arm_q.copy()
        failures = 0
        if stream.moved.any():
            ik = self._solver(sim)
            seed = stream.arm_q[0]
            for t in range(len(stream)):
                if not stream.moved[t]:
                    seed = targets[t]
                    continue
                rotation = np.empty(9)
                mujoco.mju_quat2Mat(rotation, stream.tcp[t, 3:7])
                solution = ik.solve(stream.tcp[t, :3], rotation.reshape(3, 3), seed)
                failures += not solution.converged
                targets[t] = seed = solution.q
        return targets, failures

    def rollout(self, task: Task, stream: ActionStream, *, keep_states: bool = True,
                checkpoint_at: int | None = None,
                branch_from: Rollout | Sequence[Rollout] = ()) -> Rollout:
        """Replay ``stream`` from the scene's initial state and check the task's success.

        ``checkpoint_at``: keep the exact state at the start of that action step in the
        result, so that later rollouts of streams that agree with this one up to there can
        be ``branch_from`` it: they continue from the checkpoint instead of replaying the
        shared prefix, with the same result as a replay from the start (bit for bit: the
        checkpoint is a full copy of the simulation's data). A ``branch_from`` whose
        checkpoint the stream does not share (or that kept no states when ``keep_states``
        asks for them) is ignored; of several, the latest usable checkpoint is used.
        """
        sim = self._simulation_for(task)
        b = sim.binding
        targets, ik_failures = self.joint_targets(sim, stream)
        substeps = max(1, round(stream.dt / sim.timestep))
        fractions = (np.arange(1, substeps + 1) / substeps)[:, None]  # i / substeps, i = 1..
        rows: list[tuple] = []
        states: list[SimState] = []
        checkpoint = None
        closure = None
        start = 0
        candidates = [branch_from] if isinstance(branch_from, Rollout) else list(branch_from)
        usable = [r for r in candidates if r.checkpoint is not None
                  and self._shares_prefix(r.checkpoint, task, stream, targets)
                  and (not keep_states or len(r.states) >= r.checkpoint.index)]
        if usable:
            source = max(usable, key=lambda r: r.checkpoint.index)  # the longest shared prefix
            branch = source.checkpoint
            start = branch.index
            closure = float(branch.closure[-1]) if start > 0 else None
            sim.restore_snapshot(branch.snapshot)
            rows = [(source.times[i], source.arm_q[i], source.gripper_width[i],
                     source.tcp_position[i], source.tcp_quat[i], source.target_pose[i],
                     source.closure[i]) for i in range(start)]
            if keep_states:
                states = list(source.states[:start])
        else:
            sim.reset()
            sim.place_arm(stream.arm_q[0])
            sim.step(SETTLE_STEPS)

        def record(command: float) -> None:
            pos, mat = sim.tcp_pose()
            quat = np.empty(4)
            mujoco.mju_mat2Quat(quat, mat.reshape(9))
            obj_pos, obj_quat = sim.object_pose(TARGET)
            rows.append((sim.time, sim.arm_positions(), sim.gripper_width(), pos, quat,
                         np.concatenate([obj_pos, obj_quat]), command))
            if keep_states:
                states.append(sim.save_state())

        for t in range(start, len(stream)):
            if t == checkpoint_at:
                checkpoint = RolloutCheckpoint(t, sim.snapshot(), stream.closure[:t].copy(),
                                               targets[: t + 1].copy(), stream.dt, task.scene)
            if stream.closure[t] != closure:
                closure = float(stream.closure[t])
                if closure > 0:
                    sim.set_gripper(0.0, closure * self.grasp_force)
                else:
                    sim.set_gripper(b.max_gripper_width, self.grasp_force)
            record(closure)
            following = targets[min(t + 1, len(stream) - 1)]
            for target in targets[t] + (following - targets[t]) * fractions:
                sim.set_arm_targets(target)
                sim.step()
            if not sim.is_finite():
                raise FloatingPointError(f"simulation diverged at action step {t}")
        sim.step(round(self.settle_s / sim.timestep))
        record(closure)
        details = task.success_details(sim)
        columns = list(zip(*rows, strict=True))
        return Rollout(
            times=np.array(columns[0]), arm_q=np.array(columns[1]),
            gripper_width=np.array(columns[2]), tcp_position=np.array(columns[3]),
            tcp_quat=np.array(columns[4]), target_pose=np.array(columns[5]),
            closure=np.array(columns[6]), success=bool(details["success"]), details=details,
            states=states, ik_failures=ik_failures, checkpoint=checkpoint)

    @staticmethod
    def _shares_prefix(point: RolloutCheckpoint, task: Task, stream: ActionStream,
                       targets: np.ndarray) -> bool:
        """Whether ``stream``'s steps before ``point.index`` command what the checkpoint's did.

        Step t reads closure[t], targets[t] and targets[t + 1].
        """
        i = point.index
        if task.scene != point.scene or stream.dt != point.dt or i + 1 >= len(stream):
            return False
        return bool(np.array_equal(stream.closure[:i], point.closure)
                    and np.array_equal(targets[: i + 1], point.targets))
