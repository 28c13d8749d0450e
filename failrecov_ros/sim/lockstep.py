"""The skill executor's task runner driving the simulated FR3 in lockstep, in one process.

The runtime loop is simulator node + skill executor + monitor over DDS; its timing (pauses
between skills, waits for fresh object poses, gripper commands, IK-planned postures) is what
the monitor's model must understand. Here the same pieces run without ROS: ``TaskRunner.run``
with ``now_ns`` = simulated time and ``sleep(dt)`` = advance the physics by ``dt`` in control
ticks as ``nodes/mujoco_sim.py`` does (controllers updated every physics step, joint states
every tick at 100 Hz, object poses and camera frames at 10 Hz of simulated time), through
:class:`LockstepBackend`, which gives the runner the semantics of ``ros.backends.Fr3Backend``
against the simulator node's action servers. Nothing depends on the wall clock or on thread
timing, so an episode is a pure function of (task, seed, variation, faults, configuration).

Frames are kept as physics states and rendered on demand (:meth:`Recording.frame`): collecting
data only pays for the frames that end up in a window.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco loads: headless rendering

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from failrecov_ros.core.schema import Diagnosis  # noqa: E402
from failrecov_ros.core.trajectory import (  # noqa: E402
    JointTrajectory,
    Tolerance,
    TrajectoryGoal,
    TrajectoryPoint,
    Verdict,
)
from failrecov_ros.core.trajectory import ResultCode as TrajectoryCode  # noqa: E402
from failrecov_ros.robots import fr3  # noqa: E402
from failrecov_ros.robots.kinematics import Kinematics, make_kinematics  # noqa: E402
from failrecov_ros.sim.camera import RgbdCamera  # noqa: E402
from failrecov_ros.sim.controllers import (  # noqa: E402
    GripperController,
    GripperResult,
    TrajectoryController,
    TrajectoryDefaults,
)
from failrecov_ros.sim.controllers import InjectedFaults as Faults  # noqa: E402
from failrecov_ros.sim.scene import SimState, Simulation  # noqa: E402
from failrecov_ros.sim.tasks import TARGET, Task, make_task  # noqa: E402
from failrecov_ros.skills.library import Pose, TaskSpec, load_task_library  # noqa: E402
from failrecov_ros.skills.motion import JointPath  # noqa: E402
from failrecov_ros.skills.objects import ObjectPoseError  # noqa: E402
from failrecov_ros.skills.runner import (  # noqa: E402
    SUCCEEDED,
    GripperGoal,
    MotionStatus,
    Outcome,
    Request,
    Status,
    TaskResult,
    TaskRunner,
)
from failrecov_ros.skills.settings import (  # noqa: E402
    ExecutorSettings,
    executor_settings,
    parameter_defaults,
)
from failrecov_ros.skills.steps import GRASP, OPEN  # noqa: E402

NS = 1_000_000_000
NO_FAULTS = Faults()


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The simulator node's loop parameters (``config/mujoco_sim.yaml``) that shape the data."""

    control_period: float = 0.01
    joint_state_rate: float = 100.0
    object_pose_rate: float = 10.0
    camera_fps: float = 10.0
    camera_width: int = 640
    camera_height: int = 480
    trajectory: TrajectoryDefaults = TrajectoryDefaults()
    settle_s: float = 0.1  # physics before the task starts (the node runs before a goal comes)

    def __post_init__(self) -> None:
        for name in ("control_period", "joint_state_rate", "object_pose_rate", "camera_fps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")


class _Command:
    """A command in flight (the runner's ``Motion``), finished by the physics tick."""

    def __init__(self) -> None:
        self._outcome: Outcome | None = None

    def done(self) -> bool:
        """True once the command has ended."""
        return self._outcome is not None

    def outcome(self) -> Outcome:
        """How it ended (valid once done)."""
        return self._outcome

    def finish(self, outcome: Outcome) -> None:
        if self._outcome is None:
            self._outcome = outcome


def _trajectory_outcome(action: str, verdict: Verdict) -> Outcome:
    """``ros.backends.trajectory_outcome`` for a verdict the simulator node would send back."""
    if verdict.ok:
        return SUCCEEDED
    code = int(verdict.code)
    kind = MotionStatus.REJECTED if code in (-1, -2, -3) else MotionStatus.ABORTED
    return Outcome(kind, f"{action}: {TrajectoryCode(code).name}: {verdict.message}".rstrip(": "),
                   code)


class LockstepBackend:
    """``RobotBackend`` on in-process controllers: what Fr3Backend + the simulator node do.

    Goals start at once (no DDS latency); joint positions and gripper width are those of the
    latest published joint state, as the executor's subscription would have them. A new arm or
    gripper goal preempts the running one, which ends ABORTED ("preempted by a new goal"), a
    stop cancels (CANCELED, the arm holds where it is), an invalid goal is answered with the
    controller's result code (REJECTED / ABORTED), exactly as over ROS.
    """

    robot = "fr3"
    joint_names = fr3.ARM_JOINTS

    def __init__(self, sim: Simulation, arm: TrajectoryController, gripper: GripperController,
                 settings: ExecutorSettings) -> None:
        self.sim, self.arm_controller, self.gripper_controller = sim, arm, gripper
        self.action = settings.backend.trajectory_action
        self.goal_time_tolerance = settings.controllers.goal_time_tolerance
        self.path_tolerance = settings.backend.path_tolerance
        self.gripper_speed = settings.backend.gripper_speed
        self._positions: dict[str, float] = {}
        self._arm: _Command | None = None
        self._gripper: _Command | None = None

    # --- what the physics loop calls ----------------------------------------------------------
    def publish_joint_state(self, names, positions) -> None:
        """A joint_states message reached the executor."""
        self._positions.update(zip(names, (float(p) for p in positions), strict=True))

    def control_step(self) -> None:
        """The node's ``_control_step``: advance both controllers, finish what ended."""
        verdict = self.arm_controller.update()
        if verdict is not None and self._arm is not None:
            self._arm.finish(_trajectory_outcome(self.action, verdict))
            self._arm = None
        result = self.gripper_controller.update(self.sim.timestep)
        if result is not None and self._gripper is not None:
            self._gripper.finish(self._gripper_outcome(result))
            self._gripper = None

    # --- RobotBackend -------------------------------------------------------------------------
    def prepare(self, timeout: float) -> Outcome:
        """The controllers are in-process: always there."""
        return SUCCEEDED

    def joint_positions(self) -> np.ndarray | None:
        """Arm joints of the latest joint state (None before the first)."""
        values = [self._positions.get(n) for n in self.joint_names]
        return None if any(v is None for v in values) else np.array(values, dtype=float)

    def gripper_width(self) -> float | None:
        """Gripper width of the latest joint state (None before the first)."""
        return fr3.gripper_width(self._positions)

    def follow(self, path: JointPath) -> _Command:
        """Start ``path`` on the trajectory controller (JTC semantics: preempts a running goal)."""
        command = _Command()
        path_tol = ({n: Tolerance(position=self.path_tolerance) for n in path.joint_names}
                    if self.path_tolerance > 0 else {})
        points = tuple(TrajectoryPoint(float(t), tuple(float(v) for v in q))
                       for t, q in zip(path.times, path.positions, strict=True))
        goal = TrajectoryGoal(JointTrajectory(tuple(path.joint_names), points), path_tol, {},
                              self.goal_time_tolerance)
        verdict = self.arm_controller.start(goal)
        if not verdict.ok:
            command.finish(_trajectory_outcome(self.action, verdict))
            return command
        if self._arm is not None:
            self._arm.finish(Outcome(MotionStatus.ABORTED, f"{self.action}: preempted by a new "
                                                           "goal"))
        self._arm = command
        return command

    def gripper(self, goal: GripperGoal) -> _Command:
        """Move (open to a width) or Grasp (an object of a width; close = any width)."""
        command = _Command()
        if goal.kind == OPEN:
            error = self.gripper_controller.move(goal.command_width, self.gripper_speed)
        else:
            inner = goal.epsilon if goal.kind == GRASP else 0.005
            outer = goal.epsilon if goal.kind == GRASP else math.inf
            error = self.gripper_controller.grasp(goal.command_width, self.gripper_speed,
                                                  goal.force, inner, outer)
        if error:
            command.finish(Outcome(MotionStatus.ABORTED, error, width=self._width()))
            return command
        if self._gripper is not None:
            self._gripper.finish(Outcome(MotionStatus.ABORTED, "preempted by a new command",
                                         width=self._width()))
        self._gripper = command
        return command

    def stop(self) -> Outcome:
        """Cancel whatever runs: the arm holds where it is, the fingers where they are."""
        if self._arm is not None:
            self.arm_controller.hold()
            self._arm.finish(Outcome(MotionStatus.CANCELED, "canceled by the client; holding "
                                                            "position"))
            self._arm = None
        if self._gripper is not None:
            self.gripper_controller.stop()
            self._gripper.finish(Outcome(MotionStatus.CANCELED, "canceled", width=self._width()))
            self._gripper = None
        return SUCCEEDED

    def recover(self) -> Outcome:
        """Franka's error recovery as the node serves it: hold, end the arm goal."""
        self.arm_controller.hold()
        if self._arm is not None:
            self._arm.finish(Outcome(MotionStatus.ABORTED, f"{self.action}: preempted by a new "
                                                           "goal"))
            self._arm = None
        return SUCCEEDED

    def _width(self) -> float:
        width = self.gripper_width()
        return math.nan if width is None else width

    def _gripper_outcome(self, result: GripperResult) -> Outcome:
        if result.success:
            return Outcome(MotionStatus.SUCCEEDED, width=self._width())
        return Outcome(MotionStatus.ABORTED, result.error or "gripper command failed",
                       width=self._width())


@dataclasses.dataclass(frozen=True)
class FrameRecord:
    """One camera frame: its stamp, the physics state to render it from, and ground truth."""

    stamp_ns: int
    state: SimState
    tcp: np.ndarray  # world position (3) + quaternion w x y z (4)
    target: np.ndarray  # target cube world position (3)
    gripper_width: float


@dataclasses.dataclass
class Recording:
    """What one lockstep episode produced, in the order a monitor would have received it.

    ``log`` holds ``("frame", index)``, ``("joints", stamp_ns, positions)`` (arm + fingers in
    ``JOINT_NAMES`` order) and ``("status", Status)`` entries in the order they happened.
    """

    task: Task
    spec: TaskSpec
    faults: Faults
    frames: list[FrameRecord]
    log: list[tuple]
    statuses: list[Status]
    result: TaskResult | None = None
    success_at_end: dict[str, Any] | None = None  # task predicate when the runner returned
    success_after_hold: dict[str, Any] | None = None
    end_ns: int = 0  # when the runner returned
    renderer: _LazyCamera | None = None

    def frame(self, index: int) -> np.ndarray:
        """RGB of frame ``index`` (rendered on demand from its physics state)."""
        if self.renderer is None:
            raise RuntimeError("this recording has no renderer")
        return self.renderer.render(index)

    def close(self) -> None:
        """Free the renderer (frames can no longer be rendered)."""
        if self.renderer is not None:
            self.renderer.close()


JOINT_NAMES = fr3.ARM_JOINTS + fr3.FINGER_JOINTS


class LockstepLoop:
    """The simulator node's physics loop for one task, advanced by the runner's ``sleep``."""

    def __init__(self, task: Task, faults: Faults, backend_settings: ExecutorSettings,
                 loop: LoopSettings = LoopSettings()) -> None:
        self.task, self.faults, self.loop = task, faults, loop
        scene = dataclasses.replace(task.scene, cameras=(dataclasses.replace(
            task.scene.cameras[0], width=loop.camera_width, height=loop.camera_height),))
        self.sim = Simulation(scene)
        self.arm = TrajectoryController(self.sim, fr3.ARM_LIMITS, loop.trajectory)
        self.gripper = GripperController(self.sim, fr3.MAX_GRIPPER_WIDTH, fr3.MAX_GRIPPER_SPEED,
                                         fr3.MAX_GRASP_FORCE)
        faults.apply_to(self.gripper)
        self.backend = LockstepBackend(self.sim, self.arm, self.gripper, backend_settings)
        self._steps_per_tick = max(1, round(loop.control_period / self.sim.timestep))
        self._tick = self._steps_per_tick * self.sim.timestep
        self._publish_every = max(1, round(1.0 / (loop.joint_state_rate * loop.control_period)))
        self._ticks = 0
        self._target_time = self.sim.time
        self._next_frame = self._next_pose = 0.0
        self._poses: dict[str, tuple[int, Pose]] = {}
        self.recording_frames = False
        self.frames: list[FrameRecord] = []
        self.log: list[tuple] = []
        self._tcp_site = self.sim.model.site(self.sim.binding.tcp_site).id

    # --- time ---------------------------------------------------------------------------------
    def now_ns(self) -> int:
        """Simulated time in ns (the executor's clock under use_sim_time)."""
        return int(round(self.sim.time * NS))

    def sleep(self, dt: float) -> None:
        """Advance the physics by ``dt`` in whole control ticks (time owed carries over)."""
        self._target_time += max(float(dt), 0.0)
        while self.sim.time + 0.5 * self._tick <= self._target_time:
            self._physics_tick()

    def _physics_tick(self) -> None:
        backend = self.backend
        for _ in range(self._steps_per_tick):
            backend.control_step()
            self.sim.step()
        if not self.sim.is_finite():
            raise RuntimeError(f"the simulation diverged at t = {self.sim.time:.3f} s")
        stamp = self.now_ns()
        if self._ticks % self._publish_every == 0:
            positions = np.concatenate([self.sim.arm_positions(), self.sim.finger_positions()])
            backend.publish_joint_state(JOINT_NAMES, positions)
            self.log.append(("joints", stamp, positions))
        self._ticks += 1
        sim_time = self.sim.time
        if sim_time + 1e-9 >= self._next_pose:
            self._publish_object_poses(stamp)
            self._next_pose += 1.0 / self.loop.object_pose_rate
        if self.recording_frames and sim_time + 1e-9 >= self._next_frame:
            self._capture(stamp)
            self._next_frame += 1.0 / self.loop.camera_fps
            if self._next_frame < sim_time:  # never queue up frames
                self._next_frame = sim_time + 1.0 / self.loop.camera_fps

    def start_camera(self) -> None:
        """Frames from now on, at ``camera_fps`` of simulated time."""
        self.recording_frames = True
        self._next_frame = self.sim.time

    def _capture(self, stamp: int) -> None:
        sim = self.sim
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, sim.data.site_xmat[self._tcp_site])
        tcp = np.concatenate([sim.data.site_xpos[self._tcp_site], quat])
        target, _ = sim.object_pose(TARGET)
        self.frames.append(FrameRecord(stamp, sim.save_state(), tcp, target,
                                       sim.gripper_width()))
        self.log.append(("frame", len(self.frames) - 1))

    # --- perception stand-in ------------------------------------------------------------------
    def _publish_object_poses(self, stamp: int) -> None:
        """``mujoco_sim._publish_object_poses``: poses in the base frame, the target offset."""
        (x, y, _) = self.sim.binding.base_position
        for spec in self.sim.config.objects:
            position, quat = self.sim.object_pose(spec.name)
            if spec.name == TARGET:
                position = position + np.asarray(self.faults.pose_offset)
            self._poses[spec.name] = (stamp, Pose((position[0] - x, position[1] - y,
                                                   position[2]), tuple(quat)))

    def object_pose(self, name: str, after_ns: int, timeout: float) -> Pose:
        """The first pose of ``name`` stamped at or after ``after_ns`` (PoseBoard.fresh)."""
        deadline = self.sim.time + timeout
        while True:
            stamp, pose = self._poses.get(name, (None, None))
            if stamp is not None and stamp >= after_ns:
                return pose
            if self.sim.time >= deadline:
                raise ObjectPoseError(f"no pose of object {name!r} stamped after the request "
                                      f"arrived within {timeout:.1f} s")
            self.sleep(self.loop.control_period)


class LockstepSession:
    """Runs episodes: kinematics, executor settings and task library loaded once.

    ``library`` is the executor's named tasks (``config/skills/tasks.yaml``): a path or the
    loaded mapping. ``parameters`` override the executor's declared defaults by name (the
    names of ``skills.settings.parameter_defaults``), as ``config/skill_executor.yaml`` would.
    """

    def __init__(self, library: str | Mapping[str, TaskSpec],
                 parameters: Mapping[str, Any] | None = None,
                 loop: LoopSettings = LoopSettings(),
                 kinematics: Kinematics | None = None) -> None:
        self.library = (load_task_library(library) if isinstance(library, str)
                        else dict(library))
        values = parameter_defaults("fr3")
        unknown = set(parameters or {}) - set(values)
        if unknown:
            raise ValueError(f"unknown executor parameters {sorted(unknown)}")
        values.update(parameters or {})
        self.kinematics = kinematics or make_kinematics("fr3")
        self.settings = executor_settings("fr3", values, self.kinematics)
        self.loop = loop

    def run(self, task_name: str, seed: int, variation: Mapping[str, Any] | None = None,
            faults: Faults = NO_FAULTS, *, recovery_enabled: bool = False, hold_s: float = 0.0,
            episode_id: str = "", on_status: Callable[[Status], None] | None = None,
            monitor: Callable[[Status, int], Diagnosis | None] | None = None) -> Recording:
        """One episode of the named task on the scene of (``task_name``, ``seed``, ``variation``).

        After the runner returns the physics and the camera run ``hold_s`` more seconds with
        the robot left as it is: the executor holds that long after a failure it noticed, for
        the monitor to diagnose it (``recovery.diagnosis_wait_s``). Close the recording once its
        frames are rendered (it holds a GL context). ``monitor`` plays the recovery monitor: it
        sees every status with the simulated time (ns) and may return a diagnosis to offer.
        """
        if task_name not in self.library:
            raise ValueError(f"unknown task {task_name!r}; named tasks: "
                             f"{', '.join(sorted(self.library))}")
        spec = self.library[task_name]
        task = make_task(task_name, seed, variation)
        world = LockstepLoop(task, faults, self.settings, self.loop)
        statuses: list[Status] = []

        def publish(status: Status) -> None:
            statuses.append(status)
            world.log.append(("status", status))
            if on_status is not None:
                on_status(status)
            diagnosis = monitor(status, world.now_ns()) if monitor is not None else None
            if diagnosis is not None:
                runner.offer_diagnosis(diagnosis)

        runner = TaskRunner(world.backend, self.kinematics, self.settings.gate,
                            self.settings.config, publish_status=publish,
                            object_pose=world.object_pose, now_ns=world.now_ns,
                            sleep=world.sleep, monotonic=lambda: world.now_ns() / NS)
        world.sleep(self.loop.settle_s)
        world.start_camera()
        result = runner.run(Request(spec, episode_id or f"{task_name}-{seed}",
                                    recovery_enabled=recovery_enabled))
        end_ns = world.now_ns()
        at_end = task.success_details(world.sim)
        world.sleep(hold_s)
        return Recording(task, spec, faults, world.frames, world.log, statuses, result,
                         at_end, task.success_details(world.sim), end_ns, _LazyCamera(world))


class _LazyCamera:
    """Renders recorded frames from their physics states (one renderer per recording)."""

    def __init__(self, world: LockstepLoop) -> None:
        self.world = world
        self._camera: RgbdCamera | None = None

    def render(self, index: int) -> np.ndarray:
        sim = self.world.sim
        if self._camera is None:
            self._camera = RgbdCamera(sim.model, sim.config.cameras[0].name,
                                      self.world.loop.camera_width, self.world.loop.camera_height)
        sim.restore_state(self.world.frames[index].state)
        rgb, _ = self._camera.render(sim.data)
        return rgb

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None
