"""Skills expanded into steps (stage-labelled moves and gripper commands) and their targets.

A skill is a small fixed state machine: ``approach`` opens the gripper, moves above the grasp
point and descends (stages ``approach``, ``pre_grasp``); ``grasp`` closes on the object
(``grasp``, a ``gripper_close`` keyframe); ``lift`` rises (``lift``); ``place`` carries, descends,
releases and retreats (``transport``, ``place``, ``release``, ``retreat``); ``push`` closes the
fingers, sets down behind the object and pushes it onto the goal (``approach``, ``push``,
``retreat``). The stage names are the ones the datasets and the monitor's diagnoses use, so a
diagnosis's ``stage`` points back into the plan (see ``skills.recovery``).

Targets are resolved when a step starts, from the object poses the executor read when the skill
began, any recovery offsets on that object, and the tool's current pose, so a correction made
during a skill shifts the rest of it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from failrecov_ros.skills.library import Pose, SkillSpec, TaskError, TaskSpec

MOVE, JOINT, GRIPPER, POLICY = "move", "joint", "gripper", "policy"
#: Gripper step kinds: open to a width, grasp an object of a width, close with a force.
OPEN, GRASP, CLOSE = "open", "grasp", "close"


@dataclasses.dataclass(frozen=True)
class SkillProfile:
    """A robot's skill geometry and the executor's defaults for skill parameters."""

    home: tuple[float, ...]
    grasp_rotation: np.ndarray  # 3x3 tool orientation of a grasp, base frame
    align_grasp_yaw: bool  # turn the grasp about the base z axis to the object's faces
    open_width: float  # m
    approach_height: float = 0.10
    grasp_height: float = 0.0
    lift_height: float = 0.10
    carry_height: float = 0.10
    place_height: float = 0.05
    speed: float = 0.2
    slow_speed: float = 0.06
    push_speed: float = 0.05
    grasp_force: float = 20.0
    grasp_epsilon: float = 0.01
    object_width: float = 0.04
    push_standoff: float = 0.035
    policy_idle_timeout: float = 5.0
    #: Where a grasp or close drives a gripper that grasps by stalling on the object (the
    #: Stretch: past closed, no force command); None: it closes by force (the FR3's Grasp).
    squeeze_width: float | None = None

    def __post_init__(self) -> None:
        rotation = np.asarray(self.grasp_rotation, dtype=float)
        if rotation.shape != (3, 3) or not np.allclose(rotation @ rotation.T, np.eye(3),
                                                       atol=1e-6):
            raise ValueError("grasp_rotation must be a 3x3 rotation matrix")
        object.__setattr__(self, "grasp_rotation", rotation)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "squeeze_width":
                if value is not None and not math.isfinite(value):
                    raise ValueError("skill profile squeeze_width must be finite")
            elif isinstance(value, float) and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"skill profile {field.name} must be finite and >= 0")

    def command_width(self, kind: str, width: float) -> float:
        """The width a gripper command of ``kind`` (OPEN, GRASP, CLOSE) is sent to.

        OPEN goes to ``width``; a grasp or close goes to the squeeze width when the gripper has
        one, else a grasp to the object's ``width`` and a close to 0.
        """
        if kind == OPEN:
            return float(width)
        if self.squeeze_width is not None:
            return float(self.squeeze_width)
        return float(width) if kind == GRASP else 0.0


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of a skill: a tool move, a joint move, a gripper command or a policy phase.

    A move's target is ``offset`` (base frame, m) from its ``anchor``: ``object`` (the pose of
    ``target`` or the skill's ``pose``), ``tcp`` (where the tool is when the step starts),
    ``push_start``/``push_end`` (behind the object / short of the goal, from both poses); its
    ``orientation`` is ``grasp`` (the profile's, turned to the object's faces), ``keep``,
    ``pose`` (the given pose's) or ``align`` (the held object turned to the target's faces).
    """

    skill_index: int
    skill: str
    stage: str
    kind: str
    target: str = ""
    pose: Pose | None = None
    goal: str = ""
    anchor: str = ""
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: str = "keep"
    speed: float = 0.0
    joints: tuple[float, ...] = ()
    gripper: str = ""
    width: float = 0.0
    force: float = 0.0
    epsilon: float = 0.0
    object_size: float = 0.0
    standoff: float = 0.0
    max_steps: int = 0
    idle_timeout: float = 0.0

    @property
    def keyframe(self) -> str:
        """The SkillStatus event a gripper step raises (empty for other steps)."""
        if self.kind != GRIPPER:
            return ""
        return "gripper_open" if self.gripper == OPEN else "gripper_close"

    @property
    def object_key(self) -> str:
        """Name under which this step's object pose and recovery offsets are kept."""
        return self.target or f"#pose{self.skill_index}"

    @property
    def objects(self) -> tuple[str, ...]:
        """Objects whose perceived pose this step needs (none when poses are given)."""
        if self.kind != MOVE or self.anchor == "tcp":
            return ()
        names = [] if self.pose is not None and not self.target else [self.target]
        if self.anchor in ("push_start", "push_end") and self.goal:
            names.append(self.goal)
        return tuple(n for n in names if n)


def _skill_steps(index: int, spec: SkillSpec, profile: SkillProfile,
                 n_joints: int) -> list[Step]:
    p = profile
    base = dict(skill_index=index, skill=spec.name, target=spec.target, pose=spec.pose)
    name = spec.name
    if name in ("move_to_joint", "home"):
        joints = spec.joint_positions if name == "move_to_joint" else tuple(p.home)
        if len(joints) != n_joints:
            raise TaskError(f"{name}: {len(joints)} joint positions for an arm of {n_joints}")
        fraction = spec.number("speed", 0.0)
        if fraction > 1:
            raise TaskError(f"{name}: speed is a fraction of the velocity limits, got {fraction}")
        return [Step(**base, stage="move" if name == "move_to_joint" else "home", kind=JOINT,
                     joints=joints, speed=fraction)]
    if name == "move_to_pose":
        return [Step(**base, stage="move", kind=MOVE, anchor="object", orientation="pose",
                     speed=spec.number("speed", p.speed))]
    if name == "approach":
        grasp_z = spec.number("grasp_height", p.grasp_height)
        height = spec.number("height", p.approach_height)
        return [
            Step(**base, stage="approach", kind=GRIPPER, gripper=OPEN, width=p.open_width),
            Step(**base, stage="approach", kind=MOVE, anchor="object",
                 offset=(0.0, 0.0, grasp_z + height), orientation="grasp",
                 speed=spec.number("speed", p.speed)),
            Step(**base, stage="pre_grasp", kind=MOVE, anchor="object",
                 offset=(0.0, 0.0, grasp_z), orientation="grasp", speed=p.slow_speed),
        ]
    if name == "grasp":
        return [Step(**base, stage="grasp", kind=GRIPPER, gripper=GRASP,
                     width=spec.number("width", p.object_width),
                     force=spec.number("force", p.grasp_force),
                     epsilon=spec.number("epsilon", p.grasp_epsilon))]
    if name == "lift":
        return [Step(**base, stage="lift", kind=MOVE, anchor="tcp",
                     offset=(0.0, 0.0, spec.number("height", p.lift_height)),
                     speed=spec.number("speed", p.slow_speed))]
    if name == "place":
        height = spec.number("height", p.place_height)
        carry = spec.number("carry_height", p.carry_height)
        orientation = "align" if spec.number("align", 0.0) else "keep"
        return [
            Step(**base, stage="transport", kind=MOVE, anchor="object",
                 offset=(0.0, 0.0, height + carry), orientation=orientation,
                 speed=spec.number("speed", p.speed)),
            Step(**base, stage="place", kind=MOVE, anchor="object", offset=(0.0, 0.0, height),
                 orientation=orientation, speed=p.slow_speed),
            Step(**base, stage="release", kind=GRIPPER, gripper=OPEN, width=p.open_width),
            Step(**base, stage="retreat", kind=MOVE, anchor="tcp",
                 offset=(0.0, 0.0, p.approach_height), speed=p.slow_speed),
        ]
    if name == "push":
        push = dict(base, goal=str(spec.params.get("goal", "")),
                    object_size=spec.number("object_size", p.object_width),
                    offset=(0.0, 0.0, spec.number("height", 0.0)))
        standoff = spec.number("standoff", p.push_standoff)
        lift = (0.0, 0.0, push["offset"][2] + p.approach_height)
        return [
            Step(**base, stage="approach", kind=GRIPPER, gripper=CLOSE, force=p.grasp_force),
            Step(**{**push, "offset": lift}, stage="approach", kind=MOVE, anchor="push_start",
                 orientation="push", speed=p.speed, standoff=standoff),
            Step(**push, stage="approach", kind=MOVE, anchor="push_start", orientation="push",
                 speed=p.slow_speed, standoff=standoff),
            Step(**push, stage="push", kind=MOVE, anchor="push_end", orientation="push",
                 speed=spec.number("speed", p.push_speed)),
            Step(**base, stage="retreat", kind=MOVE, anchor="tcp",
                 offset=(0.0, 0.0, p.approach_height), speed=p.slow_speed),
        ]
    if name == "open_gripper":
        return [Step(**base, stage="release", kind=GRIPPER, gripper=OPEN,
                     width=min(spec.number("width", p.open_width), p.open_width))]
    if name == "close_gripper":
        return [Step(**base, stage="grasp", kind=GRIPPER, gripper=CLOSE,
                     force=spec.number("force", p.grasp_force))]
    # policy
    max_steps = spec.number("max_steps", 0.0)
    if max_steps != int(max_steps):
        raise TaskError(f"policy: max_steps must be a whole number, got {max_steps}")
    return [Step(**base, stage="policy", kind=POLICY, max_steps=int(max_steps),
                 idle_timeout=spec.number("idle_timeout", p.policy_idle_timeout))]


def expand(task: TaskSpec, profile: SkillProfile, n_joints: int) -> tuple[Step, ...]:
    """Every step of ``task`` in order (TaskError names the skill at fault)."""
    steps: list[Step] = []
    for index, spec in enumerate(task.skills):
        try:
            steps += _skill_steps(index, spec, profile, n_joints)
        except TaskError as error:
            raise TaskError(f"skill {index} ({spec.name}): {error}") from None
    return tuple(steps)


def default_grasp(kinematics) -> tuple[np.ndarray, bool]:
    """A robot's grasp orientation and whether it turns to an object's faces.

    FR3: tool pointing down, fingers closing along the base y axis at zero yaw, turned to the
    cube's faces. Stretch: the gripper as it is at home (level, pointing out along the arm,
    fingers closing horizontally), which its five joints hold while they move the tool.
    """
    if kinematics.robot == "fr3":
        return np.diag([1.0, -1.0, -1.0]), True
    from failrecov_ros.robots import stretch

    return kinematics.fk(stretch.ARM_HOME)[:3, :3], False


# --- targets ------------------------------------------------------------------------------------
def rz(yaw: float) -> np.ndarray:
    """Rotation about the base z axis."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def tool_yaw(rotation: np.ndarray, grasp_rotation: np.ndarray) -> float:
    """How far ``rotation`` is turned about the base z axis from the grasp orientation."""
    relative = np.asarray(rotation) @ np.asarray(grasp_rotation).T
    return math.atan2(relative[1, 0], relative[0, 0])


def face_yaw(object_yaw: float, reference: float) -> float:
    """Of the object's four face directions (yaw + k pi/2), the one nearest ``reference``."""
    candidates = [object_yaw + k * math.pi / 2 for k in range(4)]
    best = min(candidates, key=lambda a: abs(math.remainder(a - reference, 2 * math.pi)))
    return math.remainder(best, 2 * math.pi)


@dataclasses.dataclass
class World:
    """What the executor believes: object poses, recovery offsets and what the gripper holds."""

    objects: dict[str, Pose] = dataclasses.field(default_factory=dict)
    #: Per object key: (translation (3,), rotation 3x3) added by recoveries.
    offsets: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    held: str = ""
    #: Object yaw minus tool yaw when the held object was grasped.
    held_yaw_offset: float | None = None

    def offset(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The recovery offset of ``key`` (zero when none)."""
        return self.offsets.get(key, (np.zeros(3), np.eye(3)))

    def add_offset(self, key: str, translation, rotation) -> None:
        """Accumulate a recovery's displacement on ``key``."""
        t, r = self.offset(key)
        self.offsets[key] = (t + np.asarray(translation, float), np.asarray(rotation) @ r)

    def observe(self, name: str, pose: Pose) -> None:
        """A fresh perceived pose: it replaces any recovery offset on that object."""
        self.objects[name] = pose
        self.offsets.pop(name, None)

    def pose_of(self, step: Step, name: str = "") -> Pose:
        """The pose of ``name`` (default: the step's object); TaskError when unknown."""
        if not name and step.pose is not None and not step.target:
            return step.pose
        name = name or step.target
        if name not in self.objects:
            raise TaskError(f"no pose known for object {name!r}")
        return self.objects[name]


def resolve_target(step: Step, world: World, profile: SkillProfile,
                   tcp: np.ndarray) -> np.ndarray:
    """The 4x4 tool target of move ``step`` given the tool's current pose ``tcp``."""
    target = np.eye(4)
    offset = np.asarray(step.offset, dtype=float)
    now_yaw = tool_yaw(tcp[:3, :3], profile.grasp_rotation)
    if step.anchor == "tcp":
        target[:3, :3] = tcp[:3, :3]
        target[:3, 3] = tcp[:3, 3] + offset
        return target
    pose = world.pose_of(step)
    shift, turn = world.offset(step.object_key)
    origin = np.asarray(pose.position) + shift
    if step.anchor in ("push_start", "push_end"):
        goal = (step.pose.position if step.pose is not None and not step.goal
                else world.pose_of(step, step.goal).position)
        direction = np.asarray(goal[:2]) - origin[:2]
        if np.linalg.norm(direction) < 1e-3:
            raise TaskError("push: the object is already at the goal")
        direction /= np.linalg.norm(direction)
        half = step.object_size / 2
        base = (origin[:2] - direction * (half + step.standoff) if step.anchor == "push_start"
                else np.asarray(goal[:2]) - direction * (half + 0.006))
        target[:3, 3] = [base[0], base[1], origin[2] + offset[2]]
        heading = math.atan2(direction[1], direction[0]) + math.pi / 2
        # Closed fingers push alike either way round: take the turn nearer the tool's yaw, so
        # the wrist never has to swing half a turn (and past joint 7's range) on the way.
        if abs(math.remainder(heading + math.pi - now_yaw, 2 * math.pi)) < abs(
                math.remainder(heading - now_yaw, 2 * math.pi)):
            heading += math.pi
        target[:3, :3] = turn @ rz(heading) @ profile.grasp_rotation
        return target
    target[:3, 3] = origin + offset
    if step.orientation == "pose":
        target[:3, :3] = turn @ pose.matrix()[:3, :3]
    elif step.orientation == "grasp":
        yaw = face_yaw(pose.yaw, now_yaw) if profile.align_grasp_yaw else 0.0
        target[:3, :3] = turn @ rz(yaw) @ profile.grasp_rotation
    elif step.orientation == "align" and world.held_yaw_offset is not None:
        yaw = face_yaw(pose.yaw - world.held_yaw_offset, now_yaw)
        target[:3, :3] = turn @ rz(yaw) @ profile.grasp_rotation
    else:
        target[:3, :3] = tcp[:3, :3]
    return target
