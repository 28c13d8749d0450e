"""Closed-loop training windows: the executor's runs in lockstep, as the monitor sees them.

The data engine's windows come from the scripted expert; the runtime monitor watches the skill
executor instead (IK postures, pauses between skills, waits for object poses, its own stage
names and instructions). Here each episode is one :mod:`failrecov_ros.sim.lockstep` run of a
named task with one injected fault of the simulator node's kinds (a perception offset of the
target's pose, a grasp that leaves the hand open, a weak grasp) or none, without recovery. Its
frames, joint states and executor statuses are replayed, in the order they happened, into the
monitor's own :class:`~failrecov_ros.monitor.supervisor.Supervisor`, so windows come at the
runtime's triggers with the state and context the monitor would have.

Labels come from the injected fault and what happened:

- before the fault can matter (the skills before the one it acts on): ``none``;
- once the failure is visible (the translation's grasp closed or the executor noticed the
  failure; the empty hand's close; the weakly held object lagging the tool or the executor
  noticing; the push stage over with the cube off its goal): the fault's type, stage and
  correction (minus the offset as end-effector delta and 1 cm directive bins; close at the
  keyframe), Dream2Fix's conventions as the data engine writes them;
- in between: not labelled (rejected, reason kept): the fault is there but not yet shown;
- a faulted episode that still succeeds is labelled ``none`` throughout; a clean episode that
  fails is rejected whole (no known cause).

Episode ``i`` is a pure function of (config, i); rows are written with
:class:`~failrecov_ros.datagen.dataset.ChunkStore` (same columns, resumable), so ``failrecov
train`` and ``failrecov eval dataset`` read the output like the data engine's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from failrecov_ros.core.labels import format_dream2fix, format_failsafe
from failrecov_ros.core.schema import (
    Correction,
    CorrectionKind,
    Diagnosis,
    Directive,
    validate,
)
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.datagen import dataset
from failrecov_ros.models.compact import resize_frame
from failrecov_ros.monitor.supervisor import SkillContext, Supervisor, TriggerConfig
from failrecov_ros.robots import fr3
from failrecov_ros.sim.lockstep import (
    JOINT_NAMES,
    Faults,
    LockstepSession,
    LoopSettings,
    Recording,
)
from failrecov_ros.sim.tasks import TASKS
from failrecov_ros.sim.variations import Catalogue
from failrecov_ros.skills.runner import ResultCode, State, Status

_LOG = logging.getLogger(__name__)
GENERATOR = "closed_loop"
FAULTS = ("none", "pose_offset", "force_open", "weak_close")
GRASPING = ("pick_cube", "place_in_bowl", "stack_cube")
WEAK_CLOSE_MODES = ("force", "closure", "both")
_RUNNING = (State.RUNNING, State.RECOVERING)
_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)  # the supervisor stores frames; we key them by stamp


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """What ``failrecov collect`` draws per episode and how windows are kept."""

    seed: int = 0
    tasks: tuple[str, ...] = TASKS
    #: Relative weights of the injected fault; push_cube has no grasp: none or pose_offset.
    faults: Mapping[str, float] = dataclasses.field(default_factory=lambda: {
        "none": 0.25, "pose_offset": 0.35, "force_open": 0.2, "weak_close": 0.2})
    offset_range: tuple[float, float] = (0.03, 0.05)  # m on x or y
    #: Of the nominal grasp force. The node's ~0.05 still lifts the cube in this simulator
    #: (0.02 and up succeed); at or below ~0.01 the cube stays on the table.
    weak_scale_range: tuple[float, float] = (0.003, 0.015)
    #: How a weak_close is injected: "force" (a weak grip that lets the cube slip as the arm
    #: lifts), "closure" (the fingers stop short of the cube, which stays on the table: the
    #: demo suite's weak_close) or "both" (one or the other, drawn per episode).
    weak_close_mode: str = "force"
    vary_scene: bool = True
    hold_s: float = 3.0  # the executor's hold after a failure (diagnosis_wait_s is 10)
    none_keep: float = 0.35  # fraction of nominal windows written
    max_failure_windows: int = 6  # per episode, the first ones (the rest look alike)
    image_size: int = 224
    image_format: str = "png"
    episodes_per_chunk: int = 4
    window_frames: int = 10
    lag_threshold: float = 0.01  # m the held object may fall behind the tool before it shows

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "faults", dict(self.faults))
        unknown = set(self.tasks) - set(TASKS)
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be among {', '.join(TASKS)}, got {list(self.tasks)}")
        if set(self.faults) - set(FAULTS) or not any(w > 0 for w in self.faults.values()) \
                or any(w < 0 for w in self.faults.values()):
            raise ValueError(f"faults: non-negative weights of {', '.join(FAULTS)}, got "
                             f"{self.faults}")
        low, high = self.offset_range
        if not 0 < low <= high <= 0.2:
            raise ValueError(f"offset_range must be within (0, 0.2] m, got {self.offset_range}")
        if self.weak_close_mode not in WEAK_CLOSE_MODES:
            raise ValueError(f"weak_close_mode must be one of {', '.join(WEAK_CLOSE_MODES)}, "
                             f"got {self.weak_close_mode!r}")
        low, high = self.weak_scale_range
        if not 0 <= low <= high <= 1:
            raise ValueError(f"weak_scale_range must be within [0, 1], got "
                             f"{self.weak_scale_range}")
        if not 0 <= self.none_keep <= 1 or self.hold_s < 0 or self.episodes_per_chunk < 1 \
                or self.max_failure_windows < 1:
            raise ValueError("none_keep must be in [0, 1], hold_s >= 0, episodes_per_chunk and "
                             "max_failure_windows >= 1")
        if self.image_size < 16 or self.lag_threshold <= 0:
            raise ValueError("image_size must be >= 16 and lag_threshold > 0")


@dataclasses.dataclass(frozen=True)
class CollectEpisode:
    """Everything drawn for collected episode ``index`` before anything runs."""

    index: int
    task: str
    seed: int
    variation: dict[str, Any]
    fault: str
    faults: Faults
    rng_state: int

    def parameters(self) -> dict[str, Any]:
        """The fault as recorded with every row."""
        return {"episode": self.index, "fault": self.fault,
                **{k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(self.faults).items()}}


def episode_spec(config: CollectConfig, index: int) -> CollectEpisode:
    """Draw episode ``index`` (task, scene, fault) deterministically."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index, 7]))
    task = config.tasks[index % len(config.tasks)]
    seed = int(rng.integers(0, 2**31 - 1))
    catalogue = Catalogue()
    # The executor's task library grasps 4 cm cubes (width 0.04 +- 0.01): other sizes would
    # fail clean runs for a reason no window shows, so the cube size stays nominal.
    factors = tuple(f for f in catalogue.factors if f != "cube_size")
    variation = (catalogue.sample(rng, factors) if config.vary_scene
                 else catalogue.nominal())
    allowed = {k: w for k, w in config.faults.items()
               if w > 0 and (task in GRASPING or k in ("none", "pose_offset"))}
    names = sorted(allowed)
    weights = np.array([allowed[n] for n in names], dtype=float)
    fault = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if fault == "pose_offset":
        offset = [0.0, 0.0, 0.0]
        offset[int(rng.integers(2))] = float(rng.choice([-1.0, 1.0])
                                             * rng.uniform(*config.offset_range))
        faults = Faults(pose_offset=tuple(offset))
    elif fault == "force_open":
        faults = Faults(close_failures=1)
    elif fault == "weak_close":
        mode = config.weak_close_mode
        if mode == "both":
            mode = "closure" if rng.random() < 0.5 else "force"
        faults = (Faults(weak_grasps=1) if mode == "closure" else
                  Faults(grasp_force_scale=float(rng.uniform(*config.weak_scale_range))))
    else:
        faults = Faults()
    return CollectEpisode(index, task, seed, variation, fault, faults,
                          int(rng.integers(0, 2**63 - 1)))


@dataclasses.dataclass(frozen=True)
class MonitorWindow:
    """A window the monitor would have analysed: frame indices and its inputs."""

    frames: tuple[int, ...]
    stamps_ns: tuple[int, ...]
    joint_positions: np.ndarray | None
    gripper_width: np.ndarray | None
    context: SkillContext


def monitor_windows(recording: Recording, trigger: TriggerConfig | None = None,
                    ) -> list[MonitorWindow]:
    """Replay a recording into the monitor's supervisor; every window it would analyse.

    The model is taken to be free whenever a window is triggered (none superseded or dropped),
    which is how the compact model keeps up at 10 frames/s.
    """
    supervisor = Supervisor(trigger or TriggerConfig(), fr3.ARM_JOINTS, fr3.gripper_width)
    index_of = {f.stamp_ns: i for i, f in enumerate(recording.frames)}
    windows = []
    for entry in recording.log:
        kind = entry[0]
        if kind == "joints":
            supervisor.add_joint_state(entry[1], JOINT_NAMES, entry[2])
        elif kind == "status":
            status: Status = entry[1]
            supervisor.set_context(SkillContext(
                episode_id=status.episode_id, task=status.task, instruction=status.instruction,
                skill=status.skill, stage=status.stage, step=status.step, event=status.event,
                event_stamp_ns=status.event_stamp_ns, running=status.state in _RUNNING))
        else:
            frame = recording.frames[entry[1]]
            if supervisor.add_frame(frame.stamp_ns, _PLACEHOLDER):
                window = supervisor.take_pending(frame.stamp_ns)
                windows.append(MonitorWindow(
                    tuple(index_of[s] for s in window.stamps_ns), window.stamps_ns,
                    window.joint_positions, window.gripper_width, supervisor.context))
    return windows


@dataclasses.dataclass(frozen=True)
class Timeline:
    """When the injected fault starts to matter and when its failure shows (ns; None: never)."""

    failed: bool
    acts_from_ns: int | None
    visible_from_ns: int | None
    keyframe_ns: int | None  # the grasp's close: a gripper correction's keyframe
    note: str = ""


def _first(statuses, predicate) -> int | None:
    return next((s.stamp_ns for s in statuses if predicate(s)), None)


def timeline(spec: CollectEpisode, recording: Recording, lag_threshold: float) -> Timeline:
    """Where the fault acts and shows in this recording (see the module docstring)."""
    result = recording.result
    failed = not (result.code is ResultCode.SUCCEEDED and recording.success_at_end["success"])
    statuses = recording.statuses
    # A failure the executor noticed through the robot (a grasp that closed on nothing, an
    # aborted trajectory) shows; a plan the gate refused leaves nothing to see.
    noticed = (recording.end_ns if result.code in (ResultCode.FAILED, ResultCode.CONTROLLER_ERROR)
               else None)
    close = _first(statuses, lambda s: s.event == "gripper_close" and s.stage == "grasp"
                   and s.event_stamp_ns == s.stamp_ns)
    if spec.fault == "none" or not failed:
        return Timeline(failed, None, None, close)
    if spec.fault == "pose_offset" and spec.task not in GRASPING:
        acts = _first(statuses, lambda s: s.skill == "push")
        shown = _first(statuses, lambda s: s.skill == "push" and s.stage == "retreat")
        return Timeline(True, acts, _earliest(shown, noticed), close)
    if spec.fault == "pose_offset":
        acts = _first(statuses, lambda s: s.skill == "approach")
        return Timeline(True, acts, _earliest(close, noticed), close)
    if spec.fault == "force_open":
        return Timeline(True, close, _earliest(close, noticed), close)
    # weak_close: shows once the object falls behind the tool after the close.
    lag = None
    if close is not None:
        frames = recording.frames
        start = next((i for i, f in enumerate(frames) if f.stamp_ns >= close), None)
        if start is not None:
            tcp0, obj0 = frames[start].tcp[2], frames[start].target[2]
            lag = next((f.stamp_ns for f in frames[start:]
                        if (f.tcp[2] - tcp0) - (f.target[2] - obj0) > lag_threshold), None)
    return Timeline(True, close, _earliest(lag, noticed, recording.end_ns), close)


def _earliest(*stamps: int | None) -> int | None:
    known = [s for s in stamps if s is not None]
    return min(known) if known else None


def failure_label(spec: CollectEpisode, window: MonitorWindow, line: Timeline,
                  max_gripper_width: float, metres_per_bin: float) -> Diagnosis:
    """The injected fault's diagnosis for a window in which it shows.

    ``metres_per_bin``: the executor's, which turns the directive's bins back into metres.
    """
    task, instruction = window.context.task, window.context.instruction
    if spec.fault == "pose_offset":
        offset = np.asarray(spec.faults.pose_offset[:2])
        directive = Directive.from_displacement(-offset, metres_per_bin)
        ftype = (FailureType.TRANSLATION_X if abs(offset[0]) >= abs(offset[1])
                 else FailureType.TRANSLATION_Y)
        stage = "pre_grasp" if spec.task in GRASPING else "push"
        correction = Correction(CorrectionKind.DIRECTIVE, (float(-offset[0]), float(-offset[1]),
                                                           0.0, 0.0, 0.0, 0.0, 0.0), "base",
                                directive)
        moves = " and ".join(f"{'+' if d > 0 else '-'}{a} for {n} steps" for a, d, n in
                             (("x", directive.dir_x, directive.bins_x),
                              ("y", directive.dir_y, directive.bins_y)) if n)
        summary = ("The execution failed due to a translation misalignment: the target was "
                   f"reported off where it is. Nudge the end-effector {moves}, then retry.")
    else:
        stamps = np.asarray(window.stamps_ns)
        keyframe = int(np.argmin(np.abs(stamps - line.keyframe_ns))) if line.keyframe_ns else 0
        correction = Correction.close_gripper(keyframe, max_gripper_width)
        ftype, stage = FailureType(spec.fault), "keyframe"
        text = {"force_open": "The gripper never closed at the keyframe.",
                "weak_close": "The gripper closed too softly and the object was not held."}
        summary = f"{text[spec.fault]} Close the gripper at frame {keyframe}."
    return Diagnosis(True, ftype, 1.0, stage, summary, correction, task=task,
                     instruction=instruction)


def none_label(window: MonitorWindow) -> Diagnosis:
    """A nominal window: what the executor is doing is going as planned."""
    stage = window.context.stage
    return Diagnosis(False, FailureType.NONE, 1.0, stage,
                     f"The robot is executing {stage or 'its task'} as planned.",
                     task=window.context.task, instruction=window.context.instruction)


class Collector:
    """Runs episodes and turns them into dataset rows (one lockstep session, reused)."""

    def __init__(self, config: CollectConfig, library: str | Mapping,
                 parameters: Mapping[str, Any] | None = None,
                 loop: LoopSettings | None = None,
                 trigger: TriggerConfig | None = None) -> None:
        trigger = trigger or TriggerConfig()
        if trigger.window_frames != config.window_frames:
            raise ValueError("the trigger's window_frames and the config's differ")
        self.config, self.trigger = config, trigger
        self.session = LockstepSession(library, parameters, loop or LoopSettings())

    def episode(self, index: int) -> list[dict[str, Any]]:
        """All rows (accepted and rejected windows) of episode ``index``."""
        spec = episode_spec(self.config, index)
        recording = self.session.run(spec.task, spec.seed, spec.variation, spec.faults,
                                     hold_s=self.config.hold_s, episode_id=f"cl{index:07d}")
        try:
            return self._rows(spec, recording)
        finally:
            recording.close()

    def _rows(self, spec: CollectEpisode, recording: Recording) -> list[dict[str, Any]]:
        cfg = self.config
        line = timeline(spec, recording, cfg.lag_threshold)
        rng = np.random.default_rng(spec.rng_state)
        scores = {"runner_succeeded": recording.result.code is ResultCode.SUCCEEDED,
                  "task_success_at_end": bool(recording.success_at_end["success"]),
                  "task_success_after_hold": bool(recording.success_after_hold["success"]),
                  "episode_failed": line.failed, "runner_end_s": recording.end_ns / 1e9,
                  "visible_from_s": (line.visible_from_ns or 0) / 1e9}
        parameters = {**spec.parameters(), "runner_result": recording.result.code.name,
                      "runner_message": recording.result.message}
        cache: dict[int, np.ndarray] = {}
        rows, shown = [], 0
        for k, window in enumerate(monitor_windows(recording, self.trigger)):
            end = window.stamps_ns[-1]
            reasons: list[str] = []
            if spec.fault == "none" and line.failed:
                label = none_label(window)
                reasons.append(f"clean episode failed ({recording.result.code.name}: "
                               f"{recording.result.message})")
            elif line.failed and line.visible_from_ns is not None and end >= line.visible_from_ns:
                label = failure_label(spec, window, line, fr3.MAX_GRIPPER_WIDTH,
                                      self.session.settings.config.recovery.metres_per_bin)
                shown += 1
                if shown > cfg.max_failure_windows:
                    reasons.append("beyond max_failure_windows")
            elif line.failed and line.acts_from_ns is not None and end >= line.acts_from_ns:
                label = none_label(window)
                reasons.append("fault injected, failure not visible yet")
            else:
                label = none_label(window)
                if rng.random() >= cfg.none_keep:
                    reasons.append("nominal window not sampled (none_keep)")
            if window.joint_positions is None:
                reasons.append("no robot state within the window")
            validate(label.to_dict(), record=True)  # a label breaking the schema is a bug
            rows.append(self._row(spec, recording, window, label, k, reasons, scores,
                                  parameters, cache))
        return rows

    def _row(self, spec, recording: Recording, window: MonitorWindow, label: Diagnosis, k: int,
             reasons: list[str], scores: dict, parameters: dict,
             cache: dict[int, np.ndarray]) -> dict[str, Any]:
        frames = None
        if not reasons:
            for i in window.frames:
                if i not in cache:
                    cache[i] = resize_frame(recording.frame(i), self.config.image_size)
            frames = np.stack([cache[i] for i in window.frames])
        tcp = np.stack([recording.frames[i].tcp for i in window.frames])
        window_scores = {**scores, "window_end_s": window.stamps_ns[-1] / 1e9}
        return {
            "sample_id": f"e{spec.index:07d}-w{k:03d}", "attempt": spec.index,
            "accepted": not reasons, "generator": GENERATOR,
            "failure_type": label.failure_type.value, "stage": label.stage,
            "task": window.context.task, "instruction": window.context.instruction,
            "episode_seed": spec.seed, "failed": label.failed, "label_json": label.to_json(),
            "label_dream2fix": format_dream2fix(label), "label_failsafe": format_failsafe(label),
            "ee_delta": list(label.correction.ee_delta or ()),
            "directive": (label.correction.directive or Directive()).to_dict(),
            "frames": frames, "frame_times": [s / 1e9 for s in window.stamps_ns],
            "joint_positions": ([] if window.joint_positions is None
                                else window.joint_positions.tolist()),
            "gripper_width": ([] if window.gripper_width is None
                              else [float(w) for w in window.gripper_width]),
            "tcp_pose": tcp.tolist(),
            "parameters_json": json.dumps({**parameters, "skill": window.context.skill,
                                           "monitor_stage": window.context.stage},
                                          sort_keys=True),
            "variation_json": json.dumps(spec.variation, sort_keys=True),
            "scores_json": json.dumps(window_scores, sort_keys=True),
            "reasons": reasons, "error": "",
        }


def config_dict(config: CollectConfig) -> dict[str, Any]:
    """The config as JSON-able data (the manifest and the dataset card record it)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def collect(config: CollectConfig, out_dir: str | Path, episodes: int, library: str | Mapping,
            *, command: str = "", progress: Callable[[str], None] | None = None,
            ) -> dict[str, Any]:
    """Write ``episodes`` episodes' windows to ``out_dir`` (resumes a killed run)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    store = dataset.open_or_create(out_dir, {"closed_loop": config_dict(config)}, config.seed,
                                   config.image_format)
    collector = Collector(config, library)
    per = config.episodes_per_chunk
    started, ran = time.monotonic(), 0
    done = store.done_chunks()
    for chunk in range(math.ceil(episodes / per)):
        if chunk in done:
            continue
        indices = range(chunk * per, min((chunk + 1) * per, episodes))
        staged = store.staged(chunk)
        for index in indices:
            if index in staged:
                continue
            rows = collector.episode(index)
            store.stage(chunk, index, rows)
            staged[index] = rows
            ran += 1
            if progress:
                kept = [r for r in rows if r["accepted"]]
                failures = sum(r["failed"] for r in kept)
                params = json.loads(rows[0]["parameters_json"]) if rows else {}
                rate = ran / max(time.monotonic() - started, 1e-9) * 60
                progress(f"episode {index + 1}/{episodes} {episode_spec(config, index).task} "
                         f"{params.get('fault', '?')} -> {params.get('runner_result', '?')}: "
                         f"{len(kept)} windows ({failures} failures) of {len(rows)}; "
                         f"{rate:.1f} episodes/min")
        rows = [row for index in indices for row in staged[index]]
        store.commit(chunk, rows, indices)
    elapsed = time.monotonic() - started
    dataset.write_card(out_dir, command=command or "failrecov collect",
                       config={"closed_loop": config_dict(config)}, target_samples=None)
    accepted = [r for r in store.read_attempts() if r["accepted"]]
    return {"episodes": episodes, "new_episodes": ran, "elapsed_s": elapsed,
            "episodes_per_min": ran / elapsed * 60 if ran and elapsed > 0 else None,
            "samples": len(accepted),
            "by_type": {t: sum(r["failure_type"] == t for r in accepted)
                        for t in sorted({r["failure_type"] for r in accepted})}}
