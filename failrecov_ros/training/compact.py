"""Train and score the compact model on the data engine's Parquet datasets.

``failrecov train --data DIR --out DIR`` ends here. Frames are decoded and resized once into
memory (the same :func:`~failrecov_ros.models.compact.resize_frame` the runtime uses), then
a few epochs of AdamW with light augmentation (shift, brightness, contrast) fit every head.
Everything is seeded, so one command reproduces a checkpoint on the same machine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.nn import functional as F  # noqa: N812 - torch's idiom

from failrecov_ros.core.schema import Diagnosis, GripperCommand, validate
from failrecov_ros.evaluation import metrics
from failrecov_ros.models import compact
from failrecov_ros.models.compact import (
    DELTA_SCALE,
    GRIPPER_COMMANDS,
    TYPES,
    CompactConfig,
    CompactNet,
    pose_features,
    prepare_batch,
    state_matrix,
)

_LOG = logging.getLogger(__name__)
_COLUMNS = ("sample_id", "generator", "task", "instruction", "episode_seed", "label_json",
            "frames", "joint_positions", "gripper_width", "tcp_pose", "parameters_json",
            "scores_json", "variation_json")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the architecture is :class:`CompactConfig`)."""

    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    image_size: int = 96
    validation_fraction: float = 0.1
    seed: int = 0
    threads: int = 2
    max_shift_px: int = 4
    #: A checkpoint folder to start from (fine-tuning): its architecture, vocabularies and state
    #: normalisation are kept; "" trains from scratch.
    init: str = ""
    #: Failure-type rebalancing: each epoch draws windows with probability proportional to
    #: count(type) ** -balance (0: every window once, in random order; 1: every type equally
    #: often). Stalls outnumber translations ten to one in generated data.
    balance: float = 0.0
    #: Robot whose forward kinematics give the network each frame's tool pose ("" for none).
    #: Fine-tuning a checkpoint without it adds it (zero-initialised, so training starts from
    #: the checkpoint's function).
    robot: str = "fr3"
    #: Weight of a (1 - cosine) term on the dA head, taken on the unscaled 7-DoF deltas as the
    #: FailSafe metric takes them; the smooth L1 term alone fits the magnitude and lets the
    #: direction of an uncertain delta drift (0: off).
    delta_cosine_weight: float = 0.0
    #: Give the network the executor's stage (:func:`window_stage`) as an input (from scratch
    #: only), hidden from it in this fraction of training windows so that it still works where
    #: no executor reports one (a camera-only monitor, a bag without skill status).
    stage_input: bool = False
    stage_dropout: float = 0.15

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delta_cosine_weight) and self.delta_cosine_weight >= 0):
            raise ValueError(f"delta_cosine_weight must be >= 0, got {self.delta_cosine_weight}")
        if not 0.0 <= self.stage_dropout < 1.0:
            raise ValueError(f"stage_dropout must be in [0, 1), got {self.stage_dropout}")


@dataclasses.dataclass
class Samples:
    """A decoded dataset in memory: resized frames, state, text and labels."""

    frames: np.ndarray          # (N, T, S, S, 3) uint8
    state: np.ndarray           # (N, T, n_joints + 1) float32
    instructions: list[str]
    tasks: list[str]
    labels: list[Diagnosis]
    episode_seeds: np.ndarray
    variations: list[dict]
    #: The executor's stage at each window's last frame (:func:`window_stage`; "" unknown).
    stages: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.stages:
            self.stages = [""] * len(self.labels)
        if len(self.stages) != len(self.labels):
            raise ValueError(f"{len(self.stages)} stages for {len(self.labels)} samples")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray) -> Samples:
        """The samples at ``index``, in that order."""
        index = np.asarray(index, dtype=int)
        return Samples(self.frames[index], self.state[index],
                       [self.instructions[i] for i in index], [self.tasks[i] for i in index],
                       [self.labels[i] for i in index], self.episode_seeds[index],
                       [self.variations[i] for i in index], [self.stages[i] for i in index])


def parse_filter(items: Sequence[str]) -> dict[str, str]:
    """``factor=value`` strings (variation factors) to a dict; ValueError on a bad one."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"expected factor=value, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def matches_variation(variation: dict, wanted: dict[str, str]) -> bool:
    """True when every ``factor=value`` in ``wanted`` holds for ``variation``."""
    return all(str(variation.get(k)) == v for k, v in wanted.items())


#: A Dream2Fix clip's last step of tool travel (m) that names the stage the executor is in.
_CLIP_MOTION_M = 0.01


def window_stage(row: dict[str, Any], label: Diagnosis,
                 task_stages: frozenset[str] | None = None) -> str:
    """The stage the executor reports at a window's last frame: the stage input's value.

    A closed-loop row recorded it (``monitor_stage``), and so does a data-engine row
    (``window_stage`` among its scores). In rows from before that, an expert row's label stage
    is the plan's stage at that frame, except in a Dream2Fix clip, whose label names where the
    fault lies ("keyframe", or "pre_grasp" for a misplaced grasp) while the clip runs on 4 s
    past the grasp. There it is read from the tool's last step (``tcp_pose``): mostly down is
    ``place``, mostly sideways ``transport``, anything else ``lift`` (rising or holding); a
    stage the task's plan lacks (``task_stages``: pick_cube carries nothing anywhere) is
    ``lift``.
    """
    recorded = json.loads(row.get("parameters_json") or "{}").get("monitor_stage")
    if recorded is None:
        recorded = json.loads(row.get("scores_json") or "{}").get("window_stage")
    if recorded is not None:
        return recorded
    if row.get("generator") != "dream2fix":
        return label.stage
    tcp = np.asarray(row.get("tcp_pose") or [], dtype=float)
    if len(tcp) < 2:
        return ""
    step = tcp[-1, :3] - tcp[-2, :3]
    sideways = float(np.hypot(step[0], step[1]))
    stage = "lift"
    if -step[2] > _CLIP_MOTION_M and -step[2] > sideways:
        stage = "place"
    elif sideways > _CLIP_MOTION_M and sideways > abs(step[2]):
        stage = "transport"
    return stage if task_stages is None or stage in task_stages else "lift"


def load_samples(data_dir: str | Path, image_size: int, window_frames: int = 10,
                 n_joints: int = 7, exclude: dict[str, str] | None = None,
                 only: dict[str, str] | None = None, limit: int | None = None) -> Samples:
    """Decode the accepted samples of a data-engine output folder.

    ``exclude``/``only`` filter on variation factors (``{"target_color": "purple"}``), which
    is how a variation is held out of training and scored alone.
    """
    files = sorted(Path(data_dir, "data").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{data_dir}: no data/*.parquet (is it a `failrecov datagen` "
                                "output folder?)")
    rows = []
    for path in files:
        for row in pq.read_table(path, columns=list(_COLUMNS)).to_pylist():
            variation = json.loads(row["variation_json"] or "{}")
            if exclude and matches_variation(variation, exclude):
                continue
            if only and not matches_variation(variation, only):
                continue
            row["variation"] = variation
            rows.append(row)
            if limit and len(rows) >= limit:
                break
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"{data_dir}: no samples left after filtering")

    # Decoded straight into one array, each row's PNG bytes dropped once decoded: a list of
    # windows stacked afterwards needs twice the memory (a 40k-sample set did not fit in 23 GB).
    frames = np.empty((len(rows), window_frames, image_size, image_size, 3), np.uint8)
    counts = [len(row["frames"]) for row in rows]

    def decode(i: int) -> None:
        window = [compact.resize_frame(np.asarray(Image.open(io.BytesIO(f["bytes"]))
                                                  .convert("RGB")), image_size)
                  for f in rows[i]["frames"]]
        frames[i] = compact.pad_window(np.stack(window), window_frames)
        rows[i]["frames"] = None

    with ThreadPoolExecutor(max_workers=2) as pool:  # PIL releases the GIL while decoding
        list(pool.map(decode, range(len(rows))))
    state = np.stack([compact.pad_window(state_matrix(
        np.asarray(r["joint_positions"]), np.asarray(r["gripper_width"]),
        count, n_joints), window_frames) for r, count in zip(rows, counts, strict=True)])
    labels = [validate(json.loads(r["label_json"])) for r in rows]
    plan_stages: dict[str, set[str]] = {}
    for row, label in zip(rows, labels, strict=True):
        if row.get("generator") != "dream2fix":
            plan_stages.setdefault(row["task"], set()).add(label.stage)
    return Samples(frames=frames, state=state.astype(np.float32),
                   instructions=[r["instruction"] for r in rows],
                   tasks=[r["task"] for r in rows], labels=labels,
                   episode_seeds=np.array([r["episode_seed"] for r in rows]),
                   variations=[r["variation"] for r in rows],
                   stages=[window_stage(r, label, frozenset(plan_stages.get(r["task"], ())))
                           for r, label in zip(rows, labels, strict=True)])


def _targets(config: CompactConfig, labels: Sequence[Diagnosis]) -> dict[str, torch.Tensor]:
    """Class indices and regression targets, with masks where a head has no label."""
    n = len(labels)
    out = {"failure": torch.zeros(n, dtype=torch.long), "stage": torch.zeros(n, dtype=torch.long),
           "stage_mask": torch.zeros(n), "delta": torch.zeros(n, 7), "delta_mask": torch.zeros(n),
           "directive_mask": torch.zeros(n), "gripper": torch.zeros(n, dtype=torch.long),
           "keyframe": torch.zeros(n, dtype=torch.long)}
    for a in "xyz":
        out[f"dir_{a}"] = torch.zeros(n, dtype=torch.long)
        out[f"bins_{a}"] = torch.zeros(n, dtype=torch.long)
    for i, label in enumerate(labels):
        out["failure"][i] = TYPES.index(label.failure_type.value)
        if label.stage in config.stages:
            out["stage"][i], out["stage_mask"][i] = config.stages.index(label.stage), 1.0
        delta = label.correction.ee_delta
        if label.failed and delta is not None:
            out["delta"][i] = torch.tensor(np.asarray(delta) / np.asarray(DELTA_SCALE))
            out["delta_mask"][i] = 1.0
        directive = label.correction.directive
        if label.failed and directive is not None:
            out["directive_mask"][i] = 1.0
            for a in "xyz":
                out[f"dir_{a}"][i] = getattr(directive, f"dir_{a}") + 1
                out[f"bins_{a}"][i] = getattr(directive, f"bins_{a}")
            out["gripper"][i] = GRIPPER_COMMANDS.index(directive.gripper.value)
            if directive.gripper is not GripperCommand.NONE:
                out["keyframe"][i] = min(directive.keyframe, config.window_frames - 1) + 1
    return out


def _masked_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-window ``losses`` over the windows ``mask`` keeps (0 when it keeps none)."""
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_mean(F.cross_entropy(logits, target, reduction="none"), mask)


def loss_fn(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
            delta_cosine_weight: float = 0.0) -> torch.Tensor:
    """Sum of every head's loss; correction heads only count on failures that carry them."""
    loss = F.cross_entropy(outputs["failure"], targets["failure"])
    loss = loss + _masked_ce(outputs["stage"], targets["stage"], targets["stage_mask"])
    delta_err = F.smooth_l1_loss(outputs["delta"], targets["delta"], reduction="none").sum(1)
    loss = loss + _masked_mean(delta_err, targets["delta_mask"])
    if delta_cosine_weight:
        scale = outputs["delta"].new_tensor(DELTA_SCALE)
        cos = F.cosine_similarity(outputs["delta"] * scale, targets["delta"] * scale, dim=1,
                                  eps=1e-8)
        loss = loss + delta_cosine_weight * _masked_mean(1.0 - cos, targets["delta_mask"])
    mask = targets["directive_mask"]
    for a in "xyz":
        loss = loss + 0.5 * _masked_ce(outputs[f"dir_{a}"], targets[f"dir_{a}"], mask)
        loss = loss + 0.5 * _masked_ce(outputs[f"bins_{a}"], targets[f"bins_{a}"], mask)
    loss = loss + _masked_ce(outputs["gripper"], targets["gripper"], mask)
    gripper_mask = mask * (targets["keyframe"] > 0).float()
    return loss + _masked_ce(outputs["keyframe"], targets["keyframe"], gripper_mask)


def _augment(frames: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Same shift and photometric jitter for every frame of a window.

    The camera moved or the light changed, not the scene.
    """
    out = np.empty_like(frames)
    size = frames.shape[2]
    for i, window in enumerate(frames):
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        padded = np.pad(window, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                        mode="edge")
        shifted = padded[:, max_shift + dy:max_shift + dy + size, max_shift + dx:max_shift + dx
                         + size].astype(np.float32)
        gain, bias = rng.uniform(0.75, 1.25), rng.uniform(-20, 20)
        channel = rng.uniform(0.9, 1.1, size=3)
        out[i] = np.clip(shifted * gain * channel + bias, 0, 255).astype(np.uint8)
    return out


def split_by_episode(samples: Samples, fraction: float, seed: int) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Train/validation indices with no episode in both (windows of one run are alike)."""
    episodes = np.unique(samples.episode_seeds)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(episodes, size=max(1, int(round(fraction * len(episodes)))),
                          replace=False).tolist()) if fraction > 0 and len(episodes) > 1 else set()
    is_val = np.array([s in held for s in samples.episode_seeds])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def epoch_order(labels: Sequence[Diagnosis], index: np.ndarray, balance: float,
                rng: np.random.Generator) -> np.ndarray:
    """One epoch's windows: a permutation, or a type-rebalanced draw of the same length."""
    if balance < 0:
        raise ValueError(f"balance must be >= 0, got {balance}")
    if balance == 0 or len(index) == 0:
        return rng.permutation(index)
    types = np.array([labels[i].failure_type.value for i in index])
    _, inverse, counts = np.unique(types, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(float) ** -balance
    return rng.choice(index, size=len(index), replace=True, p=weights / weights.sum())


def train(samples: Samples, settings: TrainConfig, out_dir: str | Path,
          trained_on: str = "", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit a compact model, save it to ``out_dir`` and return the validation report."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    train_idx, val_idx = split_by_episode(samples, settings.validation_fraction, settings.seed)
    # Every window's tool pose, once: for the input's normalisation and for every epoch.
    # (The state's last column is the gripper width.)
    poses = (pose_features(settings.robot, samples.state[..., :-1]) if settings.robot
             else None)
    if settings.init:
        net = _initial(settings.init, samples, trained_on, settings.robot,
                       None if poses is None else poses[train_idx])
        config = net.config
        if settings.stage_input and not config.stage_input:
            raise ValueError(f"{settings.init} does not take the stage; the stage input is "
                             "trained from scratch")
    else:
        stages = {label.stage for label in samples.labels if label.stage}
        if settings.stage_input:
            stages |= {stage for stage in samples.stages if stage}
        stages = tuple(sorted(stages))
        flat_state = samples.state[train_idx].reshape(-1, samples.state.shape[-1])
        config = CompactConfig(
            window_frames=samples.frames.shape[1], image_size=samples.frames.shape[2],
            n_joints=samples.state.shape[-1] - 1, stages=stages or ("unknown",),
            tasks=tuple(sorted(set(samples.tasks))),
            state_mean=tuple(float(v) for v in flat_state.mean(0)),
            state_std=tuple(float(max(v, 1e-3)) for v in flat_state.std(0)),
            stage_input=settings.stage_input, trained_on=trained_on)
        if poses is not None:
            config = _with_pose(config, settings.robot, poses[train_idx])
        net = CompactNet(config)
    if config.robot and poses is None:  # a checkpoint with the input, fine-tuned with robot ""
        poses = pose_features(config.robot, samples.state[..., :config.n_joints])
    targets = _targets(config, samples.labels)
    optimiser = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    steps = settings.epochs * math.ceil(len(train_idx) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate,
                                                   total_steps=max(steps, 1))
    started = time.monotonic()
    for epoch in range(settings.epochs):
        net.train()
        order = epoch_order(samples.labels, train_idx, settings.balance, rng)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            index = order[start:start + settings.batch_size]
            frames = _augment(samples.frames[index], rng, settings.max_shift_px)
            stages = None
            if config.stage_input:  # (drawn only then: other recipes keep their random stream)
                hidden = rng.random(len(index)) < settings.stage_dropout
                stages = ["" if h else samples.stages[i]
                          for h, i in zip(hidden, index, strict=True)]
            batch = prepare_batch(config, frames, samples.state[index],
                                  [samples.instructions[i] for i in index],
                                  [samples.tasks[i] for i in index],
                                  pose=None if poses is None else poses[index], stages=stages)
            loss = loss_fn(net(**batch), {k: v[index] for k, v in targets.items()},
                           settings.delta_cosine_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
        message = (f"epoch {epoch + 1}/{settings.epochs}: loss {total / len(train_idx):.3f} "
                   f"({time.monotonic() - started:.0f} s)")
        _LOG.info(message)
        if progress:
            progress(message)
    compact.save(net, out_dir)
    report: dict[str, Any] = {"train_samples": int(len(train_idx)),
                              "validation_samples": int(len(val_idx)),
                              "train_seconds": round(time.monotonic() - started, 1),
                              "settings": dataclasses.asdict(settings)}
    if len(val_idx):
        report["validation"] = score(predict(net, samples.subset(val_idx)),
                                     [samples.labels[i] for i in val_idx])
    Path(out_dir, "training.json").write_text(json.dumps(report, indent=1))
    return report


def _with_pose(config: CompactConfig, robot: str, train_poses: np.ndarray) -> CompactConfig:
    """``config`` taking ``robot``'s tool pose, normalised by the training windows' poses."""
    pose = train_poses.reshape(-1, train_poses.shape[-1])
    pose = pose[np.isfinite(pose).all(axis=1)]
    if not len(pose):
        raise ValueError("no training window has joint positions for the tool pose input")
    return dataclasses.replace(config, robot=robot,
                               pose_mean=tuple(float(v) for v in pose.mean(0)),
                               pose_std=tuple(float(max(v, 0.05)) for v in pose.std(0)))


def _initial(path: str, samples: Samples, trained_on: str, robot: str,
             train_poses: np.ndarray | None) -> CompactNet:
    """The checkpoint at ``path`` to fine-tune; its shapes must fit the samples.

    Its stages and tasks stay the vocabularies (labels with other stages train no stage head),
    and its state normalisation stays, so the weights see the inputs they were trained on. A
    checkpoint without the tool pose input gets it, zero-initialised, when ``robot`` is set.
    """
    net = compact.CompactModel.load(path).net
    c = net.config
    shape = (samples.frames.shape[1], samples.frames.shape[2], samples.state.shape[-1] - 1)
    if (c.window_frames, c.image_size, c.n_joints) != shape:
        raise ValueError(f"{path}: window_frames, image_size, n_joints "
                         f"{(c.window_frames, c.image_size, c.n_joints)} do not fit the "
                         f"samples' {shape}")
    if c.robot and robot and c.robot != robot:
        raise ValueError(f"{path} takes the {c.robot}'s tool pose, not the {robot}'s")
    config = dataclasses.replace(c, trained_on=f"{trained_on}; fine-tuned from {path} "
                                               f"({c.trained_on})")
    if robot and not c.robot:
        config = _with_pose(config, robot, train_poses)
        grown = CompactNet(config)
        missing, unexpected = grown.load_state_dict(net.state_dict(), strict=False)
        if unexpected or set(missing) != {"pose.weight", "pose.bias"}:
            raise RuntimeError(f"adding the pose input to {path}: missing {missing}, "
                               f"unexpected {unexpected}")
        return grown
    net.config = config
    return net


def predict(net: CompactNet, samples: Samples, batch_size: int = 64) -> list[Diagnosis]:
    """Validated diagnoses for every sample (the runtime's network, decoder and validator)."""
    net = compact.folded_for_inference(net)
    out = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            stop = min(start + batch_size, len(samples))
            batch = prepare_batch(net.config, samples.frames[start:stop],
                                  samples.state[start:stop], samples.instructions[start:stop],
                                  samples.tasks[start:stop], stages=samples.stages[start:stop])
            outputs = net(**batch)
            out += [validate(compact.decode_outputs(net.config, outputs, i))
                    for i in range(stop - start)]
    return out


def score(predicted: Sequence[Diagnosis], truth: Sequence[Diagnosis],
          keyframe_tolerance: int = 2) -> dict[str, float | int | None]:
    """The papers' metrics (DIGEST 1.5, 3.5); None where a metric has no eligible sample."""

    def guarded(fn: Callable[[], float]) -> float | None:
        try:
            return round(fn(), 4)
        except ValueError:
            return None

    return {
        "samples": len(truth),
        "binary_accuracy": guarded(lambda: metrics.binary_accuracy(predicted, truth)),
        "type_axis_accuracy": guarded(lambda: metrics.type_axis_accuracy(predicted, truth)),
        "type_accuracy": guarded(lambda: metrics.type_accuracy(predicted, truth)),
        "dream2fix_correction_accuracy": guarded(lambda: metrics.dream2fix_correction_accuracy(
            predicted, truth, keyframe_tolerance)),
        "delta_cosine": guarded(lambda: metrics.delta_cosine(predicted, truth)),
        "delta_length_ratio": guarded(lambda: metrics.delta_length_ratio(predicted, truth)),
    }
