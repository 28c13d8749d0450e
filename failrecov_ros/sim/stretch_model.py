"""MuJoCo model of a Hello Robot Stretch SE3 (DW3 wrist, SG3 gripper) from its URDF.

``build_stretch_spec()`` loads ``SE3/stretch_description_SE3_eoa_wrist_dw3_tool_sg3.urdf`` from
the ``hello-robot-stretch-urdf`` package and edits it so a simulator can drive it the way
stretch_driver drives the robot:

* The URDF is rewritten in memory: the D435i's ``d435.dae`` visual (which MuJoCo cannot load)
  becomes a box, the wheel joints become fixed, the finger joints get the range stretch_driver
  computes (the URDF's is 0..0), hidden parts (IMU, caster) lose their costly visuals.
* The base moves on a planar joint set ``base_x``, ``base_y`` (world-aligned slides) and
  ``base_yaw`` (hinge about z at the base_link origin), each with a position actuator, so
  translate/rotate goals need no wheel physics; the wheels do not touch the floor.
* One position actuator ``act_<joint>`` per joint of ``stretch.JOINTS``. The telescoping arm is
  four actuated links tied together by joint equalities (l3 = l2 = l1 = l0), so a ``joint_arm``
  command, expanded into four equal targets by ``stretch.expand_command``, moves them as the one
  motor of the real arm does, and contact cannot pull them apart. The two fingers are likewise
  two actuators plus an equality (one motor on the SG3).
* Every robot body has gravity compensation (the real steppers and servos hold position; the
  servos here need not fight gravity), joints have armature and damping, and the servo gains are
  critically damped or stiffer, stable with the ``implicitfast`` integrator at STRETCH_TIMESTEP.
* Collision geoms are boxes fitted to the URDF's collision meshes (8-vertex hulls) and sit in
  group 3, visuals in group 2. The robot does not collide with itself (the nested arm links
  overlap), except fingertip pad against fingertip pad through an explicit pair, so a closed
  gripper squeezes. Collision bits follow ``fr3_model``: arm, base and head as ARM_BITS (objects
  only), wrist, gripper and fingers as FINGER_BITS (objects and the table).
* Site ``grasp_site`` sits between the fingertip pads; cameras ``head_camera`` (D435i colour)
  and ``gripper_camera`` (D405) look along the URDF's optical frames. The head camera is mounted
  sideways on the real robot, so its images come out rotated 90 degrees, as the robot's do.

The spec has no floor, lights or world cameras: a scene adds them. The robot's root body
``base_link`` is at the world origin with the floor plane at z = 0.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import mujoco
import numpy as np

from failrecov_ros.robots import stretch

#: 2 ms: the stiffest servo (lift, ~50 rad/s) and the pad contacts stay well resolved.
STRETCH_TIMESTEP = 0.002
URDF_RELATIVE_PATH = "SE3/stretch_description_SE3_eoa_wrist_dw3_tool_sg3.urdf"
ROOT_BODY = "base_link"
BASE_JOINTS = ("base_x", "base_y", "base_yaw")
#: Every actuated joint: the planar base, then the URDF joints in ``stretch.JOINTS`` order.
ACTUATED_JOINTS = (*BASE_JOINTS, *stretch.JOINTS)
GRASP_SITE = "grasp_site"
FINGER_PADS = ("stretch_left_pad", "stretch_right_pad")
HEAD_CAMERA = "head_camera"
GRIPPER_CAMERA = "gripper_camera"
#: Vertical fields of view at 640x480: D435i colour (fy ~ 615 px) and D405 (fy ~ 433 px).
HEAD_CAMERA_FOVY = 42.5
GRIPPER_CAMERA_FOVY = 58.0
#: Collision masks (contype, conaffinity), the same conventions as ``fr3_model``.
ARM_BITS = (2, 0)
FINGER_BITS = (2, 1)
PAD_FRICTION = (1.2, 0.01, 0.0002)
VISUAL_GROUP = 2
COLLISION_GROUP = 3

#: Position servo per actuated joint: (kp, kv, force limit, joint armature, joint damping),
#: in N/m, N s/m, N (slides) or N m/rad, N m s/rad, N m (hinges).
_SERVO = {
    "base_x": (10000.0, 1200.0, 600.0, 1.0, 1.0),
    "base_y": (10000.0, 1200.0, 600.0, 1.0, 1.0),
    "base_yaw": (2000.0, 200.0, 200.0, 0.2, 0.5),
    stretch.LIFT: (10000.0, 500.0, 300.0, 0.5, 5.0),
    **{name: (5000.0, 150.0, 100.0, 0.1, 2.0) for name in stretch.TELESCOPING_JOINTS},
    stretch.WRIST_YAW: (50.0, 3.0, 10.0, 0.02, 0.05),
    stretch.WRIST_PITCH: (50.0, 3.0, 10.0, 0.02, 0.05),
    stretch.WRIST_ROLL: (20.0, 1.5, 5.0, 0.01, 0.02),
    stretch.FINGER_LEFT: (5.0, 0.3, 1.5, 0.002, 0.01),
    stretch.FINGER_RIGHT: (5.0, 0.3, 1.5, 0.002, 0.01),
    stretch.HEAD_PAN: (10.0, 0.8, 5.0, 0.01, 0.02),
    stretch.HEAD_TILT: (10.0, 0.8, 5.0, 0.01, 0.02),
}
#: Links whose collision geoms are dropped: thin markers and parts inside other geoms.
_NO_COLLISION = ("link_aruco_", "base_imu", "respeaker_base", "caster_link",
                 "link_left_wheel", "link_right_wheel")
#: Links whose visuals are dropped: hidden inside the base (the caster is redrawn as a sphere).
_NO_VISUAL = ("base_imu", "caster_link")
#: Links drawn with FINGER_BITS collision; all others get ARM_BITS.
_GRIPPER_LINKS = ("link_wrist_", "link_gripper_", "gripper_camera_link")
_MATERIALS = {
    "stretch_white": (0.86, 0.87, 0.88, 1.0),
    "stretch_dark": (0.13, 0.13, 0.14, 1.0),
    "stretch_metal": (0.55, 0.56, 0.58, 1.0),
    "stretch_rubber": (0.05, 0.05, 0.05, 1.0),
    "stretch_marker": (0.95, 0.95, 0.95, 1.0),
}


def _material_for(link: str) -> str:
    if link.startswith("link_aruco_"):
        return "stretch_marker"
    if link.startswith("link_gripper_fingertip_"):
        return "stretch_rubber"
    if link.startswith(("link_arm_l", "link_gripper_finger_")):
        return "stretch_metal"
    if link in ("base_link", "link_head"):
        return "stretch_white"
    return "stretch_dark"


def actuator_name(joint: str) -> str:
    """The position actuator driving ``joint``."""
    return f"act_{joint}"


@functools.lru_cache(maxsize=1)
def package_dir() -> Path:
    """The installed ``stretch_urdf`` package folder (holds ``SE3/`` and ``SE3/meshes/``)."""
    return Path(str(importlib.resources.files("stretch_urdf")))


@functools.lru_cache(maxsize=1)
def urdf_for_mujoco() -> str:
    """The SE3 URDF rewritten so MuJoCo loads it (see the module docstring)."""
    urdf = package_dir() / URDF_RELATIVE_PATH
    root = ET.fromstring(urdf.read_text())
    for link in root.findall("link"):
        name = link.get("name", "")
        for visual in link.findall("visual"):
            mesh = visual.find("geometry/mesh")
            if mesh is None:
                continue
            if mesh.get("filename", "").endswith(".dae"):  # the D435i body: a box instead
                geometry = visual.find("geometry")
                geometry.remove(mesh)
                ET.SubElement(geometry, "box", size="0.02505 0.09 0.025")
                visual.find("origin").set("xyz", "0 -0.0175 0")
                visual.find("origin").set("rpy", "0 0 0")
            elif name.startswith(_NO_VISUAL):
                link.remove(visual)
        if name == "caster_link":
            visual = ET.SubElement(link, "visual")
            ET.SubElement(visual, "origin", xyz="0 0 0", rpy="0 0 0")
            ET.SubElement(ET.SubElement(visual, "geometry"), "sphere", radius="0.032")
    for joint in root.findall("joint"):
        name = joint.get("name")
        if name in ("joint_left_wheel", "joint_right_wheel"):
            joint.set("type", "fixed")
            for child in joint.findall("limit") + joint.findall("axis"):
                joint.remove(child)
        elif name in stretch.FINGER_JOINTS:
            limit = joint.find("limit")
            limit.set("lower", repr(stretch.JOINT_LIMITS[name].lower))
            limit.set("upper", repr(stretch.JOINT_LIMITS[name].upper))
            limit.set("velocity", repr(stretch.JOINT_LIMITS[name].velocity))
    extension = ET.SubElement(root, "mujoco")
    ET.SubElement(extension, "compiler", meshdir=str(package_dir() / "SE3" / "meshes"),
                  strippath="true", discardvisual="false", fusestatic="false",
                  balanceinertia="true", angle="radian")
    return ET.tostring(root, encoding="unicode")


def _is_visual(geom: mujoco.MjsGeom) -> bool:
    return geom.contype == 0 and geom.conaffinity == 0


def _style_geoms(spec: mujoco.MjSpec) -> None:
    for name, rgba in _MATERIALS.items():
        spec.add_material(name=name, rgba=list(rgba))
    fingertips = {"link_gripper_fingertip_left": FINGER_PADS[0],
                  "link_gripper_fingertip_right": FINGER_PADS[1]}
    for geom in list(spec.geoms):
        link = geom.parent.name
        if _is_visual(geom):
            geom.group = VISUAL_GROUP
            geom.material = _material_for(link)
            geom.rgba = [0.5, 0.5, 0.5, 1.0]  # MuJoCo's default, so the material's colour shows
            continue
        if link.startswith(_NO_COLLISION):
            spec.delete(geom)
            continue
        if geom.type == mujoco.mjtGeom.mjGEOM_MESH:
            # A box fitted to the collision hull (the URDF's hulls are boxes already).
            geom.type = mujoco.mjtGeom.mjGEOM_BOX
        geom.group = COLLISION_GROUP
        geom.rgba = [0.9, 0.4, 0.1, 0.4]
        geom.contype, geom.conaffinity = (
            FINGER_BITS if link.startswith(_GRIPPER_LINKS) else ARM_BITS)
        if link in fingertips:
            geom.name = fingertips[link]
            geom.friction = list(PAD_FRICTION)
            geom.condim = 4
            geom.priority = 1
            geom.solref = [0.004, 1.0]


def _add_base_joints(spec: mujoco.MjSpec) -> None:
    base = spec.body(ROOT_BODY)
    slide, hinge = mujoco.mjtJoint.mjJNT_SLIDE, mujoco.mjtJoint.mjJNT_HINGE
    # Joints of one body act in order: both slides along world axes, then the yaw about the
    # base_link origin, so (base_x, base_y, base_yaw) is the odom pose of base_link.
    base.add_joint(name="base_x", type=slide, axis=[1, 0, 0])
    base.add_joint(name="base_y", type=slide, axis=[0, 1, 0])
    base.add_joint(name="base_yaw", type=hinge, axis=[0, 0, 1])


def _add_actuators(spec: mujoco.MjSpec) -> None:
    for name in ACTUATED_JOINTS:
        kp, kv, force, armature, damping = _SERVO[name]
        joint = spec.joint(name)
        joint.armature = armature
        joint.damping = [damping, 0.0, 0.0]  # linear term; no polynomial damping
        actuator = spec.add_actuator(name=actuator_name(name), target=name,
                                     trntype=mujoco.mjtTrn.mjTRN_JOINT)
        actuator.set_to_position(kp=kp, kv=kv)
        actuator.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.forcerange = [-force, force]
        if name in stretch.JOINT_LIMITS:
            limit = stretch.JOINT_LIMITS[name]
            actuator.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
            actuator.ctrlrange = [limit.lower, limit.upper]
        else:
            actuator.ctrllimited = mujoco.mjtLimited.mjLIMITED_FALSE


def _add_couplings(spec: mujoco.MjSpec) -> None:
    links = stretch.TELESCOPING_JOINTS
    for first, second in [*zip(links[:-1], links[1:], strict=True), stretch.FINGER_JOINTS]:
        spec.add_equality(type=mujoco.mjtEq.mjEQ_JOINT, name1=first, name2=second,
                          objtype=mujoco.mjtObj.mjOBJ_JOINT, data=[0, 1, 0, 0, 0] + [0] * 7,
                          solref=[0.005, 1.0])
    spec.add_pair(name="stretch_pad_pair", geomname1=FINGER_PADS[0], geomname2=FINGER_PADS[1],
                  condim=4, friction=[PAD_FRICTION[0], PAD_FRICTION[0], PAD_FRICTION[1],
                                      PAD_FRICTION[2], PAD_FRICTION[2]])


def _add_sites_and_cameras(spec: mujoco.MjSpec) -> None:
    # Between the fingertip pads' centres, in the gripper body's frame (measured at fingers = 0;
    # the URDF's link_grasp_center is 15 mm further out, at the pads' tips).
    spec.body("link_gripper_s3_body").add_site(
        name=GRASP_SITE, pos=[-0.0001, 0.0, 0.2168], size=[0.006, 0.006, 0.006],
        rgba=[0.1, 0.9, 0.1, 0.6], group=VISUAL_GROUP + 1)
    # A ROS optical frame looks along +z with y down; a MuJoCo camera along -z with y up.
    flip = [0.0, 1.0, 0.0, 0.0]
    spec.body("camera_color_optical_frame").add_camera(
        name=HEAD_CAMERA, quat=flip, fovy=HEAD_CAMERA_FOVY)
    spec.body("gripper_camera_color_optical_frame").add_camera(
        name=GRIPPER_CAMERA, quat=flip, fovy=GRIPPER_CAMERA_FOVY)


def build_stretch_spec() -> mujoco.MjSpec:
    """The Stretch SE3 alone (no floor, lights or world cameras), base_link at the origin."""
    spec = mujoco.MjSpec.from_string(urdf_for_mujoco())
    spec.modelname = "stretch_se3"
    spec.option.timestep = STRETCH_TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10
    meshes = package_dir() / "SE3" / "meshes"
    for mesh in spec.meshes:  # absolute paths survive spec.attach() and a changed meshdir
        mesh.file = str(meshes / os.path.basename(mesh.file))
    _style_geoms(spec)
    _add_base_joints(spec)
    for body in spec.bodies:
        if body.name != "world":
            body.gravcomp = 1.0
    _add_actuators(spec)
    _add_couplings(spec)
    _add_sites_and_cameras(spec)
    return spec


def set_joint_positions(model: mujoco.MjModel, data: mujoco.MjData,
                        positions: Mapping[str, float], *, with_targets: bool = True) -> None:
    """Put joints (names of ACTUATED_JOINTS) at ``positions`` and recompute kinematics.

    Their velocities are zeroed and, by default, the positions become their actuators' targets.
    """
    for name, value in positions.items():
        joint = model.joint(name)
        data.qpos[joint.qposadr[0]] = value
        data.qvel[joint.dofadr[0]] = 0.0
        if with_targets:
            data.ctrl[model.actuator(actuator_name(name)).id] = value
    mujoco.mj_forward(model, data)


def joint_positions(model: mujoco.MjModel, data: mujoco.MjData) -> dict[str, float]:
    """Positions of every actuated joint, by name (stretch.joint_state takes the URDF ones)."""
    return {name: float(data.qpos[model.joint(name).qposadr[0]]) for name in ACTUATED_JOINTS}


def grasp_site_pose(model: mujoco.MjModel, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
    """World position and 3x3 orientation of ``grasp_site`` (after a forward/step)."""
    site = data.site(GRASP_SITE)
    return site.xpos.copy(), site.xmat.reshape(3, 3).copy()


def finger_aperture(model: mujoco.MjModel, data: mujoco.MjData) -> float:
    """The gripper aperture stretch_driver would report, from the two finger joints."""
    mean = float(np.mean([data.qpos[model.joint(n).qposadr[0]] for n in stretch.FINGER_JOINTS]))
    return stretch.finger_to_aperture(mean)


def base_pose(model: mujoco.MjModel, data: mujoco.MjData) -> tuple[float, float, float]:
    """The planar base pose (x, y, yaw) in the world, from the base joints."""
    x, y, yaw = (float(data.qpos[model.joint(n).qposadr[0]]) for n in BASE_JOINTS)
    return x, y, math.remainder(yaw, 2 * math.pi)
