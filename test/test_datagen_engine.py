"""Data engine: operators, labels, verifiers, determinism, kill -9 resume, recorded bags."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ament_index_python.packages import get_package_prefix

from failrecov_ros.core import geometry
from failrecov_ros.core.limits import JointLimit, JointLimits
from failrecov_ros.core.safety import MotionThresholds, calibrate_thresholds, check_joint_path
from failrecov_ros.core.schema import validate
from failrecov_ros.datagen import actions, dataset, runner
from failrecov_ros.datagen.bags import read_demonstration, write_episode_bag
from failrecov_ros.datagen.config import DatagenConfig, from_dict, load
from failrecov_ros.datagen.engine import (
    BRANCH_MARGIN,
    AttemptSpec,
    Engine,
    attempt_spec,
    stream_from_episode,
)
from failrecov_ros.datagen.recorded import stream_from_demonstration, task_from_demonstration
from failrecov_ros.datagen.runner import generate
from failrecov_ros.datagen.world_model import PhysicsWorldModel
from failrecov_ros.robots import fr3
from failrecov_ros.sim.expert import DOWN, ExpertRunner, Faults, run_expert
from failrecov_ros.sim.scene import Simulation
from failrecov_ros.sim.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = MotionThresholds(velocity=2.5, acceleration=8.0)


@pytest.fixture(scope="module")
def demo():
    """A clean pick_cube demonstration, its simulation and its action stream."""
    task = make_task("pick_cube", 0)
    episode = run_expert(task)
    sim = Simulation(task.scene)
    return task, episode, sim, stream_from_episode(episode, sim)


@pytest.fixture(scope="module")
def world():
    return PhysicsWorldModel()


# --- action-stream operators -----------------------------------------------------------------
def _stream(n=40, k=20):
    closure = np.zeros(n)
    closure[k:] = 1.0
    tcp = np.tile([0.5, 0.0, 0.2, 1, 0, 0, 0], (n, 1)).astype(float)
    return actions.ActionStream.from_states(np.arange(n) * 0.1, np.zeros((n, 7)), tcp, closure)


def test_keyframes_from_measured_width():
    width = np.r_[np.full(10, 0.08), np.linspace(0.08, 0.04, 5), np.full(10, 0.04),
                  np.linspace(0.04, 0.08, 4), np.full(5, 0.08)]
    closure = actions.closure_from_width(width)
    assert actions.keyframes(closure) == [(10, "close"), (25, "open")]  # first falling step


def test_delay_close_shifts_the_close_inside_the_window_only():
    stream = _stream()
    delayed = actions.delay_close(stream, 20, 8, 5)
    assert actions.keyframes(delayed.closure) == [(25, "close")]
    short = actions.delay_close(stream, 20, 2, 5)  # the window ends first: closes at k + w + 1
    assert actions.keyframes(short.closure) == [(23, "close")]
    with pytest.raises(ValueError, match="delay must be positive"):
        actions.delay_close(stream, 20, 8, 0)


def test_weak_close_scales_until_the_gripper_opens_and_force_open_stays_open():
    stream = _stream()
    stream = stream.replace(closure=np.r_[stream.closure[:30], np.zeros(10)])
    weak = actions.weak_close(stream, 20, 3, 0.1)
    assert np.allclose(weak.closure[20:30], 0.1) and np.all(weak.closure[30:] == 0)
    opened = actions.force_open(stream, 20, 3)  # not a close at k + w + 1: that is a delay
    assert np.all(opened.closure[17:30] == 0) and np.all(opened.closure[30:] == 0)
    assert np.array_equal(opened.closure[:17], stream.closure[:17])
    held = actions.force_open(_stream(), 20, 3)  # a grasp held to the end stays open to the end
    assert actions.keyframes(held.closure) == []


def test_translation_offsets_the_window_and_fades():
    stream = _stream()
    moved = actions.translation(stream, 20, 4, (0.03, -0.02), ramp=3)
    offset = moved.tcp[:, :2] - stream.tcp[:, :2]
    assert np.allclose(offset[16:25], [0.03, -0.02])
    assert np.allclose(offset[:13], 0) and np.allclose(offset[28:], 0)
    assert np.all(np.abs(np.diff(offset[:, 0])) <= 0.03 / 2 + 1e-9)  # no jump
    assert moved.moved[14] and not moved.moved[5]


def test_action_stream_rejects_nan_and_unknown_operator():
    with pytest.raises(ValueError, match="NaN"):
        actions.ActionStream.from_states([0, 0.1], np.full((2, 7), np.nan), np.zeros((2, 7)),
                                         [0, 0])
    with pytest.raises(ValueError, match="unknown operator"):
        actions.apply(_stream(), "wobble", 20, 3)


# --- each operator produces its failure ------------------------------------------------------
@pytest.mark.parametrize("operator, parameters", [
    ("delay_close", {"delay": 16}), ("weak_close", {"scale": 0.01}), ("force_open", {}),
    ("translation", {"offset": (0.0, 0.045)})])
def test_each_dream2fix_operator_fails_a_demo_that_replays_cleanly(demo, world, operator,
                                                                   parameters):
    task, _, _, stream = demo
    assert world.rollout(task, stream, keep_states=False).success
    k = [k for k, kind in actions.keyframes(stream.closure) if kind == "close"][0]
    perturbed = world.rollout(task, actions.apply(stream, operator, k, 20, **parameters),
                              keep_states=False)
    assert not perturbed.success, operator


@pytest.mark.parametrize("index", range(0, 64, 7))
def test_failsafe_attempts_match_their_drawn_failure(index):
    config = DatagenConfig(tasks=("pick_cube",), generators={"failsafe": 1.0})
    spec = attempt_spec(config, index)
    assert spec.generator == "failsafe"
    assert spec.parameters["stage"] in ("approach", "pre_grasp", "lift")
    if spec.mode.startswith("translation"):
        axis = "xyz".index(spec.mode[-1])
        value = spec.parameters["translation"][axis]
        assert 0.02 <= abs(value) <= 0.1 and sum(map(abs, spec.parameters["translation"])) \
            == abs(value)
    elif spec.mode.startswith("rotation"):
        assert 0.15 <= max(map(abs, spec.parameters["rotation"])) <= 1.0
    else:
        low, high = config.failsafe.stall_range_s
        assert spec.mode == "stall" and low <= spec.parameters["stall_s"] <= high


# --- labels ----------------------------------------------------------------------------------
def test_ee_delta_matches_a_hand_computed_case():
    yaw = 0.1
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    start_q, end_q = np.empty(4), np.empty(4)
    import mujoco

    mujoco.mju_mat2Quat(start_q, DOWN.reshape(9))
    mujoco.mju_mat2Quat(end_q, (rz @ DOWN).reshape(9))
    delta = geometry.ee_delta((0.5, 0.0, 0.2), start_q, 0.08, (0.52, -0.01, 0.25), end_q, 0.0)
    assert np.allclose(delta, [0.02, -0.01, 0.05, 0.0, 0.0, 0.1, -0.08], atol=1e-9)
    position, rotation, width = geometry.apply_ee_delta((0.5, 0.0, 0.2), DOWN, 0.08, delta)
    assert np.allclose(position, (0.52, -0.01, 0.25)) and np.allclose(rotation, rz @ DOWN)
    assert width == pytest.approx(0.0)


def test_rpy_round_trip():
    for rpy in [(0.3, -0.2, 1.2), (-1.0, 0.4, -2.5), (0.0, 0.0, 0.0)]:
        assert np.allclose(geometry.rpy_from_matrix(geometry.matrix_from_rpy(*rpy)), rpy)


# --- verifiers -------------------------------------------------------------------------------
def test_kinematic_check_rejects_overspeed_and_limit_and_nan(demo):
    _, episode, _, _ = demo
    dt = 0.1
    assert check_joint_path(episode.arm_q, dt, fr3.ARM_LIMITS, thresholds=THRESHOLDS,
                            margin=-0.002).ok
    fast = check_joint_path(episode.arm_q[::4], dt, fr3.ARM_LIMITS, thresholds=THRESHOLDS)
    assert not fast.ok and any("exceeds" in v for v in fast.violations)
    outside = episode.arm_q.copy()
    outside[5, 3] = fr3.ARM_LIMITS.upper[3] + 0.1
    report = check_joint_path(outside, dt, fr3.ARM_LIMITS)
    assert not report.ok and "fr3_joint4" in report.violations[0]
    broken = episode.arm_q.copy()
    broken[3, 1] = np.nan
    assert check_joint_path(broken, dt, fr3.ARM_LIMITS).violations == (
        "non-finite positions in fr3_joint2",)


def test_calibration_pooling_keeps_the_percentile_of_clean_demos():
    limits = JointLimits.of([JointLimit("j", -1000, 1000, 1000)])
    rng = np.random.default_rng(0)
    paths = [np.cumsum(rng.normal(0, s, (50, 1)), axis=0) for s in np.linspace(0.8, 1, 40)]
    peak = calibrate_thresholds(paths, 0.1)
    passed = [check_joint_path(p, 0.1, limits, thresholds=peak).ok for p in paths]
    assert 0.9 <= np.mean(passed) < 1.0
    literal = calibrate_thresholds(paths, 0.1, statistic="samples")
    assert np.mean([check_joint_path(p, 0.1, limits, thresholds=literal).ok
                    for p in paths]) < 0.2  # the paper's literal pooling rejects most
    with pytest.raises(ValueError, match="statistic"):
        calibrate_thresholds(paths, 0.1, statistic="median")


def _spec(mode, generator="dream2fix", **parameters):
    return AttemptSpec(0, 0, "pick_cube", 0, {}, generator, mode, parameters, 0)


@pytest.fixture(scope="module")
def engine(demo):
    engine = Engine(DatagenConfig(tasks=("pick_cube",), vary_scene=False), THRESHOLDS)
    yield engine
    engine.close()


def _context(engine, demo):
    task, _, _, _ = demo
    spec = attempt_spec(engine.config, 0)
    context = engine._episode(spec)
    assert context.task.name == task.name
    return context


def test_verifier_rejects_a_perturbation_that_does_not_fail(engine, demo):
    context = _context(engine, demo)
    row = engine._dream2fix(_spec("delay_close", delay=1), context)
    assert not row["accepted"]
    assert row["reasons"] == ["perturbation did not cause a failure"]
    assert json.loads(row["scores_json"])["perturbed_success"] is True


def test_a_real_dream2fix_failure_is_accepted_with_a_directive(engine, demo):
    context = _context(engine, demo)
    row = engine._dream2fix(_spec("force_open"), context)
    assert row["accepted"], row["reasons"]
    assert row["frames"].shape == (10, 224, 224, 3)
    assert "MODE=force_open" in row["label_dream2fix"] and "FIX_G=CLOSE" in row["label_dream2fix"]
    label = json.loads(row["label_json"])
    assert label["failed"] and label["correction"]["directive"]["gripper"] == "close"
    scores = json.loads(row["scores_json"])
    assert scores["fix_success"] and scores["visible_fraction"] >= 0.5


def test_verifier_rejects_a_correction_that_does_not_recover(engine, demo):
    context = _context(engine, demo)
    from failrecov_ros.sim.expert import Faults

    failed = engine._run(context.sim, context.task, Faults(skip_close=True))
    assert not failed.success
    lift = [i for i in range(len(context.clean.times)) if context.clean.stage_at(i) == "lift"]
    # P_c mid-lift on the clean run: the gripper closes on air above the cube, nothing recovers.
    row = engine._failsafe_pair(_spec("force_open", "failsafe"), context, failed,
                                len(failed.times) - 1, lift[len(lift) // 2], 0, {},
                                engine._kinematics(failed.arm_q))
    assert not row["accepted"]
    assert "correction does not recover (replay failed)" in row["reasons"]


def test_verifier_rejects_an_overspeed_trajectory(engine, demo):
    _, episode, _, _ = demo
    report = engine._kinematics(episode.arm_q[::3])
    assert not report.ok and any("calibrated" in v for v in report.violations)


def test_a_crashing_attempt_is_a_rejected_row(engine, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("planted crash")

    monkeypatch.setattr(engine, "_episode", boom)
    rows = engine.attempt(3)
    assert len(rows) == 1 and not rows[0]["accepted"]
    assert rows[0]["error"] == "RuntimeError: planted crash"


def test_a_run_in_which_every_attempt_crashes_stops_with_the_error(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("planted crash")

    monkeypatch.setattr(Engine, "_episode", boom)
    with pytest.raises(RuntimeError, match=r"all 32 attempts of this run crashed .*planted"):
        generate(from_dict(SMALL), tmp_path / "run", 5, progress=False)
    _, attempts = _tables(tmp_path / "run")
    rows = [row for chunk in attempts for row in chunk]
    assert len(rows) == runner.MAX_CRASHED_ATTEMPTS  # stopped at the limit, every row kept
    assert all(row["error"] == "RuntimeError: planted crash" for row in rows)


# --- branching: a faulted run / perturbed rollout continues from the clean one's checkpoint ---
def _same_states(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x.integration, y.integration) and np.array_equal(x.forcerange, y.forcerange)
        and np.array_equal(x.friction, y.friction) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def stacking():
    """A clean stack_cube run kept with its states and checkpoints, and its simulation."""
    task = make_task("stack_cube", 3)
    sim = Simulation(task.scene)
    sim.step(50)
    clean = ExpertRunner(sim, task, keep_states=True).run()
    assert clean.success
    return task, sim, clean


@pytest.mark.parametrize("faults", [
    Faults(stage="place", translation=(0.05, 0.0, 0.0)),
    Faults(stage="pre_grasp", rotation=(0.0, 0.0, 0.9)),
    Faults(stage="transport", stall_s=2.0),
    Faults(slip_stage="transport", slip_friction=0.004),
    Faults(early_open_stage="lift", early_open_fraction=0.5),
    Faults(skip_close=True),
], ids=["translation", "rotation", "stall", "slip", "early_release", "force_open"])
def test_a_branched_faulted_run_equals_one_from_the_start(stacking, faults):
    task, sim, clean = stacking
    segment = faults.first_segment(clean.plan)
    assert 0 < segment < len(clean.plan)  # a real branch, past the start
    sim.reset()
    sim.step(50)
    scratch = ExpertRunner(sim, task, faults, keep_states=True).run()
    # Segment 1 starts on a recorded step with the first gripper command still scheduled.
    every = round(1 / (clean.record_hz * sim.timestep))
    assert clean.checkpoints[1].scheduled and clean.checkpoints[1].step % every == 0
    for start in sorted({segment, 1}):
        branched = ExpertRunner(sim, task, faults, keep_states=True).resume(clean, start)
        for name in ("times", "arm_q", "arm_dq", "fingers", "tcp_position", "tcp_quat",
                     "target_pose", "stage_index", "segment_index", "gripper_command"):
            assert np.array_equal(getattr(branched, name), getattr(scratch, name)), name
        assert branched.events == scratch.events and branched.details == scratch.details
        assert branched.success == scratch.success and branched.timed_out == scratch.timed_out
        assert _same_states(branched.states, scratch.states)
    # ... and it is the faulted run, not the clean one: the prefix is shared, the rest is not
    rows = clean.checkpoints[segment].rows
    assert np.array_equal(branched.arm_q[:rows], clean.arm_q[:rows])
    assert any(e["event"].startswith("fault_") for e in branched.events)
    assert (len(branched.times) != len(clean.times)
            or not np.array_equal(branched.target_pose, clean.target_pose))


def test_faults_act_from_their_first_segment_only(stacking):
    _, _, clean = stacking
    stages = [s.stage for s in clean.plan]
    assert Faults(stage="place", stall_s=1.0).first_segment(clean.plan) == stages.index("place")
    assert Faults(slip_stage="lift").first_segment(clean.plan) == stages.index("lift")
    close = next(i for i, s in enumerate(clean.plan) if s.keyframe == "close")
    assert Faults(close_delay_s=0.3).first_segment(clean.plan) == close
    assert Faults().first_segment(clean.plan) == len(clean.plan)
    with pytest.raises(ValueError, match="checkpoint"):
        ExpertRunner(stacking[1], stacking[0], Faults()).resume(
            dataclasses.replace(clean, checkpoints={}), 2)


def _same_rollouts(a, b):
    for name in ("times", "arm_q", "gripper_width", "tcp_position", "tcp_quat", "target_pose",
                 "closure"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.success == b.success and a.details == b.details and a.ik_failures == b.ik_failures
    assert _same_states(a.states, b.states)


@pytest.mark.parametrize("operator, parameters", [
    ("delay_close", {"delay": 16}), ("weak_close", {"scale": 0.01}), ("force_open", {}),
    ("translation", {"offset": (0.0, 0.045)})])
def test_a_branched_rollout_equals_one_from_the_start(demo, world, operator, parameters):
    task, _, _, stream = demo
    k = [k for k, kind in actions.keyframes(stream.closure) if kind == "close"][0]
    at = k - 20 - BRANCH_MARGIN
    assert at > 0
    reference = world.rollout(task, stream, checkpoint_at=at)
    assert reference.checkpoint.index == at
    perturbed = actions.apply(stream, operator, k, 20, **parameters)
    targets, _ = world.joint_targets(world._simulation_for(task), perturbed)
    assert world._shares_prefix(reference.checkpoint, task, perturbed, targets)
    _same_rollouts(world.rollout(task, perturbed, branch_from=reference),
                   world.rollout(task, perturbed))
    # A stream that differs before the checkpoint cannot branch and is replayed from the start.
    early = perturbed.replace(closure=np.where(np.arange(len(stream)) == 1, 0.5,
                                               perturbed.closure))
    targets, _ = world.joint_targets(world._simulation_for(task), early)
    assert not world._shares_prefix(reference.checkpoint, task, early, targets)
    _same_rollouts(world.rollout(task, early, branch_from=reference),
                   world.rollout(task, early))


class _PlainWorldModel:
    """The physics world model behind the bare interface: the engine cannot branch it."""

    name = "plain"

    def __init__(self, inner):
        self.inner = inner

    def rollout(self, task, stream, *, keep_states=True):
        return self.inner.rollout(task, stream, keep_states=keep_states)


def test_engine_rows_are_the_same_with_and_without_branching():
    config = from_dict({"tasks": ["pick_cube", "stack_cube"], "image_size": [64, 64],
                        "generators": {"failsafe": 0.4, "dream2fix": 0.4, "slip": 0.1,
                                       "early_release": 0.1}})
    fast = Engine(config, THRESHOLDS)
    slow = Engine(config, THRESHOLDS)
    slow.world_model = _PlainWorldModel(PhysicsWorldModel(slow._simulation_for))
    slow._run_faulted = lambda context, faults: slow._run(context.sim, context.task, faults)
    generators = set()
    try:
        for index in range(12):
            rows, expected = fast.attempt(index), slow.attempt(index)
            assert len(rows) == len(expected)
            for row, other in zip(rows, expected, strict=True):
                assert not row["error"], row["error"]
                generators.add(row["generator"])
                frames, other_frames = row.pop("frames"), other.pop("frames")
                assert (frames is None) == (other_frames is None)
                assert frames is None or np.array_equal(frames, other_frames)
                assert row == other
    finally:
        fast.close()
        slow.close()
    assert {"failsafe", "dream2fix"} <= generators


# --- config ----------------------------------------------------------------------------------
def test_shipped_yaml_equals_the_defaults_and_typos_are_errors():
    assert load(ROOT / "config" / "datagen" / "default.yaml") == DatagenConfig()
    with pytest.raises(ValueError, match="unknown keys.*'pairs_per_fail'"):
        from_dict({"failsafe": {"pairs_per_fail": 2}})
    with pytest.raises(ValueError, match="paper"):
        from_dict({"failsafe": {"translation_range": [0.0, 0.3]}})


# --- runner: determinism and resume ----------------------------------------------------------
SMALL = {"tasks": ["pick_cube"], "attempts_per_episode": 2, "chunk_size": 2,
         "vary_scene": False, "image_size": [64, 64],
         "generators": {"failsafe": 0.3, "dream2fix": 0.5, "none": 0.2},
         "failsafe": {"pairs_per_failure": 2}, "verification": {"calibration_episodes": 3}}


def _tables(out):
    data = sorted((out / "data").glob("*.parquet"))
    attempts = sorted((out / "attempts").glob("*.parquet"))
    return ([pq.read_table(p).to_pylist() for p in data],
            [pq.read_table(p).to_pylist() for p in attempts])


def test_same_dataset_for_one_and_two_workers(tmp_path):
    config = from_dict(SMALL)
    one = generate(config, tmp_path / "one", 5, workers=1, progress=False)
    two = generate(config, tmp_path / "two", 5, workers=2, progress=False)
    assert one["accepted"] == two["accepted"] >= 5
    data_one, attempts_one = _tables(tmp_path / "one")
    data_two, attempts_two = _tables(tmp_path / "two")
    assert attempts_one == attempts_two and data_one == data_two
    labels = [validate(json.loads(row["label_json"])) for chunk in data_one for row in chunk]
    assert len(labels) == one["accepted"] and any(label.failed for label in labels)
    card = (tmp_path / "one" / "README.md").read_text()
    assert "Retention" in card and "dream2fix" in card


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _datagen_process(tmp_path, out, output=subprocess.PIPE):
    """`failrecov datagen` of SMALL (8 samples, 2 workers) in its own process group."""
    (tmp_path / "c.yaml").write_text(json.dumps(SMALL))
    command = [sys.executable, "-m", "failrecov_ros.cli", "datagen", "--config",
               str(tmp_path / "c.yaml"), "--out", str(out), "--samples", "8", "--quiet",
               "--workers", "2"]
    return command, subprocess.Popen(command, start_new_session=True, stdout=output,
                                     stderr=output, text=True)


def test_kill_dash_nine_then_resume_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "killed"
    # No pipes: orphaned workers writing into a full one would never get to exit.
    command, process = _datagen_process(tmp_path, out, subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((out / "attempts").glob("*.parquet")):
        time.sleep(0.05)
    staged_wait = time.monotonic() + 30
    while time.monotonic() < staged_wait and not list((out / "staging").rglob("*.parquet")):
        time.sleep(0.02)
    # Only the parent dies: its spawned workers must notice and stop on their own.
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    orphans_gone = time.monotonic() + 120
    while time.monotonic() < orphans_gone and _group_alive(process.pid):
        time.sleep(0.1)
    alive = _group_alive(process.pid)
    if alive:
        os.killpg(process.pid, signal.SIGKILL)
    assert not alive, "worker processes outlived the killed run"
    assert list((out / "attempts").glob("*.parquet")), "the run never finished a chunk"
    assert (out / "staging").exists() and not (out / "README.md").exists()
    # Resume through the installed command: its wrapper must not rerun the command inside
    # each spawned worker (it did, before the __main__ guard).
    installed = [f"{get_package_prefix('failrecov_ros')}/bin/failrecov", *command[3:]]
    resumed = subprocess.run(installed, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    reference = generate(from_dict(SMALL), tmp_path / "reference", 8, progress=False)
    data, attempts = _tables(out)
    data_ref, attempts_ref = _tables(tmp_path / "reference")
    assert attempts == attempts_ref and data == data_ref
    ids = [row["sample_id"] for chunk in attempts for row in chunk]
    assert len(ids) == len(set(ids)) and reference["accepted"] >= 8


@pytest.mark.parametrize("group", [True, False], ids=["ctrl_c", "kill_int"])
def test_sigint_stops_the_workers_at_once_and_the_run_resumes(tmp_path, group):
    """Ctrl-C (SIGINT to the whole group) or ``kill -INT`` (the coordinator only)."""
    out = tmp_path / "interrupted"
    _, process = _datagen_process(tmp_path, out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((out / "staging").rglob("*.parquet")):
        time.sleep(0.02)
    staged = list((out / "staging").rglob("*.parquet"))
    if group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=30)
        gone = time.monotonic() + 10
        while time.monotonic() < gone and _group_alive(process.pid):
            time.sleep(0.05)
        alive = _group_alive(process.pid)
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert staged, "nothing was staged before the interrupt"
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "run the same command to resume" in stderr
    assert "Traceback" not in stderr, stderr
    assert not alive, "workers outlived the interrupted run"
    assert not (out / "README.md").exists()
    result = generate(from_dict(SMALL), out, 8, workers=2, progress=False)
    data, attempts = _tables(out)
    ids = [row["sample_id"] for chunk in attempts for row in chunk]
    assert len(ids) == len(set(ids)) and result["accepted"] >= 8
    assert sum(len(chunk) for chunk in data) == result["accepted"]


def test_resume_with_a_different_config_is_refused(tmp_path):
    config = from_dict(SMALL)
    generate(config, tmp_path / "run", 1, progress=False)
    other = from_dict({**SMALL, "chunk_size": 3})
    with pytest.raises(ValueError, match="chunk_size"):
        generate(other, tmp_path / "run", 1, progress=False)


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path):
    config = from_dict(SMALL)
    with dataset.exclusive(tmp_path / "run"):  # as a run in another process holds it
        with pytest.raises(ValueError, match="being written by another"):
            generate(config, tmp_path / "run", 1, progress=False)
    assert generate(config, tmp_path / "run", 1, progress=False)["accepted"] >= 1


# --- recorded demonstrations -----------------------------------------------------------------
def test_a_rosbag_demonstration_replays_and_perturbs_in_the_world_model(demo, world, tmp_path):
    _, episode, sim, _ = demo
    names = (*fr3.ARM_JOINTS, *fr3.FINGER_JOINTS)
    positions = np.hstack([episode.arm_q, episode.fingers])
    bag = write_episode_bag(tmp_path / "demo", times=episode.times - episode.times[0],
                            joint_names=names, positions=positions,
                            instruction=episode.instruction)
    recorded = read_demonstration(bag)
    assert recorded.instruction == episode.instruction
    stream = stream_from_demonstration(recorded, sim)
    task = task_from_demonstration(stream, "pick_cube", seed=5)  # cube moved under the grasp
    assert world.rollout(task, stream, keep_states=False).success
    k = actions.keyframes(stream.closure)[0][0]
    assert not world.rollout(task, actions.force_open(stream, k, 20), keep_states=False).success
