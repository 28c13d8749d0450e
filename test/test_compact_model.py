"""Compact model: valid outputs by construction, checkpoints, the diagnose() wrapper, training."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from failrecov_ros.core.schema import (
    Correction,
    CorrectionKind,
    Diagnosis,
    Directive,
    GripperCommand,
    validate,
)
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.datagen.config import from_dict
from failrecov_ros.datagen.runner import generate
from failrecov_ros.evaluation.metrics import type_confusion
from failrecov_ros.models import compact
from failrecov_ros.models.base import ModelLoadError, Window, diagnose
from failrecov_ros.models.compact import CompactConfig, CompactModel, CompactNet
from failrecov_ros.robots import fr3
from failrecov_ros.robots.kinematics import make_kinematics
from failrecov_ros.training.compact import (
    Samples,
    TrainConfig,
    _targets,
    epoch_order,
    load_samples,
    loss_fn,
    predict,
    score,
    train,
    window_stage,
)

CONFIG = CompactConfig(window_frames=4, image_size=32, n_joints=7,
                       stages=("approach", "keyframe", "lift"), tasks=("pick_cube",))


def _window(n=4, size=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    return Window(frames=rng.integers(0, 255, (n, *size, 3), dtype=np.uint8),
                  stamps_ns=tuple(range(1, n + 1)), instruction="pick up the red cube",
                  task="pick_cube", joint_positions=rng.normal(size=(n, 7)),
                  gripper_width=np.full(n, 0.04))


@pytest.mark.parametrize("seed", range(8))
def test_random_networks_only_emit_schema_valid_outputs(seed):
    torch.manual_seed(seed)
    net = CompactNet(CONFIG).eval()
    for head in net.heads.values():  # make every class reachable, failures included
        torch.nn.init.normal_(head.weight, std=3.0)
    model = CompactModel(net)
    for k in range(5):
        diagnosis = diagnose(model, _window(seed=seed * 10 + k))
        assert not diagnosis.is_unknown, diagnosis.error
        assert diagnosis.stamp_ns == 4 and diagnosis.window_frames == 4
        assert diagnosis.model_name == "compact" and diagnosis.latency_s > 0


def test_a_translation_verdict_always_moves_along_its_axis():
    config = CompactConfig()
    n_kf = config.window_frames + 1
    outputs = {"failure": torch.zeros(1, len(compact.TYPES)), "stage": torch.zeros(1, len(
        config.stages)), "delta": torch.zeros(1, 7), "gripper": torch.zeros(1, 3),
        "keyframe": torch.zeros(1, n_kf)}
    outputs["failure"][0, compact.TYPES.index("translation_x")] = 5.0
    for a in "xyz":
        outputs[f"dir_{a}"] = torch.tensor([[0.0, 0.0, 1.0]])  # +1 preferred
        bins = torch.zeros(1, compact.MAX_BINS + 1)
        bins[0, 0], bins[0, 3] = 4.0, 2.0  # "no move" first, then 3 bins
        outputs[f"bins_{a}"] = bins
    directive = compact.decode_outputs(config, outputs)["correction"]["directive"]
    assert (directive["dir_x"], directive["bins_x"]) == (1, 3)  # forced onto the axis
    assert (directive["dir_y"], directive["bins_y"]) == (0, 0)  # other axes as predicted


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = CompactModel(CompactNet(CONFIG))
    model.save(tmp_path / "ckpt")
    loaded = CompactModel.load(tmp_path / "ckpt")
    assert loaded.config == CONFIG
    window = _window()
    assert model.predict(window) == loaded.predict(window)


def test_folding_batch_norms_keeps_every_head_output():
    torch.manual_seed(3)
    net = CompactNet(CONFIG).eval()
    for module in net.modules():  # statistics as after training, not the identity defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.3, 0.3)
    folded = compact.folded_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # left as trained
    window = _window()
    frames = np.stack([compact.resize_frame(f, CONFIG.image_size) for f in window.frames])
    state = compact.state_matrix(window.joint_positions, window.gripper_width, 4, 7)
    batch = compact.prepare_batch(CONFIG, frames[None], state[None], [window.instruction],
                                  [window.task])
    with torch.inference_mode():
        expected, got = net(**batch), folded(**batch)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_the_shipped_checkpoint_loads_and_diagnoses():
    folder = Path(__file__).resolve().parents[1] / "checkpoints" / "compact"
    model = CompactModel.load(folder)
    assert model.config.image_size == 96 and model.config.window_frames == 10
    window = Window(frames=np.zeros((10, 480, 640, 3), np.uint8), stamps_ns=tuple(range(10)),
                    instruction="pick up the red cube", task="pick_cube",
                    joint_positions=np.tile(np.array(fr3.HOME), (10, 1)),
                    gripper_width=np.full(10, 0.08))
    diagnosis = diagnose(model, window)
    assert not diagnosis.is_unknown, diagnosis.error
    heldout = json.loads((folder / "heldout.json").read_text())
    assert heldout["all"]["samples"] >= 500  # the figures the README reports travel with it


def test_missing_or_corrupt_checkpoints_are_clear_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="missing config.json"):
        CompactModel.load(tmp_path / "nothing")
    CompactModel(CompactNet(CONFIG)).save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelLoadError, match="not usable"):
        CompactModel.load(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"bogus": 1}))
    with pytest.raises(ModelLoadError, match="unknown config keys"):
        CompactModel.load(tmp_path / "ckpt")


def test_short_windows_are_padded_and_long_ones_cut():
    model = CompactModel(CompactNet(CONFIG))
    assert not diagnose(model, _window(n=1)).is_unknown
    assert not diagnose(model, _window(n=9)).is_unknown


def test_repeated_stamps_with_new_pixels_are_not_served_from_the_cache():
    model = CompactModel(CompactNet(CONFIG))
    first = model._frame(7, np.zeros((48, 64, 3), np.uint8))
    again = model._frame(7, np.full((48, 64, 3), 200, np.uint8))  # a looped bag: same stamp
    assert first.max() == 0 and again.min() == 200


def test_resize_centre_crops_to_a_square():
    frame = np.zeros((4, 8, 3), dtype=np.uint8)
    frame[:, 2:6] = 255  # the centre square is white, the sides black
    assert np.all(compact.resize_frame(frame, 4) == 255)
    assert compact.resize_frame(frame, 2).shape == (2, 2, 3)


class _Raising:
    name = "raising"

    def predict(self, window):
        raise RuntimeError("CUDA out of memory")

    def close(self):
        pass


class _Emitting:
    def __init__(self, output):
        self.name, self.output = "emitting", output

    def predict(self, window):
        return self.output

    def close(self):
        pass


@pytest.mark.parametrize("model, reason", [
    (_Raising(), "model raised RuntimeError: CUDA out of memory"),
    (_Emitting("I think it failed"), "not JSON"),
    (_Emitting('{"failed": true}'), "required property"),
    (_Emitting({"failed": True, "failure_type": "slip", "stage": "lift", "confidence": float("nan"),
                "summary": "", "correction": {"kind": "none"}}), "finite"),
    (_Emitting(42), "not text or a dict"),
])
def test_bad_model_output_becomes_unknown_with_the_reason(model, reason):
    diagnosis = diagnose(model, _window())
    assert diagnosis.is_unknown and not diagnosis.failed
    assert diagnosis.correction.kind is CorrectionKind.NONE
    assert reason in diagnosis.error
    assert diagnosis.stamp_ns == 4


def test_text_formats_of_the_papers_are_accepted():
    label = "RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=weak_close; FIX_G=CLOSE; KF_GT=5;"
    diagnosis = diagnose(_Emitting(label + "\nSUMMARY: weak"), _window())
    assert diagnosis.failure_type is FailureType.WEAK_CLOSE
    assert diagnosis.correction.directive.keyframe == 5


def _toy_samples(n=48, seed=0):
    """Failures are bright windows with a gripper close at frame 2; successes are dark."""
    rng = np.random.default_rng(seed)
    failed = np.arange(n) % 2 == 1
    frames = rng.integers(0, 60, (n, 4, 32, 32, 3)).astype(np.uint8)
    frames[failed] += 150
    labels = []
    for f in failed:
        if f:
            directive = Directive(gripper=GripperCommand.CLOSE, keyframe=2)
            labels.append(validate(Diagnosis(
                True, FailureType.WEAK_CLOSE, 1.0, "keyframe", "weak",
                Correction(CorrectionKind.DIRECTIVE, (0, 0, 0, 0, 0, 0, -0.08), "base",
                           directive)).model_output()))
        else:
            labels.append(validate(Diagnosis(False, FailureType.NONE, 1.0,
                                             "approach").model_output()))
    return Samples(frames=frames, state=rng.normal(size=(n, 4, 8)).astype(np.float32),
                   instructions=["pick up the cube"] * n, tasks=["pick_cube"] * n,
                   labels=labels, episode_seeds=np.arange(n), variations=[{}] * n)


def test_training_learns_a_separable_toy_problem(tmp_path):
    samples = _toy_samples()
    report = train(samples, TrainConfig(epochs=15, batch_size=16, learning_rate=3e-3,
                                        validation_fraction=0.25, max_shift_px=1),
                   tmp_path / "toy")
    assert report["validation"]["binary_accuracy"] >= 0.9
    model = CompactModel.load(tmp_path / "toy")
    predicted = predict(model.net, _toy_samples(n=16, seed=1))
    truth = _toy_samples(n=16, seed=1).labels
    assert sum(p.failed == t.failed for p, t in zip(predicted, truth, strict=True)) >= 14
    failed = [p for p in predicted if p.failed]
    assert failed and all(p.correction.directive.keyframe == 2 for p in failed)


def test_the_cosine_term_scores_the_unscaled_direction_only_on_labelled_deltas():
    toy = _toy_samples(n=2)
    targets = _targets(CONFIG, toy.labels)
    # A dA along x on the first window only; in scaled units, as the head predicts.
    truth = torch.tensor([[0.02, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0]] * 2) / torch.tensor(
        compact.DELTA_SCALE)
    targets["delta"], targets["delta_mask"] = truth, torch.tensor([1.0, 0.0])
    batch = compact.prepare_batch(CONFIG, toy.frames, toy.state, toy.instructions, toy.tasks)
    with torch.no_grad():
        outputs = CompactNet(CONFIG)(**batch)
    base = loss_fn(outputs, targets)
    # Same direction at twice the length: no cosine cost, only the L1 one.
    outputs["delta"] = 2 * truth
    assert loss_fn(outputs, targets, 1.0) == pytest.approx(float(loss_fn(outputs, targets)))
    # Opposite direction on the labelled window: the term adds weight * (1 - (-1)) = 2 * 0.5.
    outputs["delta"] = torch.stack([-truth[0], truth[1] * 0])
    assert float(loss_fn(outputs, targets, 0.5) - loss_fn(outputs, targets)) == \
        pytest.approx(1.0, abs=1e-5)
    # Cosine on the unscaled deltas: the translation alone against (0.02 m, 0.1 rad) is
    # cos = 0.02 / |(0.02, 0.1)| = 0.196 (on the scaled ones, (0.4, 0) against (0.4, 0.2):
    # 0.894).
    outputs["delta"] = torch.stack([truth[0] * torch.tensor([1.0] * 3 + [0.0] * 4), truth[1]])
    added = float(loss_fn(outputs, targets, 1.0) - loss_fn(outputs, targets))
    assert added == pytest.approx(1.0 - 0.02 / np.hypot(0.02, 0.1), abs=1e-5)
    # An unlabelled window (mask 0) costs nothing whatever it predicts.
    outputs["delta"] = torch.stack([truth[0], -truth[0]])
    assert loss_fn(outputs, targets, 3.0) == pytest.approx(float(loss_fn(outputs, targets)))
    assert base.isfinite()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="delta_cosine_weight"):
            TrainConfig(delta_cosine_weight=bad)


def test_balanced_epochs_draw_rare_failure_types_as_often_as_common_ones():
    success, weak_close = _toy_samples(n=2).labels
    labels = [success] * 90 + [weak_close] * 10
    index = np.arange(100)
    rng = np.random.default_rng(0)
    assert sorted(epoch_order(labels, index, 0.0, rng)) == list(index)  # each window once
    drawn = np.concatenate([epoch_order(labels, index, 1.0, rng) for _ in range(50)])
    assert len(drawn) == 5000 and abs(np.mean(drawn >= 90) - 0.5) < 0.03
    half = np.concatenate([epoch_order(labels, index, 0.5, rng) for _ in range(50)])
    assert abs(np.mean(half >= 90) - 0.25) < 0.03  # sqrt(10) / (sqrt(10) + sqrt(90))
    with pytest.raises(ValueError, match="balance"):
        epoch_order(labels, index, -1.0, rng)


SMALL = {"tasks": ["pick_cube"], "attempts_per_episode": 2, "chunk_size": 4,
         "vary_scene": True, "image_size": [64, 64],
         "generators": {"dream2fix": 0.6, "none": 0.4},
         "verification": {"calibration_episodes": 3}}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "set"
    generate(from_dict(SMALL), out, 6, progress=False)
    return out


def test_train_command_end_to_end_on_generated_data(generated, tmp_path):
    samples = load_samples(generated, image_size=32)
    assert len(samples) >= 6 and samples.frames.shape[1:] == (10, 32, 32, 3)
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "failrecov_ros.cli", "train", "--data", str(generated), "--out",
         str(out), "--epochs", "1", "--image-size", "32", "--validation-fraction", "0"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    model = CompactModel.load(out)
    assert model.config.image_size == 32 and model.config.tasks == ("pick_cube",)
    report = json.loads((out / "training.json").read_text())
    assert report["train_samples"] == len(samples)
    scored = subprocess.run(
        [sys.executable, "-m", "failrecov_ros.cli", "eval", "dataset", "--model", str(out),
         "--data", str(generated)], capture_output=True, text=True, timeout=600)
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(scored.stdout)
    # The command reports exactly what the paper metrics give on the model's own predictions.
    predicted = predict(model.net, samples)
    assert metrics["all"] == score(predicted, samples.labels)
    assert metrics["all"]["samples"] == len(samples)
    assert metrics["confusion"] == type_confusion(predicted, samples.labels)
    assert sum(metrics["confusion"].values()) == len(samples)

    def reported_groups(flag):
        run = subprocess.run(
            [sys.executable, "-m", "failrecov_ros.cli", "eval", "dataset", "--model", str(out),
             "--data", str(generated), flag], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        return {k: v for k, v in json.loads(run.stdout).items() if k.startswith("type=")}

    def assert_scored_by(reported, keys):
        """One subset per distinct key, each scored exactly as score() scores its samples."""
        assert set(reported) == set(keys) and len(reported) >= 2
        for name, result in reported.items():
            index = [i for i, key in enumerate(keys) if key == name]
            assert result == score([predicted[i] for i in index],
                                   [samples.labels[i] for i in index])

    per_type = reported_groups("--by-type")
    assert_scored_by(per_type, [f"type={label.failure_type.value}" for label in samples.labels])
    assert sum(v["samples"] for v in per_type.values()) == len(samples)
    assert_scored_by(reported_groups("--by-stage"),
                     [f"type={label.failure_type.value},task={task},stage={label.stage}"
                      for label, task in zip(samples.labels, samples.tasks, strict=True)])


def test_filters_hold_a_variation_out(generated):
    everything = load_samples(generated, image_size=32)
    colour = everything.variations[0]["target_color"]
    only = load_samples(generated, image_size=32, only={"target_color": colour})
    if len(only) == len(everything):  # one colour only: excluding it leaves nothing
        with pytest.raises(ValueError, match="no samples left"):
            load_samples(generated, image_size=32, exclude={"target_color": colour})
    else:
        without = load_samples(generated, image_size=32, exclude={"target_color": colour})
        assert len(without) + len(only) == len(everything)
        assert all(v["target_color"] != colour for v in without.variations)
    assert all(v["target_color"] == colour for v in only.variations)


def test_a_folder_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="failrecov datagen"):
        load_samples(tmp_path, image_size=32)


def test_the_pose_input_is_the_tool_pose_and_a_missing_joint_state_its_mean():
    home = np.array(fr3.HOME)
    tool = make_kinematics("fr3").fk(home)
    features = compact.pose_features("fr3", np.stack([home, np.zeros(7)]))
    np.testing.assert_allclose(features[0], np.concatenate([tool[:3, 3], tool[:3, 0],
                                                            tool[:3, 1]]), atol=1e-6)
    assert np.isnan(features[1]).all()  # no joints, no pose: not the pose of zero angles
    config = dataclasses.replace(CONFIG, robot="fr3", pose_mean=tuple(features[0]),
                                 pose_std=(0.1,) * compact.POSE_FEATURES)
    state = np.zeros((1, 4, 8), np.float32)
    state[0, :2, :7] = home
    state[0, 3, :7] = home + 0.1  # the last frame: the tool moved
    batch = compact.prepare_batch(config, np.zeros((1, 4, 32, 32, 3), np.uint8), state,
                                  ["pick"], ["pick_cube"])
    pose = batch["pose"][0].numpy()
    assert np.abs(pose[:3]).max() < 1e-5 and np.abs(pose[3]).max() > 0.1  # home, home, none; moved
    net = CompactNet(config).eval()
    with pytest.raises(ValueError, match="tool pose"):
        net(**{k: v for k, v in batch.items() if k != "pose"})
    camera_only = dataclasses.replace(_window(), joint_positions=None)
    assert not diagnose(CompactModel(net), camera_only).is_unknown


def test_fine_tuning_an_older_checkpoint_adds_the_pose_input_as_an_identity(tmp_path):
    torch.manual_seed(0)
    old = CompactModel(CompactNet(CONFIG))
    old.save(tmp_path / "old")
    samples = _toy_samples(n=8)
    train(samples, TrainConfig(epochs=0, init=str(tmp_path / "old"), validation_fraction=0),
          tmp_path / "grown")
    grown = CompactModel.load(tmp_path / "grown")
    assert grown.config.robot == "fr3" and len(grown.config.pose_std) == compact.POSE_FEATURES
    assert min(grown.config.pose_std) >= 0.05  # near-constant rotation terms are not blown up
    window = _window()
    assert grown.predict(window) == old.predict(window)  # same function until it trains
    with pytest.raises(ValueError, match="takes the fr3's tool pose, not the stretch's"):
        train(samples, TrainConfig(epochs=0, init=str(tmp_path / "grown"), robot="stretch"),
              tmp_path / "other")


def _stage_toy(n=48, seed=0):
    """Windows alike in every pixel statistic; a failure is told apart by the stage alone."""
    toy = _toy_samples(n, seed)
    rng = np.random.default_rng(seed + 100)
    toy.frames[:] = rng.integers(0, 200, toy.frames.shape).astype(np.uint8)
    toy.stages = ["lift" if label.failed else "approach" for label in toy.labels]
    return toy


def test_the_stage_input_tells_apart_windows_that_look_alike(tmp_path):
    train(_stage_toy(), TrainConfig(epochs=15, batch_size=16, learning_rate=3e-3,
                                    validation_fraction=0, max_shift_px=1, robot="",
                                    stage_input=True, stage_dropout=0.0), tmp_path / "staged")
    model = CompactModel.load(tmp_path / "staged")
    assert model.config.stage_input and {"approach", "lift"} <= set(model.config.stages)
    fresh = _stage_toy(n=16, seed=1)

    def right(stages):
        fresh.stages = stages
        return sum(p.failed == t.failed for p, t in
                   zip(predict(model.net, fresh), fresh.labels, strict=True))

    truth = ["lift" if label.failed else "approach" for label in fresh.labels]
    assert right(truth) >= 14
    assert right(["approach" if s == "lift" else "lift" for s in truth]) <= 2  # swapped
    # The runtime path: the window's stage (from the executor's status) reaches the network.
    window = dataclasses.replace(_window(size=(32, 32)), joint_positions=None,
                                 gripper_width=None)
    assert diagnose(model, dataclasses.replace(window, stage="lift")).failed
    assert not diagnose(model, dataclasses.replace(window, stage="approach")).failed


def test_a_stage_input_network_maps_unknown_stages_to_one_entry_and_needs_the_input():
    config = dataclasses.replace(CONFIG, stage_input=True)
    frames = np.zeros((3, 4, 32, 32, 3), np.uint8)
    state = np.zeros((3, 4, 8), np.float32)
    batch = compact.prepare_batch(config, frames, state, ["pick"] * 3, ["pick_cube"] * 3,
                                  stages=["lift", "", "juggle"])
    assert batch["stage"].tolist() == [3, 0, 0]  # lift is the third stage; the others unknown
    assert compact.prepare_batch(config, frames, state, ["pick"] * 3,
                                 ["pick_cube"] * 3)["stage"].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="2 stages for a batch of 3"):
        compact.prepare_batch(config, frames, state, ["pick"] * 3, ["pick_cube"] * 3,
                              stages=["lift", "lift"])
    net = CompactNet(config).eval()
    with pytest.raises(ValueError, match="executor's stage"):
        net(**{k: v for k, v in batch.items() if k != "stage"})
    assert "stage" not in compact.prepare_batch(CONFIG, frames, state, ["pick"] * 3,
                                                ["pick_cube"] * 3, stages=["lift"] * 3)


def test_the_stage_input_cannot_be_added_by_fine_tuning(tmp_path):
    CompactModel(CompactNet(CONFIG)).save(tmp_path / "old")
    with pytest.raises(ValueError, match="does not take the stage"):
        train(_toy_samples(n=8), TrainConfig(epochs=0, init=str(tmp_path / "old"),
                                             validation_fraction=0, stage_input=True),
              tmp_path / "new")
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="stage_dropout"):
            TrainConfig(stage_dropout=bad)


def _row(generator, steps, task="place_in_bowl", monitor_stage=None, window_stage=None):
    tcp = np.zeros((len(steps) + 1, 7))
    if steps:
        tcp[1:, :3] = np.cumsum(steps, axis=0)
    parameters = {} if monitor_stage is None else {"monitor_stage": monitor_stage}
    scores = {"fix_success": True} if window_stage is None else {"window_stage": window_stage}
    return {"generator": generator, "task": task, "tcp_pose": tcp.tolist(),
            "parameters_json": json.dumps(parameters), "scores_json": json.dumps(scores)}


def test_a_windows_stage_is_the_executors_or_read_from_a_clips_last_motion():
    keyframe = Diagnosis(True, FailureType.WEAK_CLOSE, 1.0, "keyframe")
    carrying = frozenset({"approach", "lift", "transport", "place"})
    # Recorded by the closed loop: the monitor's stage, whatever the label says.
    assert window_stage(_row("closed_loop", [[0, 0, 0]], monitor_stage="lift"),
                        keyframe) == "lift"
    # The data engine records it; a clip's motion is read only in rows from before that.
    assert window_stage(_row("dream2fix", [[0, 0, 0], [0.03, 0, 0]], window_stage="place"),
                        keyframe, carrying) == "place"
    # An expert window's label stage is the plan's stage at its last frame.
    stall = Diagnosis(True, FailureType.STALL, 1.0, "transport")
    assert window_stage(_row("failsafe", [[0, 0, -0.05]]), stall, carrying) == "transport"
    # A Dream2Fix clip ends 4 s after the grasp: its last step says where the plan is.
    assert window_stage(_row("dream2fix", [[0.1, 0, 0], [0, 0.002, -0.04]]), keyframe,
                        carrying) == "place"
    assert window_stage(_row("dream2fix", [[0, 0, 0.05], [0.03, -0.02, 0.01]]), keyframe,
                        carrying) == "transport"
    assert window_stage(_row("dream2fix", [[0, 0, 0.05], [0, 0, 0.03]]), keyframe,
                        carrying) == "lift"
    assert window_stage(_row("dream2fix", [[0, 0, 0.05], [0.001, 0, 0.0]]), keyframe,
                        carrying) == "lift"  # holding still
    # pick_cube carries nothing anywhere: a sideways step there is still the lift.
    assert window_stage(_row("dream2fix", [[0, 0, 0], [0.03, 0, 0]], task="pick_cube"),
                        keyframe, frozenset({"approach", "lift"})) == "lift"
    assert window_stage(_row("dream2fix", []), keyframe, carrying) == ""  # no motion to read


def test_loaded_samples_carry_each_windows_stage(generated):
    samples = load_samples(generated, image_size=32)
    rows = list(zip(samples.labels, samples.stages, strict=True))
    assert any(label.stage == "keyframe" for label, _ in rows)
    for label, stage in rows:
        # pick_cube's clips end lifting (the engine records it); a success window's stage is
        # its plan's.
        assert stage == ("lift" if label.stage == "keyframe" else label.stage)
    assert samples.subset([1, 0]).stages == [samples.stages[1], samples.stages[0]]
