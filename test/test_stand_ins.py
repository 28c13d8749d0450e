"""Interface stand-ins (control_msgs, franka_msgs, tf2_msgs): upstream fields, no shadowing.

The types our code uses must match upstream field for field, and the stand-ins must refuse to
build where a real package exists.

The expected definitions are transcribed from upstream (ros-controls/control_msgs humble/jazzy,
frankaemika/franka_ros2, ros2/geometry2); this test passes against the real packages on a
workstation too.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "control_msgs.action.FollowJointTrajectory.Goal": {
        "trajectory": "trajectory_msgs/JointTrajectory",
        "multi_dof_trajectory": "trajectory_msgs/MultiDOFJointTrajectory",
        "path_tolerance": "sequence<control_msgs/JointTolerance>",
        "component_path_tolerance": "sequence<control_msgs/JointComponentTolerance>",
        "goal_tolerance": "sequence<control_msgs/JointTolerance>",
        "component_goal_tolerance": "sequence<control_msgs/JointComponentTolerance>",
        "goal_time_tolerance": "builtin_interfaces/Duration"},
    "control_msgs.action.FollowJointTrajectory.Result": {
        "error_code": "int32", "error_string": "string"},
    "control_msgs.action.FollowJointTrajectory.Feedback": {
        "header": "std_msgs/Header", "joint_names": "sequence<string>",
        "desired": "trajectory_msgs/JointTrajectoryPoint",
        "actual": "trajectory_msgs/JointTrajectoryPoint",
        "error": "trajectory_msgs/JointTrajectoryPoint",
        "multi_dof_joint_names": "sequence<string>",
        "multi_dof_desired": "trajectory_msgs/MultiDOFJointTrajectoryPoint",
        "multi_dof_actual": "trajectory_msgs/MultiDOFJointTrajectoryPoint",
        "multi_dof_error": "trajectory_msgs/MultiDOFJointTrajectoryPoint"},
    "control_msgs.msg.JointTolerance": {
        "name": "string", "position": "double", "velocity": "double", "acceleration": "double"},
    "control_msgs.msg.JointComponentTolerance": {
        "joint_name": "string", "component": "uint16", "position": "double",
        "velocity": "double", "acceleration": "double"},
    "control_msgs.msg.GripperCommand": {"position": "double", "max_effort": "double"},
    "control_msgs.action.GripperCommand.Goal": {"command": "control_msgs/GripperCommand"},
    "control_msgs.action.GripperCommand.Result": {
        "position": "double", "effort": "double", "stalled": "boolean", "reached_goal": "boolean"},
    "control_msgs.action.GripperCommand.Feedback": {
        "position": "double", "effort": "double", "stalled": "boolean", "reached_goal": "boolean"},
    "franka_msgs.msg.GraspEpsilon": {"inner": "double", "outer": "double"},
    "franka_msgs.action.Grasp.Goal": {
        "width": "double", "epsilon": "franka_msgs/GraspEpsilon", "speed": "double",
        "force": "double"},
    "franka_msgs.action.Grasp.Result": {"success": "boolean", "error": "string"},
    "franka_msgs.action.Move.Goal": {"width": "double", "speed": "double"},
    "franka_msgs.action.Move.Result": {"success": "boolean", "error": "string"},
    "franka_msgs.action.Homing.Goal": {},
    "franka_msgs.action.Homing.Result": {"success": "boolean", "error": "string"},
    "franka_msgs.action.ErrorRecovery.Goal": {},
    "tf2_msgs.msg.TFMessage": {"transforms": "sequence<geometry_msgs/TransformStamped>"},
}
CONSTANTS = {
    "control_msgs.action.FollowJointTrajectory.Result": {
        "SUCCESSFUL": 0, "INVALID_GOAL": -1, "INVALID_JOINTS": -2, "OLD_HEADER_TIMESTAMP": -3,
        "PATH_TOLERANCE_VIOLATED": -4, "GOAL_TOLERANCE_VIOLATED": -5},
    "control_msgs.msg.JointComponentTolerance": {
        "X_AXIS": 1, "Y_AXIS": 2, "Z_AXIS": 3, "TRANSLATION": 4, "ROTATION": 5},
}




def _type(dotted):
    package, kind, name, *inner = dotted.split(".")
    import importlib

    obj = getattr(importlib.import_module(f"{package}.{kind}"), name)
    for part in inner:
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("dotted", sorted(EXPECTED))
def test_fields_match_upstream(dotted):
    assert _type(dotted).get_fields_and_field_types() == EXPECTED[dotted]


@pytest.mark.parametrize("dotted", sorted(CONSTANTS))
def test_constants_match_upstream(dotted):
    cls = _type(dotted)
    assert {name: getattr(cls, name) for name in CONSTANTS[dotted]} == CONSTANTS[dotted]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
@pytest.mark.parametrize("package", ["control_msgs", "franka_msgs", "tf2_msgs"])
def test_stand_in_refuses_to_shadow_a_real_package(tmp_path, package):
    real = tmp_path / "prefix" / "share" / package
    real.mkdir(parents=True)
    (real / "package.xml").write_text(f"<package><name>{package}</name></package>")
    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = f"{tmp_path / 'prefix'}:{env.get('AMENT_PREFIX_PATH', '')}"
    result = subprocess.run(
        ["cmake", "-S", str(ROOT / "stand_ins" / package), "-B", str(tmp_path / "build")],
        env=env, capture_output=True, text=True)
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # CMake wraps long messages
    assert f"A real {package} is installed at {tmp_path / 'prefix'}" in output
