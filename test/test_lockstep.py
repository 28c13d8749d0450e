"""The lockstep closed loop (TaskRunner on the in-process simulator) and its windows and labels."""

import functools
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from failrecov_ros.datagen.closed_loop import (
    CollectConfig,
    collect,
    episode_spec,
    monitor_windows,
)
from failrecov_ros.evaluation.closed_loop import suite
from failrecov_ros.sim.lockstep import Faults, LockstepLoop, LockstepSession
from failrecov_ros.sim.tasks import make_task
from failrecov_ros.skills.motion import JointPath
from failrecov_ros.skills.runner import GripperGoal, MotionStatus, ResultCode
from failrecov_ros.skills.steps import GRASP
from failrecov_ros.training.compact import load_samples

TASKS_YAML = str(Path(__file__).resolve().parents[1] / "config" / "skills" / "tasks.yaml")


@functools.lru_cache(maxsize=1)
def _session() -> LockstepSession:
    return LockstepSession(TASKS_YAML)


@functools.lru_cache(maxsize=1)
def _nominal_pick():
    return _session().run("pick_cube", 0, hold_s=0.5)


def stamps_of(recording):
    return [f.stamp_ns for f in recording.frames]


def _events(recording, event):
    return [s for s in recording.statuses if s.event == event and s.event_stamp_ns == s.stamp_ns]


def test_nominal_pick_succeeds_in_lockstep():
    recording = _nominal_pick()
    assert recording.result.code is ResultCode.SUCCEEDED, recording.result.message
    assert recording.success_at_end["success"] and recording.success_at_end["held"]
    # The executor's own stream: skills, stages and keyframes at simulated times.
    closes = _events(recording, "gripper_close")
    assert [s.stage for s in closes] == ["grasp"]
    assert [s.skill for s in _events(recording, "skill_start")] == ["home", "approach", "grasp",
                                                                  "lift"]
    stamps = [f.stamp_ns for f in recording.frames]
    assert np.allclose(np.diff(stamps), 1e8, atol=1e7)  # 10 Hz of simulated time
    assert recording.end_ns / 1e9 == pytest.approx(stamps[-1] / 1e9, abs=0.6)  # + the hold
    rgb = recording.frame(len(stamps) // 2)
    assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8 and rgb.std() > 10


def test_monitor_windows_come_at_the_runtime_triggers():
    recording = _nominal_pick()
    windows = monitor_windows(recording)
    # Short only at the start (the monitor pads those), and always with robot state.
    assert all(len(w.frames) == min(10, w.frames[-1] + 1) for w in windows)
    assert all(w.joint_positions.shape == (len(w.frames), 7) for w in windows)
    # Every tenth frame, and a few frames after each gripper event.
    ends = [w.frames[-1] for w in windows]
    assert ends[0] <= 9 and max(np.diff(ends)) <= 10
    assert len(ends) >= len(stamps_of(recording)) // 10
    stamps = np.array([f.stamp_ns for f in recording.frames])
    close = _events(recording, "gripper_close")[0].stamp_ns
    after = int(np.searchsorted(stamps, close))
    assert any(after + 2 <= e <= after + 4 for e in ends), (after, ends)
    # The window carries the executor's context, with the task library's instruction.
    assert {w.context.instruction for w in windows} == {"pick up the cube"}
    assert "grasp" in {w.context.stage for w in windows}


def _x_offset_seed() -> tuple[CollectConfig, float]:
    for seed in range(50):
        config = CollectConfig(seed=seed, tasks=("pick_cube",), faults={"pose_offset": 1.0},
                               vary_scene=False, none_keep=1.0, hold_s=1.0)
        offset = episode_spec(config, 0).faults.pose_offset
        if offset[0] != 0.0:
            return config, offset[0]
    raise AssertionError("no x offset drawn in 50 seeds")


def test_weak_close_is_injected_as_the_configured_mechanism():
    def drawn(mode):
        config = CollectConfig(seed=3, tasks=("pick_cube",), faults={"weak_close": 1.0},
                               weak_close_mode=mode)
        return [episode_spec(config, i).faults for i in range(12)]
    assert all(f.weak_grasps == 0 and f.grasp_force_scale < 0.02 for f in drawn("force"))
    assert all(f.weak_grasps == 1 and f.grasp_force_scale == 1.0 for f in drawn("closure"))
    both = drawn("both")
    assert {f.weak_grasps for f in both} == {0, 1}
    with pytest.raises(ValueError, match="weak_close_mode"):
        CollectConfig(weak_close_mode="gentle")


def test_a_short_closure_leaves_the_cube_behind_and_the_executor_notices():
    """The demo's weak_close: the gripper reports a grasp, the cube never leaves the table.

    The fingers' width looks like a grasp; the cube's perceived pose, left behind by the lift,
    is what tells (``ExecutorConfig.held_max_distance``).
    """
    recording = _session().run("pick_cube", 0, faults=Faults(weak_grasps=1))
    assert recording.result.code is not ResultCode.SUCCEEDED
    assert "lift" in recording.result.message
    assert "did not move with it" in recording.result.message
    assert not recording.success_at_end["success"]
    assert not recording.success_at_end["held"]


def test_pose_offset_fails_the_grasp_and_is_labelled_translation_x(tmp_path):
    config, offset = _x_offset_seed()
    assert 0.03 <= abs(offset) <= 0.05
    result = collect(config, tmp_path, 1, TASKS_YAML)
    rows = pq.read_table(tmp_path / "attempts" / "chunk-00000.parquet").to_pylist()
    params = json.loads(rows[0]["parameters_json"])
    assert params["runner_result"] in ("FAILED", "CONTROLLER_ERROR"), params
    accepted = [r for r in rows if r["accepted"]]
    assert accepted and result["samples"] == len(accepted)
    assert {r["failure_type"] for r in accepted} == {"translation_x"}
    bins = round(abs(offset) / 0.01)
    for row in accepted:
        assert row["ee_delta"][:2] == pytest.approx([-offset, 0.0])
        assert row["directive"]["dir_x"] == -int(math.copysign(1, offset))
        assert row["directive"]["bins_x"] == bins and row["directive"]["bins_y"] == 0
        assert row["stage"] == "pre_grasp" and row["failed"]
    # Windows from before the grasp showed the miss are not labelled either way.
    shown = json.loads(accepted[0]["scores_json"])["visible_from_s"]
    early = [r for r in rows if r["frame_times"][-1] < shown]
    assert early and all(not r["accepted"] and "not visible" in r["reasons"][0] for r in early)
    # The training loader reads the shards like the data engine's.
    samples = load_samples(tmp_path, 96)
    assert len(samples) == len(accepted) and samples.frames.shape[1:] == (10, 96, 96, 3)
    assert samples.labels[0].correction.directive.bins_x == bins


def test_same_seed_gives_identical_frames():
    def digest() -> str:
        recording = _session().run("place_in_bowl", 3, faults=Faults(close_failures=1),
                                   hold_s=0.3)
        try:
            h = hashlib.sha256()
            for frame in recording.frames:
                h.update(frame.state.integration.tobytes())
            for i in range(0, len(recording.frames), max(1, len(recording.frames) // 6)):
                h.update(recording.frame(i).tobytes())
            h.update(repr([(s.stamp_ns, s.stage, s.event) for s in recording.statuses]).encode())
            return h.hexdigest()
        finally:
            recording.close()

    assert digest() == digest()


def test_force_open_leaves_the_hand_open():
    recording = _session().run("pick_cube", 1, faults=Faults(close_failures=1), hold_s=0.0)
    try:
        assert recording.result.code is ResultCode.FAILED
        assert "grasp failed" in recording.result.message
        assert recording.frames[-1].gripper_width > 0.07
    finally:
        recording.close()


def _loop() -> LockstepLoop:
    session = _session()
    loop = LockstepLoop(make_task("pick_cube", 0), Faults(), session.settings)
    loop.sleep(0.05)
    return loop


def test_backend_preempts_stops_and_rejects_like_the_controllers():
    loop = _loop()
    backend = loop.backend
    q0 = backend.joint_positions()
    names = backend.joint_names
    far = q0 + np.array([0.3, 0, 0, 0, 0, 0, 0])
    first = backend.follow(JointPath(names, np.array([2.0]), far[None]))
    loop.sleep(0.2)
    assert not first.done()
    second = backend.follow(JointPath(names, np.array([2.0]), q0[None]))
    assert first.done() and first.outcome().status is MotionStatus.ABORTED
    assert "preempted" in first.outcome().message
    loop.sleep(0.2)
    assert backend.stop().ok
    assert second.done() and second.outcome().status is MotionStatus.CANCELED
    held = backend.joint_positions()
    loop.sleep(0.5)
    assert np.allclose(backend.joint_positions(), held, atol=2e-3)  # holds where it stopped
    bad = backend.follow(JointPath(names, np.array([1.0]), np.full((1, 7), math.nan)))
    assert bad.done() and bad.outcome().status is MotionStatus.REJECTED
    assert "INVALID_GOAL" in bad.outcome().message
    ok = backend.follow(JointPath(names, np.array([0.5]), held[None]))
    loop.sleep(2.0)
    assert ok.done() and ok.outcome().ok


def test_gripper_faults_act_like_the_simulator_nodes():
    loop = _loop()
    loop.gripper.close_failures = 1
    goal = GripperGoal(GRASP, 0.04, 20.0, 0.01, 0.04)
    empty = loop.backend.gripper(goal)
    loop.sleep(1.5)
    assert empty.done() and empty.outcome().status is MotionStatus.ABORTED
    assert empty.outcome().width == pytest.approx(0.08, abs=2e-3)  # never closed
    closing = loop.backend.gripper(goal)
    loop.sleep(2.5)
    # No cube between the fingers now: it closes fully and the grasp's width check fails.
    assert closing.done() and closing.outcome().width < 0.005
    with pytest.raises(ValueError):
        Faults(pose_offset=(0.3, 0.0, 0.0))


# --- recovery with a perfect monitor ---------------------------------------------------------
def _oracle(spec):
    """A monitor that tells the truth with every status from its cue until the recovery.

    The cue is the grasp's close, or a push's start; windows keep coming from a real monitor.
    """
    offered = []

    def monitor(status, now_ns):
        if status.event == "recovery_start":
            offered.append(None)  # told enough
        cue = (status.event == "gripper_close" if spec.task != "push_cube"
               else status.event == "skill_start" and status.skill == "push")
        if None in offered or not (offered or cue):
            return None
        offered.append(now_ns)
        return spec.truth().with_context(stamp_ns=now_ns, episode_id=spec.name)
    return monitor, offered


@pytest.mark.parametrize("name", ["04_pick_cube_translation_x", "06_push_cube_translation_x",
                                  "14_stack_cube_force_open", "16_place_in_bowl_weak_close"])
def test_the_true_diagnosis_recovers_the_injected_fault(name):
    """The executor's half of recovery, without a model.

    Each demo fault fails the task without the monitor and is undone when the monitor names
    it and its correction (push: the paddle turns the short way, or IK fails on the way).
    """
    spec = next(s for s in suite("demo") if s.name == name)
    p = spec.sim_parameters()
    faults = Faults(pose_offset=tuple(p["faults.pose_offset"]),
                    close_failures=p["faults.close_failures"], weak_grasps=p["faults.weak_grasps"])
    session = LockstepSession(TASKS_YAML, {"recovery.diagnosis_wait_s": 5.0})
    baseline = session.run(spec.task, spec.seed, faults=faults, episode_id=spec.name)
    assert not baseline.success_at_end["success"], baseline.result.message
    monitor, offered = _oracle(spec)
    healed = session.run(spec.task, spec.seed, faults=faults, recovery_enabled=True,
                         episode_id=spec.name, monitor=monitor)
    assert offered, "the oracle never saw its cue"
    assert healed.result.code is ResultCode.SUCCEEDED, healed.result.message
    assert healed.result.recoveries_succeeded == 1
    assert healed.success_at_end["success"], healed.success_at_end
