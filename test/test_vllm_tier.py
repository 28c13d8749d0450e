"""The vLLM tier: a real vLLM (CPU build, its own virtual environment) serving the tiny test VLM.

The OpenAI-compatible backend talks to ``vllm.entrypoints.openai.api_server``; the in-process
backend runs inside the vLLM environment. ``./run test`` installs that environment (once,
about 3.5 GB); elsewhere these tests skip, except under CI where a missing tier is a failure.
"""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tiny_vlm import build, teach

from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.models import prompting
from failrecov_ros.models.base import ModelLoadError, Window, diagnose
from failrecov_ros.models.registry import ModelSpec, load_model

VLLM_PYTHON = Path(os.environ.get("FAILRECOV_VLLM_VENV", "/nonexistent")) / "bin" / "python"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists() and not os.environ.get("CI"),
    reason="the vLLM tier is not installed (FAILRECOV_WITH_VLLM=1 bash scripts/setup.sh)")
ANSWER = json.dumps({
    "failed": True, "failure_type": "weak_close", "stage": "keyframe", "confidence": 0.8,
    "summary": "closed too softly",
    "correction": {"kind": "directive", "directive": {"dir_x": 0, "bins_x": 0, "dir_y": 0,
                                                      "bins_y": 0, "gripper": "close",
                                                      "keyframe": 3}}})
VLLM_ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


def _window(seed):
    rng = np.random.default_rng(seed)
    return Window(frames=rng.integers(0, 255, (4, 48, 64, 3), dtype=np.uint8),
                  stamps_ns=tuple(range(10, 14)), instruction="pick up the red cube",
                  task="pick_cube", skill="grasp", stage="keyframe")


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """The tiny VLM, taught to give ANSWER whatever the frames."""
    assert VLLM_PYTHON.exists(), f"vLLM tier missing: {VLLM_PYTHON}"
    folder = tmp_path_factory.mktemp("vllm") / "tiny-smolvlm"
    corpus = [prompting.SYSTEM_PROMPT, ANSWER, prompting.user_text(_window(0), [0, 3])]
    build(folder, corpus)
    vlm = load_model(ModelSpec(backend="transformers", path=str(folder), max_images=2))
    prompts = []
    for seed in range(4):
        window = _window(seed)
        frames = prompting.select_frames(window, 2)
        prompts.append(dict(vlm.processor(text=[vlm.prompt(window, frames)],
                                          images=[prompting.images(window, frames)],
                                          return_tensors="pt")))
    teach(folder, prompts, ANSWER)
    return folder


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(taught):
    port = _free_port()
    log = open(taught.parent / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(taught),
         "--served-model-name", "tiny", "--port", str(port), "--max-model-len", "2048",
         "--limit-mm-per-prompt", '{"image": 2}', "--enforce-eager",
         "--gpu-memory-utilization", "0.15"], stdout=log, stderr=subprocess.STDOUT,
        env=VLLM_ENV)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            break
        except OSError:
            time.sleep(2)
    if process.poll() is not None or time.monotonic() >= deadline:
        process.kill()
        log.close()
        pytest.fail("vLLM server did not start:\n" + (taught.parent / "server.log").read_text()
                    [-4000:])
    yield url
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_server_answer_is_constrained_parsed_and_valid(server):
    model = load_model(ModelSpec(backend="openai", endpoint=server, served_name="tiny",
                                 max_new_tokens=160, max_images=2, timeout_s=60))
    diagnosis = diagnose(model, _window(0))
    assert not diagnosis.is_unknown, (diagnosis.error, diagnosis.raw_output)
    assert diagnosis.failure_type is FailureType.WEAK_CLOSE
    assert diagnosis.correction.directive.keyframe == 3
    assert model.constraint == "structured_outputs"  # the server accepted the schema field
    assert diagnosis.model_name == "openai:tiny"
    model.close()


def test_a_request_timeout_is_an_unknown_diagnosis_not_a_crash(server):
    model = load_model(ModelSpec(backend="openai", endpoint=server, served_name="tiny",
                                 timeout_s=30, retries=0, max_images=2))
    # Only the diagnosis request times out: a 1 ms timeout from the start also failed the
    # connection check (the models list) whenever the machine was busy.
    model.client = model.client.with_options(timeout=0.001)
    diagnosis = diagnose(model, _window(1))
    assert diagnosis.is_unknown and "Timeout" in diagnosis.error
    model.close()


def test_a_model_the_server_does_not_serve_is_a_load_error(server):
    with pytest.raises(ModelLoadError, match="serves \\['tiny'\\]"):
        load_model(ModelSpec(backend="openai", endpoint=server, served_name="qwen"))


def test_no_server_is_a_clear_load_error():
    spec = ModelSpec(backend="openai", endpoint=f"http://127.0.0.1:{_free_port()}/v1",
                     timeout_s=2, retries=0)
    with pytest.raises(ModelLoadError, match="did not answer"):
        load_model(spec)


def test_in_process_engine_answers_under_the_schema(taught):
    script = f"""
import json, sys
import numpy as np
from failrecov_ros.models.base import Window, diagnose
from failrecov_ros.models.registry import ModelSpec, load_model
rng = np.random.default_rng(2)
window = Window(frames=rng.integers(0, 255, (4, 48, 64, 3), dtype=np.uint8),
                stamps_ns=tuple(range(10, 14)), instruction="pick up the red cube",
                task="pick_cube", skill="grasp", stage="keyframe")
model = load_model(ModelSpec(backend="vllm", path={str(taught)!r}, max_new_tokens=160,
                             max_images=2))
print("RESULT " + diagnose(model, window).to_json(full=True))
"""
    env = dict(VLLM_ENV, PYTHONPATH=str(ROOT))
    result = subprocess.run([str(VLLM_PYTHON), "-c", script], capture_output=True, text=True,
                            timeout=900, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-4000:]
    record = json.loads(lines[-1][len("RESULT "):])
    assert record["failure_type"] == "weak_close", record
    assert record["model_name"] == "vllm:tiny-smolvlm"

