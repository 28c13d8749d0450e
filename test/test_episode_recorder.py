"""Recording live episodes as demonstrations, and the data engine perturbing them.

The cutter and the scene reconstruction are tested directly; ``episode_recorder`` over real DDS
against a status/joint-state/camera publisher and a success check played by this process; the
whole path (datagen launch file -> kept bag -> ``failrecov datagen --demonstrations``) once end
to end.
"""

import json
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image, JointState
from sim_process import running, wait_until
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from failrecov_ros.datagen import actions
from failrecov_ros.datagen.bags import BagError, find_bags, read_demonstration, write_episode_bag
from failrecov_ros.datagen.config import from_dict
from failrecov_ros.datagen.recorded import (
    CLEARANCE_M,
    DEMONSTRATION_FILE,
    EpisodeCutter,
    recorded_stage,
    task_from_demonstration,
)
from failrecov_ros.datagen.runner import generate
from failrecov_ros.msg import SkillStatus
from failrecov_ros.robots import fr3
from failrecov_ros.ros.qos import latched_qos, sensor_qos
from failrecov_ros.sim.expert import run_expert
from failrecov_ros.sim.tasks import TARGET, make_task

NS = "/recorder_test"


# --- the cutter ------------------------------------------------------------------------------
def _cuts(cutter, *updates):
    return [(c.action, c.episode.episode_id, c.keep, c.reason)
            for u in updates for c in cutter.update(*u)]


def test_only_an_episode_seen_whole_that_succeeded_without_recovery_is_kept():
    cutter = EpisodeCutter()
    assert _cuts(cutter, ("a", "running", "pick_cube", "pick", 0), ("a", "running"),
                 ("a", "succeeded")) == [("start", "a", False, ""),
                                         ("end", "a", True, "succeeded")]
    assert _cuts(cutter, ("b", "running"), ("b", "recovering"), ("b", "running"),
                 ("b", "succeeded")) == [("start", "b", False, ""),
                                         ("end", "b", False, "succeeded only after a recovery")]
    assert _cuts(cutter, ("c", "running"), ("c", "failed"))[-1] == (
        "end", "c", False, "episode failed")
    assert _cuts(cutter, ("d", "running", "", "", 7), ("d", "succeeded"))[-1] == (
        "end", "d", False, "recording began mid-episode")
    # A new id while one runs interrupts it; so does an idle status.
    cuts = _cuts(cutter, ("e", "running"), ("f", "running"))
    assert cuts[1][:3] == ("end", "e", False) and "interrupted" in cuts[1][3]
    assert cuts[2] == ("start", "f", False, "")
    assert _cuts(cutter, ("f", "idle"))[0][:3] == ("end", "f", False)
    # The same (empty) id twice is two episodes; a stopped recorder ends the open one unkept.
    assert [c[0] for c in _cuts(cutter, ("", "running"), ("", "succeeded"), ("", "running"))] \
        == ["start", "end", "start"]
    assert [(c.keep, c.reason) for c in cutter.close()] == [
        (False, "interrupted: the recorder stopped")]
    assert cutter.close() == []
    lenient = EpisodeCutter(keep_recovered=True)
    assert _cuts(lenient, ("g", "running"), ("g", "recovering"), ("g", "succeeded"))[-1][2]


# --- the scene a recording implies -----------------------------------------------------------
def _stream(grasp_xy, release_xy, yaw):
    n = 60
    tcp = np.zeros((n, 7))
    tcp[:, :2] = grasp_xy
    tcp[40:, :2] = release_xy
    half = yaw / 2  # the TCP points down (roll pi) and is turned by ``yaw``
    tcp[:, 3:] = [0.0, math.cos(half), math.sin(half), 0.0]
    closure = np.zeros(n)
    closure[20:40] = 1.0
    return actions.ActionStream.from_states(np.arange(n) * 0.1, np.zeros((n, 7)), tcp, closure)


def test_the_scene_puts_the_cube_at_the_grasp_and_the_bowl_at_the_release():
    stream = _stream((0.55, 0.05), (0.45, -0.2), 0.3 + math.pi / 2)
    task = task_from_demonstration(stream, "place_in_bowl", seed=1, instruction="bowl it")
    cube, bowl = task.scene.object(TARGET), task.scene.object("bowl")
    assert cube.position == pytest.approx((0.55, 0.05)) and bowl.position == pytest.approx(
        (0.45, -0.2))
    assert cube.yaw == pytest.approx(0.3, abs=1e-6)  # a quarter turn looks the same
    assert task.instruction == "bowl it"
    # pick_cube: the distractor is pushed out of the grasp's way, the release does not matter.
    for seed in range(8):
        pick = task_from_demonstration(stream, "pick_cube", seed=seed)
        other = np.array(pick.scene.object(pick.other).position)
        assert np.linalg.norm(other - (0.55, 0.05)) >= CLEARANCE_M - 1e-3
    no_release = actions.ActionStream.from_states(
        stream.times, stream.arm_q, stream.tcp, np.r_[np.zeros(20), np.ones(40)])
    with pytest.raises(ValueError, match="never opens"):
        task_from_demonstration(no_release, "stack_cube")
    with pytest.raises(ValueError, match="never closes"):
        task_from_demonstration(stream.replace(closure=np.zeros(60)), "pick_cube")


def test_recorded_stages_follow_the_gripper_keyframes():
    closure = np.r_[np.zeros(20), np.ones(20), np.zeros(20)]
    assert [recorded_stage(closure, s) for s in (0, 18, 22, 30, 39, 42, 55)] == [
        "pre_grasp", "grasp", "grasp", "transport", "release", "release", "retreat"]
    assert recorded_stage(np.r_[np.zeros(10), np.ones(30)], 30) == "lift"


def test_find_bags_lists_a_recorders_folder_and_names_what_is_missing(tmp_path):
    names = (*fr3.ARM_JOINTS, *fr3.FINGER_JOINTS)
    for name in ("b", "a", ".recording/partial"):
        write_episode_bag(tmp_path / "out" / name, times=np.arange(3) * 0.1, joint_names=names,
                          positions=np.zeros((3, 9)))
    (tmp_path / "out" / "runs").mkdir()
    found = find_bags([tmp_path / "out"])
    assert [p.rsplit("/", 1)[1] for p in found] == ["a", "b"]  # hidden and plain folders out
    assert find_bags([tmp_path / "out" / "a", tmp_path / "out"]) == found  # no duplicates
    with pytest.raises(BagError, match="holds no rosbag2 bag"):
        find_bags([tmp_path / "out" / "runs"])
    with pytest.raises(BagError, match="no such bag"):
        find_bags([tmp_path / "missing"])


# --- the data engine on recorded demonstrations ----------------------------------------------
@pytest.fixture(scope="module")
def recorded_bags(tmp_path_factory):
    """Two expert runs written as bags, one with the recorder's sidecar naming its task."""
    folder = tmp_path_factory.mktemp("demos")
    for task_name, seed in (("pick_cube", 3), ("place_in_bowl", 4)):
        episode = run_expert(make_task(task_name, seed))
        bag = folder / f"{task_name}_{seed}"
        write_episode_bag(bag, times=episode.times - episode.times[0],
                          joint_names=(*fr3.ARM_JOINTS, *fr3.FINGER_JOINTS),
                          positions=np.hstack([episode.arm_q, episode.fingers]),
                          instruction=episode.instruction)
        if task_name != "pick_cube":  # the other one relies on demonstration_task
            (bag / DEMONSTRATION_FILE).write_text(yaml.safe_dump({"task": task_name}))
    return find_bags([folder])


def test_datagen_perturbs_recorded_demonstrations_and_labels_them(recorded_bags, tmp_path):
    config = from_dict({"demonstrations": recorded_bags, "vary_scene": False, "chunk_size": 4,
                        "image_size": [48, 48], "generators": {"dream2fix": 0.8, "none": 0.2,
                                                               "failsafe": 0.5}})
    result = generate(config, tmp_path / "data", 6, progress=False)
    rows = [r for f in sorted((tmp_path / "data" / "attempts").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    assert result["accepted"] >= 6
    assert {r["generator"] for r in rows} <= {"dream2fix", "none"}  # no expert plan to perturb
    by_bag = {json.loads(r["parameters_json"])["demonstration"] for r in rows}
    assert by_bag == set(recorded_bags)
    tasks = {json.loads(r["parameters_json"])["demonstration"]: r["task"] for r in rows}
    assert sorted(tasks.values()) == ["pick_cube", "place_in_bowl"]  # sidecar, then default
    accepted = [r for r in rows if r["accepted"]]
    assert any(r["failed"] and r["failure_type"] in ("delay_close", "weak_close", "force_open",
                                                    "translation_x", "translation_y")
               for r in accepted)
    assert all(json.loads(r["scores_json"])["world_model_clean_success"] for r in rows
               if r["generator"] == "dream2fix")
    card = (tmp_path / "data" / "README.md").read_text()
    assert "demonstrations:" in card and recorded_bags[0] in card


def test_recorded_demonstrations_need_a_generator_that_can_use_them(recorded_bags):
    with pytest.raises(ValueError, match="recorded demonstrations need a positive weight"):
        from_dict({"demonstrations": recorded_bags, "generators": {"failsafe": 1.0}})
    with pytest.raises(ValueError, match="demonstration_task"):
        from_dict({"demonstrations": recorded_bags, "demonstration_task": "push_cube"})


# --- the node over real DDS ------------------------------------------------------------------
class _Robot:
    """Plays the executor's status, the robot's joint states, the camera and a success check."""

    def __init__(self, context):
        self.node = rclpy.create_node("fake_robot", namespace=NS, context=context)
        self.status = self.node.create_publisher(SkillStatus, "skill_status", latched_qos())
        self.joints = self.node.create_publisher(JointState, "joint_states", sensor_qos(depth=50))
        self.gripper = self.node.create_publisher(JointState, "franka_gripper/joint_states",
                                                  sensor_qos(depth=50))
        self.image = self.node.create_publisher(Image, "camera/camera/color/image_raw",
                                                sensor_qos(depth=2))
        self.verdicts = []  # what the success check answers, in order
        self.checks = 0
        self.node.create_service(Trigger, "check", self._on_check)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_check(self, request, response):
        response.success = self.verdicts.pop(0) if self.verdicts else True
        response.message = "ok" if response.success else "the cube is on the table"
        self.checks += 1
        return response

    def say(self, episode_id, state, step=0):
        self.status.publish(SkillStatus(episode_id=episode_id, task="pick_cube",
                                        instruction=f"pick up the cube ({episode_id})",
                                        state=state, step=step))
        time.sleep(0.1)

    def move(self, seconds=1.0, rate=50.0):
        """Joint states closing the gripper, and camera frames, at ``rate`` for ``seconds``."""
        steps = int(seconds * rate)
        for i in range(steps):
            stamp = self.node.get_clock().now().to_msg()
            q = [0.1 * i / steps] * 7
            width = 0.04 * (1 - i / steps)
            self.joints.publish(JointState(header=Header(stamp=stamp),
                                           name=list(fr3.ARM_JOINTS), position=q))
            self.gripper.publish(JointState(header=Header(stamp=stamp),
                                            name=list(fr3.FINGER_JOINTS),
                                            position=[width, width]))
            self.image.publish(Image(header=Header(stamp=stamp), height=6, width=8,
                                     encoding="rgb8", step=24, data=bytes(144)))
            time.sleep(1.0 / rate)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


def test_the_recorder_keeps_confirmed_whole_successes_only(rclpy_context, tmp_path):
    out = tmp_path / "demos"
    robot = _Robot(rclpy_context)
    try:
        with running("episode_recorder", "-r", f"__ns:={NS}", "-p", f"output_dir:={out}",
                     "-p", "success_service:=check", "-p", "image_rate_hz:=5.0") as process:
            assert wait_until(lambda: robot.status.get_subscription_count() >= 1
                              and robot.joints.get_subscription_count() >= 1, 20)
            assert wait_until(lambda: robot.node.count_subscribers(
                f"{NS}/camera/camera/color/image_raw") >= 1, 20)
            time.sleep(0.5)
            robot.say("ep_ok", SkillStatus.STATE_RUNNING)
            robot.move(1.0)
            robot.say("ep_ok", SkillStatus.STATE_SUCCEEDED)
            assert wait_until(lambda: (out / "ep_ok" / DEMONSTRATION_FILE).exists(), 20)
            robot.say("ep_failed", SkillStatus.STATE_RUNNING)
            robot.move(0.3)
            robot.say("ep_failed", SkillStatus.STATE_FAILED)
            robot.verdicts.append(False)  # the executor's word is not the world's
            robot.say("ep_denied", SkillStatus.STATE_RUNNING)
            robot.move(0.3)
            robot.say("ep_denied", SkillStatus.STATE_SUCCEEDED)
            robot.say("ep_late", SkillStatus.STATE_RUNNING, step=12)
            robot.move(0.3)
            robot.say("ep_late", SkillStatus.STATE_SUCCEEDED)
            robot.say("ep_last", SkillStatus.STATE_RUNNING)
            robot.move(0.3)
            robot.say("ep_last", SkillStatus.STATE_SUCCEEDED)
            assert wait_until(lambda: (out / "ep_last" / DEMONSTRATION_FILE).exists(), 20)
            robot.say("ep_cut", SkillStatus.STATE_RUNNING)  # still running when it stops
            robot.move(0.3)
            assert wait_until(lambda: any((out / ".recording").iterdir()), 10)
            process.send_signal(2)
            assert process.wait(timeout=15) == 0
    finally:
        robot.close()
    assert robot.checks == 3  # ep_ok, ep_denied, ep_last: the others never got that far
    assert sorted(p.name for p in out.iterdir()) == [".recording", "ep_last", "ep_ok"]
    assert not any((out / ".recording").iterdir())  # the interrupted episode is gone
    sidecar = yaml.safe_load((out / "ep_ok" / DEMONSTRATION_FILE).read_text())
    assert sidecar["task"] == "pick_cube" and sidecar["outcome"] == "demonstration"
    assert sidecar["instruction"] == "pick up the cube (ep_ok)" and not sidecar["recovered"]
    assert f"{NS}/joint_states" in sidecar["topics"] and f"{NS}/skill_status" in sidecar["topics"]
    demo = read_demonstration(out / "ep_ok", joint_states_topics=(
        f"{NS}/joint_states", f"{NS}/franka_gripper/joint_states"),
        image_topic=f"{NS}/camera/camera/color/image_raw")
    assert demo.instruction == "pick up the cube (ep_ok)"
    assert len(demo.times) >= 30 and demo.times[-1] > 0.7
    assert demo.gripper_width[0] > demo.gripper_width[-1] + 0.05  # it saw the gripper close
    assert 3 <= len(demo.frames) <= 8  # a 50 Hz camera kept at 5 Hz for about a second
    assert demo.frames[0].shape == (6, 8, 3)


# --- end to end: datagen launch file, then the data engine ----------------------------------
def test_the_datagen_launch_records_a_demonstration_that_datagen_perturbs(tmp_path):
    demos = tmp_path / "demos"
    launch = subprocess.run(
        [sys.executable, "-m", "failrecov_ros.cli", "launch", "failrecov_ros",
         "datagen.launch.xml", "episodes:=1", f"output_dir:={demos}"],
        capture_output=True, text=True, timeout=400)
    log = launch.stdout + launch.stderr
    assert launch.returncode == 0, log[-5000:]
    kept = find_bags([demos])
    assert [p.rsplit("/", 1)[1] for p in kept] == ["00_pick_cube_none_baseline"], log[-5000:]
    sidecar = yaml.safe_load((demos / "00_pick_cube_none_baseline" / DEMONSTRATION_FILE)
                             .read_text())
    assert "confirmed by mujoco_sim/task_success" in sidecar["reason"]
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"image_size": [48, 48], "chunk_size": 4,
                                      "generators": {"dream2fix": 1.0}}))
    data = tmp_path / "data"
    run = subprocess.run([sys.executable, "-m", "failrecov_ros.cli", "datagen", "--config",
                          str(config), "--demonstrations", str(demos), "--out", str(data),
                          "--samples", "2", "--quiet"],
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [r for f in sorted((data / "attempts").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    assert sum(r["accepted"] for r in rows) >= 2, [r["reasons"] for r in rows]
    assert {json.loads(r["parameters_json"])["demonstration"] for r in rows} == set(kept)
