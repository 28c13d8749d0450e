"""The FR3 MuJoCo simulation: scripted expert, fault hooks, RGB-D camera, controllers, IK."""

import functools
import math
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402

from failrecov_ros.core.camera import Intrinsics, depth_to_z16, z16_to_depth  # noqa: E402
from failrecov_ros.core.trajectory import ResultCode  # noqa: E402
from failrecov_ros.robots import fr3  # noqa: E402
from failrecov_ros.sim import expert as expert_mod  # noqa: E402
from failrecov_ros.sim.camera import RgbdCamera  # noqa: E402
from failrecov_ros.sim.controllers import (  # noqa: E402
    GripperController,
    TrajectoryController,
    trajectory_goal_from_lists,
)
from failrecov_ros.sim.expert import ExpertRunner, Faults, make_plan, run_expert  # noqa: E402
from failrecov_ros.sim.ik import DlsIk  # noqa: E402
from failrecov_ros.sim.scene import (  # noqa: E402
    COLORS,
    CameraSpec,
    LightSpec,
    SceneConfig,
    Simulation,
)
from failrecov_ros.sim.tasks import TARGET, TASKS, make_task  # noqa: E402
from failrecov_ros.sim.variations import (  # noqa: E402
    DEFAULT_CATALOGUE,
    LIGHTS,
    Catalogue,
    validate,
)

SEEDS = range(50)
MIN_SUCCESS_RATE = 0.95


@functools.cache
def nominal_episode(name: str, seed: int):
    """The expert's nominal episode for (task, seed), run once per test session."""
    return run_expert(make_task(name, seed))


def event_names(episode) -> list[str]:
    return [e["event"] for e in episode.events]


# --- 1. expert success rate ----------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_expert_solves_the_nominal_task(name):
    outcomes = [nominal_episode(name, seed) for seed in SEEDS]
    rate = sum(e.success for e in outcomes) / len(outcomes)
    failed = [(e.seed, e.details) for e in outcomes if not e.success]
    print(f"expert success rate {name}: {rate:.0%} over {len(outcomes)} seeds")
    assert rate >= MIN_SUCCESS_RATE, f"{name}: {rate:.0%}; failures {failed}"
    assert not any(e.timed_out for e in outcomes)


# --- 2. episode records --------------------------------------------------------------------------


def test_pick_records_a_close_keyframe_in_the_grasp_stage():
    episode = nominal_episode("pick_cube", 0)
    assert episode.stages == ("approach", "pre_grasp", "grasp", "lift")
    closes = [k for k in episode.keyframes() if k["event"] == "keyframe_close"]
    assert len(closes) == 1 and closes[0]["stage"] == "grasp"
    assert closes[0]["width"] == 0.0 and closes[0]["force"] > 0
    # The opening keyframe at the start (open the hand before approaching) is recorded too.
    assert episode.keyframes()[0]["event"] == "keyframe_open"
    assert episode.keyframes()[0]["stage"] == "approach"


def test_place_records_an_open_keyframe_in_the_release_stage():
    episode = nominal_episode("place_in_bowl", 0)
    assert {"transport", "place", "release", "retreat"} <= set(episode.stages)
    opens = [k for k in episode.keyframes()
             if k["event"] == "keyframe_open" and k["stage"] == "release"]
    assert len(opens) == 1 and opens[0]["width"] == pytest.approx(fr3.MAX_GRIPPER_WIDTH)
    close_time = next(k["time"] for k in episode.keyframes() if k["event"] == "keyframe_close")
    assert close_time < opens[0]["time"]


@pytest.mark.parametrize("name", TASKS)
def test_records_are_at_10_hz_and_cover_every_stage(name):
    episode = nominal_episode(name, 1)
    assert episode.record_hz == 10.0
    rows = len(episode.times)
    for column in (episode.arm_q, episode.arm_dq, episode.fingers, episode.tcp_position,
                   episode.tcp_quat, episode.target_pose, episode.stage_index):
        assert len(column) == rows
    assert episode.arm_q.shape == (rows, 7) and episode.target_pose.shape == (rows, 7)
    steps = np.diff(episode.times)
    # Every row but the final snapshot (taken when the episode ends) is 0.1 s after the last.
    np.testing.assert_allclose(steps[:-1], 0.1, atol=1e-6)
    assert 0 <= steps[-1] <= 0.1 + 1e-6
    assert episode.times[0] == pytest.approx(0.1, abs=1e-6)  # settled 50 steps before planning
    # Stages appear in plan order and each one has at least one record.
    assert list(np.unique(episode.stage_index)) == list(range(len(episode.stages)))
    assert np.all(np.diff(episode.stage_index) >= 0)
    assert episode.stage_at(0) == "approach" and episode.stage_at(rows - 1) == episode.stages[-1]
    starts = [e["stage"] for e in episode.events if e["event"] == "stage_start"]
    assert tuple(starts) == episode.stages


def test_same_seed_is_deterministic_and_seeds_differ():
    first = run_expert(make_task("pick_cube", 3))
    again = run_expert(make_task("pick_cube", 3))
    np.testing.assert_array_equal(first.target_pose[-1], again.target_pose[-1])
    np.testing.assert_array_equal(first.arm_q, again.arm_q)
    assert first.events == again.events
    other = nominal_episode("pick_cube", 4)
    assert np.linalg.norm(first.target_pose[-1][:3] - other.target_pose[-1][:3]) > 1e-3
    assert make_task("stack_cube", 3).scene == make_task("stack_cube", 3).scene
    assert make_task("stack_cube", 3).scene != make_task("stack_cube", 4).scene


# --- 3. fault hooks ------------------------------------------------------------------------------


FAULT_CASES = {
    "pose_offset": ("pick_cube", Faults(stage="pre_grasp", translation=(0.05, 0.0, 0.0)),
                    "fault_pose", "pre_grasp"),
    "weak_close": ("pick_cube", Faults(grasp_force_scale=0.02), "fault_weak_close", "grasp"),
    "skip_close": ("pick_cube", Faults(skip_close=True), "fault_skip_close", "grasp"),
    "late_close": ("pick_cube", Faults(close_delay_s=1.6), "fault_delay_close", "grasp"),
    "slip_lift": ("pick_cube", Faults(slip_stage="lift"), "fault_slip", "lift"),
    "slip_transport": ("place_in_bowl", Faults(slip_stage="transport"), "fault_slip",
                       "transport"),
    "early_open": ("stack_cube", Faults(early_open_stage="transport"), "fault_early_open",
                   "transport"),
}


@pytest.mark.parametrize("case", list(FAULT_CASES))
def test_fault_makes_the_expert_fail_and_is_logged(case):
    name, faults, event, stage = FAULT_CASES[case]
    assert faults.any
    for seed in range(3):
        assert nominal_episode(name, seed).success, "the fault-free run must succeed"
        episode = run_expert(make_task(name, seed), faults)
        assert not episode.success, f"{case} seed {seed}: {episode.details}"
        assert not episode.timed_out
        assert episode.faults == faults
        logged = [e for e in episode.events if e["event"] == event]
        assert len(logged) == 1 and logged[0]["stage"] == stage


def test_fault_event_details():
    pose = run_expert(make_task("pick_cube", 0),
                      Faults(stage="pre_grasp", translation=(0.05, 0.0, 0.0)))
    (event,) = [e for e in pose.events if e["event"] == "fault_pose"]
    assert event["translation"] == [0.05, 0.0, 0.0]
    # The TCP went where the fault sent it: 5 cm further in x than the cube at the end of
    # pre_grasp.
    pre = np.flatnonzero(pose.stage_index == pose.stages.index("pre_grasp"))[-1]
    cube_x = pose.target_pose[pre, 0]
    assert pose.tcp_position[pre, 0] - cube_x == pytest.approx(0.05, abs=0.01)

    skipped = run_expert(make_task("pick_cube", 0), Faults(skip_close=True))
    assert "keyframe_close" not in event_names(skipped)

    late = run_expert(make_task("pick_cube", 0), Faults(close_delay_s=1.6))
    (delay,) = [e for e in late.events if e["event"] == "fault_delay_close"]
    (close,) = [k for k in late.keyframes() if k["event"] == "keyframe_close"]
    assert delay["delay_s"] == 1.6
    assert close["time"] - delay["time"] == pytest.approx(1.6, abs=0.01)
    assert close["stage"] == "lift"  # the close came after the arm had started lifting

    weak = run_expert(make_task("pick_cube", 0), Faults(grasp_force_scale=0.02))
    (close,) = [k for k in weak.keyframes() if k["event"] == "keyframe_close"]
    assert close["force"] == pytest.approx(expert_mod.GRASP_FORCE * 0.02)


def _lift_trace(faults: Faults, seed: int = 1):
    """(episode, rows) of a pick; rows: TCP z, target z and pad contacts at every record."""
    task = make_task("pick_cube", seed)
    sim = Simulation(task.scene)
    sim.step(50)
    rows = []

    def on_record(sim_, index):
        assert index == len(rows)
        rows.append((sim_.tcp_pose()[0][2], sim_.object_pose(TARGET)[0][2],
                     sim_.pad_contacts(TARGET)))

    episode = ExpertRunner(sim, task, faults, on_record=on_record).run()
    assert len(rows) == len(episode.times)
    return episode, np.array(rows)


def test_a_healthy_grasp_holds_the_cube_while_lifting_and_a_weak_one_drops_it():
    half = make_task("pick_cube", 1).scene.object(TARGET).size / 2
    healthy, rows = _lift_trace(Faults())
    lift = rows[healthy.stage_index == healthy.stages.index("lift")]
    tcp_rise = lift[-1, 0] - lift[0, 0]
    assert tcp_rise > 0.08
    assert lift[-1, 1] - lift[0, 1] == pytest.approx(tcp_rise, abs=0.01)
    assert np.ptp(lift[:, 0] - lift[:, 1]) < 0.01  # the cube moves with the TCP
    assert np.all(lift[:, 2] == 2)  # held between both pads throughout
    assert healthy.success

    weak, rows = _lift_trace(Faults(grasp_force_scale=0.02))
    lift = rows[weak.stage_index == weak.stages.index("lift")]
    assert lift[-1, 0] - lift[0, 0] > 0.08  # the arm lifted as before ...
    assert lift[-1, 1] == pytest.approx(half, abs=0.01)  # ... but the cube stayed on the table
    assert lift[-1, 2] < 2
    assert not weak.success and not weak.details["held"]


def test_a_stall_past_the_time_limit_times_out_and_a_short_one_does_not():
    long_stall = 60.0
    stalled = run_expert(make_task("pick_cube", 0), Faults(stage="lift", stall_s=long_stall))
    assert stalled.timed_out and not stalled.success
    assert "fault_stall" in event_names(stalled)
    (stall,) = [e for e in stalled.events if e["event"] == "fault_stall"]
    assert stall["stage"] == "lift" and stall["duration_s"] == long_stall
    assert stalled.times[-1] < stall["time"] + long_stall  # the episode was cut short

    for seed in range(3):
        short = run_expert(make_task("pick_cube", seed), Faults(stage="lift", stall_s=0.2))
        assert short.success and not short.timed_out
        assert "fault_stall" in event_names(short)
        assert short.times[-1] > nominal_episode("pick_cube", seed).times[-1] + 0.15


def test_faults_reject_bad_magnitudes():
    for bad in ({"stall_s": -1.0}, {"close_delay_s": -0.1}, {"grasp_force_scale": 1.5},
                {"translation": (math.nan, 0.0, 0.0)}):
        with pytest.raises(ValueError):
            Faults(**bad)
    assert not Faults().any


# --- 4. camera -----------------------------------------------------------------------------------


def optical_to_world(model: mujoco.MjModel, data: mujoco.MjData, camera: str):
    """(R, t) taking optical-frame points (x right, y down, z forward) into the world."""
    cam = model.camera(camera).id
    rotation = data.cam_xmat[cam].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    return rotation, data.cam_xpos[cam].copy()


TOP_HEIGHT = 1.0
TOP_LOOK_AT = (0.7, 0.0, 0.0)


@pytest.fixture(scope="module")
def top_view():
    """An empty table seen straight down from TOP_HEIGHT above it."""
    camera = CameraSpec(name="top", position=(TOP_LOOK_AT[0] + 1e-3, 0.0, TOP_HEIGHT),
                        look_at=TOP_LOOK_AT)
    sim = Simulation(SceneConfig(cameras=(camera,)))
    with RgbdCamera(sim.model, "top", camera.width, camera.height) as rgbd:
        rgb, depth = rgbd.render(sim.data)
        intrinsics = rgbd.intrinsics
    return sim, camera, intrinsics, rgb, depth


def test_rgbd_image_sizes_and_types(top_view):
    _, camera, intrinsics, rgb, depth = top_view
    assert rgb.shape == (camera.height, camera.width, 3) and rgb.dtype == np.uint8
    assert depth.shape == (camera.height, camera.width) and depth.dtype == np.float32
    assert intrinsics == camera.intrinsics
    assert intrinsics.fy == pytest.approx(617.16, abs=0.05)  # D435i-like at 640x480


def test_depth_of_a_camera_looking_down_matches_the_table_plane(top_view):
    sim, camera, intrinsics, _, depth = top_view
    table_z = sim.config.table_top_z
    centre = depth[camera.height // 2, camera.width // 2]
    assert centre == pytest.approx(TOP_HEIGHT - table_z, abs=0.01)
    # Expected depth of every pixel: where its ray meets the table plane.
    rotation, origin = optical_to_world(sim.model, sim.data, "top")
    v, u = np.indices(depth.shape, dtype=float)
    rays = np.stack([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy,
                     np.ones_like(u)], axis=-1) @ rotation.T
    expected = (table_z - origin[2]) / rays[..., 2]
    # A window around the centre sees only the table (the arm is further back).
    window = (slice(camera.height // 2 - 100, camera.height // 2 + 100),
              slice(camera.width // 2 - 150, camera.width // 2 + 150))
    assert not np.any(np.isnan(depth[window]))
    error = np.abs(depth[window] - expected[window])
    assert np.median(error) < 0.01 and np.max(error) < 0.02
    # The deprojected points lie on the plane.
    points = intrinsics.deproject(depth)[window].reshape(-1, 3) @ rotation.T + origin
    assert np.median(np.abs(points[:, 2] - table_z)) < 0.01


@pytest.fixture(scope="module")
def default_view():
    task = make_task("pick_cube", 0)
    sim = Simulation(task.scene)
    sim.step(50)
    with RgbdCamera(sim.model, "camera") as rgbd:
        rgb, depth = rgbd.render(sim.data)
        intrinsics = rgbd.intrinsics
    return task, sim, intrinsics, rgb, depth


def test_projecting_the_cube_lands_on_red_pixels_with_consistent_depth(default_view):
    task, sim, intrinsics, rgb, depth = default_view
    assert task.scene.object(TARGET).color == "red"
    assert intrinsics == Intrinsics.from_fovy(640, 480, task.scene.cameras[0].fovy_deg)
    rotation, origin = optical_to_world(sim.model, sim.data, "camera")
    cube, cube_quat = sim.object_pose(TARGET)
    in_camera = rotation.T @ (cube - origin)
    assert in_camera[2] > 0  # in front of the camera
    ((u, v),) = intrinsics.project(in_camera)
    col, row = int(round(u)), int(round(v))
    assert 0 <= col < intrinsics.width and 0 <= row < intrinsics.height
    red, green, blue = (int(c) for c in rgb[row, col])
    assert red > 100 and red > 2 * green and red > 2 * blue, rgb[row, col]
    # The depth there deprojects onto the cube's visible surface.
    z = float(depth[row, col])
    point_camera = np.array([(col - intrinsics.cx) * z / intrinsics.fx,
                             (row - intrinsics.cy) * z / intrinsics.fy, z])
    np.testing.assert_allclose(intrinsics.deproject(depth)[row, col], point_camera)
    point = rotation @ point_camera + origin
    assert np.linalg.norm(point - cube) < 0.03
    cube_rotation = np.empty(9)
    mujoco.mju_quat2Mat(cube_rotation, cube_quat)
    in_cube = cube_rotation.reshape(3, 3).T @ (point - cube)
    half = task.scene.object(TARGET).size / 2
    assert np.max(np.abs(in_cube)) < half + 0.004  # on (not inside or beyond) the cube
    assert np.max(np.abs(in_cube)) > half - 0.004
    # A pixel well away from the cube (the table in the foreground) is not red.
    red, green, _ = (int(c) for c in rgb[intrinsics.height - 5, intrinsics.width // 2])
    assert not red > 2 * green


def test_depth_to_z16_round_trip():
    depth = np.array([[0.5, 1.0004, 1.0006, np.nan], [np.inf, -1.0, 0.0, 70.0]], np.float32)
    z16 = depth_to_z16(depth)
    assert z16.dtype == np.uint16
    np.testing.assert_array_equal(z16, [[500, 1000, 1001, 0], [0, 0, 0, 0]])
    back = z16_to_depth(z16)
    assert back.dtype == np.float32
    valid = z16 > 0
    np.testing.assert_allclose(back[valid], depth[valid], atol=0.0005 + 1e-6)
    assert np.all(back[~valid] == 0)
    assert depth_to_z16(np.array([2.0]), max_range_m=1.5)[0] == 0
    with pytest.raises(ValueError, match="uint16"):
        z16_to_depth(z16.astype(np.int32))


# --- 5. controllers ------------------------------------------------------------------------------


def _run_arm(sim: Simulation, arm: TrajectoryController, seconds: float):
    for _ in range(round(seconds / sim.timestep)):
        verdict = arm.update()
        if verdict is not None:
            return verdict
        sim.step()
    return None


GOAL_A = tuple(np.array(fr3.HOME) + [0.3, 0.2, -0.2, 0.3, 0.2, -0.2, 0.3])
GOAL_B = tuple(np.array(fr3.HOME) + [-0.3, -0.1, 0.25, -0.2, -0.2, 0.25, -0.3])


@pytest.fixture
def arm_sim():
    sim = Simulation(SceneConfig())
    return sim, TrajectoryController(sim, fr3.ARM_LIMITS)


def test_trajectory_controller_reaches_the_goal(arm_sim):
    sim, arm = arm_sim
    assert not arm.active
    verdict = arm.start(trajectory_goal_from_lists(fr3.ARM_JOINTS, [(1.5, GOAL_A)]))
    assert verdict.ok and arm.active
    result = _run_arm(sim, arm, 5.0)
    assert result is not None and result.code == ResultCode.SUCCESSFUL, result
    assert not arm.active
    assert sim.time >= 1.5
    np.testing.assert_allclose(sim.arm_positions(), GOAL_A, atol=0.01)
    np.testing.assert_allclose(sim.arm_targets(), GOAL_A, atol=1e-9)


def test_trajectory_controller_accepts_a_goal_in_another_joint_order(arm_sim):
    sim, arm = arm_sim
    order = list(reversed(range(7)))
    names = [fr3.ARM_JOINTS[i] for i in order]
    assert arm.start(trajectory_goal_from_lists(names, [(1.0, [GOAL_A[i] for i in order])])).ok
    assert _run_arm(sim, arm, 4.0).ok
    np.testing.assert_allclose(sim.arm_positions(), GOAL_A, atol=0.01)


def _bad_goals():
    names = list(fr3.ARM_JOINTS)
    home = list(fr3.HOME)
    out_of_limit = list(home)
    out_of_limit[3] = 0.0  # joint 4 must stay below -0.1518
    with_nan = list(home)
    with_nan[1] = math.nan
    return {
        "unknown joint": (trajectory_goal_from_lists(names[:6] + ["fr3_joint8"], [(1.0, home)]),
                          ResultCode.INVALID_JOINTS, "fr3_joint8"),
        "missing joint": (trajectory_goal_from_lists(names[:6], [(1.0, home[:6])]),
                          ResultCode.INVALID_JOINTS, "fr3_joint7"),
        "out of limit": (trajectory_goal_from_lists(names, [(1.0, out_of_limit)]),
                         ResultCode.INVALID_GOAL, "fr3_joint4"),
        "nan": (trajectory_goal_from_lists(names, [(1.0, with_nan)]),
                ResultCode.INVALID_GOAL, "not finite"),
        "times": (trajectory_goal_from_lists(names, [(1.0, GOAL_A), (1.0, home)]),
                  ResultCode.INVALID_GOAL, "strictly increase"),
        "tolerance": (trajectory_goal_from_lists(names, [(1.0, GOAL_A)],
                                                 goal_time_tolerance=-2.0),
                      ResultCode.INVALID_GOAL, "goal_time_tolerance"),
    }


@pytest.mark.parametrize("case", list(_bad_goals()))
def test_trajectory_controller_rejects_bad_goals_without_moving(arm_sim, case):
    sim, arm = arm_sim
    goal, code, fragment = _bad_goals()[case]
    before = sim.arm_targets()
    verdict = arm.start(goal)
    assert verdict.code == code and fragment in verdict.message, verdict
    assert not arm.active
    assert _run_arm(sim, arm, 0.2) is None
    np.testing.assert_array_equal(sim.arm_targets(), before)


def test_rejected_goal_does_not_cancel_the_active_one(arm_sim):
    sim, arm = arm_sim
    assert arm.start(trajectory_goal_from_lists(fr3.ARM_JOINTS, [(1.0, GOAL_A)])).ok
    assert _run_arm(sim, arm, 0.3) is None
    bad = _bad_goals()["out of limit"][0]
    assert not arm.start(bad).ok
    assert arm.active
    assert _run_arm(sim, arm, 4.0).ok
    np.testing.assert_allclose(sim.arm_positions(), GOAL_A, atol=0.01)


def test_a_new_goal_preempts_the_running_one(arm_sim):
    sim, arm = arm_sim
    assert arm.start(trajectory_goal_from_lists(fr3.ARM_JOINTS, [(2.0, GOAL_A)])).ok
    assert _run_arm(sim, arm, 1.0) is None  # half-way
    midway = sim.arm_targets()
    assert np.max(np.abs(midway - np.array(GOAL_A))) > 0.05
    assert np.max(np.abs(midway - np.array(fr3.HOME))) > 0.05
    assert arm.start(trajectory_goal_from_lists(fr3.ARM_JOINTS, [(1.5, GOAL_B)])).ok
    sim.step()
    arm.update()
    # The new goal starts from the commanded state, so the command does not jump.
    assert np.max(np.abs(sim.arm_targets() - midway)) < 0.01
    result = _run_arm(sim, arm, 5.0)
    assert result is not None and result.ok
    np.testing.assert_allclose(sim.arm_positions(), GOAL_B, atol=0.01)


def _run_gripper(sim: Simulation, gripper: GripperController, seconds: float):
    for _ in range(round(seconds / sim.timestep)):
        result = gripper.update(sim.timestep)
        if result is not None:
            return result
        sim.step()
    return None


def _gripper(sim: Simulation) -> GripperController:
    return GripperController(sim, fr3.MAX_GRIPPER_WIDTH, fr3.MAX_GRIPPER_SPEED,
                             fr3.MAX_GRASP_FORCE)


def test_gripper_moves_and_homes():
    sim = Simulation(SceneConfig())
    gripper = _gripper(sim)
    assert sim.gripper_width() == pytest.approx(fr3.MAX_GRIPPER_WIDTH, abs=1e-3)
    assert gripper.move(0.03, 0.05) == ""
    assert gripper.active
    result = _run_gripper(sim, gripper, 3.0)
    assert result is not None and result.success, result
    assert result.width == pytest.approx(0.03, abs=0.003)
    assert sim.gripper_width() == pytest.approx(0.03, abs=0.003)
    assert sim.time >= 0.05 / 0.05 * 0.9  # ramped at the requested speed (50 mm at 50 mm/s)
    assert gripper.homing() == ""
    result = _run_gripper(sim, gripper, 3.0)
    assert result is not None and result.success
    assert result.width == pytest.approx(fr3.MAX_GRIPPER_WIDTH, abs=0.003)


@pytest.mark.parametrize(("width", "speed", "fragment"), [
    (0.2, 0.05, "width"), (0.03, 0.0, "speed"), (math.nan, 0.05, "width"),
    (0.03, math.nan, "speed"), (-0.01, 0.05, "width"), (0.03, 1.0, "speed"),
])
def test_gripper_rejects_bad_moves_without_moving(width, speed, fragment):
    sim = Simulation(SceneConfig())
    gripper = _gripper(sim)
    before = sim.gripper_width()
    error = gripper.move(width, speed)
    assert error and fragment in error
    assert not gripper.active
    assert _run_gripper(sim, gripper, 0.3) is None
    assert sim.gripper_width() == pytest.approx(before, abs=1e-4)


def _fingers_around_the_cube():
    """A pick scene with the open hand lowered around the target cube (plan up to pre_grasp)."""
    task = make_task("pick_cube", 2)
    sim = Simulation(task.scene)
    sim.step(50)
    plan = make_plan(task, sim)
    assert [s.stage for s in plan[:3]] == ["approach", "approach", "pre_grasp"]
    ExpertRunner(sim, task).run(plan[:3])
    assert sim.gripper_width() > 0.07 and sim.pad_contacts(TARGET) == 0
    return task, sim


def test_gripper_grasps_a_cube_of_the_expected_width():
    task, sim = _fingers_around_the_cube()
    size = task.scene.object(TARGET).size
    gripper = _gripper(sim)
    assert gripper.grasp(size, 0.05, 20.0, 0.005, 0.005) == ""
    result = _run_gripper(sim, gripper, 3.0)
    assert result is not None and result.success, result
    assert result.width == pytest.approx(size, abs=0.003)
    assert sim.pad_contacts(TARGET) == 2


@pytest.mark.parametrize("expected", [0.06, 0.02])
def test_gripper_grasp_with_the_wrong_width_fails(expected):
    task, sim = _fingers_around_the_cube()
    gripper = _gripper(sim)
    assert gripper.grasp(expected, 0.05, 20.0, 0.005, 0.005) == ""
    result = _run_gripper(sim, gripper, 3.0)
    assert result is not None and not result.success
    window = f"[{expected - 0.005:.4f}, {expected + 0.005:.4f}]"
    assert "grasp failed" in result.error and window in result.error, result.error


def test_gripper_rejects_bad_grasps():
    sim = Simulation(SceneConfig())
    gripper = _gripper(sim)
    assert "force" in gripper.grasp(0.04, 0.05, 100.0)
    assert "force" in gripper.grasp(0.04, 0.05, math.nan)
    assert "epsilon" in gripper.grasp(0.04, 0.05, 20.0, epsilon_inner=math.nan)
    assert "epsilon" in gripper.grasp(0.04, 0.05, 20.0, epsilon_outer=-0.1)
    assert not gripper.active


# --- 6. variations -------------------------------------------------------------------------------


def test_nominal_variation():
    nominal = Catalogue().nominal()
    assert nominal == {
        "target_color": "red", "other_color": "blue", "cube_size": 0.04, "table_color": "wood",
        "table_size": (1.2, 1.2), "robot_color": "white", "light": "default",
        "camera_jitter_m": 0.0, "object_pose_spread": 1.0, "object_friction": 1.0,
    }
    assert validate({}) == nominal
    assert make_task("pick_cube", 0).variation == nominal
    # A narrowed catalogue keeps every factor's nominal value and varies only its own.
    small = Catalogue({"light": ("dim", "side")})
    assert small.nominal() == nominal | {"light": "dim"}
    assert small.actions() == [("light", "side")]
    assert len(Catalogue().actions()) == sum(len(v) - 1 for v in DEFAULT_CATALOGUE.values())


def test_sample_is_deterministic_for_a_seed():
    catalogue = Catalogue()
    first = catalogue.sample(np.random.default_rng(7))
    assert first == catalogue.sample(np.random.default_rng(7))
    samples = [catalogue.sample(np.random.default_rng(seed)) for seed in range(20)]
    assert len({tuple(sorted(map(str, s.items()))) for s in samples}) > 10
    for sample in samples:
        assert validate(sample) == sample
    only_light = catalogue.sample(np.random.default_rng(3), factors=("light",))
    assert only_light | {"light": "default"} == catalogue.nominal()


@pytest.mark.parametrize(("factors", "name"), [
    ({"bogus_factor": ("a",)}, "bogus_factor"),
    ({"cube_size": (0.5,)}, "cube_size"),
    ({"target_color": ("pink",)}, "target_color"),
    ({"light": ()}, "light"),
    ({"table_size": ((1.0,),)}, "table_size"),
])
def test_invalid_catalogue_raises_naming_the_factor(factors, name):
    with pytest.raises(ValueError, match=name):
        Catalogue(factors)


@pytest.mark.parametrize(("variation", "name"), [
    ({"bogus_factor": 1}, "bogus_factor"),
    ({"light": "disco"}, "light"),
    ({"camera_jitter_m": "far"}, "camera_jitter_m"),
    ({"object_friction": 0.0}, "object_friction"),
])
def test_invalid_variation_raises_naming_the_factor(variation, name):
    with pytest.raises(ValueError, match=name):
        validate(variation)
    with pytest.raises(ValueError, match=name):
        make_task("pick_cube", 0, variation)


def test_catalogue_from_yaml(tmp_path):
    path = tmp_path / "catalogue.yaml"
    path.write_text("factors:\n  table_size: [[1.2, 1.2], [0.9, 0.9]]\n  light: [default, dim]\n")
    catalogue = Catalogue.from_yaml(str(path))
    assert catalogue.factors == {"table_size": ((1.2, 1.2), (0.9, 0.9)),
                                 "light": ("default", "dim")}
    path.write_text("factors:\n  light: [default, disco]\n")
    with pytest.raises(ValueError, match="light"):
        Catalogue.from_yaml(str(path))


def test_make_task_applies_the_variation_to_the_scene():
    variation = {"target_color": "green", "table_color": "black", "light": "dim",
                 "camera_jitter_m": 0.05, "cube_size": 0.035}
    task = make_task("stack_cube", 5, variation)
    nominal = make_task("stack_cube", 5)
    assert task.variation == validate(variation)
    assert {k: task.variation[k] for k in variation} == variation
    scene = task.scene
    assert scene.object(TARGET).color == "green" and scene.object(TARGET).size == 0.035
    assert "green" in task.instruction
    assert scene.table_color == "black"
    assert scene.light == LightSpec(*LIGHTS["dim"])
    (camera,) = scene.cameras
    default = CameraSpec()
    offset = np.array(camera.position) - np.array(default.position)
    assert 0 < np.max(np.abs(offset)) <= 0.05 + 1e-9
    assert np.max(np.abs(np.array(camera.look_at) - np.array(default.look_at))) <= 0.05 + 1e-9
    # Layout is drawn from the seed, not the variation, so the objects are where they were.
    assert scene.object(TARGET).position == nominal.scene.object(TARGET).position
    # The compiled scene carries the changes.
    sim = Simulation(scene)
    np.testing.assert_allclose(sim.model.geom("table").rgba, COLORS["black"], atol=1e-6)
    np.testing.assert_allclose(sim.model.geom(f"{TARGET}_geom").rgba, COLORS["green"], atol=1e-6)
    np.testing.assert_allclose(sim.model.geom(f"{TARGET}_geom").size, [0.0175] * 3, atol=1e-9)
    np.testing.assert_allclose(sim.model.light("key_light").diffuse, [LIGHTS["dim"][1]] * 3,
                               atol=1e-6)
    np.testing.assert_allclose(sim.model.camera("camera").pos, camera.position, atol=1e-6)
    # The other object never shares the target's color.
    blue = make_task("place_in_bowl", 0, {"target_color": "blue"})
    assert blue.scene.object(blue.other).color != "blue"


def test_dim_light_renders_a_darker_image():
    brightness = {}
    for light in ("default", "dim"):
        sim = Simulation(make_task("pick_cube", 0, {"light": light}).scene)
        with RgbdCamera(sim.model, "camera", 160, 120) as rgbd:
            rgb, _ = rgbd.render(sim.data)
        brightness[light] = float(rgb.mean())
    assert brightness["dim"] < 0.8 * brightness["default"], brightness


# --- 7. inverse kinematics -----------------------------------------------------------------------


def test_ik_reaches_random_targets_pointing_down():
    sim = Simulation(SceneConfig())
    ik = DlsIk(sim.model, "fr3_tcp", fr3.ARM_JOINTS, rest=fr3.HOME)
    check = mujoco.MjData(sim.model)
    site = sim.model.site("fr3_tcp").id
    rng = np.random.default_rng(0)
    for _ in range(20):
        target = rng.uniform([0.35, -0.25, 0.02], [0.65, 0.25, 0.3])
        yaw = rng.uniform(-math.pi / 4, math.pi / 4)
        c, s = math.cos(yaw), math.sin(yaw)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ expert_mod.DOWN
        result = ik.solve(target, rotation, fr3.HOME)
        assert result.converged, (target, result)
        for name, value in zip(fr3.ARM_JOINTS, result.q, strict=True):
            assert fr3.ARM_LIMITS[name].contains(value), (name, value)
        # Check the solution on a fresh MjData, independently of the solver's own.
        check.qpos[[sim.model.joint(n).qposadr[0] for n in fr3.ARM_JOINTS]] = result.q
        mujoco.mj_kinematics(sim.model, check)
        assert np.linalg.norm(check.site_xpos[site] - target) < 1e-3
        z_axis = check.site_xmat[site].reshape(3, 3)[:, 2]
        assert z_axis[2] < -0.999  # pointing down
        assert result.position_error < 1e-3


def test_model_home_points_the_hand_down():
    from failrecov_ros.sim import fr3_model

    assert fr3_model.home_quat_check() < 0.01
    sim = Simulation(SceneConfig())
    position, rotation = sim.tcp_pose()
    assert 0.25 < position[0] < 0.35 and abs(position[1]) < 1e-6 and 0.3 < position[2] < 0.6
    assert rotation[2, 2] < -0.999
