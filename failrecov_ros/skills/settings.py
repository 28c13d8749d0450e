"""The skill executor's parameters: names, defaults and the configuration they build.

One source of truth for the defaults: every parameter takes the default of the dataclass field
it fills (``ExecutorConfig``, ``SkillProfile``, ``MotionLimits``, ``RecoveryConfig`` and the
safety, controller and per-robot settings below). ``config/skill_executor.yaml`` restates them
with their meaning, and a test keeps the two equal. The node declares :func:`parameter_defaults`
and passes the values it got to :func:`executor_settings`; nothing here touches ROS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from failrecov_ros.core.safety import SafetyGate, Workspace
from failrecov_ros.robots import fr3, stretch
from failrecov_ros.robots.kinematics import Kinematics
from failrecov_ros.skills.motion import MotionLimits
from failrecov_ros.skills.recovery import RecoveryConfig
from failrecov_ros.skills.runner import ExecutorConfig
from failrecov_ros.skills.steps import SkillProfile, default_grasp

ROBOTS = ("fr3", "stretch")


@dataclasses.dataclass(frozen=True)
class SafetySettings:
    """The ``safety`` block: how far inside the joint limits commands stay, and their step."""

    joint_margin: float = 0.02  # rad (m)
    max_step: float = 0.1  # rad (m) between consecutive trajectory points


@dataclasses.dataclass(frozen=True)
class ControllerSettings:
    """What both robots' trajectory controllers are sent and waited for."""

    goal_time_tolerance: float = 1.0  # s, FollowJointTrajectory goal_time_tolerance
    stop_timeout: float = 5.0  # s for a canceled goal to confirm


@dataclasses.dataclass(frozen=True)
class Fr3Settings:
    """The ``fr3`` block: franka_ros2's interfaces, the FR3's grasp geometry and workspace."""

    trajectory_action: str = f"{fr3.ARM_CONTROLLER}/follow_joint_trajectory"
    #: Gripper node names to look for; the first with move and grasp servers is used.
    gripper_nodes: tuple[str, ...] = (fr3.GRIPPER_NODE, "fr3_gripper")
    error_recovery_action: str = fr3.ERROR_RECOVERY_ACTION
    path_tolerance: float = 0.0  # rad per joint; 0 = the controller's own
    gripper_speed: float = 0.05  # m/s of Move/Grasp
    grasp_height: float = 0.0  # m of the TCP above an object's origin to grasp
    grasp_epsilon: float = 0.01  # m, Grasp epsilon inner/outer
    workspace: Workspace = Workspace((0.15, -0.6, 0.0), (0.85, 0.6, 0.8), table_z=0.0,
                                     table_clearance=0.008)

    home: ClassVar[tuple[float, ...]] = fr3.HOME
    open_width: ClassVar[float] = fr3.MAX_GRIPPER_WIDTH
    squeeze_width: ClassVar[float | None] = None  # closes by force
    max_grasp_force: ClassVar[float | None] = fr3.MAX_GRASP_FORCE


@dataclasses.dataclass(frozen=True)
class StretchSettings:
    """The ``stretch`` block: stretch_driver's interfaces, grasp geometry and workspace."""

    trajectory_action: str = stretch.FOLLOW_JOINT_TRAJECTORY_ACTION
    mode_service: str = stretch.MODE_SERVICES[stretch.TRAJECTORY_MODE]
    stop_service: str = stretch.STOP_SERVICE
    gripper_time_s: float = 1.5  # s a gripper_aperture goal takes
    grasp_height: float = 0.03  # m of the grasp point above an object's centre
    grasp_epsilon: float = 0.02  # m of accepted aperture error of a grasp
    workspace: Workspace = Workspace((-0.4, -1.0, 0.3), (0.4, 0.0, 1.2), table_z=0.62,
                                     table_clearance=0.02)

    home: ClassVar[tuple[float, ...]] = stretch.ARM_HOME
    open_width: ClassVar[float] = stretch.GRIPPER_OPEN_APERTURE
    #: The gripper has no force command: a grasp drives it past closed to stall on the object.
    squeeze_width: ClassVar[float | None] = stretch.GRIPPER_SQUEEZE_APERTURE
    max_grasp_force: ClassVar[float | None] = None


_ROBOT_BLOCKS: dict[str, type] = {"fr3": Fr3Settings, "stretch": StretchSettings}


@dataclasses.dataclass(frozen=True)
class ExecutorSettings:
    """Everything the node builds from its parameters."""

    robot: str
    config: ExecutorConfig
    gate: SafetyGate
    controllers: ControllerSettings
    backend: Fr3Settings | StretchSettings
    task_library: str = ""  # named tasks YAML; "" = the installed config/skills/tasks.yaml


#: Parameter name -> (dataclass, field): the field's default is the parameter's.
_FIELDS: dict[str, tuple[type, str]] = {
    "task_library": (ExecutorSettings, "task_library"),
    "server_timeout_s": (ExecutorConfig, "prepare_timeout"),
    "joint_states_timeout_s": (ExecutorConfig, "joint_state_timeout"),
    "motion_timeout_margin_s": (ExecutorConfig, "motion_timeout_margin"),
    "gripper_timeout_s": (ExecutorConfig, "gripper_timeout"),
    "stop_timeout_s": (ControllerSettings, "stop_timeout"),
    "object_pose_timeout_s": (ExecutorConfig, "object_pose_timeout"),
    "poll_period_s": (ExecutorConfig, "poll_period"),
    "goal_time_tolerance_s": (ControllerSettings, "goal_time_tolerance"),
    **{f"recovery.{name}": (RecoveryConfig, field) for name, field in (
        ("confidence_threshold", "confidence_threshold"), ("max_recoveries", "max_recoveries"),
        ("metres_per_bin", "metres_per_bin"), ("diagnosis_wait_s", "diagnosis_wait"),
        ("stale_grace_s", "stale_grace"), ("trajectory_wait_s", "trajectory_wait"),
        ("use_monitor_trajectory", "use_monitor_trajectory"),
        ("weak_close_force_scale", "weak_close_force_scale"),
        ("regrasp_left_behind", "regrasp_left_behind"),
        ("interrupt_confirmations", "interrupt_confirmations"))},
    # The tool speed is the skills' default move speed and the planner's (one value).
    "motion.speed": (SkillProfile, "speed"),
    "motion.slow_speed": (SkillProfile, "slow_speed"),
    **{f"motion.{name}": (MotionLimits, name) for name in (
        "angular_speed", "velocity_fraction", "acceleration_fraction", "sample_period",
        "waypoint_spacing")},
    **{f"skills.{name}": (SkillProfile, name) for name in (
        "approach_height", "lift_height", "carry_height", "place_height", "grasp_force",
        "object_width", "push_standoff", "push_speed")},
    "skills.policy_idle_timeout_s": (SkillProfile, "policy_idle_timeout"),
    "skills.held_min_width": (ExecutorConfig, "held_min_width"),
    "skills.held_max_distance": (ExecutorConfig, "held_max_distance"),
    "safety.joint_margin": (SafetySettings, "joint_margin"),
    "safety.max_step": (SafetySettings, "max_step"),
}


def _default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no default to declare")
    return field.default


def _as_parameter(value: Any) -> Any:
    """A ROS parameter value: sequences as lists (of floats when numeric)."""
    if isinstance(value, tuple):
        return [float(v) if isinstance(v, int | float) else v for v in value]
    return value


def _robot_defaults(robot: str) -> dict[str, Any]:
    block = _ROBOT_BLOCKS[robot]()
    out: dict[str, Any] = {}
    for field in dataclasses.fields(block):
        value = getattr(block, field.name)
        if isinstance(value, Workspace):
            for part in dataclasses.fields(value):
                out[f"{robot}.workspace.{part.name}"] = _as_parameter(getattr(value, part.name))
        else:
            out[f"{robot}.{field.name}"] = _as_parameter(value)
    return out


def parameter_defaults(robot: str) -> dict[str, Any]:
    """Every parameter of the executor for ``robot`` (its own block only) with its default."""
    if robot not in ROBOTS:
        raise ValueError(f"robot must be one of {', '.join(ROBOTS)}, got {robot!r}")
    common = {name: _as_parameter(_default(cls, field)) for name, (cls, field) in _FIELDS.items()}
    return {**common, **_robot_defaults(robot)}


def _robot_block(robot: str, values: Mapping[str, Any]) -> Fr3Settings | StretchSettings:
    cls = _ROBOT_BLOCKS[robot]
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name == "workspace":
            prefix = f"{robot}.workspace."
            kwargs["workspace"] = Workspace(
                tuple(float(v) for v in values[prefix + "lower"]),
                tuple(float(v) for v in values[prefix + "upper"]),
                float(values[prefix + "table_z"]), float(values[prefix + "table_clearance"]))
        elif isinstance(field.default, tuple):
            kwargs[field.name] = tuple(values[f"{robot}.{field.name}"])
        else:
            kwargs[field.name] = values[f"{robot}.{field.name}"]
    return cls(**kwargs)


def executor_settings(robot: str, values: Mapping[str, Any],
                      kinematics: Kinematics) -> ExecutorSettings:
    """The runner's configuration, the safety gate and the backend's settings from ``values``.

    ``values`` maps every name of :func:`parameter_defaults` (``robot``) to its value; invalid
    values raise ValueError with the reason.
    """
    parameter_defaults(robot)  # validates the robot
    if kinematics.robot != robot:
        raise ValueError(f"kinematics are the {kinematics.robot}'s, not the {robot}'s")
    filled: dict[type, dict[str, Any]] = {}
    for name, (cls, field) in _FIELDS.items():
        filled.setdefault(cls, {})[field] = values[name]
    block = _robot_block(robot, values)
    rotation, align = default_grasp(kinematics)
    profile = SkillProfile(home=block.home, grasp_rotation=rotation, align_grasp_yaw=align,
                           open_width=block.open_width, grasp_height=block.grasp_height,
                           grasp_epsilon=block.grasp_epsilon, squeeze_width=block.squeeze_width,
                           **filled[SkillProfile])
    motion = MotionLimits(speed=profile.speed, **filled[MotionLimits])
    config = ExecutorConfig(profile, motion, RecoveryConfig(**filled[RecoveryConfig]),
                            **filled[ExecutorConfig])
    safety = SafetySettings(**filled[SafetySettings])
    gate = SafetyGate(kinematics.limits, margin=safety.joint_margin, max_step=safety.max_step,
                      workspace=block.workspace, fk=kinematics.fk,
                      gripper_range=(0.0, block.open_width), squeeze_width=block.squeeze_width,
                      max_grasp_force=block.max_grasp_force)
    return ExecutorSettings(robot, config, gate, ControllerSettings(**filled[ControllerSettings]),
                            block, **filled[ExecutorSettings])
