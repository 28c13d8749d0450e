"""FailureDiagnosis message <-> core Diagnosis."""

from __future__ import annotations

from builtin_interfaces.msg import Time

from failrecov_ros.core.schema import (
    Correction,
    CorrectionKind,
    Diagnosis,
    GripperCommand,
    validate,
)
from failrecov_ros.msg import Correction as CorrectionMsg
from failrecov_ros.msg import CorrectionDirective, FailureDiagnosis

_KIND_TO_MSG = {
    CorrectionKind.NONE: CorrectionMsg.KIND_NONE,
    CorrectionKind.EE_DELTA: CorrectionMsg.KIND_EE_DELTA,
    CorrectionKind.DIRECTIVE: CorrectionMsg.KIND_DIRECTIVE,
    CorrectionKind.REPLAN: CorrectionMsg.KIND_REPLAN,
    CorrectionKind.NEEDS_HELP: CorrectionMsg.KIND_NEEDS_HELP,
}
_KIND_FROM_MSG = {v: k for k, v in _KIND_TO_MSG.items()}
_GRIPPER_TO_MSG = {
    GripperCommand.NONE: CorrectionDirective.GRIPPER_NONE,
    GripperCommand.CLOSE: CorrectionDirective.GRIPPER_CLOSE,
    GripperCommand.OPEN: CorrectionDirective.GRIPPER_OPEN,
}
_GRIPPER_FROM_MSG = {v: k for k, v in _GRIPPER_TO_MSG.items()}


def ns_to_time(stamp_ns: int) -> Time:
    """Nanoseconds since the epoch to builtin_interfaces/Time."""
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def time_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time to nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def diagnosis_to_msg(diagnosis: Diagnosis) -> FailureDiagnosis:
    """Build the message; the header stamp is the analysed window's last frame.

    The diagnosis is validated first (SchemaError otherwise), so every field fits its message
    type: rclpy would otherwise wrap out-of-range integers silently on some distros.
    """
    validate(diagnosis.to_dict(), record=True)
    msg = FailureDiagnosis()
    msg.header.stamp = ns_to_time(diagnosis.stamp_ns)
    msg.header.frame_id = diagnosis.frame_id
    msg.window_start = ns_to_time(diagnosis.window_start_ns)
    msg.window_frames = diagnosis.window_frames
    msg.episode_id = diagnosis.episode_id
    msg.task = diagnosis.task
    msg.instruction = diagnosis.instruction
    msg.skill = diagnosis.skill
    msg.stage = diagnosis.stage
    msg.failed = diagnosis.failed
    msg.failure_type = diagnosis.failure_type.value
    msg.confidence = float(diagnosis.confidence)
    msg.summary = diagnosis.summary
    msg.correction = correction_to_msg(diagnosis.correction)
    msg.model_name = diagnosis.model_name
    msg.latency_s = float(diagnosis.latency_s)
    msg.raw_output = diagnosis.raw_output
    msg.error = diagnosis.error
    return msg


def correction_to_msg(correction: Correction) -> CorrectionMsg:
    """Core correction to its message."""
    msg = CorrectionMsg()
    msg.kind = _KIND_TO_MSG[correction.kind]
    msg.has_ee_delta = correction.ee_delta is not None
    if correction.ee_delta is not None:
        msg.ee_delta = [float(v) for v in correction.ee_delta]
        msg.ee_frame = correction.ee_frame
    msg.has_directive = correction.directive is not None
    if correction.directive is not None:
        d = correction.directive
        msg.directive = CorrectionDirective(
            dir_x=d.dir_x, bins_x=d.bins_x, dir_y=d.dir_y, bins_y=d.bins_y, dir_z=d.dir_z,
            bins_z=d.bins_z, gripper_command=_GRIPPER_TO_MSG[d.gripper], keyframe=d.keyframe)
    else:
        msg.directive.keyframe = -1
    return msg


def msg_to_diagnosis(msg: FailureDiagnosis) -> Diagnosis:
    """Message to a validated Diagnosis; raises SchemaError if the message breaks the schema."""
    c = msg.correction
    correction: dict = {"kind": _KIND_FROM_MSG.get(c.kind, f"<invalid kind {c.kind}>")}
    if isinstance(correction["kind"], CorrectionKind):
        correction["kind"] = correction["kind"].value
    if c.has_ee_delta:
        correction["ee_delta"] = [float(v) for v in c.ee_delta]
        correction["ee_frame"] = c.ee_frame
    if c.has_directive:
        d = c.directive
        gripper = _GRIPPER_FROM_MSG.get(d.gripper_command)
        correction["directive"] = {
            "dir_x": d.dir_x, "bins_x": d.bins_x, "dir_y": d.dir_y, "bins_y": d.bins_y,
            "dir_z": d.dir_z, "bins_z": d.bins_z, "keyframe": d.keyframe,
            "gripper": gripper.value if gripper else f"<invalid {d.gripper_command}>"}
    record = {
        "failed": msg.failed, "failure_type": msg.failure_type, "stage": msg.stage,
        "confidence": float(msg.confidence), "summary": msg.summary, "correction": correction,
        "episode_id": msg.episode_id, "task": msg.task, "instruction": msg.instruction,
        "skill": msg.skill, "stamp_ns": time_to_ns(msg.header.stamp),
        "window_start_ns": time_to_ns(msg.window_start), "window_frames": msg.window_frames,
        "frame_id": msg.header.frame_id, "model_name": msg.model_name,
        "latency_s": float(msg.latency_s), "raw_output": msg.raw_output, "error": msg.error,
    }
    return validate(record, record=True)



def duration_to_s(duration) -> float:
    """builtin_interfaces/Duration to seconds."""
    return float(duration.sec) + float(duration.nanosec) * 1e-9


def s_to_duration(seconds: float):
    """Seconds to builtin_interfaces/Duration (negative durations keep a non-negative nanosec)."""
    from builtin_interfaces.msg import Duration

    total = int(round(seconds * 1e9))
    return Duration(sec=total // 1_000_000_000, nanosec=total % 1_000_000_000)


def trajectory_goal_from_msg(goal):
    """control_msgs FollowJointTrajectory goal to the core TrajectoryGoal.

    Values pass through unchecked (NaN included): validation is the controller's job, so it
    can answer with the right result code and a message.
    """
    from failrecov_ros.core.trajectory import (
        JointTrajectory,
        Tolerance,
        TrajectoryGoal,
        TrajectoryPoint,
    )

    points = tuple(
        TrajectoryPoint(duration_to_s(p.time_from_start), tuple(p.positions),
                        tuple(p.velocities), tuple(p.accelerations))
        for p in goal.trajectory.points)

    def tolerances(items):
        return {t.name: Tolerance(t.position, t.velocity, t.acceleration) for t in items}

    return TrajectoryGoal(
        JointTrajectory(tuple(goal.trajectory.joint_names), points),
        tolerances(goal.path_tolerance), tolerances(goal.goal_tolerance),
        duration_to_s(goal.goal_time_tolerance))


def joint_trajectory_msg(joint_names, points):
    """trajectory_msgs/JointTrajectory from (time_s, positions[, velocities]) tuples."""
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory(joint_names=list(joint_names))
    for point in points:
        time_s, positions, *rest = point
        msg.points.append(JointTrajectoryPoint(
            positions=[float(v) for v in positions],
            velocities=[float(v) for v in (rest[0] if rest else ())],
            time_from_start=s_to_duration(time_s)))
    return msg


def pose_from_msg(pose):
    """geometry_msgs/Pose to the skills' Pose (TaskError if it is not finite or zero-rotation)."""
    from failrecov_ros.skills.library import Pose

    p, o = pose.position, pose.orientation
    return Pose((p.x, p.y, p.z), (o.w, o.x, o.y, o.z))


def skill_from_msg(msg, base_frame: str):
    """failrecov_ros/msg/SkillSpec to the skills' SkillSpec (TaskError says what is wrong)."""
    from failrecov_ros.skills.library import SkillSpec, TaskError

    pose = None
    if msg.has_pose:
        frame = msg.pose.header.frame_id
        if frame not in ("", base_frame):
            raise TaskError(f"{msg.name}: pose frame {frame!r} is not the robot base frame "
                            f"{base_frame!r} (no TF here: give poses in the base frame)")
        pose = pose_from_msg(msg.pose.pose)
    params = {kv.key: kv.value for kv in msg.params}
    return SkillSpec(msg.name, msg.target, tuple(msg.joint_positions), pose, params)


def status_to_msg(status, robot: str):
    """The runner's Status to the latched failrecov_ros/msg/SkillStatus."""
    from failrecov_ros.msg import SkillStatus

    msg = SkillStatus()
    msg.header.stamp = ns_to_time(status.stamp_ns)
    msg.episode_id, msg.task, msg.instruction = status.episode_id, status.task, status.instruction
    msg.robot, msg.state = robot, int(status.state)
    msg.skill, msg.skill_index = status.skill, status.skill_index
    msg.skill_count, msg.stage = status.skill_count, status.stage
    msg.step, msg.event = status.step, status.event
    msg.event_stamp = ns_to_time(status.event_stamp_ns)
    msg.event_step, msg.message = status.event_step, status.message
    return msg


def feedback_to_msg(feedback):
    """The runner's Feedback to ExecuteTask feedback."""
    from failrecov_ros.action import ExecuteTask

    return ExecuteTask.Feedback(skill=feedback.skill, skill_index=feedback.skill_index,
                                skill_count=feedback.skill_count, stage=feedback.stage,
                                progress=float(feedback.progress),
                                recovering=feedback.recovering)


def task_result_to_msg(result):
    """The runner's TaskResult to the ExecuteTask result."""
    from failrecov_ros.action import ExecuteTask

    return ExecuteTask.Result(
        error_code=int(result.code), error_string=result.message,
        skills_completed=result.skills_completed,
        recoveries_attempted=result.recoveries_attempted,
        recoveries_succeeded=result.recoveries_succeeded,
        duration=s_to_duration(result.duration_s))
