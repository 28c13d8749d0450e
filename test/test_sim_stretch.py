"""The Stretch SE3 MuJoCo model and the pure stretch_driver command expansion."""

import math
import os
import xml.etree.ElementTree as ET

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from failrecov_ros.robots import stretch  # noqa: E402

# --- pure: names, limits, command expansion ------------------------------------------------------


def test_limits_table_covers_the_commandable_joints():
    assert stretch.JOINT_LIMITS.names == stretch.JOINTS
    assert set(stretch.JOINTS) <= set(stretch.COMMAND_NAMES)
    for name in stretch.JOINTS:
        limit = stretch.JOINT_LIMITS[name]
        assert limit.lower < limit.upper and 0 < limit.velocity < 10
    assert stretch.JOINT_LIMITS["joint_lift"].upper == pytest.approx(1.1)
    assert sum(stretch.JOINT_LIMITS[n].upper for n in stretch.TELESCOPING_JOINTS) == \
        pytest.approx(stretch.ARM_RANGE[1])
    assert stretch.FINGER_RANGE[0] < 0 < stretch.FINGER_RANGE[1]
    assert stretch.FOLLOW_JOINT_TRAJECTORY_ACTION == "stretch_controller/follow_joint_trajectory"
    assert "runstop" in stretch.SERVICES and "switch_to_navigation_mode" in stretch.SERVICES


def test_gripper_conversion_round_trips():
    assert stretch.finger_to_aperture(stretch.aperture_to_finger(0.07)) == pytest.approx(0.07)
    assert stretch.pct_to_finger(70.0) == pytest.approx(0.09 / (2 * stretch.FINGER_LENGTH))


def test_poses_are_inside_the_limits():
    for pose in (stretch.STOW, stretch.HOME):
        values = [pose[n] for n in stretch.JOINTS]
        assert not stretch.JOINT_LIMITS.position_violations(values)
    assert stretch.STOW["joint_lift"] == pytest.approx(0.3)
    assert stretch.STOW["joint_wrist_yaw"] == pytest.approx(3.0)


@pytest.mark.parametrize("name", ["joint_arm", "wrist_extension"])
def test_arm_extension_is_split_over_the_four_links(name):
    command = stretch.expand_command([name, "joint_lift"], [0.4, 0.5])
    assert command.joints["joint_lift"] == 0.5
    assert [command.joints[n] for n in stretch.TELESCOPING_JOINTS] == [0.1] * 4
    assert not command.moves_base


def test_telescoping_links_are_summed_then_split():
    command = stretch.expand_command(list(stretch.TELESCOPING_JOINTS), [0.1, 0.0, 0.05, 0.05])
    assert [command.joints[n] for n in stretch.TELESCOPING_JOINTS] == pytest.approx([0.05] * 4)


@pytest.mark.parametrize("names", [
    ["joint_arm", "wrist_extension"],
    ["joint_arm", "joint_arm_l0"],
    ["joint_arm_l0", "joint_arm_l1"],
    ["gripper_aperture", "joint_gripper_finger_left"],
    ["translate_mobile_base", "rotate_mobile_base"],
    ["joint_mobile_base_translation"],
    ["joint_lift", "joint_lift"],
    ["joint_elbow"],
])
def test_goals_stretch_driver_rejects(names):
    with pytest.raises(stretch.CommandError):
        stretch.expand_command(names, [0.1] * len(names))


def test_gripper_names_set_both_fingers():
    command = stretch.expand_command(["gripper_aperture"], [0.05])
    finger = 0.05 / (2 * stretch.FINGER_LENGTH)
    assert command.joints == {"joint_gripper_finger_left": pytest.approx(finger),
                              "joint_gripper_finger_right": pytest.approx(finger)}
    command = stretch.expand_command(["joint_gripper_finger_right"], [0.2])
    assert command.joints["joint_gripper_finger_left"] == 0.2


def test_out_of_range_goals_are_clipped_or_refused():
    command = stretch.expand_command(["joint_lift", "joint_arm"], [1.5, -0.2])
    assert command.joints["joint_lift"] == 1.1
    assert command.joints["joint_arm_l0"] == 0.0
    with pytest.raises(stretch.CommandError, match="out of bounds"):
        stretch.expand_command(["joint_lift"], [1.5], fail_out_of_range=True)
    # within stretch_driver's 1 mm tolerance: clipped, not refused
    command = stretch.expand_command(["joint_lift"], [1.1005], fail_out_of_range=True)
    assert command.joints["joint_lift"] == 1.1
    with pytest.raises(stretch.CommandError, match="non-finite"):
        stretch.expand_command(["joint_lift"], [math.nan])
    with pytest.raises(stretch.CommandError):
        stretch.expand_command(["joint_lift", "joint_arm"], [0.5])


def test_base_motions_are_relative_and_need_position_mode():
    command = stretch.expand_command(["translate_mobile_base"], [0.3])
    assert (command.translate, command.rotate, dict(command.joints)) == (0.3, None, {})
    assert stretch.expand_command(["rotate_mobile_base"], [-0.5]).rotate == -0.5
    assert not stretch.expand_command(["translate_mobile_base"], [0.0]).moves_base
    with pytest.raises(stretch.CommandError, match="position mode"):
        stretch.expand_command(["rotate_mobile_base"], [0.5], mode="navigation")
    assert stretch.base_goal(1.0, 2.0, math.pi / 2, translate=0.5) == pytest.approx(
        (1.0, 2.5, math.pi / 2))
    assert stretch.base_goal(0.0, 0.0, 0.1, rotate=0.2)[2] == pytest.approx(0.3)


def test_joint_state_reports_what_stretch_driver_publishes():
    positions = dict(stretch.HOME)
    positions["joint_gripper_finger_left"] = 0.1
    positions["joint_gripper_finger_right"] = 0.2
    names, values = stretch.joint_state(positions)
    state = dict(zip(names, values, strict=True))
    assert names == stretch.JOINT_STATE_NAMES
    assert state["wrist_extension"] == pytest.approx(0.1)
    assert state["joint_arm_l0"] == pytest.approx(0.025)
    assert state["joint_gripper_finger_left"] == state["joint_gripper_finger_right"] == \
        pytest.approx(0.15)
    assert state["joint_lift"] == pytest.approx(0.58)


# --- the MuJoCo model -----------------------------------------------------------------------------
mujoco = pytest.importorskip("mujoco")
pytest.importorskip("stretch_urdf")
np = pytest.importorskip("numpy")

from failrecov_ros.sim import stretch_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return stretch_model.build_stretch_spec().compile()


@pytest.fixture
def data(model):
    data = mujoco.MjData(model)
    stretch_model.set_joint_positions(model, data, stretch.STOW)
    return data


def _settle(model, data, targets, seconds=3.0):
    for name, value in targets.items():
        data.ctrl[model.actuator(stretch_model.actuator_name(name)).id] = value
    mujoco.mj_step(model, data, nstep=round(seconds / model.opt.timestep))
    assert np.all(np.isfinite(data.qpos)) and np.all(np.isfinite(data.qvel))


def _q(model, data, name):
    return float(data.qpos[model.joint(name).qposadr[0]])


def test_spec_compiles_with_the_expected_parts(model):
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    assert model.opt.timestep == stretch_model.STRETCH_TIMESTEP
    for name in stretch_model.ACTUATED_JOINTS:
        assert model.actuator(stretch_model.actuator_name(name)).trnid[0] == model.joint(name).id
    assert model.nu == len(stretch_model.ACTUATED_JOINTS)
    model.site(stretch_model.GRASP_SITE)
    for name in (*stretch_model.FINGER_PADS, ):
        assert model.geom(name).contype != 0
    model.camera(stretch_model.HEAD_CAMERA)
    model.camera(stretch_model.GRIPPER_CAMERA)
    assert "floor" not in [model.geom(i).name for i in range(model.ngeom)]
    assert model.body(stretch_model.ROOT_BODY).pos == pytest.approx([0, 0, 0])


def test_joints_have_the_urdf_ranges(model):
    urdf = ET.parse(stretch_model.package_dir() / stretch_model.URDF_RELATIVE_PATH).getroot()
    for name in stretch.JOINT_LIMITS.names:
        limit = stretch.JOINT_LIMITS[name]
        assert model.joint(name).range == pytest.approx([limit.lower, limit.upper])
        urdf_limit = urdf.find(f"joint[@name='{name}']/limit")
        if name not in stretch.FINGER_JOINTS:  # the URDF's finger limits are a 0..0 placeholder
            assert [float(urdf_limit.get("lower")), float(urdf_limit.get("upper"))] == \
                pytest.approx([limit.lower, limit.upper])


def test_lift_raises_the_grasp_site(model, data):
    _settle(model, data, {}, 1.0)
    before, _ = stretch_model.grasp_site_pose(model, data)
    lift = _q(model, data, "joint_lift")
    _settle(model, data, {"joint_lift": lift + 0.3})
    after, _ = stretch_model.grasp_site_pose(model, data)
    assert after[2] - before[2] == pytest.approx(0.3, abs=0.005)
    assert np.linalg.norm(after[:2] - before[:2]) < 0.005


def test_arm_extension_moves_the_gripper_out_horizontally(model, data):
    straight = stretch.expand_command(["joint_wrist_yaw", "joint_wrist_pitch", "joint_lift"],
                                      [0.0, 0.0, 0.6]).joints
    _settle(model, data, straight)
    before, _ = stretch_model.grasp_site_pose(model, data)
    _settle(model, data, stretch.expand_command(["joint_arm"], [0.4]).joints)
    after, _ = stretch_model.grasp_site_pose(model, data)
    extension = sum(_q(model, data, n) for n in stretch.TELESCOPING_JOINTS)
    assert extension == pytest.approx(0.4, abs=0.003)
    links = [_q(model, data, n) for n in stretch.TELESCOPING_JOINTS]
    assert max(links) - min(links) < 0.002
    assert np.linalg.norm(after[:2] - before[:2]) == pytest.approx(0.4, abs=0.005)
    assert abs(after[2] - before[2]) < 0.005
    assert after[1] < before[1]  # the arm reaches out to the robot's right (-y)


def test_wrist_and_gripper_track_their_targets(model, data):
    targets = stretch.expand_command(
        ["joint_wrist_yaw", "joint_wrist_pitch", "joint_wrist_roll", "gripper_aperture",
         "joint_head_pan", "joint_head_tilt", "joint_lift", "joint_arm"],
        [0.5, -0.4, 0.3, 0.08, -0.6, -0.7, 0.7, 0.2]).joints
    _settle(model, data, targets)
    for name, value in targets.items():
        assert _q(model, data, name) == pytest.approx(value, abs=0.01), name
    assert stretch_model.finger_aperture(model, data) == pytest.approx(0.08, abs=0.003)
    # closing on nothing: the pads meet and squeeze, the fingers do not pass each other
    _settle(model, data, stretch.expand_command(["gripper_aperture"], [-0.1]).joints, 1.0)
    pads = [data.geom(n).xpos for n in stretch_model.FINGER_PADS]
    assert np.linalg.norm(pads[0] - pads[1]) > 0.012
    assert any({model.geom(data.contact.geom1[i]).name, model.geom(data.contact.geom2[i]).name}
               == set(stretch_model.FINGER_PADS) for i in range(data.ncon))


def test_base_slides_and_turns(model, data):
    _settle(model, data, {"base_x": 0.5, "base_y": -0.2, "base_yaw": 0.8})
    x, y, yaw = stretch_model.base_pose(model, data)
    assert (x, y, yaw) == pytest.approx((0.5, -0.2, 0.8), abs=0.005)
    base = data.body(stretch_model.ROOT_BODY)
    assert base.xpos == pytest.approx([0.5, -0.2, 0.0], abs=0.005)
    # translate_mobile_base goes along the current heading
    goal = stretch.base_goal(x, y, yaw, translate=0.3)
    _settle(model, data, dict(zip(stretch_model.BASE_JOINTS, goal, strict=True)))
    assert base.xpos[:2] == pytest.approx([0.5 + 0.3 * math.cos(0.8), -0.2 + 0.3 * math.sin(0.8)],
                                          abs=0.005)


def test_stable_for_five_seconds_at_mid_range(model):
    data = mujoco.MjData(model)
    mid = {j.name: (j.lower + j.upper) / 2 for j in stretch.JOINT_LIMITS.joints}
    for name in stretch_model.ACTUATED_JOINTS:
        data.ctrl[model.actuator(stretch_model.actuator_name(name)).id] = mid.get(name, 0.1)
    peak = 0.0
    for _ in range(5):
        mujoco.mj_step(model, data, nstep=round(1.0 / model.opt.timestep))
        assert np.all(np.isfinite(data.qpos)) and np.all(np.isfinite(data.qvel))
        peak = max(peak, float(np.abs(data.qvel).max()))
    assert data.time == pytest.approx(5.0)
    assert np.abs(data.qvel).max() < 1e-2  # settled
    assert peak < 20.0
    for name, value in mid.items():
        assert _q(model, data, name) == pytest.approx(value, abs=0.02), name


def test_offscreen_render_shows_the_robot(model, data):
    renderer = mujoco.Renderer(model, 240, 320)
    try:
        camera = mujoco.MjvCamera()
        camera.lookat[:] = [0.0, 0.0, 0.6]
        camera.distance, camera.azimuth, camera.elevation = 2.5, 135.0, -20.0
        renderer.update_scene(data, camera=camera)
        image = renderer.render()
        assert image.shape == (240, 320, 3)
        assert image.std() > 5.0 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50
        renderer.update_scene(data, camera=stretch_model.GRIPPER_CAMERA)
        assert renderer.render().std() > 1.0
    finally:
        renderer.close()


def test_gripper_holds_a_cube_while_lifting():
    spec = stretch_model.build_stretch_spec()
    probe = spec.compile()
    data = mujoco.MjData(probe)
    pose = dict(stretch.STOW)
    pose.update(stretch.expand_command(
        ["joint_lift", "joint_arm", "joint_wrist_yaw", "joint_wrist_pitch", "gripper_aperture"],
        [0.55, 0.3, 0.0, -math.pi / 2, 0.1]).joints)
    stretch_model.set_joint_positions(probe, data, pose)
    site, _ = stretch_model.grasp_site_pose(probe, data)
    edge = 0.04
    table_top = site[2] - edge / 2 - 0.01  # pads (4 cm tall) clear the table top
    spec.worldbody.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.2, 0.2, 0.02],
                            pos=[site[0], site[1], table_top - 0.02], contype=1, conaffinity=1)
    cube = spec.worldbody.add_body(name="cube", pos=[site[0], site[1], table_top + edge / 2])
    cube.add_freejoint()
    cube.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=[edge / 2] * 3, mass=0.2, contype=3,
                  conaffinity=3)
    model = spec.compile()
    data = mujoco.MjData(model)
    stretch_model.set_joint_positions(model, data, pose)
    _settle(model, data, stretch.expand_command(["gripper_aperture"], [-0.05]).joints, 1.5)
    assert stretch_model.finger_aperture(model, data) == pytest.approx(edge, abs=0.005)
    start = data.body("cube").xpos.copy()
    _settle(model, data, {"joint_lift": pose["joint_lift"] + 0.15}, 2.0)
    assert data.body("cube").xpos[2] - start[2] == pytest.approx(0.15, abs=0.01)
