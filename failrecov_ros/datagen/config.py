"""Data-generation settings: which failures, where, how large, and how samples are verified.

Loaded from YAML (``config/datagen/default.yaml`` holds the defaults with comments); unknown
keys and out-of-range values are errors that name the key, so a typo cannot silently fall back to a
default. Ranges are ``[low, high]`` pairs sampled uniformly.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from failrecov_ros.core.schema import MAX_BINS
from failrecov_ros.datagen import actions
from failrecov_ros.sim.tasks import TASKS

GENERATORS = ("failsafe", "dream2fix", "slip", "early_release", "none")
#: What a recorded demonstration admits: its action stream, not the expert's plan.
RECORDED_GENERATORS = ("dream2fix", "none")
GRASPING_TASKS = ("pick_cube", "place_in_bowl", "stack_cube")


@dataclasses.dataclass(frozen=True)
class FailSafeConfig:
    """FailSafe: perturb one stage pose (translation / rotation) or stall; ΔA windowing rules."""

    modes: tuple[str, ...] = ("translation", "rotation", "stall")
    stages: tuple[str, ...] = ("approach", "pre_grasp", "lift", "transport", "place", "push")
    translation_range: tuple[float, float] = (0.02, 0.1)  # |offset| in m on one axis
    rotation_range: tuple[float, float] = (0.15, 1.0)  # |angle| in rad about one axis
    # a stall fails the task only by overrunning the time limit (1.25 x the nominal duration
    # + 1 s: 4-7.5 s of slack for the shipped tasks); shorter stalls were wasted attempts
    stall_range_s: tuple[float, float] = (8.0, 12.0)
    pairs_per_failure: int = 3
    deviated_from_step: int = 10  # P_d from this recorded step of the failed run on
    corrective_from_step: int = 10  # P_c from this step of the correct run ...
    corrective_before_end: int = 3  # ... to this many steps before its end
    noop_after_steps: tuple[int, int] = (3, 10)  # no-op P_c this many steps after P_d


@dataclasses.dataclass(frozen=True)
class Dream2FixConfig:
    """Dream2Fix keyframe operators on the action stream, and its directive labels."""

    modes: tuple[str, ...] = ("delay_close", "weak_close", "force_open", "translation")
    window_half_width: int = 20  # w in steps: W_k = [k - w, k + w]
    delay_range: tuple[int, int] = (12, 20)  # steps
    weak_scale_range: tuple[float, float] = (0.003, 0.025)  # of the nominal grasp force
    translation_sigma: float = 0.03  # m, per axis
    translation_min: float = 0.015  # redraw offsets whose larger axis is below this
    metres_per_bin: float = 0.01
    clip_context_s: float = 1.0  # the clip starts this long before W_k
    clip_horizon_s: float = 4.0  # and ends this long after the keyframe (or at the end)


@dataclasses.dataclass(frozen=True)
class SlipConfig:
    """Grasp loss in transport: the held object's friction drops when ``stages`` start."""

    stages: tuple[str, ...] = ("lift", "transport")
    friction_range: tuple[float, float] = (0.002, 0.02)


@dataclasses.dataclass(frozen=True)
class EarlyReleaseConfig:
    """The gripper opens part-way through a carrying stage.

    Only ``lift`` by default: an object dropped in ``transport`` lands away from where the plan
    grasps it, so no correction matched on the nominal plan recovers it and such attempts
    were almost all rejected (1 of 30 replays passed); the object dropped while lifting falls
    back where the plan grasps it.
    """

    stages: tuple[str, ...] = ("lift",)
    fraction_range: tuple[float, float] = (0.2, 0.9)


@dataclasses.dataclass(frozen=True)
class VerificationConfig:
    """Kinematic-safety calibration and visual-sanity thresholds."""

    calibration_episodes: int = 24  # clean demos per task for the p95 thresholds
    percentile: float = 95.0
    statistic: str = "episode_peak"
    threshold_scale: float = 1.0
    # rad kept from each joint limit; negative lets measured joints sit a hair past a limit,
    # as a physics engine's soft joint limits allow
    limit_margin: float = -0.002
    min_visible_fraction: float = 0.5  # of window frames where the target is unoccluded
    depth_tolerance: float = 0.03  # m between rendered depth and the target's camera depth
    min_finite_depth: float = 0.5  # fraction of depth pixels with a reading (sky has none)


@dataclasses.dataclass(frozen=True)
class DatagenConfig:
    """Everything that determines a dataset (with the seed it is reproducible)."""

    seed: int = 0
    tasks: tuple[str, ...] = ("pick_cube", "place_in_bowl", "push_cube", "stack_cube")
    generators: Mapping[str, float] = dataclasses.field(default_factory=lambda: {
        "failsafe": 0.45, "dream2fix": 0.3, "slip": 0.05, "early_release": 0.05,
        "none": 0.15})  # ``none``: clean windows labelled success
    vary_scene: bool = True  # draw a RoboMD-style variation per episode (else nominal)
    # Recorded demonstrations (rosbag2 folders or .mcap/.db3 files, e.g. from episode_recorder
    # or a real FR3) used as the clean episodes instead of the scripted expert: Dream2Fix's
    # operators (and "none") apply to them; FailSafe needs the expert's plan and does not.
    demonstrations: tuple[str, ...] = ()
    demonstration_task: str = "pick_cube"  # the task of a bag that has no recorder sidecar
    attempts_per_episode: int = 4  # perturbations of one clean demonstration
    chunk_size: int = 16  # attempts per shard
    record_hz: float = 10.0
    window_frames: int = 10
    image_size: tuple[int, int] = (224, 224)  # width, height
    image_format: str = "png"
    failsafe: FailSafeConfig = FailSafeConfig()
    dream2fix: Dream2FixConfig = Dream2FixConfig()
    slip: SlipConfig = SlipConfig()
    early_release: EarlyReleaseConfig = EarlyReleaseConfig()
    verification: VerificationConfig = VerificationConfig()

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("bad datagen config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the manifest and dataset card record)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _problems(c: DatagenConfig) -> list[str]:
    out = []
    unknown = set(c.tasks) - set(TASKS)
    if unknown or not c.tasks:
        out.append(f"tasks: unknown {sorted(unknown)}; expected some of {sorted(TASKS)}")
    bad = set(c.generators) - set(GENERATORS)
    if bad or not any(w > 0 for w in c.generators.values()):
        out.append(f"generators: need positive weights over {GENERATORS}, got {c.generators}")
    if any(w < 0 for w in c.generators.values()):
        out.append("generators: weights must be >= 0")
    if c.demonstrations:
        if not any(c.generators.get(g, 0) > 0 for g in RECORDED_GENERATORS):
            out.append(f"generators: recorded demonstrations need a positive weight on one of "
                       f"{RECORDED_GENERATORS}, got {c.generators}")
        if c.demonstration_task not in GRASPING_TASKS:
            out.append(f"demonstration_task: {c.demonstration_task!r} is not one of "
                       f"{GRASPING_TASKS} (Dream2Fix perturbs a grasp)")
    if c.attempts_per_episode < 1 or c.chunk_size < 1:
        out.append("attempts_per_episode and chunk_size must be >= 1")
    if c.window_frames < 2 or min(c.image_size) < 16 or c.image_format not in ("png", "jpeg"):
        out.append("window_frames >= 2, image_size >= 16 px, image_format png|jpeg")
    fs, d2f = c.failsafe, c.dream2fix
    for name, modes, known in (("failsafe", fs.modes, ("translation", "rotation", "stall")),
                               ("dream2fix", d2f.modes, actions.OPERATORS)):
        if not modes or set(modes) - set(known):
            out.append(f"{name}.modes: unknown {sorted(set(modes) - set(known))}; "
                       f"expected some of {known}")
    for name, (lo, hi) in (("failsafe.translation_range", fs.translation_range),
                           ("failsafe.rotation_range", fs.rotation_range),
                           ("failsafe.stall_range_s", fs.stall_range_s),
                           ("dream2fix.weak_scale_range", d2f.weak_scale_range),
                           ("dream2fix.delay_range", d2f.delay_range),
                           ("slip.friction_range", c.slip.friction_range),
                           ("early_release.fraction_range", c.early_release.fraction_range)):
        if not 0 <= lo <= hi:
            out.append(f"{name}: need 0 <= low <= high, got [{lo}, {hi}]")
    if fs.translation_range[1] > 0.1 + 1e-9 or fs.rotation_range[1] > 1.0 + 1e-9:
        out.append("failsafe ranges exceed the paper's +-0.1 m / +-1 rad")
    if d2f.weak_scale_range[1] >= 1 or d2f.delay_range[1] > d2f.window_half_width:
        out.append("dream2fix: weak scale < 1 and delay <= window_half_width (else it is no delay)")
    if not 0 < d2f.metres_per_bin or d2f.translation_sigma <= 0:
        out.append("dream2fix: metres_per_bin and translation_sigma must be positive")
    if d2f.translation_min > MAX_BINS * d2f.metres_per_bin:
        out.append("dream2fix.translation_min exceeds what MAX_BINS bins can express")
    if c.verification.statistic not in ("episode_peak", "samples"):
        out.append("verification.statistic: episode_peak | samples")
    return out


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown keys {sorted(unknown)}; "
                         f"expected some of {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}{key}.")
        elif typing.get_origin(hint) is tuple or hint is tuple:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{where}{key}: expected a list, got {value!r}")
            kwargs[key] = tuple(value)
        elif isinstance(hint, types.GenericAlias) or typing.get_origin(hint) is not None:
            kwargs[key] = dict(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def from_dict(data: Mapping[str, Any]) -> DatagenConfig:
    """Config from a mapping (missing keys keep their defaults)."""
    return _build(DatagenConfig, data or {}, "")


def load(path: str | Path | None) -> DatagenConfig:
    """Config from a YAML file, or the defaults for ``None``."""
    if path is None:
        return DatagenConfig()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read datagen config {path}: {error}") from None
    return from_dict(data or {})
