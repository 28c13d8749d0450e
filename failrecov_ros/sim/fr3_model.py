"""MuJoCo model of an FR3 arm with a Franka Hand, built from the FR3 URDF's kinematics.

The URDF shipped in the ``franka-sim`` PyPI package has the real joint frames, limits and
inertials but no meshes, so links are drawn and collided as capsules (cheap to render on a
CPU). The hand follows franka_description: mounted 107 mm past the link-7 flange, turned -45
degrees about z, two 40 mm slide fingers and a TCP 103.4 mm past the flange. Joint armature and
the ``implicitfast`` integrator keep joint 7 stable; gravity compensation on the arm bodies
stands in for the libfranka model the real controller compensates with.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import xml.etree.ElementTree as ET

import mujoco
import numpy as np

from failrecov_ros.robots import fr3

TIMESTEP = 0.002
ARM_ARMATURE = 0.1
HAND_QUAT = (0.9238795, 0.0, 0.0, -0.3826834)
FLANGE_TO_HAND = 0.107
HAND_TO_FINGER = 0.0584
HAND_TO_TCP = 0.1034
#: Position servo gains per joint (N m/rad); the torques are clipped at the effort limits.
ARM_KP = (4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 1000.0)
ARM_KV = (450.0, 450.0, 350.0, 350.0, 200.0, 200.0, 100.0)
#: Finger servo on the mean finger opening (N/m); its force limit is set per grasp.
FINGER_KP = 3000.0
FINGER_KV = 60.0
#: Collision bit masks: the table collides with fingers and objects, the arm only with objects.
TABLE_BITS = (1, 1)
ARM_BITS = (2, 0)
FINGER_BITS = (2, 1)
OBJECT_BITS = (3, 3)
#: Capsule radius and, in the link's own frame, the segment each link is drawn as.
_LINK_CAPSULES = {
    "link0": [((-0.04, 0.0, 0.03), (-0.04, 0.0, 0.2), 0.075)],
    "link1": [((0.0, 0.0, -0.19), (0.0, 0.0, -0.02), 0.065)],
    "link2": [((0.0, 0.0, 0.0), (0.0, -0.24, 0.0), 0.065)],
    "link3": [((0.0, 0.0, -0.11), (0.0, 0.0, 0.0), 0.06),
              ((0.0, 0.0, 0.0), (0.0825, 0.0, 0.0), 0.055)],
    "link4": [((0.0, 0.0, 0.0), (-0.0825, 0.0, 0.0), 0.055),
              ((-0.0825, 0.0, 0.0), (-0.0825, 0.23, 0.0), 0.055)],
    "link5": [((0.0, 0.0, -0.24), (0.0, 0.0, -0.02), 0.05)],
    "link6": [((0.0, 0.0, 0.0), (0.088, 0.0, 0.0), 0.05)],
    "link7": [((0.0, 0.0, -0.03), (0.0, 0.0, 0.08), 0.045)],
}


def _floats(text: str | None, default: str = "0 0 0") -> list[float]:
    return [float(v) for v in (text or default).split()]


def _rpy_to_quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    quat = np.empty(4)
    mujoco.mju_euler2Quat(quat, np.array([roll, pitch, yaw]), "XYZ")
    return quat


@functools.lru_cache(maxsize=1)
def urdf_text() -> str:
    """The FR3 URDF from the ``franka-sim`` package (installed with ``--no-deps``)."""
    return importlib.resources.files("franka_sim").joinpath("models/fr3.urdf").read_text()


def _chain(urdf: str) -> list[dict]:
    """The revolute chain link0 -> link7 with each joint's origin, axis and child inertial."""
    root = ET.fromstring(urdf)
    links = {link.get("name"): link for link in root.findall("link")}
    chain = []
    for index in range(1, 8):
        joint = root.find(f"joint[@name='joint{index}']")
        if joint is None:
            raise ValueError(f"FR3 URDF has no joint{index}")
        origin = joint.find("origin")
        inertial = links[joint.find("child").get("link")].find("inertial")
        inertia = inertial.find("inertia").attrib
        chain.append({
            "pos": _floats(origin.get("xyz")),
            "quat": _rpy_to_quat(*_floats(origin.get("rpy"))),
            "axis": _floats(joint.find("axis").get("xyz"), "0 0 1"),
            "mass": float(inertial.find("mass").get("value")),
            "com": _floats(inertial.find("origin").get("xyz")),
            "inertia": [float(inertia[k]) for k in ("ixx", "iyy", "izz", "ixy", "ixz", "iyz")],
        })
    return chain


def _vec(values) -> str:
    return " ".join(f"{v:.7g}" for v in values)


def _capsules(link: str) -> str:
    contype, conaffinity = ARM_BITS
    return "".join(
        f'<geom type="capsule" fromto="{_vec(a)} {_vec(b)}" size="{r}" material="fr3_white" '
        f'contype="{contype}" conaffinity="{conaffinity}" group="1"/>'
        for a, b, r in _LINK_CAPSULES[link]
    )


def _finger(side: str, joint: str, quat: str) -> str:
    contype, conaffinity = FINGER_BITS
    return (
        f'<body name="fr3_{side}_finger" pos="0 0 {HAND_TO_FINGER}" quat="{quat}">'
        '<inertial mass="0.015" pos="0 0.01 0.02" diaginertia="2.4e-6 2.4e-6 7.5e-7"/>'
        f'<joint name="{joint}" type="slide" axis="0 1 0" range="0 0.04" armature="0.01" '
        'damping="2"/>'
        '<geom type="box" pos="0 0.012 0.02" size="0.009 0.007 0.021" material="fr3_white" '
        'contype="0" conaffinity="0" group="1"/>'
        # The pad: the inner face touches the other pad when the fingers are closed.
        f'<geom name="fr3_{side}_pad" type="box" pos="0 0.004 0.045" size="0.009 0.004 0.012" '
        f'material="fr3_dark" friction="1.5 0.02 0.002" condim="4" solref="0.004 1" '
        f'contype="{contype}" conaffinity="{conaffinity}" group="1"/>'
        "</body>"
    )


def robot_xml() -> str:
    """MJCF of the FR3 + hand alone (no floor, table or lights), root at the world origin."""
    chain = _chain(urdf_text())
    body = f'<body name="fr3_link0" childclass="fr3">{_capsules("link0")}'
    closing = "</body>"
    for index, link in enumerate(chain, start=1):
        name = fr3.ARM_JOINTS[index - 1]
        limit = fr3.ARM_LIMITS[name]
        body += (
            f'<body name="fr3_link{index}" pos="{_vec(link["pos"])}" quat="{_vec(link["quat"])}" '
            'gravcomp="1">'
            f'<inertial pos="{_vec(link["com"])}" mass="{link["mass"]:.7g}" '
            f'fullinertia="{_vec(link["inertia"])}"/>'
            f'<joint name="{name}" axis="{_vec(link["axis"])}" '
            f'range="{limit.lower} {limit.upper}" armature="{ARM_ARMATURE}" damping="0.5"/>'
            f"{_capsules(f'link{index}')}"
        )
        closing += "</body>"
    contype, conaffinity = FINGER_BITS
    hand = (
        f'<body name="fr3_hand" pos="0 0 {FLANGE_TO_HAND}" quat="{_vec(HAND_QUAT)}" gravcomp="1">'
        '<inertial mass="0.73" pos="-0.01 0 0.03" diaginertia="0.001 0.0025 0.0017"/>'
        f'<geom name="fr3_hand_palm" type="box" pos="0 0 0.03" size="0.02 0.1 0.028" '
        f'material="fr3_white" contype="{contype}" conaffinity="{conaffinity}" group="1"/>'
        f'<site name="fr3_tcp" pos="0 0 {HAND_TO_TCP}" size="0.005" group="3"/>'
        f'{_finger("left", fr3.FINGER_JOINTS[0], "1 0 0 0")}'
        f'{_finger("right", fr3.FINGER_JOINTS[1], "0 0 0 1")}'
        "</body>"
    )
    actuators = "".join(
        f'<position name="act_{name}" joint="{name}" kp="{kp}" kv="{kv}" '
        f'ctrlrange="{fr3.ARM_LIMITS[name].lower} {fr3.ARM_LIMITS[name].upper}" '
        f'forcerange="{-fr3.ARM_LIMITS[name].effort} {fr3.ARM_LIMITS[name].effort}"/>'
        for name, kp, kv in zip(fr3.ARM_JOINTS, ARM_KP, ARM_KV, strict=True)
    )
    finger1, finger2 = fr3.FINGER_JOINTS
    return f"""
<mujoco model="fr3">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <default><default class="fr3"><geom density="0"/></default></default>
  <asset>
    <material name="fr3_white" rgba="0.92 0.92 0.92 1"/>
    <material name="fr3_dark" rgba="0.15 0.15 0.15 1"/>
  </asset>
  <worldbody>{body}{hand}{closing}</worldbody>
  <tendon>
    <fixed name="fr3_finger_split"><joint joint="{finger1}" coef="0.5"/>
      <joint joint="{finger2}" coef="0.5"/></fixed>
  </tendon>
  <equality>
    <joint joint1="{finger1}" joint2="{finger2}" polycoef="0 1 0 0 0" solref="0.005 1"/>
  </equality>
  <actuator>{actuators}
    <position name="act_fr3_gripper" tendon="fr3_finger_split" kp="{FINGER_KP}" kv="{FINGER_KV}"
      ctrlrange="0 0.04" forcerange="-{fr3.MAX_GRASP_FORCE} {fr3.MAX_GRASP_FORCE}"/>
  </actuator>
</mujoco>"""


def robot_spec() -> mujoco.MjSpec:
    """The FR3 model as an editable spec, for a scene to add its table, objects and cameras."""
    return mujoco.MjSpec.from_string(robot_xml())


def home_quat_check() -> float:
    """Angle (rad) between the TCP z axis at HOME and straight down; ~0 for a sane model."""
    model = robot_spec().compile()
    data = mujoco.MjData(model)
    for name, value in zip(fr3.ARM_JOINTS, fr3.HOME, strict=True):
        data.joint(name).qpos = value
    mujoco.mj_kinematics(model, data)
    z_axis = data.site("fr3_tcp").xmat.reshape(3, 3)[:, 2]
    return math.acos(float(np.clip(-z_axis[2], -1, 1)))
