"""Tasks as sequences of skills: the data model, its validation and the YAML task library.

A task comes either in an ExecuteTask goal (its SkillSpec list) or by name from the task library
(``config/skills/tasks.yaml``). Both end up as a :class:`TaskSpec` validated here, so a bad skill
name, a missing target or an unknown parameter is refused with the reason before anything moves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from failrecov_ros.core.geometry import pose_matrix

#: Parameters each skill takes (all floats but push's ``goal``, an object name) and what they
#: mean; defaults come from the executor's configuration (skills.steps.SkillProfile).
SKILL_PARAMS: dict[str, dict[str, str]] = {
    "move_to_joint": {"speed": "fraction of the joints' velocity limits (default: motion)"},
    "move_to_pose": {"speed": "m/s"},
    "approach": {"height": "m above the grasp point to approach from",
                 "grasp_height": "m of the grasp point above the target's origin",
                 "speed": "m/s"},
    "grasp": {"width": "m, expected object width", "force": "N", "epsilon": "m, width tolerance"},
    "lift": {"height": "m", "speed": "m/s"},
    "place": {"height": "m of the release point above the target's origin",
              "carry_height": "m above the release point to transport at",
              "align": "1: turn the held object to the target's faces (stacking)",
              "speed": "m/s"},
    "push": {"goal": "object to push the target onto (or give a pose)",
             "object_size": "m, edge of the pushed object",
             "height": "m of the TCP above the target's origin while pushing",
             "standoff": "m between the object and the fingers before the push",
             "speed": "m/s"},
    "open_gripper": {"width": "m (default: fully open)"},
    "close_gripper": {"force": "N"},
    "home": {},
    "policy": {"max_steps": "end after this many commands (0: no limit)",
               "idle_timeout": "s without a command that ends the skill"},
}
SKILLS = tuple(SKILL_PARAMS)
STRING_PARAMS = {("push", "goal")}
#: Skills that act on an object (``target``) or a pose.
NEEDS_TARGET = {"approach", "place", "push"}


class TaskError(ValueError):
    """A task or skill that cannot be executed as given (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Pose:
    """A pose in the robot base frame: position (m) and unit quaternion (w, x, y, z)."""

    position: tuple[float, float, float]
    quaternion: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        values = [*self.position, *self.quaternion]
        if len(self.position) != 3 or len(self.quaternion) != 4 or not all(
                math.isfinite(v) for v in values):
            raise TaskError(f"pose needs 3 finite coordinates and a finite quaternion: {self}")
        norm = math.sqrt(sum(v * v for v in self.quaternion))
        if norm < 1e-6:
            raise TaskError("pose quaternion is zero")
        object.__setattr__(self, "position", tuple(float(v) for v in self.position))
        object.__setattr__(self, "quaternion", tuple(float(v) / norm for v in self.quaternion))

    @property
    def yaw(self) -> float:
        """Rotation about the base z axis (rad)."""
        w, x, y, z = self.quaternion
        return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous transform."""
        return pose_matrix(self.position, self.quaternion)


@dataclasses.dataclass(frozen=True)
class SkillSpec:
    """One skill of a task (mirrors ``failrecov_ros/msg/SkillSpec``)."""

    name: str
    target: str = ""
    joint_positions: tuple[float, ...] = ()
    pose: Pose | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in SKILL_PARAMS:
            raise TaskError(f"unknown skill {self.name!r}; skills: {', '.join(SKILLS)}")
        allowed = SKILL_PARAMS[self.name]
        params: dict[str, Any] = {}
        for key, value in dict(self.params).items():
            if key not in allowed:
                raise TaskError(f"{self.name}: unknown parameter {key!r}; it takes "
                                f"{', '.join(allowed) or 'none'}")
            if (self.name, key) in STRING_PARAMS:
                params[key] = str(value)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TaskError(f"{self.name}: parameter {key} must be a number, got "
                                f"{value!r}") from None
            if not math.isfinite(number) or number < 0:
                raise TaskError(f"{self.name}: parameter {key} must be finite and >= 0, got "
                                f"{value!r}")
            params[key] = number
        object.__setattr__(self, "params", params)
        joints = tuple(float(v) for v in self.joint_positions)
        if not all(math.isfinite(v) for v in joints):
            raise TaskError(f"{self.name}: joint_positions must be finite")
        object.__setattr__(self, "joint_positions", joints)
        if self.name == "move_to_joint" and not joints:
            raise TaskError("move_to_joint needs joint_positions")
        if self.name == "move_to_pose" and self.pose is None:
            raise TaskError("move_to_pose needs a pose")
        if self.name in NEEDS_TARGET and not self.target and self.pose is None:
            raise TaskError(f"{self.name} needs a target object or a pose")
        if self.name == "push" and not (self.params.get("goal") or self.pose is not None):
            raise TaskError("push needs a goal object (parameter goal) or a goal pose")
        if self.name == "push" and not self.target:
            raise TaskError("push needs the target object it pushes")

    def number(self, key: str, default: float) -> float:
        """Parameter ``key`` or ``default``."""
        return float(self.params.get(key, default))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A named sequence of skills with the instruction the monitor reads."""

    name: str
    instruction: str
    skills: tuple[SkillSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "skills", tuple(self.skills))
        if not self.skills:
            raise TaskError(f"task {self.name!r} has no skills")


def skill_from_dict(data: Mapping[str, Any]) -> SkillSpec:
    """A SkillSpec from its YAML form (``name``, ``target``, ``joint_positions``, ``pose``...)."""
    if not isinstance(data, Mapping):
        raise TaskError(f"a skill must be a mapping, got {data!r}")
    unknown = set(data) - {"name", "target", "joint_positions", "pose", "params"}
    if unknown:
        raise TaskError(f"skill has unknown keys {sorted(unknown)}")
    pose = data.get("pose")
    if pose is not None:
        if not isinstance(pose, Mapping) or "position" not in pose:
            raise TaskError(f"pose must be a mapping with position (and quaternion): {pose!r}")
        pose = Pose(tuple(pose["position"]), tuple(pose.get("quaternion", (1.0, 0, 0, 0))))
    params = data.get("params") or {}
    if not isinstance(params, Mapping):
        raise TaskError(f"params must be a mapping, got {params!r}")
    return SkillSpec(str(data.get("name", "")), str(data.get("target", "")),
                     tuple(data.get("joint_positions") or ()), pose, params)


def load_task_library(path: str | Path) -> dict[str, TaskSpec]:
    """The tasks of a library file (``tasks: {name: {instruction, skills: [...]}}``).

    Raises TaskError naming the task and skill at fault.
    """
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), Mapping):
        raise TaskError(f"{path}: expected a mapping with a 'tasks' mapping")
    library = {}
    for name, body in data["tasks"].items():
        if not isinstance(body, Mapping) or not isinstance(body.get("skills"), Sequence):
            raise TaskError(f"{path}: task {name!r} needs a skills list")
        skills = []
        for index, skill in enumerate(body["skills"]):
            try:
                skills.append(skill_from_dict(skill))
            except TaskError as error:
                raise TaskError(f"{path}: task {name!r} skill {index}: {error}") from None
        library[str(name)] = TaskSpec(str(name), str(body.get("instruction", "")), skills)
    return library
