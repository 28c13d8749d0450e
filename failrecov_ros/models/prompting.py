"""What the VLM backends say to a model: one prompt for transformers, vLLM and servers.

The prompt names the taxonomy, both correction forms and the exact JSON to answer with
(the schema itself goes to constrained decoding where the backend has it). Frames are
subsampled evenly, oldest first, because each image costs hundreds of tokens.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from failrecov_ros.core.schema import MODEL_OUTPUT_SCHEMA
from failrecov_ros.core.taxonomy import FAILURE_TYPES
from failrecov_ros.models.base import Window

SYSTEM_PROMPT = (
    "You monitor a robot arm doing a manipulation task. You see frames from a fixed camera, "
    "oldest first, and the robot's context. Decide whether the execution is failing. If it "
    "is, name the failure type ("
    + ", ".join(t.value for t in FAILURE_TYPES)
    + "), the stage it happened in, and a correction: an end-effector delta "
    "[dx, dy, dz, droll, dpitch, dyaw, dgripper] in metres and radians in the robot base "
    "frame, and/or a directive (direction -1/0/1 and number of 1 cm steps per axis, a gripper "
    "command with the frame index where it applies). Answer with one JSON object and nothing "
    "else, with the keys failed, failure_type (\"none\" when not failed), stage, confidence "
    "(0..1), summary and correction {kind: none|ee_delta|directive|replan|needs_help, "
    "ee_delta, ee_frame, directive}."
)


def select_frames(window: Window, max_images: int) -> list[int]:
    """Indices of at most ``max_images`` frames spread evenly, always keeping the newest."""
    n = len(window.stamps_ns)
    if max_images <= 0:
        raise ValueError(f"max_images must be > 0, got {max_images}")
    if n <= max_images:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_images)})


def user_text(window: Window, frames: list[int]) -> str:
    """The context line(s) after the images."""
    parts = [f"Instruction: {window.instruction or 'unknown'}."]
    if window.task:
        parts.append(f"Task: {window.task}.")
    if window.skill or window.stage:
        parts.append(f"Current skill: {window.skill or 'unknown'}, stage: "
                     f"{window.stage or 'unknown'}.")
    span = (window.stamps_ns[-1] - window.stamps_ns[0]) / 1e9
    parts.append(f"{len(frames)} frames over {span:.1f} s, frame indices "
                 f"{', '.join(map(str, frames))} of {len(window.stamps_ns)}.")
    if window.gripper_width is not None:
        widths = np.asarray(window.gripper_width)
        parts.append(f"Gripper opening went from {1000 * widths[0]:.0f} mm to "
                     f"{1000 * widths[-1]:.0f} mm.")
    parts.append("Answer with the JSON object only.")
    return " ".join(parts)


def images(window: Window, frames: list[int]) -> list[Image.Image]:
    """The selected frames as PIL images."""
    return [Image.fromarray(np.ascontiguousarray(window.frames[i])) for i in frames]


def messages(window: Window, frames: list[int], image_parts: list[dict]) -> list[dict]:
    """Chat messages in the OpenAI/transformers content-list form.

    ``image_parts`` are the backend's image entries (placeholders for transformers, data URLs
    for servers).
    """
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [*image_parts,
                                     {"type": "text", "text": user_text(window, frames)}]},
    ]


def schema_json() -> str:
    """The model-output schema as compact JSON (for servers' structured outputs)."""
    return json.dumps(MODEL_OUTPUT_SCHEMA, separators=(",", ":"))
