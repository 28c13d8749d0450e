"""VLM backends with a real (tiny, random, locally built) transformers model."""

import json

import numpy as np
import pytest
from tiny_vlm import build, teach

from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.models import prompting
from failrecov_ros.models.base import ModelLoadError, Window, diagnose
from failrecov_ros.models.openai_server import constraint_for_version
from failrecov_ros.models.registry import ModelSpec, load_model

ANSWER = json.dumps({
    "failed": True, "failure_type": "slip", "stage": "lift", "confidence": 0.9,
    "summary": "the cube slipped", "correction": {"kind": "replan"}})


def _window(n=6):
    rng = np.random.default_rng(0)
    return Window(frames=rng.integers(0, 255, (n, 48, 64, 3), dtype=np.uint8),
                  stamps_ns=tuple(range(1_000, 1_000 + n)), instruction="pick up the red cube",
                  task="pick_cube", skill="lift", stage="lift",
                  gripper_width=np.linspace(0.04, 0.0, n))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    window = _window()
    frames = prompting.select_frames(window, 2)
    corpus = [prompting.SYSTEM_PROMPT, ANSWER, prompting.user_text(window, frames)]
    return build(tmp_path_factory.mktemp("vlm") / "tiny-smolvlm", corpus)


def test_select_frames_spreads_evenly_and_keeps_the_newest():
    assert prompting.select_frames(_window(10), 4) == [0, 3, 6, 9]
    assert prompting.select_frames(_window(3), 4) == [0, 1, 2]
    with pytest.raises(ValueError):
        prompting.select_frames(_window(3), 0)


def test_prompt_carries_the_context():
    window = _window()
    text = prompting.user_text(window, [0, 5])
    assert "pick up the red cube" in text and "stage: lift" in text and "40 mm to 0 mm" in text


def test_a_random_model_answers_garbage_which_becomes_unknown(folder):
    spec = ModelSpec(backend="transformers", path=str(folder), max_new_tokens=24, max_images=2)
    model = load_model(spec)
    diagnosis = diagnose(model, _window())
    assert diagnosis.is_unknown and diagnosis.error
    assert diagnosis.raw_output  # what the model said is kept for the log
    assert diagnosis.model_name == f"transformers:{folder.name}" and diagnosis.latency_s > 0
    model.close()


def test_a_taught_model_answer_is_parsed_into_a_valid_diagnosis(folder, tmp_path):
    spec = ModelSpec(backend="transformers", path=str(folder), max_new_tokens=120,
                     max_images=2)
    model = load_model(spec)
    window = _window()
    frames = prompting.select_frames(window, 2)
    inputs = model.processor(text=[model.prompt(window, frames)],
                             images=[prompting.images(window, frames)], return_tensors="pt")
    teach(folder, [dict(inputs)], ANSWER)
    taught = load_model(spec)
    diagnosis = diagnose(taught, window)
    assert not diagnosis.is_unknown, (diagnosis.error, diagnosis.raw_output)
    assert diagnosis.failure_type is FailureType.SLIP and diagnosis.stage == "lift"
    assert diagnosis.stamp_ns == window.stamps_ns[-1]


def test_missing_or_broken_model_folders_are_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(backend="transformers", path=str(tmp_path / "none")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load a transformers VLM"):
        load_model(ModelSpec(backend="transformers", path=str(tmp_path / "broken")))


@pytest.mark.parametrize("version, field", [
    ("0.32.0", "structured_outputs"), ("0.10.2", "structured_outputs"),
    ("0.12.0rc1", "structured_outputs"), ("0.10.1.1", "guided_json"), ("0.6.6", "guided_json"),
    ("0.9.2+cpu", "guided_json"), (None, "structured_outputs"), ("dev", "structured_outputs")])
def test_the_constraint_field_follows_the_server_version(version, field):
    assert constraint_for_version(version) == field


@pytest.mark.parametrize("bad", [dict(backend="tensorflow", path="x"),
                                 dict(backend="compact", path=""),
                                 dict(backend="openai", endpoint=""),
                                 dict(backend="compact", path="x", timeout_s=0)])
def test_invalid_model_specs_are_rejected(bad):
    with pytest.raises(ValueError):
        ModelSpec(**bad)
