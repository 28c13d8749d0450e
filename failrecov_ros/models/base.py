"""The one interface every diagnosis model implements, and the wrapper that keeps it honest.

A model sees a :class:`Window` (frames + instruction + robot state) and returns text or a
dict in the model-output schema. :func:`diagnose` times the call, validates the output with
the same code for every backend, and turns anything invalid (bad JSON, NaN, an exception in
the backend) into an ``unknown`` diagnosis that carries the reason and no correction.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from failrecov_ros.core.labels import parse_any
from failrecov_ros.core.schema import Diagnosis, diagnose_with, validate


class ModelLoadError(RuntimeError):
    """A model could not be loaded (missing files, wrong format, unreachable server)."""


@dataclasses.dataclass(frozen=True)
class Window:
    """What a model analyses: the last frames of an episode and the context around them.

    ``frames`` are RGB uint8 (N x H x W x 3), oldest first, with their stamps; robot state
    is sampled at the frame stamps (N x n_joints positions, N gripper widths in m) and may be
    absent (a camera-only monitor). Everything else is the executor's context.
    """

    frames: np.ndarray
    stamps_ns: tuple[int, ...]
    instruction: str = ""
    task: str = ""
    skill: str = ""
    stage: str = ""
    episode_id: str = ""
    frame_id: str = ""
    joint_positions: np.ndarray | None = None
    gripper_width: np.ndarray | None = None

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} "
                             f"{frames.shape}")
        n = frames.shape[0]
        if n == 0:
            raise ValueError("a window needs at least one frame")
        if len(self.stamps_ns) != n:
            raise ValueError(f"{len(self.stamps_ns)} stamps for {n} frames")
        if any(b < a for a, b in zip(self.stamps_ns, self.stamps_ns[1:], strict=False)):
            raise ValueError("frame stamps must not go backwards")
        for name in ("joint_positions", "gripper_width"):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} rows for {n} frames")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{name} contains NaN or inf")

    @property
    def context(self) -> dict[str, Any]:
        """Diagnosis context fields this window determines."""
        return {"episode_id": self.episode_id, "task": self.task,
                "instruction": self.instruction, "skill": self.skill,
                "stamp_ns": int(self.stamps_ns[-1]), "window_start_ns": int(self.stamps_ns[0]),
                "window_frames": int(len(self.stamps_ns)), "frame_id": self.frame_id}


@runtime_checkable
class DiagnosisModel(Protocol):
    """A backend: compact network, local VLM, vLLM engine or an OpenAI-compatible server.

    ``predict`` returns the model's raw output: text (JSON, a Dream2Fix label or a FailSafe
    answer) or an already-decoded dict in :data:`~failrecov_ros.core.schema.MODEL_OUTPUT_SCHEMA`.
    It may raise; :func:`diagnose` reports that as an ``unknown`` diagnosis.
    """

    name: str

    def predict(self, window: Window) -> str | Mapping[str, Any]:
        """Analyse one window."""

    def close(self) -> None:
        """Release what the model holds (memory, engines, connections)."""


def diagnose(model: DiagnosisModel, window: Window) -> Diagnosis:
    """Run ``model`` on ``window`` and return a validated diagnosis; never raises on bad output.

    The latency is the wall time of ``predict`` alone, so parse and validation cost (tiny)
    are not attributed to the model.
    """
    start = time.perf_counter()
    try:
        output = model.predict(window)
        error = None
    except Exception as exc:  # noqa: BLE001 - a backend failure must become a verdict, not a crash
        output, error = "", f"{type(exc).__name__}: {exc}"
    latency = time.perf_counter() - start
    context = dict(window.context, model_name=model.name, latency_s=latency)
    if error is not None:
        return Diagnosis.unknown(f"model raised {error}", **context)
    if isinstance(output, Mapping):
        text = _dumps(output)
        return diagnose_with(lambda: validate(dict(output)), text, **context)
    if not isinstance(output, str):
        return Diagnosis.unknown(f"model returned {type(output).__name__}, not text or a dict",
                                 **context)
    return diagnose_with(lambda: parse_any(output), output, **context)


def _dumps(output: Mapping[str, Any]) -> str:
    try:
        return json.dumps(output, allow_nan=True, default=str)
    except (TypeError, ValueError):
        return repr(output)
