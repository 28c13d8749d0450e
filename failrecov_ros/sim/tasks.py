"""The manipulation tasks: scene layout for a seed and a variation, instruction, success check.

FailSafe's three tasks (pick, push, stack) and a Dream2Fix-style placement (put X in Y). A task
is deterministic for (name, seed, variation): the same seed always lays out the same scene.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from failrecov_ros.sim.scene import CameraSpec, LightSpec, ObjectSpec, SceneConfig, Simulation
from failrecov_ros.sim.variations import LIGHTS, validate

TASKS = ("pick_cube", "place_in_bowl", "push_cube", "stack_cube")
TARGET = "target_cube"
#: Centre and half-extents of the region objects are placed in (robot base frame, metres).
WORKSPACE_CENTER = (0.5, 0.0)
WORKSPACE_HALF = (0.08, 0.14)
MIN_SEPARATION = 0.13
LIFT_HEIGHT = 0.05
PUSH_DISTANCE = 0.1
PUSH_TOLERANCE = 0.03
BOWL_DIAMETER = 0.17


@dataclasses.dataclass(frozen=True)
class Task:
    """One task instance: what to do, with what, and how success is decided."""

    name: str
    seed: int
    instruction: str
    scene: SceneConfig
    variation: Mapping[str, Any]
    other: str
    goal_position: tuple[float, float] | None = None

    @property
    def target(self) -> str:
        """Name of the object the task manipulates."""
        return TARGET

    def success_details(self, sim: Simulation) -> dict[str, Any]:
        """The measured quantities behind ``success`` (recorded with every episode)."""
        position, _ = sim.object_pose(TARGET)
        size = self.scene.object(TARGET).size
        table = self.scene.table_top_z
        details: dict[str, Any] = {
            "target_position": [round(float(v), 4) for v in position],
            "held": sim.pad_contacts(TARGET) == 2,
            "touching": sim.pad_contacts(TARGET) > 0,
        }
        if self.name == "pick_cube":
            lifted = float(position[2] - size / 2 - table)
            details |= {"lift": lifted,
                        "success": lifted >= LIFT_HEIGHT and details["held"]}
        elif self.name == "place_in_bowl":
            bowl, _ = sim.object_pose(self.other)
            spec = self.scene.object(self.other)
            offset = float(np.linalg.norm(position[:2] - bowl[:2]))
            inside = offset < spec.size * 0.3 and position[2] < table + spec.height + size / 2
            details |= {"offset": offset, "success": bool(inside and not details["touching"])}
        elif self.name == "stack_cube":
            base, _ = sim.object_pose(self.other)
            base_spec = self.scene.object(self.other)
            offset = float(np.linalg.norm(position[:2] - base[:2]))
            expected_z = base[2] + base_spec.size / 2 + size / 2
            base_moved = float(np.linalg.norm(base[:2] - np.array(base_spec.position)))
            stacked = offset < base_spec.size * 0.4 and abs(position[2] - expected_z) < 0.01
            details |= {"offset": offset, "base_moved": base_moved,
                        "success": bool(stacked and base_moved < 0.03
                                        and not details["touching"])}
        else:  # push_cube
            offset = float(np.linalg.norm(position[:2] - np.array(self.goal_position)))
            on_table = abs(position[2] - (table + size / 2)) < 0.01
            details |= {"offset": offset,
                        "success": bool(offset < PUSH_TOLERANCE and on_table)}
        return details

    def success(self, sim: Simulation) -> bool:
        """True when the task's success predicate holds now."""
        return bool(self.success_details(sim)["success"])


def _place(rng: np.random.Generator, count: int, spread: float) -> list[tuple[float, float]]:
    """``count`` positions in the workspace at least MIN_SEPARATION apart (deterministic)."""
    half = np.array(WORKSPACE_HALF) * spread
    for _ in range(1000):
        points = [tuple(np.array(WORKSPACE_CENTER) + rng.uniform(-half, half))
                  for _ in range(count)]
        if all(math.dist(a, b) >= MIN_SEPARATION
               for i, a in enumerate(points) for b in points[i + 1:]):
            return [(round(float(x), 4), round(float(y), 4)) for x, y in points]
    raise ValueError(f"cannot place {count} objects {MIN_SEPARATION} m apart with spread {spread}")


def make_task(name: str, seed: int, variation: Mapping[str, Any] | None = None) -> Task:
    """The task ``name`` laid out for ``seed`` under ``variation`` (default nominal)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    var = validate(variation or {})
    rng = np.random.default_rng([seed, TASKS.index(name)])
    spread = float(var["object_pose_spread"])
    size = float(var["cube_size"])
    color, other_color = var["target_color"], var["other_color"]
    if other_color == color:
        other_color = "blue" if color != "blue" else "green"
    yaw = float(rng.uniform(-math.pi / 4, math.pi / 4))
    friction = float(var["object_friction"])
    goal_position = None
    if name == "push_cube":
        (start,) = _place(rng, 1, spread)
        sign = 1.0 if start[1] < 0 else -1.0  # push toward the workspace centre line
        goal_position = (start[0], round(start[1] + sign * PUSH_DISTANCE, 4))
        target = ObjectSpec(TARGET, "cube", size, color, start, yaw, friction=friction)
        other = ObjectSpec("goal", "goal", 0.06, other_color, goal_position)
        instruction = f"push the {color} cube to the {other_color} target"
    else:
        first, second = _place(rng, 2, spread)
        target = ObjectSpec(TARGET, "cube", size, color, first, yaw, friction=friction)
        if name == "place_in_bowl":
            other = ObjectSpec("bowl", "bowl", BOWL_DIAMETER, other_color, second)
            instruction = f"put the {color} cube in the {other_color} bowl"
        elif name == "stack_cube":
            other = ObjectSpec("base_cube", "cube", 0.05, other_color, second,
                               float(rng.uniform(-math.pi / 4, math.pi / 4)), mass=0.3)
            instruction = f"stack the {color} cube on the {other_color} cube"
        else:
            other = ObjectSpec("other_cube", "cube", size, other_color, second,
                               float(rng.uniform(-math.pi / 4, math.pi / 4)))
            instruction = f"pick up the {color} cube"
    jitter = float(var["camera_jitter_m"])
    camera = CameraSpec()
    if jitter:
        camera = dataclasses.replace(
            camera,
            position=tuple(np.round(np.array(camera.position)
                                    + rng.uniform(-jitter, jitter, 3), 4)),
            look_at=tuple(np.round(np.array(camera.look_at) + rng.uniform(-jitter, jitter, 3), 4)))
    direction, diffuse, ambient = LIGHTS[var["light"]]
    scene = SceneConfig(
        robot="fr3", table_size=tuple(var["table_size"]), table_color=var["table_color"],
        robot_color=var["robot_color"], objects=(target, other), cameras=(camera,),
        light=LightSpec(direction, diffuse, ambient))
    return Task(name, seed, instruction, scene, var, other.name, goal_position)
