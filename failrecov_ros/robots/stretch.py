"""Hello Robot Stretch SE3 (DW3 wrist, SG3 gripper) as stretch_driver (stretch_core) sees it.

Names, limits, named poses and command semantics of stretch_ros2's driver, as plain data and
pure functions.

Position limits are the URDF's (``hello-robot-stretch-urdf``,
``SE3/stretch_description_SE3_eoa_wrist_dw3_tool_sg3.urdf``), except the gripper fingers, whose
URDF limits are a 0..0 placeholder: their range is the one stretch_driver computes from
stretch_body's nominal SE3 gripper calibration (``stretch_gripper`` ``range_t`` [0, 9102],
``zero_t`` 3279, i.e. -100..+177.6 "pct") through hello_helpers' ``GripperConversion``.
The URDF's velocity limits are a uniform 1.0 placeholder, so velocity and acceleration limits
come from stretch_body's SE3 parameters (``robot_params_SE3.py``, ``robot_params_SE3_eoa.py``):
the ``max`` motion profile, lowered to ``trajectory_max`` where that is smaller.

The telescoping arm is four prismatic URDF joints ``joint_arm_l3`` (proximal) .. ``joint_arm_l0``
(distal) but one motor: stretch_driver accepts ``joint_arm`` or ``wrist_extension`` (the total
extension) or all four links (summed), and publishes each link as a quarter of the total.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from failrecov_ros.core.limits import JointLimit, JointLimits

# --- joint names, as stretch_driver uses them ------------------------------------------------
LIFT = "joint_lift"
#: Telescoping links in stretch_driver's order: most proximal (l3) first, most distal (l0) last.
TELESCOPING_JOINTS = ("joint_arm_l3", "joint_arm_l2", "joint_arm_l1", "joint_arm_l0")
ARM = "joint_arm"
WRIST_EXTENSION = "wrist_extension"
WRIST_YAW = "joint_wrist_yaw"
WRIST_PITCH = "joint_wrist_pitch"
WRIST_ROLL = "joint_wrist_roll"
WRIST_JOINTS = (WRIST_YAW, WRIST_PITCH, WRIST_ROLL)
FINGER_LEFT = "joint_gripper_finger_left"
FINGER_RIGHT = "joint_gripper_finger_right"
FINGER_JOINTS = (FINGER_LEFT, FINGER_RIGHT)
GRIPPER_APERTURE = "gripper_aperture"
HEAD_PAN = "joint_head_pan"
HEAD_TILT = "joint_head_tilt"
HEAD_JOINTS = (HEAD_PAN, HEAD_TILT)
TRANSLATE_BASE = "translate_mobile_base"
ROTATE_BASE = "rotate_mobile_base"
BASE_COMMANDS = (TRANSLATE_BASE, ROTATE_BASE)
#: The virtual base joint older stretch_driver versions took; the current one rejects it.
RETIRED_BASE_JOINT = "joint_mobile_base_translation"
#: Every joint with its own position (the URDF's movable joints bar the wheels), in one order.
JOINTS = (LIFT, *TELESCOPING_JOINTS, *WRIST_JOINTS, *FINGER_JOINTS, *HEAD_JOINTS)
#: Names stretch_driver accepts in a FollowJointTrajectory goal.
COMMAND_NAMES = (LIFT, ARM, WRIST_EXTENSION, *TELESCOPING_JOINTS, *WRIST_JOINTS, *FINGER_JOINTS,
                 GRIPPER_APERTURE, *HEAD_JOINTS, *BASE_COMMANDS)
#: What stretch_driver publishes on /joint_states, in its order (SE3 with the DW3 wrist).
JOINT_STATE_NAMES = (WRIST_EXTENSION, LIFT, *TELESCOPING_JOINTS, *HEAD_JOINTS, *WRIST_JOINTS,
                     *FINGER_JOINTS)
#: Command joints that /joint_states reports under another name (the telescoping arm's total).
JOINT_STATE_ALIASES = {ARM: WRIST_EXTENSION}

# --- controller, modes and services ------------------------------------------------------------
CONTROLLER = "stretch_controller"
FOLLOW_JOINT_TRAJECTORY_ACTION = f"{CONTROLLER}/follow_joint_trajectory"
POSITION_MODE = "position"
NAVIGATION_MODE = "navigation"
TRAJECTORY_MODE = "trajectory"
MODES = (POSITION_MODE, NAVIGATION_MODE, TRAJECTORY_MODE)
#: std_srvs/srv/Trigger services that switch stretch_driver's mode.
MODE_SERVICES = {
    POSITION_MODE: "switch_to_position_mode",
    NAVIGATION_MODE: "switch_to_navigation_mode",
    TRAJECTORY_MODE: "switch_to_trajectory_mode",
}
STOP_SERVICE = "stop_the_robot"  # std_srvs/srv/Trigger
HOME_SERVICE = "home_the_robot"  # std_srvs/srv/Trigger
STOW_SERVICE = "stow_the_robot"  # std_srvs/srv/Trigger
RUNSTOP_SERVICE = "runstop"  # std_srvs/srv/SetBool
TRIGGER_SERVICES = (*MODE_SERVICES.values(), STOP_SERVICE, HOME_SERVICE, STOW_SERVICE)
SERVICES = (*TRIGGER_SERVICES, RUNSTOP_SERVICE)

# --- gripper conversion (hello_helpers.gripper_conversion.GripperConversion defaults) ----------
#: Finger joint to fingertip distance: 90 % of 0.19011 m (stretch_gripper.xacro).
FINGER_LENGTH = 0.9 * 0.19011
#: Aperture per stretch_body gripper "pct" unit: 0.09 m open at 70 pct, 0 m at 0 pct.
APERTURE_PER_PCT = 0.09 / 70.0
#: stretch_body's nominal SE3 gripper calibration: ticks per pct and the pct range.
_GRIPPER_TICKS_PER_PCT = (3279 - 0) / 100.0  # (zero_t - range_t[0]) / 100
GRIPPER_PCT_RANGE = (-100.0, 9102 / _GRIPPER_TICKS_PER_PCT - 100.0)  # (-100, +177.6)


def aperture_to_finger(aperture: float) -> float:
    """Finger joint angle (rad, each finger) for a fingertip-to-fingertip aperture (m)."""
    return aperture / (2.0 * FINGER_LENGTH)


def finger_to_aperture(finger: float) -> float:
    """Fingertip-to-fingertip aperture (m) for a finger joint angle (rad)."""
    return 2.0 * finger * FINGER_LENGTH


def pct_to_finger(pct: float) -> float:
    """Finger joint angle (rad) for a stretch_body gripper position in "pct"."""
    return aperture_to_finger(pct * APERTURE_PER_PCT)


# --- limits --------------------------------------------------------------------------------------
#: URDF position limits (m or rad) of the SE3 + DW3 + SG3 description.
URDF_POSITION_LIMITS = {
    LIFT: (0.0, 1.1),
    **{name: (0.0, 0.13) for name in TELESCOPING_JOINTS},
    WRIST_YAW: (-1.75, 4.0),
    WRIST_PITCH: (-1.57, 0.56),
    WRIST_ROLL: (-3.14, 3.14),
    HEAD_PAN: (-3.9, 1.5),
    HEAD_TILT: (-1.53, 0.79),
}
FINGER_RANGE = (pct_to_finger(GRIPPER_PCT_RANGE[0]), pct_to_finger(GRIPPER_PCT_RANGE[1]))
#: The whole arm's extension range: stretch_body SE3 ``arm.range_m`` (= 4 x the URDF's 0.13 m).
ARM_RANGE = (0.0, 0.52)
APERTURE_RANGE = (finger_to_aperture(FINGER_RANGE[0]), finger_to_aperture(FINGER_RANGE[1]))
#: Gripper servo ``max`` profile, 20 rad/s and 20 rad/s^2 of the Dynamixel, in finger rad/s:
#: 4096/(2 pi) ticks per rad / ticks per pct * aperture per pct / (2 * finger length).
_FINGER_PER_MOTOR_RAD = (4096 / (2 * math.pi) / _GRIPPER_TICKS_PER_PCT
                         * APERTURE_PER_PCT / (2 * FINGER_LENGTH))
#: (velocity, acceleration) per joint, from stretch_body (see the module docstring).
_MOTION = {
    LIFT: (0.15, 0.3),  # lift max 0.15 m/s, 0.3 m/s^2 (= trajectory_max)
    # arm max 0.4 m/s, 0.4 m/s^2 for the whole extension; a quarter per telescoping link
    **{name: (0.4 / 4, 0.4 / 4) for name in TELESCOPING_JOINTS},
    WRIST_YAW: (3.0, 3.0),  # max 6 rad/s, 10 rad/s^2; trajectory_max 3, 3
    WRIST_PITCH: (3.0, 10.0),  # max 3 rad/s, 10 rad/s^2 (trajectory_max 8, 16)
    WRIST_ROLL: (4.5, 12.0),  # max 4.5 rad/s, 12 rad/s^2 (trajectory_max 8, 16)
    FINGER_LEFT: (20 * _FINGER_PER_MOTOR_RAD, 20 * _FINGER_PER_MOTOR_RAD),  # ~1.5 rad/s
    FINGER_RIGHT: (20 * _FINGER_PER_MOTOR_RAD, 20 * _FINGER_PER_MOTOR_RAD),
    HEAD_PAN: (7.0, 14.0),  # max 7 rad/s, 14 rad/s^2 (trajectory_max 8, 16)
    HEAD_TILT: (7.0, 14.0),
}
JOINT_LIMITS = JointLimits.of(
    JointLimit(name, *(FINGER_RANGE if name in FINGER_JOINTS else URDF_POSITION_LIMITS[name]),
               *_MOTION[name])
    for name in JOINTS
)
#: Mobile base: stretch_body SE3 base ``max`` profile 0.3 m/s, 0.3 m/s^2 per wheel; turning in
#: place at that wheel speed with the 0.3153 m wheel separation gives 2 * 0.3 / 0.3153 rad/s.
BASE_MAX_SPEED = 0.3
BASE_MAX_ACCELERATION = 0.3
WHEEL_SEPARATION = 0.3153
BASE_MAX_TURN_RATE = 2 * BASE_MAX_SPEED / WHEEL_SEPARATION
#: stretch_driver's goal tolerances for the incremental base motions.
BASE_TRANSLATE_TOLERANCE = 0.005
BASE_ROTATE_TOLERANCE = math.radians(6.0)


# --- expanding a stretch_driver command into per-joint targets --------------------------------
class CommandError(ValueError):
    """A goal stretch_driver would refuse (INVALID_JOINTS or INVALID_GOAL), with its reason."""


@dataclasses.dataclass(frozen=True)
class StretchCommand:
    """One trajectory point in per-joint terms.

    ``joints`` holds absolute targets of entries of ``JOINTS`` (every telescoping link and both
    fingers when the arm or gripper is commanded); ``translate`` (m, along the base's heading) and
    ``rotate`` (rad, counter-clockwise) are motions relative to where the base is when the goal
    starts, or None when not commanded.
    """

    joints: Mapping[str, float]
    translate: float | None = None
    rotate: float | None = None

    @property
    def moves_base(self) -> bool:
        """True when the point asks for a base translation or rotation."""
        return self.translate is not None or self.rotate is not None


def _bound(name: str, value: float, bounds: tuple[float, float], fail: bool,
           tolerance: float = 1e-3) -> float:
    """Clip into range, or refuse when ``fail`` and out by more than ``tolerance``.

    The behaviour of hello_helpers' ``hello_misc.bound_ros_command``.
    """
    lower, upper = bounds
    if lower <= value <= upper:
        return value
    if fail and not (lower - tolerance <= value <= upper + tolerance):
        raise CommandError(f"{name} goal {value} is out of bounds; range = [{lower}, {upper}]")
    return min(max(value, lower), upper)


def expand_command(names: Sequence[str], positions: Sequence[float], *,
                   mode: str = POSITION_MODE, fail_out_of_range: bool = False,
                   limits: JointLimits = JOINT_LIMITS) -> StretchCommand:
    """Per-joint targets for one goal point given in stretch_driver's joint names.

    Follows stretch_core's command groups: ``joint_arm``/``wrist_extension`` (exclusive with each
    other and with the telescoping links) is split equally over the four links, the four links
    given together are summed and split the same way; ``gripper_aperture`` or either finger name
    (only one of the three) sets both fingers; ``translate_mobile_base``/``rotate_mobile_base``
    are relative, exclusive, only accepted in position mode, and a zero is no motion. Targets are
    clipped into range, or refused when ``fail_out_of_range`` (stretch_driver's
    ``fail_out_of_range_goal``). Raises ``CommandError`` for what stretch_driver rejects.
    """
    names = list(names)
    if len(positions) < len(names):
        raise CommandError(f"goal point has {len(positions)} positions for {len(names)} joints")
    if len(set(names)) != len(names):
        raise CommandError(f"duplicate joint names in {names}")
    if RETIRED_BASE_JOINT in names:
        raise CommandError(f"{RETIRED_BASE_JOINT} is no longer accepted")
    unknown = [n for n in names if n not in COMMAND_NAMES]
    if unknown:
        raise CommandError(f"unknown joints {unknown}; stretch_driver accepts {COMMAND_NAMES}")
    try:
        goal = {name: float(positions[i]) for i, name in enumerate(names)}
    except (TypeError, ValueError) as error:
        raise CommandError(f"goal positions must be numbers: {error}") from None
    bad = [n for n, v in goal.items() if not math.isfinite(v)]
    if bad:
        raise CommandError(f"non-finite goal positions for {bad}")

    targets: dict[str, float] = {}
    for name in (LIFT, *WRIST_JOINTS, *HEAD_JOINTS):
        if name in goal:
            limit = limits[name]
            targets[name] = _bound(name, goal[name], (limit.lower, limit.upper), fail_out_of_range)

    # the arm: one motor behind four links
    whole = [n for n in (ARM, WRIST_EXTENSION) if n in goal]
    links = [n for n in TELESCOPING_JOINTS if n in goal]
    if len(whole) > 1:
        raise CommandError("joint_arm and wrist_extension are mutually exclusive")
    if whole and links:
        raise CommandError(f"{whole[0]} and the telescoping joints are mutually exclusive")
    if links and len(links) != len(TELESCOPING_JOINTS):
        raise CommandError(f"telescoping joints need all of {TELESCOPING_JOINTS}, got {links}")
    if whole or links:
        label = whole[0] if whole else "telescoping joints"
        extension = goal[whole[0]] if whole else sum(goal[n] for n in TELESCOPING_JOINTS)
        extension = _bound(label, extension, ARM_RANGE, fail_out_of_range)
        link_limits = [limits[n] for n in TELESCOPING_JOINTS]
        for name, link in zip(TELESCOPING_JOINTS, link_limits, strict=True):
            targets[name] = min(max(extension / len(TELESCOPING_JOINTS), link.lower), link.upper)

    # the gripper: one motor behind two fingers
    gripper = [n for n in (FINGER_LEFT, FINGER_RIGHT, GRIPPER_APERTURE) if n in goal]
    if len(gripper) > 1:
        raise CommandError(f"only one of {FINGER_LEFT}, {FINGER_RIGHT}, {GRIPPER_APERTURE} "
                           f"may be commanded, got {gripper}")
    if gripper:
        name = gripper[0]
        finger_range = (max(limits[n].lower for n in FINGER_JOINTS),
                        min(limits[n].upper for n in FINGER_JOINTS))
        if name == GRIPPER_APERTURE:
            aperture_range = tuple(finger_to_aperture(v) for v in finger_range)
            finger = aperture_to_finger(_bound(name, goal[name], aperture_range,
                                               fail_out_of_range))
        else:
            finger = _bound(name, goal[name], finger_range, fail_out_of_range)
        targets.update(dict.fromkeys(FINGER_JOINTS, finger))

    # the base: incremental, position mode only
    base = [n for n in BASE_COMMANDS if n in goal]
    translate = rotate = None
    if base:
        if mode != POSITION_MODE:
            raise CommandError(f"{base} need position mode; current mode = {mode}")
        if len(base) > 1:
            raise CommandError(f"{TRANSLATE_BASE} and {ROTATE_BASE} are mutually exclusive")
        value = goal[base[0]]
        if not math.isclose(value, 0.0, rel_tol=1e-5, abs_tol=1e-8):
            if base[0] == TRANSLATE_BASE:
                translate = value
            else:
                rotate = value
    return StretchCommand(targets, translate, rotate)


def base_goal(x: float, y: float, yaw: float, translate: float | None = None,
              rotate: float | None = None) -> tuple[float, float, float]:
    """Planar base pose (odom x, y, yaw) after a relative translate/rotate from (x, y, yaw)."""
    if translate is not None:
        x, y = x + translate * math.cos(yaw), y + translate * math.sin(yaw)
    if rotate is not None:
        yaw = yaw + rotate
    return x, y, yaw


def joint_state(positions: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Names and positions as stretch_driver publishes them, from per-joint positions.

    ``positions`` maps every entry of ``JOINTS``; the arm is reported as the total extension
    (``wrist_extension``) and each link as a quarter of it, both fingers as their mean, as the
    real driver, which sees one motor for each, does.
    """
    extension = sum(positions[n] for n in TELESCOPING_JOINTS)
    finger = (positions[FINGER_LEFT] + positions[FINGER_RIGHT]) / 2.0
    values = {
        WRIST_EXTENSION: extension,
        **dict.fromkeys(TELESCOPING_JOINTS, extension / len(TELESCOPING_JOINTS)),
        **dict.fromkeys(FINGER_JOINTS, finger),
    }
    return JOINT_STATE_NAMES, tuple(float(values[n] if n in values else positions[n])
                                    for n in JOINT_STATE_NAMES)


# --- named poses ---------------------------------------------------------------------------------
def _pose(lift: float, arm: float, yaw: float, pitch: float, roll: float, gripper_pct: float,
          pan: float, tilt: float) -> dict[str, float]:
    names = (LIFT, ARM, WRIST_YAW, WRIST_PITCH, WRIST_ROLL, FINGER_LEFT, HEAD_PAN, HEAD_TILT)
    values = (lift, arm, yaw, pitch, roll, pct_to_finger(gripper_pct), pan, tilt)
    return dict(expand_command(names, values, fail_out_of_range=True).joints)


#: ``stow_the_robot``: stretch_body's SE3 ``eoa_wrist_dw3_tool_sg3`` stow (lift 0.3, arm 0,
#: yaw 3.0, pitch -0.52, roll 0, gripper 0 pct) with the robot-level head stow (pan 0, tilt 0).
STOW = _pose(0.3, 0.0, 3.0, -0.52, 0.0, 0.0, 0.0, 0.0)
#: Where ``home_the_robot`` leaves the joints (stretch_body's home-and-stow test: lift ~0.58,
#: arm 0.1, wrist and head at 0, gripper at 0 pct).
HOME = _pose(0.58, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


# --- kinematic description (robots.kinematics) -------------------------------------------------
#: The SE3 + DW3 + SG3 URDF: (Python package, resource path) of ``hello-robot-stretch-urdf``.
URDF_RESOURCE = ("stretch_urdf", "SE3/stretch_description_SE3_eoa_wrist_dw3_tool_sg3.urdf")
BASE_FRAME = "base_link"
#: The grasp point between the fingertip pads, in the gripper body's frame (the URDF's
#: link_grasp_center sits 15 mm further out, at the pads' tips).
GRASP_FRAME_PARENT = "link_gripper_s3_body"
GRASP_FRAME_OFFSET = (-0.0001, 0.0, 0.2168)
TCP_FRAME = "grasp_center"
#: The joints the executor drives with the base parked, as stretch_driver names them in a goal:
#: the telescoping arm is one ``joint_arm`` command (split over its four links by the driver).
ARM_COMMAND_JOINTS = (LIFT, ARM, WRIST_YAW, WRIST_PITCH, WRIST_ROLL)
#: Limits of those commands; the arm's are the whole extension's (stretch_body ``arm``).
ARM_COMMAND_LIMITS = JointLimits.of([
    JOINT_LIMITS[LIFT],
    JointLimit(ARM, *ARM_RANGE, 0.4, 0.4),
    JOINT_LIMITS[WRIST_YAW],
    JOINT_LIMITS[WRIST_PITCH],
    JOINT_LIMITS[WRIST_ROLL],
])
#: HOME as ARM_COMMAND_JOINTS values.
ARM_HOME = (HOME[LIFT], sum(HOME[n] for n in TELESCOPING_JOINTS), HOME[WRIST_YAW],
            HOME[WRIST_PITCH], HOME[WRIST_ROLL])
#: What the gripper opens to for a grasp (stretch_body's 100 "pct" open position) and the
#: aperture it is driven to for a squeeze (the fingers stall on what they hold).
GRIPPER_OPEN_APERTURE = 100.0 * APERTURE_PER_PCT
GRIPPER_SQUEEZE_APERTURE = -0.05


def gripper_width(positions: Mapping[str, float]) -> float | None:
    """Fingertip aperture (m) from joint_states positions by name.

    stretch_driver reports both finger joints with the one motor's angle; the mean of those
    present is converted as the driver converts it (:func:`finger_to_aperture`). None until a
    finger joint has been seen.
    """
    fingers = [positions[name] for name in FINGER_JOINTS if name in positions]
    return None if not fingers else finger_to_aperture(sum(fingers) / len(fingers))


def stall_grasp_failure(aperture: float, object_width: float, epsilon: float) -> str | None:
    """Why a squeeze grasp failed, or None when it holds the object.

    The gripper is driven to GRIPPER_SQUEEZE_APERTURE and stalls on what it holds, so a grasp
    succeeded when the aperture it stopped at is within ``epsilon`` of the object's width.
    """
    if abs(aperture - object_width) <= epsilon:
        return None
    return (f"grasp failed: aperture {aperture:.4f} m outside {object_width:.4f} "
            f"+- {epsilon:.4f} m")
