"""One attempt of the data engine: perturb a clean demonstration, verify, label, render.

Attempt ``i`` is a pure function of (config, i): its episode, scene variation, generator and
perturbation come from ``SeedSequence([seed, i])``, so a dataset is the same whatever the number
of workers and however often a run is resumed. An attempt returns rows (dicts with
``dataset.COLUMNS``), accepted or rejected, each with every verifier score.

Procedures (DIGEST sections 1 and 3):

- FailSafe (and slip / early release): run the expert with one stage pose moved (translation
  on one axis, rotation about one axis) or a stall (no-op); keep it only if the task fails. Each
  deviated pose P_d (step 10 on, after the fault) is matched to a corrective pose P_c on the clean
  run (step 10 to 3 before the end; 3-10 steps ahead for no-ops); dA = P_c - P_d (7-DoF). The pair
  is kept only if replaying P_d -> P_c -> rest of the clean plan succeeds.
- Dream2Fix: perturb the demonstration's action stream at the grasp keyframe (delay, weak,
  force-open, x-y translation), roll it out in the world model, keep it only if it fails; the
  directive label comes from the perturbation parameters, and applying it must recover.
- ``none``: windows of the clean demonstration, labelled success (negatives for detection).

The clean demonstration is the scripted expert's run, or a recorded one (``demonstrations`` in
the config: rosbags from a real robot or ``episode_recorder``), which the world model must
reproduce before its stream is perturbed; only Dream2Fix and ``none`` apply to those.

Every kept sample must also pass kinematic safety (joint limits, p95-calibrated |q'| and |q''|)
and visual sanity (target visible, depth finite) over its window.

What a perturbation leaves unchanged is not simulated again: a faulted expert run continues
from the clean run's checkpoint at the first plan segment its faults change, and a Dream2Fix
rollout from the clean (or perturbed) rollout's checkpoint before the first action it changes;
either is bit for bit the run from the start (the tests compare them).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from failrecov_ros.core import geometry
from failrecov_ros.core.labels import format_dream2fix, format_failsafe
from failrecov_ros.core.safety import MotionThresholds, calibrate_thresholds, check_joint_path
from failrecov_ros.core.schema import (
    MAX_BINS,
    Correction,
    CorrectionKind,
    Diagnosis,
    Directive,
    GripperCommand,
    validate,
)
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.datagen import actions, recorded
from failrecov_ros.datagen.bags import read_demonstration
from failrecov_ros.datagen.config import GRASPING_TASKS, RECORDED_GENERATORS, DatagenConfig
from failrecov_ros.datagen.world_model import PhysicsWorldModel, Rollout, WorldModel
from failrecov_ros.robots import fr3
from failrecov_ros.sim.camera import RgbdCamera
from failrecov_ros.sim.expert import (
    CLOSE_WAIT_S,
    GRASP_FORCE,
    OPEN_WAIT_S,
    SLOW_SPEED,
    Episode,
    ExpertRunner,
    Faults,
    Segment,
)
from failrecov_ros.sim.scene import Simulation
from failrecov_ros.sim.tasks import TARGET, Task, make_task
from failrecov_ros.sim.variations import Catalogue

AXES = ("x", "y", "z")
ANGLES = ("roll", "pitch", "yaw")
CALIBRATION_SEED_OFFSET = 1_000_000_007  # calibration demos never coincide with data episodes
CATALOGUE = Catalogue()
#: Steps before W_k at which Dream2Fix rollouts branch off the clean one: the translation
#: operator fades in over 3 steps before W_k, and a step reads the next step's target too.
BRANCH_MARGIN = 4


@dataclasses.dataclass(frozen=True)
class AttemptSpec:
    """Everything drawn for attempt ``index`` before anything is simulated."""

    index: int
    episode: int
    task: str
    episode_seed: int
    variation: dict[str, Any]
    generator: str
    mode: str
    parameters: dict[str, Any]
    rng_state: int
    demonstration: str = ""  # the recorded bag this episode perturbs ("" = the expert's run)


def _uniform(rng: np.random.Generator, bounds) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _stages(task: str) -> tuple[str, ...]:
    if task == "push_cube":
        return ("approach", "push", "retreat")
    if task == "pick_cube":
        return ("approach", "pre_grasp", "grasp", "lift")
    return ("approach", "pre_grasp", "grasp", "lift", "transport", "place", "release", "retreat")


def attempt_spec(config: DatagenConfig, index: int) -> AttemptSpec:
    """Draw attempt ``index`` (its episode, generator and perturbation) deterministically."""
    episode = index // config.attempts_per_episode
    episode_rng = np.random.default_rng(np.random.SeedSequence([config.seed, episode, 0]))
    demonstration = ""
    if config.demonstrations:
        demonstration = config.demonstrations[episode % len(config.demonstrations)]
        task = recorded.demonstration_task(demonstration, config.demonstration_task)
    else:
        task = config.tasks[episode % len(config.tasks)]
    episode_seed = int(episode_rng.integers(0, 2**31 - 1))
    variation = CATALOGUE.sample(episode_rng) if config.vary_scene else CATALOGUE.nominal()
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, episode, 1, index]))
    stages = _stages(task)
    applicable = {g: w for g, w in config.generators.items()
                  if w > 0 and _applies(config, g, task, stages)
                  and (not demonstration or g in RECORDED_GENERATORS)}
    if not applicable:
        applicable = {"none": 1.0}
    names = sorted(applicable)
    weights = np.array([applicable[n] for n in names], dtype=float)
    generator = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    mode, parameters = _draw_perturbation(config, generator, stages, rng)
    return AttemptSpec(index, episode, task, episode_seed, variation,
                       generator, mode, parameters, int(rng.integers(0, 2**63 - 1)),
                       demonstration)


def _applies(config: DatagenConfig, generator: str, task: str, stages: tuple[str, ...]) -> bool:
    """Whether ``generator`` can perturb ``task``: it needs a grasp, or a stage it may use."""
    if generator not in ("failsafe", "none") and task not in GRASPING_TASKS:
        return False
    allowed = {"failsafe": config.failsafe.stages, "slip": config.slip.stages,
               "early_release": config.early_release.stages}.get(generator)
    return allowed is None or bool(set(allowed) & set(stages))


def _draw_perturbation(config: DatagenConfig, generator: str, stages: tuple[str, ...],
                       rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    if generator == "none":
        return "none", {}
    if generator == "failsafe":
        fs = config.failsafe
        mode = str(rng.choice(fs.modes))
        allowed = [s for s in fs.stages if s in stages]
        stage = str(rng.choice(allowed))
        if mode == "stall":
            return "stall", {"stage": stage, "stall_s": _uniform(rng, fs.stall_range_s)}
        axis = int(rng.integers(3))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        bounds = fs.translation_range if mode == "translation" else fs.rotation_range
        vector = [0.0, 0.0, 0.0]
        vector[axis] = sign * _uniform(rng, bounds)
        if mode == "translation":
            return f"translation_{AXES[axis]}", {"stage": stage, "translation": vector}
        return f"rotation_{ANGLES[axis]}", {"stage": stage, "rotation": vector}
    if generator == "slip":
        stage = str(rng.choice([s for s in config.slip.stages if s in stages]))
        return "slip", {"stage": stage,
                        "friction": _uniform(rng, config.slip.friction_range)}
    if generator == "early_release":
        stage = str(rng.choice([s for s in config.early_release.stages if s in stages]))
        return "early_release", {"stage": stage, "fraction": _uniform(
            rng, config.early_release.fraction_range)}
    d2f = config.dream2fix
    mode = str(rng.choice(d2f.modes))
    if mode == "delay_close":
        return mode, {"delay": int(rng.integers(d2f.delay_range[0], d2f.delay_range[1] + 1))}
    if mode == "weak_close":
        return mode, {"scale": _uniform(rng, d2f.weak_scale_range)}
    if mode == "force_open":
        return mode, {}
    while True:  # "minimal but sufficient": redraw offsets too small to matter
        offset = rng.normal(0.0, d2f.translation_sigma, size=2)
        if np.abs(offset).max() >= d2f.translation_min:
            break
    offset = np.clip(offset, -MAX_BINS * d2f.metres_per_bin, MAX_BINS * d2f.metres_per_bin)
    mode = "translation_x" if abs(offset[0]) >= abs(offset[1]) else "translation_y"
    return mode, {"offset": [float(v) for v in offset]}


def faults_for(spec: AttemptSpec) -> Faults:
    """The expert-level fault set of a FailSafe / slip / early-release attempt."""
    p = spec.parameters
    if spec.generator == "slip":
        return Faults(slip_stage=p["stage"], slip_friction=p["friction"])
    if spec.generator == "early_release":
        return Faults(early_open_stage=p["stage"], early_open_fraction=p["fraction"])
    if spec.mode == "stall":
        return Faults(stage=p["stage"], stall_s=p["stall_s"])
    return Faults(stage=p["stage"], translation=tuple(p.get("translation", (0, 0, 0))),
                  rotation=tuple(p.get("rotation", (0, 0, 0))))


@dataclasses.dataclass
class _EpisodeContext:
    spec_episode: int
    task: Task
    sim: Simulation
    camera: RgbdCamera
    clean: Episode | None  # None: a recorded demonstration, whose run is ``stream_rollout``
    stream: actions.ActionStream | None = None
    stream_rollout: Rollout | None = None
    rendered_run: Episode | Rollout | None = None  # the run whose frames ``rendered`` holds
    rendered: dict[int, tuple[np.ndarray, bool, float]] = dataclasses.field(default_factory=dict)

    def plan_stage(self, step: int) -> str:
        """The clean demonstration's stage at ``step`` (a recorded one's from its keyframes)."""
        if self.clean is not None:
            return self.clean.stage_at(step)
        return recorded.recorded_stage(self.stream.closure, step)


class Engine:
    """Runs attempts; keeps one clean demonstration (and its simulation) per worker cached."""

    def __init__(self, config: DatagenConfig, thresholds: MotionThresholds, *,
                 world_model: WorldModel | None = None) -> None:
        self.config = config
        self.thresholds = thresholds.scaled(config.verification.threshold_scale)
        self.world_model = world_model or PhysicsWorldModel(self._simulation_for)
        self._context: _EpisodeContext | None = None
        self.limits = fr3.ARM_LIMITS

    # --- episodes ------------------------------------------------------------------------------
    def _simulation_for(self, task: Task) -> Simulation:
        context = self._context
        if context is not None and context.task is task:
            return context.sim
        return Simulation(task.scene)

    def _episode(self, spec: AttemptSpec) -> _EpisodeContext:
        if self._context is not None and self._context.spec_episode == spec.episode:
            return self._context
        self.close()
        if spec.demonstration:
            return self._recorded_episode(spec)
        task = make_task(spec.task, spec.episode_seed, spec.variation)
        sim = Simulation(task.scene)
        clean = self._run(sim, task, None)
        self._context = _EpisodeContext(spec.episode, task, sim, self._camera(sim, task), clean)
        return self._context

    def _camera(self, sim: Simulation, task: Task) -> RgbdCamera:
        width, height = self.config.image_size
        return RgbdCamera(sim.model, task.scene.cameras[0].name, width, height)

    def _recorded_episode(self, spec: AttemptSpec) -> _EpisodeContext:
        """A recorded bag as the clean run: its stream, rolled out in its reconstructed scene."""
        demo = read_demonstration(spec.demonstration, max_frames=0)
        nominal = make_task(spec.task, spec.episode_seed, spec.variation)
        stream = recorded.stream_from_demonstration(demo, Simulation(nominal.scene),
                                                    rate_hz=self.config.record_hz)
        task = recorded.task_from_demonstration(stream, spec.task, spec.episode_seed,
                                                spec.variation, demo.instruction)
        sim = Simulation(task.scene)
        self._context = _EpisodeContext(spec.episode, task, sim, self._camera(sim, task), None,
                                        stream)
        self._context.stream_rollout = self._reference_rollout(task, stream)
        return self._context

    def _reference_rollout(self, task: Task, stream: actions.ActionStream) -> Rollout:
        """The clean stream's rollout; the physics model keeps a checkpoint to branch from.

        Every Dream2Fix operator leaves the stream as it is until shortly before the window
        around the first close keyframe, so the perturbed and the fix rollouts continue from
        the clean one's checkpoint there rather than replaying the shared prefix.
        """
        if not isinstance(self.world_model, PhysicsWorldModel):
            return self.world_model.rollout(task, stream)
        closes = [k for k, kind in actions.keyframes(stream.closure) if kind == "close"]
        at = (max(0, closes[0] - self.config.dream2fix.window_half_width - BRANCH_MARGIN)
              if closes else None)
        return self.world_model.rollout(task, stream, checkpoint_at=at)

    def _branch_from(self, reference: Rollout) -> dict[str, Any]:
        if isinstance(self.world_model, PhysicsWorldModel) and reference.checkpoint is not None:
            return {"branch_from": reference}
        return {}

    def _run(self, sim: Simulation, task: Task, faults: Faults | None) -> Episode:
        sim.reset()
        sim.step(50)
        return ExpertRunner(sim, task, faults, record_hz=self.config.record_hz,
                            keep_states=True).run()

    def _run_faulted(self, context: _EpisodeContext, faults: Faults) -> Episode:
        """The clean run with ``faults``: a branch of it where the faults first act.

        Up to the first segment the faults change the faulted run is the clean one, so the
        physics restarts from the clean run's checkpoint there (equal to a run from the start,
        ``test_a_branched_faulted_run_equals_one_from_the_start``).
        """
        clean = context.clean
        runner = ExpertRunner(context.sim, context.task, faults,
                              record_hz=self.config.record_hz, keep_states=True)
        return runner.resume(clean, faults.first_segment(clean.plan))

    def close(self) -> None:
        """Free the cached simulation's renderer."""
        if self._context is not None:
            self._context.camera.close()
            self._context = None

    # --- attempts ------------------------------------------------------------------------------
    def attempt(self, index: int) -> list[dict[str, Any]]:
        """All rows of attempt ``index``; a crash becomes one rejected row with the error."""
        spec = attempt_spec(self.config, index)
        try:
            context = self._episode(spec)
            if context.clean is None and not context.stream_rollout.success:
                return [self._reject(spec, context.task.instruction,
                                     "world model does not reproduce the demonstration",
                                     {"world_model_clean_success": False})]
            if context.clean is not None and not context.clean.success:
                return [self._reject(spec, context.task.instruction, "clean demonstration failed",
                                     {"clean_success": False})]
            rng = np.random.default_rng(spec.rng_state)
            if spec.generator == "none":
                return [self._success_sample(spec, context, rng)]
            if spec.generator == "dream2fix":
                return [self._dream2fix(spec, context)]
            return self._failsafe(spec, context, rng)
        except Exception as error:  # noqa: BLE001 - a crashing sample is data, not a crash
            self.close()
            return [self._reject(spec, "", "attempt crashed", {},
                                 error=f"{type(error).__name__}: {error}")]

    def _base_row(self, spec: AttemptSpec, instruction: str, pair: int = 0) -> dict[str, Any]:
        return {
            "sample_id": f"a{spec.index:09d}-{pair}", "attempt": spec.index, "accepted": False,
            "generator": spec.generator, "failure_type": spec.mode, "stage": "",
            "task": spec.task, "instruction": instruction,
            "episode_seed": spec.episode_seed, "failed": spec.generator != "none",
            "label_json": "", "label_dream2fix": "", "label_failsafe": "", "ee_delta": [],
            "directive": Directive().to_dict(), "frames": None, "frame_times": [],
            "joint_positions": [], "gripper_width": [], "tcp_pose": [],
            "parameters_json": json.dumps(
                {**spec.parameters, **({"demonstration": spec.demonstration}
                                       if spec.demonstration else {})}, sort_keys=True),
            "variation_json": json.dumps(spec.variation, sort_keys=True),
            "scores_json": "{}", "reasons": [], "error": "",
        }

    def _reject(self, spec, instruction, reason, scores, error="") -> dict[str, Any]:
        row = self._base_row(spec, instruction)
        row.update(scores_json=json.dumps(scores, sort_keys=True), reasons=[reason], error=error)
        return row

    # --- FailSafe, slip, early release -------------------------------------------------------
    def _failsafe(self, spec: AttemptSpec, context: _EpisodeContext,
                  rng: np.random.Generator) -> list[dict[str, Any]]:
        clean, task = context.clean, context.task
        failed = self._run_faulted(context, faults_for(spec))
        scores: dict[str, Any] = {"clean_success": True, "perturbed_success": failed.success}
        if failed.success:
            return [self._reject(spec, task.instruction, "perturbation did not cause a failure",
                                 scores)]
        onset = _fault_row(failed)
        fs = self.config.failsafe
        first = max(fs.deviated_from_step, onset + 1, self.config.window_frames - 1)
        last = len(failed.times) - 1
        if spec.mode == "stall":
            last = min(last, onset + round(spec.parameters["stall_s"] * self.config.record_hz))
        if first > last:
            return [self._reject(spec, task.instruction, "no deviated step after the fault",
                                 scores)]
        kinematic = self._kinematics(failed.arm_q)
        rows = []
        for pair in range(fs.pairs_per_failure):
            r_d = int(rng.integers(first, last + 1))
            hi = len(clean.times) - 1 - fs.corrective_before_end
            if spec.mode == "stall":
                r_c = min(onset + int(rng.integers(fs.noop_after_steps[0],
                                                   fs.noop_after_steps[1] + 1)), hi)
            else:
                r_c = int(rng.integers(fs.corrective_from_step, hi + 1))
            rows.append(self._failsafe_pair(spec, context, failed, r_d, r_c, pair,
                                            dict(scores), kinematic))
        return rows

    def _failsafe_pair(self, spec, context, failed: Episode, r_d: int, r_c: int, pair: int,
                       scores: dict[str, Any], kinematic) -> dict[str, Any]:
        clean, sim, task = context.clean, context.sim, context.task
        delta = geometry.ee_delta(failed.tcp_position[r_d], failed.tcp_quat[r_d],
                                  failed.gripper_command[r_d], clean.tcp_position[r_c],
                                  clean.tcp_quat[r_c], clean.gripper_command[r_c])
        stage_c = clean.stage_at(r_c)
        correction = [Segment(stage_c, "move", tuple(clean.tcp_position[r_c]),
                              tuple(geometry.matrix_from_quat(clean.tcp_quat[r_c]).reshape(9)),
                              SLOW_SPEED, True)]
        if abs(delta[6]) > 1e-3:
            closing = clean.gripper_command[r_c] < failed.gripper_command[r_d]
            grip = Segment(stage_c, "gripper", width=float(clean.gripper_command[r_c]),
                           force=GRASP_FORCE, wait_s=CLOSE_WAIT_S if closing else OPEN_WAIT_S)
            # A close grasps at the corrective pose; an open goes first, so that closed
            # fingers are not driven down onto the object they are to grasp again (as the
            # executor opens before a correction that a regrasp follows).
            correction = correction + [grip] if closing else [grip] + correction
        sim.restore_state(failed.states[r_d], nominal_friction=True)
        replay = ExpertRunner(sim, task, None, record_hz=self.config.record_hz,
                              gripper_command=float(failed.gripper_command[r_d])).run(
            correction + list(clean.plan[int(clean.segment_index[r_c]):]))
        replay_kinematic = self._kinematics(replay.arm_q)
        scores.update({"deviated_step": r_d, "corrective_step": r_c,
                       "replay_success": replay.success, **kinematic.scores(),
                       "replay_kinematic_ok": replay_kinematic.ok})
        reasons = []
        if not replay.success:
            reasons.append("correction does not recover (replay failed)")
        reasons += [f"unsafe perturbed motion: {v}" for v in kinematic.violations]
        reasons += [f"unsafe correction: {v}" for v in replay_kinematic.violations]
        ftype = FailureType(spec.mode)
        stage = failed.stage_at(r_d)
        directive = _directive_from_delta(delta, self.config.dream2fix.metres_per_bin,
                                          keyframe=self.config.window_frames - 1)
        summary = _failsafe_summary(spec, stage, delta)
        diagnosis = Diagnosis(True, ftype, 1.0, stage, summary,
                              Correction(CorrectionKind.EE_DELTA, tuple(float(v) for v in delta),
                                         "base", directive), task=task.name,
                              instruction=task.instruction)
        window = list(range(r_d - self.config.window_frames + 1, r_d + 1))
        return self._finish(spec, context, failed, window, diagnosis, scores, reasons, pair)

    # --- Dream2Fix -------------------------------------------------------------------------------
    def _dream2fix(self, spec: AttemptSpec, context: _EpisodeContext) -> dict[str, Any]:
        clean, task, d2f = context.clean, context.task, self.config.dream2fix
        if context.stream is None:
            context.stream = stream_from_episode(clean, context.sim)
            context.stream_rollout = self._reference_rollout(task, context.stream)
        stream, reference = context.stream, context.stream_rollout
        branch = self._branch_from(reference)
        scores: dict[str, Any] = {"clean_success": True, "world_model_clean_success":
                                  reference.success}
        if not reference.success:
            return self._reject(spec, task.instruction,
                                "world model does not reproduce the demonstration", scores)
        closes = [k for k, kind in actions.keyframes(stream.closure) if kind == "close"]
        if not closes:
            return self._reject(spec, task.instruction, "no gripper close keyframe", scores)
        k, w = closes[0], d2f.window_half_width
        operator = "translation" if spec.mode.startswith("translation") else spec.mode
        perturbed_stream = actions.apply(stream, operator, k, w, **spec.parameters)
        if branch and operator != "translation":
            # The gripper fix changes the perturbed stream from the clip's keyframe row on
            # (a physics rollout has one row per action and a final one): keep a checkpoint
            # there for the fix rollout to branch from.
            at = _clip_rows(len(stream) + 1, k, w, d2f, self.config)
            branch = {**branch, "checkpoint_at": at[int(np.argmin(np.abs(np.array(at) - k)))]}
        perturbed = self.world_model.rollout(task, perturbed_stream, **branch)
        scores["perturbed_success"] = perturbed.success
        if perturbed.success:
            return self._reject(spec, task.instruction, "perturbation did not cause a failure",
                                scores)
        clip = _clip_rows(len(perturbed.times), k, w, d2f, self.config)
        keyframe_in_clip = int(np.argmin(np.abs(np.array(clip) - k)))
        if operator == "translation":
            directive = Directive.from_displacement(-np.asarray(spec.parameters["offset"]),
                                                    d2f.metres_per_bin)
            fix = np.array(directive.displacement(d2f.metres_per_bin)[:2])
            fixed_stream = actions.translation(perturbed_stream, k, w, fix)
            ftype, stage = FailureType(spec.mode), "pre_grasp"
            correction = Correction(CorrectionKind.DIRECTIVE, (float(fix[0]), float(fix[1]), 0.0,
                                                               0.0, 0.0, 0.0, 0.0), "base",
                                    directive)
        else:
            correction = Correction.close_gripper(keyframe_in_clip,
                                                  context.sim.binding.max_gripper_width)
            directive = correction.directive
            at = clip[keyframe_in_clip]
            fixed_stream = perturbed_stream.replace(
                closure=close_from(perturbed_stream.closure, stream.closure, at, k))
            ftype, stage = FailureType(spec.mode), "keyframe"
        if branch:
            branch = {"branch_from": (reference, perturbed)}
        fixed = self.world_model.rollout(task, fixed_stream, keep_states=False, **branch)
        kinematic = self._kinematics(perturbed.arm_q)
        fixed_kinematic = self._kinematics(fixed.arm_q)
        # The clip runs on past the grasp; the executor's stage at its last frame is the clean
        # plan's there (a model's stage input), whatever stage the label names the fault by.
        scores["window_stage"] = context.plan_stage(min(clip[-1], len(stream) - 1))
        scores.update({"fix_success": fixed.success, "keyframe_step": k,
                       "ik_failures": perturbed.ik_failures, **kinematic.scores(),
                       "fix_kinematic_ok": fixed_kinematic.ok})
        reasons = [] if fixed.success else ["directive does not recover (fix rollout failed)"]
        reasons += [f"unsafe perturbed motion: {v}" for v in kinematic.violations]
        reasons += [f"unsafe correction: {v}" for v in fixed_kinematic.violations]
        summary = _dream2fix_summary(ftype, directive, spec)
        diagnosis = Diagnosis(True, ftype, 1.0, stage, summary, correction,
                              task=task.name, instruction=task.instruction)
        return self._finish(spec, context, perturbed, clip, diagnosis, scores, reasons, 0)

    # --- success windows -----------------------------------------------------------------------
    def _success_sample(self, spec, context, rng) -> dict[str, Any]:
        clean = context.clean if context.clean is not None else context.stream_rollout
        n = self.config.window_frames
        end = int(rng.integers(n - 1, len(clean.times)))
        stage = context.plan_stage(end)
        kinematic = self._kinematics(clean.arm_q)
        scores = {"clean_success": True, "window_end_step": end, **kinematic.scores()}
        reasons = [f"unsafe demonstration: {v}" for v in kinematic.violations]
        diagnosis = Diagnosis(False, FailureType.NONE, 1.0, stage,
                              f"The robot is executing {stage} as planned.", task=spec.task,
                              instruction=context.task.instruction)
        return self._finish(spec, context, clean, list(range(end - n + 1, end + 1)), diagnosis,
                            scores, reasons, 0)

    # --- verification shared by all generators ------------------------------------------------
    def _kinematics(self, arm_q: np.ndarray):
        return check_joint_path(arm_q, 1.0 / self.config.record_hz, self.limits,
                                thresholds=self.thresholds,
                                margin=self.config.verification.limit_margin)

    def _finish(self, spec, context, run, window: list[int], diagnosis: Diagnosis,
                scores: dict[str, Any], reasons: list[str], pair: int) -> dict[str, Any]:
        validate(diagnosis.to_dict(), record=True)  # a label that breaks the schema is a bug
        scores.setdefault("window_stage", diagnosis.stage)  # the plan's at the last frame
        row = self._base_row(spec, context.task.instruction, pair)
        row.update(failure_type=diagnosis.failure_type.value, stage=diagnosis.stage,
                   failed=diagnosis.failed, label_json=diagnosis.to_json(),
                   label_dream2fix=format_dream2fix(diagnosis),
                   label_failsafe=format_failsafe(diagnosis),
                   ee_delta=list(diagnosis.correction.ee_delta or ()),
                   directive=(diagnosis.correction.directive or Directive()).to_dict())
        widths = (run.gripper_width if isinstance(run, Rollout)
                  else gripper_widths(run, context.sim))
        row.update(frame_times=[float(run.times[i]) for i in window],
                   joint_positions=run.arm_q[window].tolist(),
                   gripper_width=[float(widths[i]) for i in window],
                   tcp_pose=np.hstack([run.tcp_position[window],
                                       run.tcp_quat[window]]).tolist())
        if not reasons:
            frames, visual = self._render(context, run, window)
            scores.update(visual)
            if visual["visible_fraction"] < self.config.verification.min_visible_fraction:
                reasons.append(f"target visible in {visual['visible_fraction']:.0%} of the "
                               "window")
            if visual["finite_depth_fraction"] < self.config.verification.min_finite_depth:
                reasons.append("depth has too few readings")
            if not reasons:
                row["frames"] = frames
        row.update(accepted=not reasons, reasons=reasons,
                   scores_json=json.dumps(_jsonable(scores), sort_keys=True))
        return row

    def _render(self, context, run, window: list[int]) -> tuple[np.ndarray, dict[str, float]]:
        if context.rendered_run is not run:  # the pairs of one failed run share frames
            context.rendered_run, context.rendered = run, {}
        frames, visible, finite = [], 0, []
        for i in window:
            if i not in context.rendered:
                context.rendered[i] = self._render_frame(context, run, i)
            rgb, seen, readings = context.rendered[i]
            frames.append(rgb)
            visible += seen
            finite.append(readings)
        return np.stack(frames), {"visible_fraction": visible / len(window),
                                  "finite_depth_fraction": min(finite)}

    def _render_frame(self, context, run, i: int) -> tuple[np.ndarray, bool, float]:
        """Row ``i`` of ``run``: its color image, target visibility and depth readings."""
        sim, camera = context.sim, context.camera
        sim.restore_state(run.states[i])
        rgb, depth = camera.render(sim.data)
        if np.isinf(depth).any() or (depth < 0).any():
            finite = 0.0  # a broken depth render, not merely pixels without a reading
        else:
            finite = float(np.isfinite(depth).mean())
        visible = _target_visible(sim, camera, depth, run.target_pose[i][:3],
                                  context.task.scene.object(TARGET).size,
                                  self.config.verification.depth_tolerance)
        return rgb, visible, finite


def gripper_widths(episode: Episode, sim: Simulation) -> np.ndarray:
    """Measured finger-to-finger width of every recorded step of an expert episode."""
    return np.array([sim.binding.width_from_fingers(f) for f in episode.fingers])


def stream_from_episode(episode: Episode, sim: Simulation) -> actions.ActionStream:
    """The action stream that replays an episode: its states, closure from measured width."""
    tcp = np.hstack([episode.tcp_position, episode.tcp_quat])
    return actions.ActionStream.from_states(episode.times, episode.arm_q, tcp,
                                            actions.closure_from_width(
                                                gripper_widths(episode, sim)))


def close_from(perturbed: np.ndarray, clean: np.ndarray, at: int, k: int) -> np.ndarray:
    """A gripper fix: close fully from step ``at`` to the end of the grasp begun at ``k``."""
    fixed = perturbed.copy()
    end = k
    while end < len(clean) and clean[end] > 0:
        end += 1
    fixed[at:end] = 1.0
    fixed[end:] = clean[end:]
    return fixed


def calibrate(config: DatagenConfig) -> MotionThresholds:
    """p95 motion thresholds from clean expert demonstrations of every configured task.

    With recorded demonstrations, from those instead. The expert demonstrations are drawn
    from the same scene variations as the data, so the thresholds describe the motions a
    correct run of this distribution makes.
    """
    if config.demonstrations:  # Dream2Fix: the p95 over the successful demonstrations given
        paths = [recorded.resample(read_demonstration(path, max_frames=0), config.record_hz)[1]
                 for path in config.demonstrations]
        return calibrate_thresholds(paths, 1.0 / config.record_hz,
                                    percentile=config.verification.percentile,
                                    statistic=config.verification.statistic)
    paths = []
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2]))
    for task_name in config.tasks:
        for i in range(config.verification.calibration_episodes):
            variation = CATALOGUE.sample(rng) if config.vary_scene else CATALOGUE.nominal()
            task = make_task(task_name, CALIBRATION_SEED_OFFSET + i, variation)
            sim = Simulation(task.scene)
            sim.step(50)
            episode = ExpertRunner(sim, task, None, record_hz=config.record_hz).run()
            if episode.success:
                paths.append(episode.arm_q)
    return calibrate_thresholds(paths, 1.0 / config.record_hz,
                                percentile=config.verification.percentile,
                                statistic=config.verification.statistic)


def _fault_row(episode: Episode) -> int:
    times = [e["time"] for e in episode.events if e["event"].startswith("fault_")]
    if not times:
        return 0
    return int(np.searchsorted(episode.times, min(times)))


def _clip_rows(length: int, k: int, w: int, d2f, config: DatagenConfig) -> list[int]:
    rate = config.record_hz
    start = max(0, k - w - round(d2f.clip_context_s * rate))
    end = min(length - 1, k + round(d2f.clip_horizon_s * rate))
    return [int(round(v)) for v in np.linspace(start, end, config.window_frames)]


def _directive_from_delta(delta: np.ndarray, metres_per_bin: float, keyframe: int) -> Directive:
    """The FailSafe delta in directive form.

    Its gripper change applies at ``keyframe``, the window's last frame: the correction starts
    right after what the model saw.
    """
    gripper = (GripperCommand.CLOSE if delta[6] < -1e-3 else
               GripperCommand.OPEN if delta[6] > 1e-3 else GripperCommand.NONE)
    return dataclasses.replace(Directive.from_displacement(delta[:3], metres_per_bin),
                               gripper=gripper,
                               keyframe=keyframe if gripper is not GripperCommand.NONE else -1)


def _failsafe_summary(spec: AttemptSpec, stage: str, delta: np.ndarray) -> str:
    what = {
        "stall": "the arm stalled", "slip": "the object slipped out of the grasp",
        "early_release": "the gripper opened before the place",
    }.get(spec.mode, f"the end-effector deviated ({spec.mode.replace('_', ' ')})")
    move = ", ".join(f"{n} {v:+.3f}" for n, v in zip(
        ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "dgripper"), delta, strict=True)
        if abs(v) >= 5e-4)
    return (f"During {spec.parameters.get('stage', stage)} {what}; now in {stage}. "
            f"Correct by {move or 'holding still'} to return to the nominal trajectory.")


def _dream2fix_summary(ftype: FailureType, directive: Directive, spec: AttemptSpec) -> str:
    if ftype in (FailureType.TRANSLATION_X, FailureType.TRANSLATION_Y):
        moves = [f"{'+' if d > 0 else '-'}{a} for {n} steps" for a, d, n in
                 (("x", directive.dir_x, directive.bins_x), ("y", directive.dir_y,
                                                             directive.bins_y)) if n]
        return ("The execution failed due to a translation misalignment before grasping. "
                f"Nudge the end-effector {' and '.join(moves)}, then retry the grasp.")
    text = {"delay_close": "The gripper closed too late; at the keyframe it was still open.",
            "weak_close": "The gripper closed too softly and the object was not held.",
            "force_open": "The gripper never closed at the keyframe."}[ftype.value]
    return f"{text} Close the gripper at frame {directive.keyframe}."


def _target_visible(sim: Simulation, camera: RgbdCamera, depth: np.ndarray, position,
                    size: float, tolerance: float) -> bool:
    cam = camera.camera_id
    rotation = sim.data.cam_xmat[cam].reshape(3, 3)
    local = rotation.T @ (np.asarray(position) - sim.data.cam_xpos[cam])
    optical = np.array([local[0], -local[1], -local[2]])  # MuJoCo looks down -z, y up
    if optical[2] <= 0:
        return False
    u, v = camera.intrinsics.project(optical)[0]
    col, row = int(round(u)), int(round(v))
    if not (0 <= col < camera.width and 0 <= row < camera.height):
        return False
    measured = depth[row, col]
    return bool(np.isfinite(measured) and abs(measured - optical[2]) <= size + tolerance)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, np.integer)):
            out[key] = int(value)
        elif isinstance(value, str):
            out[key] = value
        else:
            number = float(value)
            out[key] = number if math.isfinite(number) else None
    return out
