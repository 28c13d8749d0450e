"""The compact diagnosis network: our CPU default, trained on the data engine's output.

A shared convolutional encoder with a spatial softmax (it keeps *where* things are, which
decides translation failures) turns each frame into keypoints; the robot state of each frame
(joint positions, gripper width) is appended; a temporal convolution over the window feeds
heads for the failure type, the stage, the FailSafe 7-DoF delta and the Dream2Fix directive
(direction, bins, gripper command, keyframe). The instruction enters as hashed words and the
task as an embedding. A checkpoint that names its robot also gets the tool pose of each frame
(forward kinematics of the joints): a translation failure is the tool a few centimetres from
where it belongs, which joint angles state only through a nonlinear map and a 96-pixel frame
only to a pixel or two. A checkpoint with ``stage_input`` is also told the stage the skill
executor reports (unknown stages, or none, map to one "unknown" entry): a stalled arm shows
nothing of where it was heading, and whether it was descending to place or carrying the object
across is the executor's to say, not a 96-pixel frame's. Checkpoints are
``model.safetensors`` + ``config.json`` in a folder.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's idiom
from torch.nn.utils.fusion import fuse_conv_bn_eval

from failrecov_ros.core.schema import (
    MAX_BINS,
    MAX_ROTATION_RAD,
    MAX_TRANSLATION_M,
    CorrectionKind,
    GripperCommand,
)
from failrecov_ros.core.taxonomy import GRIPPER_TYPES, FailureType, axis
from failrecov_ros.models.base import ModelLoadError, Window
from failrecov_ros.robots.kinematics import ROBOTS, Kinematics, make_kinematics

#: Classes of the type head: success first, then every failure type a model may name.
TYPES = (FailureType.NONE.value,) + tuple(
    t.value for t in FailureType if t not in (FailureType.NONE, FailureType.UNKNOWN))
GRIPPER_COMMANDS = tuple(g.value for g in GripperCommand)
#: The delta is learned in units where each component's usual magnitude is about 1.
DELTA_SCALE = (0.05, 0.05, 0.05, 0.5, 0.5, 0.5, 0.08)
_TRANSLATION_TYPES = frozenset({FailureType.TRANSLATION_X.value,
                                FailureType.TRANSLATION_Y.value,
                                FailureType.TRANSLATION_Z.value})
_DIRECTIVE_TYPES = frozenset({FailureType.TRANSLATION_X.value,
                              FailureType.TRANSLATION_Y.value}) | {
    t.value for t in GRIPPER_TYPES}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
#: Tool pose features per frame: position (m) and the first two columns of the rotation.
POSE_FEATURES = 9


@dataclasses.dataclass(frozen=True)
class CompactConfig:
    """Architecture and vocabularies; saved beside the weights so a checkpoint is complete."""

    window_frames: int = 10
    image_size: int = 96
    n_joints: int = 7
    stages: tuple[str, ...] = ("approach",)
    tasks: tuple[str, ...] = ()
    word_buckets: int = 256
    keypoints: int = 32
    hidden: int = 128
    state_mean: tuple[float, ...] = ()
    state_std: tuple[float, ...] = ()
    #: Robot whose forward kinematics turn each frame's joints into a tool pose input; "" for
    #: none (checkpoints from before it).
    robot: str = ""
    pose_mean: tuple[float, ...] = ()
    pose_std: tuple[float, ...] = ()
    #: Whether the network takes the executor's current stage (one of ``stages``) as an input;
    #: False for checkpoints from before it.
    stage_input: bool = False
    trained_on: str = ""

    def __post_init__(self) -> None:
        if self.window_frames < 1 or self.image_size < 16:
            raise ValueError("window_frames must be >= 1 and image_size >= 16")
        if not self.stages:
            raise ValueError("a compact model needs at least one stage name")
        n_state = self.n_joints + 1
        for name in ("state_mean", "state_std"):
            value = getattr(self, name)
            if value and len(value) != n_state:
                raise ValueError(f"{name} has {len(value)} values, expected {n_state}")
        if self.robot and self.robot not in ROBOTS:
            raise ValueError(f"unknown robot {self.robot!r}; known: {', '.join(ROBOTS)}")
        for name in ("pose_mean", "pose_std"):
            value = getattr(self, name)
            if value and len(value) != POSE_FEATURES:
                raise ValueError(f"{name} has {len(value)} values, expected {POSE_FEATURES}")

    def to_json(self) -> str:
        """Readable JSON (tuples become lists)."""
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> CompactConfig:
        """Inverse of :meth:`to_json`; unknown keys are an error (a newer checkpoint)."""
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class _SpatialSoftmax(nn.Module):
    """Expected image coordinates of each channel's activation: (B, C, H, W) -> (B, 2C)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        attention = F.softmax(features.flatten(2), dim=-1).view(b, c, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=features.device)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device)
        y = (attention.sum(dim=3) * ys).sum(dim=2)
        x = (attention.sum(dim=2) * xs).sum(dim=2)
        return torch.cat([x, y], dim=1)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CompactNet(nn.Module):
    """The network; inputs are batches prepared by :func:`prepare_batch`."""

    def __init__(self, config: CompactConfig):
        super().__init__()
        self.config = config
        k, h = config.keypoints, config.hidden
        self.encoder = nn.Sequential(_conv(3, 16, 2), _conv(16, 32, 2), _conv(32, 64, 2),
                                     _conv(64, 64, 1), nn.Conv2d(64, k, 1), _SpatialSoftmax())
        self.appearance = nn.Sequential(_conv(64, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        n_state = config.n_joints + 1
        self.state = nn.Sequential(nn.Linear(n_state, 32), nn.ReLU(inplace=True))
        # Added to the state embedding before its ReLU; zero-initialised, so adding it to a
        # trained network leaves that network's function as it was.
        self.pose = nn.Linear(POSE_FEATURES, 32) if config.robot else None
        if self.pose is not None:
            nn.init.zeros_(self.pose.weight)
            nn.init.zeros_(self.pose.bias)
        per_frame = 2 * k + 64 + 32
        self.temporal = nn.Sequential(
            nn.Conv1d(2 * per_frame, h, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv1d(h, h, 3, padding=1), nn.ReLU(inplace=True))
        self.words = nn.EmbeddingBag(config.word_buckets, 32, mode="mean")
        self.task = nn.Embedding(len(config.tasks) + 1, 16)
        # Index 0 is "unknown": no executor, or a stage the vocabulary lacks.
        self.stage_input = (nn.Embedding(len(config.stages) + 1, 16) if config.stage_input
                            else None)
        n_context = 32 + 16 + (16 if self.stage_input is not None else 0)
        self.trunk = nn.Sequential(nn.Linear(3 * h + n_context, 256), nn.ReLU(inplace=True),
                                   nn.Dropout(0.1), nn.Linear(256, 256), nn.ReLU(inplace=True))
        n_kf = config.window_frames + 1
        self.heads = nn.ModuleDict({
            "failure": nn.Linear(256, len(TYPES)), "stage": nn.Linear(256, len(config.stages)),
            "delta": nn.Linear(256, 7),
            **{f"dir_{a}": nn.Linear(256, 3) for a in "xyz"},
            **{f"bins_{a}": nn.Linear(256, MAX_BINS + 1) for a in "xyz"},
            "gripper": nn.Linear(256, len(GRIPPER_COMMANDS)), "keyframe": nn.Linear(256, n_kf),
        })

    def forward(self, frames: torch.Tensor, state: torch.Tensor, words: torch.Tensor,
                word_offsets: torch.Tensor, task: torch.Tensor,
                pose: torch.Tensor | None = None,
                stage: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Head logits and regressions for a batch.

        Frames (B, T, 3, S, S) in [0, 1]; state (B, T, n_joints + 1) and pose (B, T, 9)
        normalised (pose only for a network with a robot); stage (B,) indices, 0 for unknown
        (only for a network with ``stage_input``).
        """
        b, t = frames.shape[:2]
        flat = frames.flatten(0, 1)
        trunk = self.encoder[:4](flat)
        keypoints = self.encoder[4:](trunk)
        robot_state = self.state[0](state.flatten(0, 1))
        if self.pose is not None:
            if pose is None:
                raise ValueError(f"this network takes the {self.config.robot}'s tool pose")
            robot_state = robot_state + self.pose(pose.flatten(0, 1))
        per_frame = torch.cat([keypoints, self.appearance(trunk), self.state[1](robot_state)],
                              dim=1).view(b, t, -1)
        motion = per_frame - torch.cat([per_frame[:, :1], per_frame[:, :-1]], dim=1)
        sequence = self.temporal(torch.cat([per_frame, motion], dim=2).transpose(1, 2))
        pooled = torch.cat([sequence.mean(dim=2), sequence.amax(dim=2), sequence[:, :, -1]],
                           dim=1)
        context = [pooled, self.words(words, word_offsets), self.task(task)]
        if self.stage_input is not None:
            if stage is None:
                raise ValueError("this network takes the executor's stage")
            context.append(self.stage_input(stage))
        context = torch.cat(context, dim=1)
        features = self.trunk(context)
        return {name: head(features) for name, head in self.heads.items()}


def folded_for_inference(net: CompactNet) -> CompactNet:
    """A copy of ``net`` in eval mode with each batch norm folded into the convolution before it.

    The same function with fewer operations: the encoder runs about 40% faster on a CPU, which
    is most of a window's cost. The trained module stays as it is (its state_dict is the
    checkpoint's).
    """
    folded = copy.deepcopy(net).eval()
    for module in folded.modules():
        if (isinstance(module, nn.Sequential) and len(module) >= 2
                and isinstance(module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d)):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return folded


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and shrink to ``size``.

    A 640x480 stream then shows what the 224x224 training renders showed (MuJoCo and the D435
    fix the vertical field of view). Shrinking is a box reduction by the integer factor, then
    bilinear for the rest: ten times faster than one antialiased bilinear pass (0.3 vs 3.7 ms
    for 480 -> 96), which matters at ten frames per window.
    """
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    if side == size:
        return np.ascontiguousarray(frame[top:top + side, left:left + side])
    image = Image.fromarray(np.ascontiguousarray(frame))
    box = (left, top, left + side, top + side)  # reduce() crops as it shrinks: no crop copy
    image = image.reduce(side // size, box=box) if side // size >= 2 else image.crop(box)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image)


def hash_words(text: str, buckets: int) -> list[int]:
    """Stable word ids (crc32, not Python's salted hash) so checkpoints mean the same later."""
    words = text.lower().split() or ["<empty>"]
    return [zlib.crc32(w.encode("utf-8")) % buckets for w in words]


def state_matrix(joint_positions: np.ndarray | None, gripper_width: np.ndarray | None,
                 frames: int, n_joints: int) -> np.ndarray:
    """(frames, n_joints + 1) robot state; absent parts are zeros (the normalised mean)."""
    state = np.zeros((frames, n_joints + 1), dtype=np.float32)
    if joint_positions is not None:
        q = np.asarray(joint_positions, dtype=np.float32)
        state[:, :min(n_joints, q.shape[1])] = q[:, :n_joints]
    if gripper_width is not None:
        state[:, n_joints] = np.asarray(gripper_width, dtype=np.float32)
    return state


_KINEMATICS = threading.local()  # pinocchio's scratch data is per thread


def _kinematics(robot: str) -> Kinematics:
    cache = _KINEMATICS.__dict__
    if robot not in cache:
        cache[robot] = make_kinematics(robot)
    return cache[robot]


def pose_features(robot: str, joint_positions: np.ndarray) -> np.ndarray:
    """(..., 9) tool pose of (..., n_joints) joint rows: position, then rotation columns 1-2.

    Two rotation columns are a continuous code of an orientation (Euler angles jump). A row
    of zeros is a frame with no joint state (a camera-only window) and gets NaNs, which
    :func:`prepare_batch` turns into the normalised mean.
    """
    q = np.asarray(joint_positions, dtype=np.float64)
    kinematics = _kinematics(robot)
    flat = q.reshape(-1, q.shape[-1])[:, :len(kinematics.joint_names)]
    out = np.full((len(flat), POSE_FEATURES), np.nan)
    for i, row in enumerate(flat):
        if np.any(row):
            pose = kinematics.fk(row)
            out[i] = np.concatenate([pose[:3, 3], pose[:3, 0], pose[:3, 1]])
    return out.reshape(*q.shape[:-1], POSE_FEATURES).astype(np.float32)


def pad_window(array: np.ndarray, frames: int) -> np.ndarray:
    """Exactly ``frames`` entries.

    A short window (episode start) repeats its oldest entry; a long one keeps its newest.
    """
    if len(array) >= frames:
        return array[-frames:]
    return np.concatenate([np.repeat(array[:1], frames - len(array), axis=0), array])


def prepare_batch(config: CompactConfig, frames: np.ndarray, state: np.ndarray,
                  instructions: list[str], tasks: list[str],
                  pose: np.ndarray | None = None,
                  stages: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors for :meth:`CompactNet.forward`.

    From uint8 frames (B, T, S, S, 3), already resized, and raw state (B, T, n_joints + 1).
    ``stages`` are the executor's stages (``None`` or "" where unknown), used by a network
    with ``stage_input``.
    ``pose`` is :func:`pose_features` of that state when the caller has it already (training
    computes it once, not every epoch); otherwise it is computed here for a network with a
    robot.
    """
    mean = np.asarray(config.state_mean or [0.0] * state.shape[-1], dtype=np.float32)
    std = np.asarray(config.state_std or [1.0] * state.shape[-1], dtype=np.float32)
    ids, offsets = [], []
    for text in instructions:
        offsets.append(len(ids))
        ids += hash_words(text, config.word_buckets)
    task_ids = [config.tasks.index(t) + 1 if t in config.tasks else 0 for t in tasks]
    batch = {
        "frames": torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3)
        .float().div_(255.0),
        "state": torch.from_numpy((state - mean) / std),
        "words": torch.tensor(ids, dtype=torch.long),
        "word_offsets": torch.tensor(offsets, dtype=torch.long),
        "task": torch.tensor(task_ids, dtype=torch.long),
    }
    if config.stage_input:
        stages = stages if stages is not None else [""] * len(tasks)
        if len(stages) != len(tasks):
            raise ValueError(f"{len(stages)} stages for a batch of {len(tasks)}")
        batch["stage"] = torch.tensor([stage_index(config, s) for s in stages], dtype=torch.long)
    if config.robot:
        if pose is None:
            pose = pose_features(config.robot, state[..., :config.n_joints])
        pose_mean = np.asarray(config.pose_mean or [0.0] * POSE_FEATURES, dtype=np.float32)
        pose_std = np.asarray(config.pose_std or [1.0] * POSE_FEATURES, dtype=np.float32)
        batch["pose"] = torch.from_numpy(np.nan_to_num((pose - pose_mean) / pose_std, nan=0.0))
    return batch


def stage_index(config: CompactConfig, stage: str | None) -> int:
    """The stage input's index: 1 + its place in ``config.stages``, 0 when unknown."""
    return config.stages.index(stage) + 1 if stage in config.stages else 0


def decode_outputs(config: CompactConfig, outputs: dict[str, torch.Tensor],
                   index: int = 0) -> dict[str, Any]:
    """One sample's head outputs as a model-output dict (the schema's shape).

    Directive fields are made consistent by construction (no bins -> no direction; a
    gripper command always has a keyframe; a translation along an axis moves along it, at
    least one bin), so a trained model cannot emit an invalid or self-contradicting one.
    """
    probs = F.softmax(outputs["failure"][index], dim=0)
    ftype = TYPES[int(probs.argmax())]
    stage = config.stages[int(outputs["stage"][index].argmax())]
    if ftype == FailureType.NONE.value:
        return {"failed": False, "failure_type": ftype, "stage": stage,
                "confidence": float(probs[0]), "summary": f"No failure during {stage}.",
                "correction": {"kind": CorrectionKind.NONE.value}}
    delta = (outputs["delta"][index].double().numpy() * np.asarray(DELTA_SCALE))
    bounds = np.array([MAX_TRANSLATION_M] * 3 + [MAX_ROTATION_RAD] * 3 + [1.0])
    delta = np.clip(delta, -bounds, bounds)
    directive: dict[str, Any] = {}
    moving = axis(ftype) if ftype in _TRANSLATION_TYPES else ""
    for a in "xyz":
        bin_logits = outputs[f"bins_{a}"][index]
        bins = int(bin_logits.argmax())
        if a == moving and bins == 0:  # "translation_x, move 0 bins" would be a no-op fix
            bins = int(bin_logits[1:].argmax()) + 1
        direction = 0
        if bins:
            logits = outputs[f"dir_{a}"][index]  # classes: -1, 0, +1
            direction = -1 if logits[0] >= logits[2] else 1
        directive[f"dir_{a}"], directive[f"bins_{a}"] = direction, bins
    gripper = GRIPPER_COMMANDS[int(outputs["gripper"][index].argmax())]
    keyframe = -1
    if gripper != GripperCommand.NONE.value:
        keyframe = int(outputs["keyframe"][index][1:].argmax())
    directive.update(gripper=gripper, keyframe=keyframe)
    kind = (CorrectionKind.DIRECTIVE if ftype in _DIRECTIVE_TYPES else CorrectionKind.EE_DELTA)
    summary = f"Detected {ftype.replace('_', ' ')} during {stage}; correcting."
    return {"failed": True, "failure_type": ftype, "stage": stage,
            "confidence": float(probs.max()), "summary": summary,
            "correction": {"kind": kind.value, "ee_delta": [float(v) for v in delta],
                           "ee_frame": "base", "directive": directive}}


class CompactModel:
    """The compact network behind :class:`~failrecov_ros.models.base.DiagnosisModel`.

    Frames are resized once each and cached by stamp, since windows slide over them. Inference
    runs on a copy with batch norms folded (:func:`folded_for_inference`); ``net`` is the
    trained module.
    """

    def __init__(self, net: CompactNet, name: str = "compact", threads: int | None = None):
        self.net = net.eval()
        self._inference = folded_for_inference(self.net)
        self.config = net.config
        self.name = name
        if threads:
            torch.set_num_threads(threads)
        self._resized: OrderedDict[tuple, np.ndarray] = OrderedDict()

    @classmethod
    def load(cls, path: str | Path, name: str = "compact",
             threads: int | None = None) -> CompactModel:
        """Load a checkpoint folder; ModelLoadError names what is missing or wrong."""
        folder = Path(path)
        try:
            config = CompactConfig.from_json((folder / CONFIG_FILE).read_text())
            net = CompactNet(config)
            net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        except FileNotFoundError as exc:
            raise ModelLoadError(f"compact checkpoint {folder}: missing {Path(exc.filename).name}"
                                 f" (make one with `failrecov train`)") from None
        except Exception as exc:  # noqa: BLE001 - safetensors/torch raise their own types
            raise ModelLoadError(f"compact checkpoint {folder} is not usable: {exc}") from None
        return cls(net, name=name, threads=threads)

    def save(self, path: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``path``."""
        save(self.net, path)

    @property
    def frame_transform(self) -> Callable[[np.ndarray], np.ndarray]:
        """What :meth:`predict` first does to every frame (crop, shrink), as a picklable function.

        Predicting on frames it returned gives the same output (at the model's size the crop
        and shrink leave a frame as it is), so a caller may apply it ahead, elsewhere: replay
        does it in its bag-reading process.
        """
        return functools.partial(resize_frame, size=self.config.image_size)

    def _frame(self, stamp: int, frame: np.ndarray) -> np.ndarray:
        # The stamp alone is not an identity: a looped bag or a reset simulator repeats stamps
        # with other pixels, so a sparse sample of the pixels is part of the key.
        key = (stamp, frame.shape, hash(frame[::31, ::29].tobytes()))
        cached = self._resized.get(key)
        if cached is None:
            cached = resize_frame(frame, self.config.image_size)
            self._resized[key] = cached
            while len(self._resized) > 4 * self.config.window_frames:
                self._resized.popitem(last=False)
        return cached

    def predict(self, window: Window) -> dict[str, Any]:
        """Model-output dict for one window (validated by the caller like every backend)."""
        c = self.config
        frames = np.stack([self._frame(s, f) for s, f in zip(window.stamps_ns, window.frames,
                                                              strict=True)])
        state = state_matrix(window.joint_positions, window.gripper_width, len(frames),
                             c.n_joints)
        batch = prepare_batch(c, pad_window(frames, c.window_frames)[None],
                              pad_window(state, c.window_frames)[None], [window.instruction],
                              [window.task], stages=[window.stage])
        with torch.inference_mode():
            outputs = self._inference(**batch)
        return decode_outputs(c, outputs)

    def close(self) -> None:
        """Drop the frame cache (the weights go with the object)."""
        self._resized.clear()


def save(net: CompactNet, path: str | Path) -> None:
    """Write a checkpoint folder (``config.json`` + ``model.safetensors``)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(net.config.to_json())
