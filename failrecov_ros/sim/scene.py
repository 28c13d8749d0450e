"""Scene assembly and the running simulation: a robot, a table, objects, lights and cameras.

``SceneConfig`` is plain data (what a variation or a task produces and what an episode
records); ``Simulation`` compiles it once and owns the physics state. The robot-specific
parts (which joints the arm has, how the gripper is driven, where the TCP is) come from a
``RobotBinding`` so the same scene code serves the FR3 and the Stretch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Sequence

os.environ.setdefault("MUJOCO_GL", "egl")  # headless CPU rendering; must precede the import

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from failrecov_ros.core.camera import Intrinsics  # noqa: E402
from failrecov_ros.robots import fr3, stretch  # noqa: E402
from failrecov_ros.sim import fr3_model, stretch_model  # noqa: E402

RGBA = tuple[float, float, float, float]
COLORS: dict[str, RGBA] = {
    "red": (0.85, 0.12, 0.1, 1.0), "green": (0.1, 0.7, 0.2, 1.0), "blue": (0.1, 0.25, 0.85, 1.0),
    "yellow": (0.95, 0.8, 0.1, 1.0), "orange": (0.95, 0.5, 0.05, 1.0),
    "purple": (0.55, 0.2, 0.7, 1.0), "white": (0.92, 0.92, 0.92, 1.0),
    "black": (0.1, 0.1, 0.1, 1.0), "gray": (0.5, 0.5, 0.5, 1.0), "brown": (0.5, 0.33, 0.2, 1.0),
    "wood": (0.72, 0.58, 0.42, 1.0),
}
#: Collision masks (contype, conaffinity) matching the robot models' conventions.
TABLE_BITS = fr3_model.TABLE_BITS
OBJECT_BITS = fr3_model.OBJECT_BITS
BOWL_WALLS = 16


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """A thing on the table: a cube, a bowl or a goal marker.

    ``size`` is a cube's edge or the diameter of a bowl or of a goal marker (a flat disc that
    nothing collides with).
    """

    name: str
    kind: str
    size: float
    color: str
    position: tuple[float, float]
    yaw: float = 0.0
    mass: float = 0.08
    friction: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("cube", "bowl", "goal"):
            raise ValueError(f"object {self.name}: unknown kind {self.kind!r}")
        if self.color not in COLORS:
            raise ValueError(f"object {self.name}: unknown color {self.color!r}")
        if not 0.005 < self.size < 0.5 or self.mass <= 0 or self.friction <= 0:
            raise ValueError(f"object {self.name}: implausible size/mass/friction")

    @property
    def height(self) -> float:
        """Height above the table top in metres."""
        return {"cube": self.size, "bowl": bowl_height(self.size), "goal": 0.0}[self.kind]


def bowl_height(diameter: float) -> float:
    """Wall height of a bowl of ``diameter``."""
    return 0.35 * diameter


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """A fixed RGB-D camera looking from ``position`` at ``look_at`` (D435i-like by default)."""

    name: str = "camera"
    position: tuple[float, float, float] = (1.45, 0.55, 0.75)
    look_at: tuple[float, float, float] = (0.35, 0.0, 0.12)
    width: int = 640
    height: int = 480
    fovy_deg: float = 42.5  # D435i color at 640x480: fy ~ 615 px

    @property
    def intrinsics(self) -> Intrinsics:
        """Pinhole intrinsics of the rendered image."""
        return Intrinsics.from_fovy(self.width, self.height, self.fovy_deg)


@dataclasses.dataclass(frozen=True)
class LightSpec:
    """A directional key light (intensity scales diffuse) plus ambient light."""

    direction: tuple[float, float, float] = (-0.3, 0.2, -1.0)
    diffuse: float = 0.7
    ambient: float = 0.3


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Everything that defines a scene; episodes record it so they can be rebuilt."""

    robot: str = "fr3"
    table_size: tuple[float, float] = (1.2, 1.2)
    table_center: tuple[float, float] = (0.45, 0.0)
    table_top_z: float = 0.0
    table_color: str = "wood"
    robot_color: str = "white"
    objects: tuple[ObjectSpec, ...] = ()
    cameras: tuple[CameraSpec, ...] = (CameraSpec(),)
    light: LightSpec = LightSpec()

    def __post_init__(self) -> None:
        names = [o.name for o in self.objects]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate object names {names}")
        if self.robot not in ROBOTS:
            raise ValueError(f"unknown robot {self.robot!r}; known: {', '.join(ROBOTS)}")

    def object(self, name: str) -> ObjectSpec:
        """The spec of object ``name`` (KeyError names it when absent)."""
        for spec in self.objects:
            if spec.name == name:
                return spec
        raise KeyError(f"no object {name!r} in the scene")


@dataclasses.dataclass(frozen=True)
class RobotBinding:
    """How the scene code drives a robot model: arm joints/actuators, gripper, TCP, home."""

    arm_joints: tuple[str, ...]
    arm_actuators: tuple[str, ...]
    finger_joints: tuple[str, ...]
    gripper_actuator: str
    tcp_site: str
    finger_pads: tuple[str, ...]
    home: tuple[float, ...]
    max_gripper_width: float
    max_grasp_force: float
    root_body: str
    base_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: Further actuators that get the same target and force limit as ``gripper_actuator``.
    extra_gripper_actuators: tuple[str, ...] = ()
    #: True when the robot stands on the floor (world z = 0) and the table stands beside it;
    #: False for a table-mounted arm (the table top at ``table_top_z``, the floor far below).
    on_floor: bool = False

    def width_to_ctrl(self, width: float) -> float:
        """Gripper actuator target for a finger-to-finger width in metres."""
        return float(np.clip(width, 0.0, self.max_gripper_width)) / 2.0

    def width_from_fingers(self, finger_positions: Sequence[float]) -> float:
        """Finger-to-finger width from the finger joint positions."""
        return float(sum(finger_positions))

    def gripper_forcerange(self, force: float) -> tuple[float, float]:
        """Force range of each gripper actuator for a grasp force of ``force`` newtons."""
        # The tendon averages the two fingers, so its force is twice each finger's.
        return (-2 * force, 2 * force)


@dataclasses.dataclass(frozen=True)
class StretchBinding(RobotBinding):
    """The Stretch SG3 gripper: two revolute fingers, widths are fingertip apertures."""

    def width_to_ctrl(self, width: float) -> float:
        """Finger joint angle (rad) for a fingertip-to-fingertip aperture in metres."""
        low, high = stretch.APERTURE_RANGE
        return stretch.aperture_to_finger(float(np.clip(width, low, high)))

    def width_from_fingers(self, finger_positions: Sequence[float]) -> float:
        """Fingertip aperture (m) from the two finger joint angles."""
        return stretch.finger_to_aperture(float(np.mean(finger_positions)))

    def gripper_forcerange(self, force: float) -> tuple[float, float]:
        """Each finger servo's torque range (N m) for a fingertip force of ``force`` N."""
        torque = force * stretch.FINGER_LENGTH
        return (-torque, torque)


FR3_BINDING = RobotBinding(
    arm_joints=fr3.ARM_JOINTS,
    arm_actuators=tuple(f"act_{n}" for n in fr3.ARM_JOINTS),
    finger_joints=fr3.FINGER_JOINTS,
    gripper_actuator="act_fr3_gripper",
    tcp_site="fr3_tcp",
    finger_pads=("fr3_left_pad", "fr3_right_pad"),
    home=fr3.HOME,
    max_gripper_width=fr3.MAX_GRIPPER_WIDTH,
    max_grasp_force=fr3.MAX_GRASP_FORCE,
    root_body="fr3_link0",
)
#: The Stretch's "arm": every actuated joint but the fingers (planar base, lift, telescoping
#: links, wrist, head), starting at ``stretch.HOME`` with the base at the origin.
STRETCH_ARM_JOINTS = tuple(n for n in stretch_model.ACTUATED_JOINTS
                           if n not in stretch.FINGER_JOINTS)
STRETCH_BINDING = StretchBinding(
    arm_joints=STRETCH_ARM_JOINTS,
    arm_actuators=tuple(stretch_model.actuator_name(n) for n in STRETCH_ARM_JOINTS),
    finger_joints=stretch.FINGER_JOINTS,
    gripper_actuator=stretch_model.actuator_name(stretch.FINGER_LEFT),
    extra_gripper_actuators=(stretch_model.actuator_name(stretch.FINGER_RIGHT),),
    tcp_site=stretch_model.GRASP_SITE,
    finger_pads=stretch_model.FINGER_PADS,
    home=tuple(stretch.HOME.get(n, 0.0) for n in STRETCH_ARM_JOINTS),
    # Wide open at 100 "pct" (stretch_body's open position), not the 177 pct hard stop.
    max_gripper_width=100.0 * stretch.APERTURE_PER_PCT,
    max_grasp_force=1.5 / stretch.FINGER_LENGTH,  # the finger servos' 1.5 N m
    root_body=stretch_model.ROOT_BODY,
    on_floor=True,
)
ROBOTS = {"fr3": (fr3_model.robot_spec, FR3_BINDING),
          "stretch": (stretch_model.build_stretch_spec, STRETCH_BINDING)}

#: A Stretch scene's table: beside the robot on its -y side, where the arm reaches out, its top
#: at a height the lift reaches (the grasp site is ~0.11 m above the lift position).
STRETCH_TABLE_TOP_Z = 0.62
STRETCH_TABLE_CENTER = (-0.02, -0.85)
STRETCH_TABLE_SIZE = (0.45, 0.5)
STRETCH_CAMERA = CameraSpec(position=(1.3, -1.2, 1.35), look_at=(-0.05, -0.5, 0.55))


def stretch_scene(objects: Sequence[ObjectSpec] = (), **overrides) -> SceneConfig:
    """A Stretch on the floor at the origin next to a table, with a world camera.

    With no ``objects``, a red 4 cm cube sits on the table within the arm's reach.
    """
    if not objects:
        objects = (ObjectSpec("cube", "cube", 0.04, "red", (-0.02, -0.75)),)
    fields = dict(robot="stretch", table_size=STRETCH_TABLE_SIZE,
                  table_center=STRETCH_TABLE_CENTER, table_top_z=STRETCH_TABLE_TOP_Z,
                  objects=tuple(objects), cameras=(STRETCH_CAMERA,))
    fields.update(overrides)
    return SceneConfig(**fields)


def look_at_quat(position: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """MuJoCo camera orientation (looks along -z, y up) from ``position`` toward ``target``."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    if np.linalg.norm(right) < 1e-6:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.column_stack([right, up, -forward]).reshape(9))
    return quat


def _add_object(spec: mujoco.MjSpec, obj: ObjectSpec, table_z: float) -> None:
    contype, conaffinity = OBJECT_BITS
    rgba = COLORS[obj.color]
    friction = [obj.friction, 0.01, 0.0002]
    if obj.kind == "cube":
        body = spec.worldbody.add_body(
            name=obj.name, pos=[*obj.position, table_z + obj.size / 2 + 1e-4],
            quat=[math.cos(obj.yaw / 2), 0, 0, math.sin(obj.yaw / 2)])
        body.add_freejoint(name=f"{obj.name}_free")
        body.add_geom(name=f"{obj.name}_geom", type=mujoco.mjtGeom.mjGEOM_BOX,
                      size=[obj.size / 2] * 3, rgba=rgba, mass=obj.mass, friction=friction,
                      condim=4, contype=contype, conaffinity=conaffinity, priority=1,
                      # Stiff contacts: with priority the cube's solref is the one used, and
                      # the default (0.02 s) lets a 20 N grasp sink 5 mm into a 4 cm cube.
                      solref=[0.004, 1], solimp=[0.95, 0.99, 0.001, 0.5, 2])
        return
    if obj.kind == "goal":
        body = spec.worldbody.add_body(name=obj.name, pos=[*obj.position, table_z])
        body.add_geom(name=f"{obj.name}_disc", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                      size=[obj.size / 2, 0.0005], pos=[0, 0, 0.0005], rgba=rgba,
                      contype=0, conaffinity=0)
        return
    # A bowl is static: a disc bottom and a ring of slanted wall slabs (MuJoCo collides convex
    # shapes only, so a concave mesh would not hold anything).
    radius, height = obj.size / 2, obj.height
    body = spec.worldbody.add_body(name=obj.name, pos=[*obj.position, table_z])
    body.add_geom(name=f"{obj.name}_bottom", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                  size=[radius * 0.65, 0.004], pos=[0, 0, 0.004], rgba=rgba,
                  contype=contype, conaffinity=conaffinity)
    slab = 2 * math.pi * radius / BOWL_WALLS * 0.6
    for index in range(BOWL_WALLS):
        angle = 2 * math.pi * index / BOWL_WALLS
        lean = 0.35  # the wall leans outward like a bowl's
        wall_r = radius * 0.82
        quat = np.empty(4)
        mujoco.mju_euler2Quat(quat, np.array([0.0, -lean, angle]), "xyz")
        body.add_geom(name=f"{obj.name}_wall{index}", type=mujoco.mjtGeom.mjGEOM_BOX,
                      size=[0.004, slab, height / 2],
                      pos=[wall_r * math.cos(angle), wall_r * math.sin(angle), height / 2],
                      quat=quat, rgba=rgba, contype=contype, conaffinity=conaffinity)


def build_spec(config: SceneConfig) -> tuple[mujoco.MjSpec, RobotBinding]:
    """The robot model with the config's table, objects, lights and cameras added."""
    make_robot, binding = ROBOTS[config.robot]
    spec = make_robot()
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.visual.global_.offwidth = max([640, *(c.width for c in config.cameras)])
    spec.visual.global_.offheight = max([480, *(c.height for c in config.cameras)])
    spec.visual.quality.shadowsize = 0  # shadows cost a render pass; none on a CPU
    spec.visual.headlight.ambient = [config.light.ambient] * 3
    spec.visual.headlight.diffuse = [0.2] * 3
    spec.stat.extent = 2.0
    spec.stat.center = [0.4, 0.0, 0.3]
    root = spec.body(binding.root_body)
    root.pos = [*binding.base_position[:2], binding.base_position[2]]
    robot_rgba = COLORS[config.robot_color]
    for material in spec.materials:
        if material.name.endswith("_white"):
            material.rgba = robot_rgba
    world = spec.worldbody
    world.add_light(name="key_light", dir=list(config.light.direction), pos=[0.5, -0.5, 2.0],
                    diffuse=[config.light.diffuse] * 3, specular=[0.1] * 3,
                    type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL, castshadow=False)
    floor_z = 0.0 if binding.on_floor else min(config.table_top_z, 0.0) - 0.75
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.1],
                   pos=[0, 0, floor_z], rgba=[0.35, 0.35, 0.38, 1],
                   contype=0, conaffinity=0)
    half_x, half_y = config.table_size[0] / 2, config.table_size[1] / 2
    contype, conaffinity = TABLE_BITS
    # A table-mounted arm gets a 4 cm top; a floor-standing robot a table block down to the floor.
    half_z = max(config.table_top_z, 0.04) / 2 if binding.on_floor else 0.02
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=[half_x, half_y, half_z],
                   pos=[*config.table_center, config.table_top_z - half_z],
                   rgba=COLORS[config.table_color], friction=[1.0, 0.01, 0.0002],
                   contype=contype, conaffinity=conaffinity)
    for obj in config.objects:
        _add_object(spec, obj, config.table_top_z)
    for camera in config.cameras:
        world.add_camera(name=camera.name, pos=list(camera.position),
                         quat=list(look_at_quat(camera.position, camera.look_at)),
                         fovy=camera.fovy_deg)
    return spec, binding


@dataclasses.dataclass(frozen=True)
class SimState:
    """A saved instant of a :class:`Simulation` (see ``save_state``)."""

    integration: np.ndarray
    forcerange: np.ndarray
    friction: np.ndarray


@dataclasses.dataclass(frozen=True)
class SimSnapshot:
    """A bit-exact copy of a :class:`Simulation`'s data (see ``snapshot``).

    Unlike :class:`SimState` it keeps the derived quantities too (kinematics, contacts), which
    after ``mj_step`` describe the state before the step: a run continued from a snapshot
    reads exactly what the original run read.
    """

    data: mujoco.MjData
    forcerange: np.ndarray
    friction: np.ndarray


class Simulation:
    """A compiled scene with its physics state and the robot-level controls the expert uses."""

    def __init__(self, config: SceneConfig) -> None:
        self.config = config
        spec, self.binding = build_spec(config)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        b = self.binding
        self._arm_qpos = np.array([self.model.joint(n).qposadr[0] for n in b.arm_joints])
        self._arm_dof = np.array([self.model.joint(n).dofadr[0] for n in b.arm_joints])
        self._arm_ctrl = np.array([self.model.actuator(n).id for n in b.arm_actuators])
        self._finger_qpos = np.array([self.model.joint(n).qposadr[0] for n in b.finger_joints])
        self._finger_dof = np.array([self.model.joint(n).dofadr[0] for n in b.finger_joints])
        self._gripper_ctrl = self.model.actuator(b.gripper_actuator).id
        self._gripper_ctrls = [self._gripper_ctrl] + [self.model.actuator(n).id
                                                      for n in b.extra_gripper_actuators]
        self._pad_geoms = {self.model.geom(n).id for n in b.finger_pads}
        self._initial_friction = self.model.geom_friction.copy()
        self._tcp = self.model.site(b.tcp_site).id
        self.reset()

    # --- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Robot at home with the gripper open, objects where the config puts them, t = 0."""
        mujoco.mj_resetData(self.model, self.data)
        self.model.geom_friction[:] = self._initial_friction  # undo slip faults
        open_ctrl = self.binding.width_to_ctrl(self.binding.max_gripper_width)
        self.data.qpos[self._finger_qpos] = open_ctrl
        self.set_gripper(self.binding.max_gripper_width, self.binding.max_grasp_force)
        self.place_arm(self.binding.home)

    def place_arm(self, q: Sequence[float]) -> None:
        """Put the arm at ``q`` at rest, servos holding it there (a replay's first pose)."""
        self.data.qpos[self._arm_qpos] = q
        self.data.qvel[self._arm_dof] = 0.0
        self.data.ctrl[self._arm_ctrl] = q
        mujoco.mj_forward(self.model, self.data)

    @property
    def time(self) -> float:
        """Simulated time in seconds."""
        return float(self.data.time)

    @property
    def timestep(self) -> float:
        """Physics step in seconds."""
        return float(self.model.opt.timestep)

    def step(self, n: int = 1) -> None:
        """Advance the physics ``n`` steps."""
        mujoco.mj_step(self.model, self.data, nstep=n)

    def arm_positions(self) -> np.ndarray:
        """Arm joint positions in binding order."""
        return self.data.qpos[self._arm_qpos].copy()

    def arm_velocities(self) -> np.ndarray:
        """Arm joint velocities in binding order."""
        return self.data.qvel[self._arm_dof].copy()

    def finger_positions(self) -> np.ndarray:
        """Finger joint positions."""
        return self.data.qpos[self._finger_qpos].copy()

    def finger_velocities(self) -> np.ndarray:
        """Finger joint velocities."""
        return self.data.qvel[self._finger_dof].copy()

    def gripper_width(self) -> float:
        """Current finger-to-finger width in metres."""
        return self.binding.width_from_fingers(self.finger_positions())

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position and 3x3 rotation in the world frame."""
        rotation = self.data.site_xmat[self._tcp].reshape(3, 3).copy()
        return self.data.site_xpos[self._tcp].copy(), rotation

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Object position and quaternion (w, x, y, z) in the world frame."""
        body = self.data.body(name)
        return body.xpos.copy(), body.xquat.copy()

    def save_state(self) -> SimState:
        """Everything a later :meth:`restore_state` needs to continue from this instant.

        The gripper force limit and object friction are model parameters that faults change,
        so they are saved with the integration state.
        """
        size = mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION)
        state = np.empty(size)
        mujoco.mj_getState(self.model, self.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        return SimState(state, self.model.actuator_forcerange.copy(),
                        self.model.geom_friction.copy())

    def restore_state(self, state: SimState, *, nominal_friction: bool = False) -> None:
        """Continue from a saved instant (``nominal_friction`` drops a slip fault's friction)."""
        mujoco.mj_setState(self.model, self.data, state.integration,
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        self.model.actuator_forcerange[:] = state.forcerange
        self.model.geom_friction[:] = (self._initial_friction if nominal_friction
                                       else state.friction)
        mujoco.mj_forward(self.model, self.data)

    def snapshot(self) -> SimSnapshot:
        """This instant, bit for bit, with the fault-changed model parameters."""
        return SimSnapshot(copy.copy(self.data), self.model.actuator_forcerange.copy(),
                           self.model.geom_friction.copy())

    def restore_snapshot(self, snapshot: SimSnapshot) -> None:
        """Continue exactly from ``snapshot`` (taken on this simulation)."""
        mujoco.mj_copyData(self.data, self.model, snapshot.data)
        self.model.actuator_forcerange[:] = snapshot.forcerange
        self.model.geom_friction[:] = snapshot.friction

    def is_finite(self) -> bool:
        """False once the physics state holds NaN or inf (a diverged simulation)."""
        return bool(np.all(np.isfinite(self.data.qpos)) and np.all(np.isfinite(self.data.qvel)))

    # --- commands ----------------------------------------------------------------------------
    def set_arm_targets(self, q: Sequence[float]) -> None:
        """Position targets of the arm servos."""
        self.data.ctrl[self._arm_ctrl] = q

    def arm_targets(self) -> np.ndarray:
        """The arm servos' current position targets."""
        return self.data.ctrl[self._arm_ctrl].copy()

    def set_gripper(self, width: float, force: float) -> None:
        """Drive the fingers toward ``width`` pushing with at most ``force`` newtons."""
        force = float(np.clip(force, 0.0, self.binding.max_grasp_force))
        for actuator in self._gripper_ctrls:
            self.data.ctrl[actuator] = self.binding.width_to_ctrl(width)
            self.model.actuator_forcerange[actuator] = self.binding.gripper_forcerange(force)

    def set_friction(self, object_name: str, friction: float) -> None:
        """Sliding friction of an object's geoms (the slip fault lowers it mid-transport).

        Objects have contact priority, so their friction is the one used against the pads.
        """
        body = self.model.body(object_name).id
        for geom in np.flatnonzero(self.model.geom_bodyid == body):
            self.model.geom_friction[geom, 0] = friction

    def pad_contacts(self, object_name: str) -> int:
        """How many finger pads touch the object now (2 = held between the fingers)."""
        body = self.model.body(object_name).id
        touching = set()
        for contact in self.data.contact[: self.data.ncon]:
            pair = (contact.geom1, contact.geom2)
            for pad, other in (pair, pair[::-1]):
                if pad in self._pad_geoms and self.model.geom_bodyid[other] == body:
                    touching.add(pad)
        return len(touching)
