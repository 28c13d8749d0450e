"""Franka Research 3 with a Franka Hand: the names and limits franka_ros2 uses on the robot.

Position limits are the FR3 datasheet values (narrower than the ``franka-sim`` URDF, which the
simulator uses for kinematics only); velocity limits are the URDF's; the datasheet gives
10 rad/s^2 as the joint acceleration bound for every joint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from failrecov_ros.core.limits import JointLimit, JointLimits

ARM_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("fr3_finger_joint1", "fr3_finger_joint2")
#: Controller and gripper names as franka_ros2 (humble v2.x) exposes them.
ARM_CONTROLLER = "fr3_arm_controller"
GRIPPER_NODE = "franka_gripper"
ERROR_RECOVERY_ACTION = "action_server/error_recovery"

_POSITION = (
    (-2.7437, 2.7437),
    (-1.7837, 1.7837),
    (-2.9007, 2.9007),
    (-3.0421, -0.1518),
    (-2.8065, 2.8065),
    (0.5445, 4.5169),
    (-3.0159, 3.0159),
)
_VELOCITY = (2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26)
_EFFORT = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
ACCELERATION_LIMIT = 10.0

ARM_LIMITS = JointLimits.of(
    JointLimit(name, lo, hi, vel, ACCELERATION_LIMIT, eff)
    for name, (lo, hi), vel, eff in zip(ARM_JOINTS, _POSITION, _VELOCITY, _EFFORT, strict=True)
)
#: Each finger slides 0..40 mm; the hand opens to 80 mm between the fingers.
FINGER_LIMITS = JointLimits.of(JointLimit(n, 0.0, 0.04, 0.05, effort=70.0) for n in FINGER_JOINTS)
MAX_GRIPPER_WIDTH = 0.08
MAX_GRIPPER_SPEED = 0.1
MAX_GRASP_FORCE = 70.0
#: franka_ros2's "ready" pose: hand pointing down above the table in front of the robot.
HOME = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)

# --- kinematic description (robots.kinematics) -------------------------------------------------
#: The FR3 URDF with the real joint frames and limits: (Python package, resource path). The
#: ``franka-sim`` package ships it; its joints are ``joint1..7`` in ARM_JOINTS order.
URDF_RESOURCE = ("franka_sim", "models/fr3.urdf")
URDF_FLANGE_FRAME = "link8"
#: franka_description's Franka Hand: mounted on the flange turned -45 degrees about z, its TCP
#: (between the fingertips) 103.4 mm past the hand's base.
HAND_YAW = -math.pi / 4
HAND_TO_TCP = 0.1034
BASE_FRAME = "fr3_link0"
TCP_FRAME = "fr3_hand_tcp"


# --- joint_states ------------------------------------------------------------------------------
#: Command joints that joint_states reports under another name (none on the FR3).
JOINT_STATE_ALIASES: dict[str, str] = {}


def gripper_width(positions: Mapping[str, float]) -> float | None:
    """Finger-to-finger width (m) from joint_states positions by name: the two fingers' sum.

    None until both finger joints have been seen.
    """
    fingers = [positions.get(name) for name in FINGER_JOINTS]
    return None if any(f is None for f in fingers) else float(sum(fingers))
