"""Recorded demonstrations (e.g. rosbags from a real FR3) as world-model input.

A recorded demonstration has joint states and gripper width but no object poses, so the scene
is reconstructed from the robot: the target cube stands on the table where the gripper closed,
turned to the gripper's yaw. The demonstration becomes an action stream (joint targets
resampled at a fixed rate, TCP poses by forward kinematics on our FR3 model, closure from the
measured width) that Dream2Fix's operators perturb and a
:class:`~failrecov_ros.datagen.world_model.WorldModel` rolls out.

Live runs become recorded demonstrations through ``episode_recorder``: :class:`EpisodeCutter`
cuts the executor's status stream into episodes and decides which ones are demonstrations
(finished successfully, without a recovery); the recorder writes a ``demonstration.yaml``
beside each kept bag, which :func:`demonstration_info` reads.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import yaml

from failrecov_ros.core import geometry
from failrecov_ros.datagen import actions
from failrecov_ros.datagen.bags import Demonstration
from failrecov_ros.sim.ik import DlsIk
from failrecov_ros.sim.scene import Simulation
from failrecov_ros.sim.tasks import TARGET, TASKS, Task, make_task

#: The recorder's sidecar in each kept bag folder: task, instruction, robot, outcome.
DEMONSTRATION_FILE = "demonstration.yaml"
CLEARANCE_M = 0.15  # a distractor this far from the demonstrated grasp cannot be in the way


def resample(demo: Demonstration, rate_hz: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, arm_q, gripper_width) of ``demo`` at ``rate_hz``, by linear interpolation."""
    if demo.times[-1] - demo.times[0] < 2.0 / rate_hz:
        raise ValueError(f"{demo.source}: demonstration shorter than two steps at {rate_hz} Hz")
    times = np.arange(demo.times[0], demo.times[-1] + 1e-9, 1.0 / rate_hz)
    arm_q = np.stack([np.interp(times, demo.times, demo.arm_q[:, j])
                      for j in range(demo.arm_q.shape[1])], axis=1)
    return times, arm_q, np.interp(times, demo.times, demo.gripper_width)


def stream_from_demonstration(demo: Demonstration, sim: Simulation,
                              rate_hz: float = 10.0) -> actions.ActionStream:
    """Resample ``demo`` at ``rate_hz`` and compute the TCP pose of every step."""
    times, arm_q, width = resample(demo, rate_hz)
    b = sim.binding
    kinematics = DlsIk(sim.model, b.tcp_site, b.arm_joints, rest=b.home)
    tcp = np.empty((len(times), 7))
    for t, q in enumerate(arm_q):
        position, rotation = kinematics.forward(q)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, rotation.reshape(9))
        tcp[t] = [*position, *quat]
    return actions.ActionStream.from_states(times - times[0], arm_q, tcp,
                                            actions.closure_from_width(width))


def task_from_demonstration(stream: actions.ActionStream, task_name: str = "pick_cube",
                            seed: int = 0, variation: dict[str, Any] | None = None,
                            instruction: str = "") -> Task:
    """The task laid out where the demonstration shows its objects were.

    The target cube stands under the TCP at the first close keyframe, turned to the gripper's
    yaw (fingers across two faces, as every grasp of a cube is); the bowl or base cube of a
    place/stack task stands under the TCP where the gripper opened again; a distractor is
    kept ``CLEARANCE_M`` from the grasp. ``instruction`` (the recorded one) replaces the
    task's own when given.
    """
    events = actions.keyframes(stream.closure)
    closes = [k for k, kind in events if kind == "close"]
    if not closes:
        raise ValueError("the demonstration never closes the gripper: no object to place")
    opens = [k for k, kind in events if kind == "open" and k > closes[0]]
    task = make_task(task_name, seed, variation)
    grasp = stream.tcp[closes[0]]
    grasp_xy = np.asarray(grasp[:2], dtype=float)
    yaw = geometry.rpy_from_matrix(geometry.matrix_from_quat(grasp[3:7]))[2]
    yaw = math.remainder(yaw, math.pi / 2)  # a cube looks the same every quarter turn

    def placed(spec):
        if spec.name == TARGET:
            return dataclasses.replace(spec, position=_xy(grasp_xy), yaw=float(yaw))
        if spec.name == task.other and task_name != "pick_cube":
            if not opens:
                raise ValueError(f"the demonstration never opens the gripper after the grasp: "
                                 f"no place for the {spec.name} of {task_name}")
            return dataclasses.replace(spec, position=_xy(stream.tcp[opens[0], :2]))
        away = np.asarray(spec.position, dtype=float) - grasp_xy
        distance = float(np.linalg.norm(away))
        if distance >= CLEARANCE_M:
            return spec
        direction = away / distance if distance > 1e-6 else np.array([0.0, 1.0])
        return dataclasses.replace(spec, position=_xy(grasp_xy + CLEARANCE_M * direction))

    objects = tuple(placed(o) for o in task.scene.objects)
    task = dataclasses.replace(task, scene=dataclasses.replace(task.scene, objects=objects))
    return dataclasses.replace(task, instruction=instruction) if instruction else task


def _xy(point) -> tuple[float, float]:
    return (round(float(point[0]), 4), round(float(point[1]), 4))


def recorded_stage(closure: np.ndarray, step: int, grasp_steps: int = 3) -> str:
    """The stage of ``step`` in a recorded stream, from its gripper keyframes alone.

    Before the first close it is ``pre_grasp``, within ``grasp_steps`` of it ``grasp``, then
    ``lift`` until the gripper opens again, ``release`` around that open and ``retreat`` after.
    """
    events = actions.keyframes(closure)
    closes = [k for k, kind in events if kind == "close"]
    if not closes or step < closes[0] - grasp_steps:
        return "pre_grasp"
    if step <= closes[0] + grasp_steps:
        return "grasp"
    opens = [k for k, kind in events if kind == "open" and k > closes[0]]
    if not opens or step < opens[0] - grasp_steps:
        return "lift" if not opens else "transport"
    return "release" if step <= opens[0] + grasp_steps else "retreat"


@functools.lru_cache(maxsize=256)
def demonstration_info(path: str) -> dict[str, Any]:
    """The recorder's sidecar of the bag at ``path``; {} for one without (``ros2 bag record``)."""
    bag = Path(path)
    sidecar = (bag if bag.is_dir() else bag.parent) / DEMONSTRATION_FILE
    if not sidecar.is_file():
        return {}
    try:
        info = yaml.safe_load(sidecar.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{sidecar}: unreadable demonstration sidecar: {error}") from error
    if not isinstance(info, dict):
        raise ValueError(f"{sidecar}: expected a mapping, got {type(info).__name__}")
    return info


def demonstration_task(path: str, default: str) -> str:
    """The task the bag at ``path`` demonstrates: its sidecar's, else ``default``."""
    task = str(demonstration_info(path).get("task") or default)
    if task not in TASKS:
        raise ValueError(f"{path}: task {task!r} is not a simulated task ({', '.join(TASKS)}); "
                         "set demonstration_task in the datagen config")
    return task


# --- cutting a live status stream into demonstrations ------------------------------------------
ACTIVE_STATES = ("running", "recovering")
TERMINAL_STATES = ("succeeded", "failed", "needs_help", "canceled")


@dataclasses.dataclass
class RecordedEpisode:
    """One episode as the status stream told it."""

    episode_id: str
    task: str
    instruction: str
    recovered: bool = False
    final_state: str = ""


@dataclasses.dataclass(frozen=True)
class Cut:
    """What the recorder must do: ``start`` a bag, or ``end`` it and keep it or not (why)."""

    action: str
    episode: RecordedEpisode
    keep: bool = False
    reason: str = ""


class EpisodeCutter:
    """Turns the executor's (episode id, state, step) updates into bag starts and ends.

    An episode starts when a new id is running and ends with its terminal state; it is a
    demonstration only if it was seen from its first step and succeeded without a recovery
    (``keep_recovered`` accepts those too). An id that changes or an idle status before the
    end interrupts the episode.
    """

    def __init__(self, keep_recovered: bool = False, first_steps: int = 1) -> None:
        self.keep_recovered = keep_recovered
        self.first_steps = first_steps  # a status past this step means we joined mid-episode
        self.current: RecordedEpisode | None = None
        self._joined_late = False

    def update(self, episode_id: str, state: str, task: str = "", instruction: str = "",
               step: int = 0) -> list[Cut]:
        """The cuts one status message implies (usually none)."""
        cuts: list[Cut] = []
        if self.current is not None and (state == "idle" or (
                state in ACTIVE_STATES and episode_id != self.current.episode_id)):
            cuts.append(self._end(f"interrupted: status went {state} "
                                  f"({episode_id or 'no id'}) before the episode ended"))
        if state in ACTIVE_STATES and self.current is None:
            self.current = RecordedEpisode(episode_id, task, instruction)
            self._joined_late = step >= self.first_steps
            cuts.append(Cut("start", self.current))
        current = self.current
        if current is None:
            return cuts
        if state == "recovering":
            current.recovered = True
        if state in TERMINAL_STATES:
            current.final_state = state
            if state != "succeeded":
                cuts.append(self._end(f"episode {state}"))
            elif self._joined_late:
                cuts.append(self._end("recording began mid-episode"))
            elif current.recovered and not self.keep_recovered:
                cuts.append(self._end("succeeded only after a recovery"))
            else:
                cuts.append(self._end("succeeded", keep=True))
        return cuts

    def close(self) -> list[Cut]:
        """End an episode still open at shutdown (never a demonstration: it did not finish)."""
        return [self._end("interrupted: the recorder stopped")] if self.current else []

    def _end(self, reason: str, keep: bool = False) -> Cut:
        episode, self.current = self.current, None
        return Cut("end", episode, keep, reason)
