"""Closed-loop trials: which episodes a suite runs, and what their outcomes add up to.

A suite is a fixed list of episodes (task, seed, injected fault, variation). Each episode is
run twice on the simulator, once with recovery disabled (the task as it goes without the
monitor) and once with the monitor and the executor's takeover enabled. The figures follow
the papers: task success with and without the monitor, recovery rate (FailSafe Table IV,
Dream2Fix: the fraction of failure cases, here the episodes that fail without the monitor,
that end in task success once the correction runs), the monitor's diagnosis against the
injected fault, diagnosis latency, and the extra time recovery costs (FailSafe Table VI).
Faults are injected through the simulator's ``faults.*`` parameters (see
``config/mujoco_sim.yaml``), so the executor and the monitor see only what a robot shows.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from failrecov_ros.core.schema import (
    Correction,
    CorrectionKind,
    Diagnosis,
    Directive,
    GripperCommand,
)
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.evaluation import metrics

#: Injected fault -> the failure type it produces (the label the monitor should give).
FAULT_LABELS = {
    "none": FailureType.NONE,
    "translation_x": FailureType.TRANSLATION_X,
    "translation_y": FailureType.TRANSLATION_Y,
    "force_open": FailureType.FORCE_OPEN,
    "weak_close": FailureType.WEAK_CLOSE,
}
OFFSET_M = 0.04  # how far the target's reported pose is off for translation faults
TASKS = ("pick_cube", "place_in_bowl", "push_cube", "stack_cube")
#: Pushing never closes the hand: gripper faults do not apply.
_NO_GRASP = {"push_cube"}


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """One trial: the simulator's task, seed, variation and injected fault."""

    index: int
    task: str
    seed: int
    fault: str = "none"
    sign: int = 1  # direction of a translation fault's offset
    variation: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.fault not in FAULT_LABELS:
            raise ValueError(f"unknown fault {self.fault!r}; known: {', '.join(FAULT_LABELS)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if self.task in _NO_GRASP and FAULT_LABELS[self.fault] in (FailureType.FORCE_OPEN,
                                                                  FailureType.WEAK_CLOSE):
            raise ValueError(f"{self.task} never closes the hand: {self.fault} cannot apply")

    @property
    def name(self) -> str:
        """Unique within a suite, sortable: ``07_place_in_bowl_force_open``."""
        return f"{self.index:02d}_{self.task}_{self.fault}"

    @property
    def label(self) -> FailureType:
        """The failure type the injected fault should be diagnosed as."""
        return FAULT_LABELS[self.fault]

    def truth(self) -> Diagnosis:
        """The ground-truth diagnosis: the injected fault and the correction that undoes it.

        A misreported pose sends the hand ``offset`` off the cube: the correction moves it back
        (end-effector delta and Dream2Fix bins of 1 cm); a hand that did not close, or closed
        too weakly, needs the gripper closed again at the grasp keyframe.
        """
        if self.label is FailureType.NONE:
            return Diagnosis(failed=False, failure_type=FailureType.NONE, confidence=1.0)
        stage = "push" if self.task in _NO_GRASP else "grasp"
        offset = self.sim_parameters()["faults.pose_offset"]
        if any(offset):
            dx, dy = -offset[0] or 0.0, -offset[1] or 0.0  # no -0.0 in the labels
            bins = round(OFFSET_M / 0.01)
            directive = Directive(dir_x=int(np.sign(dx)), bins_x=bins if dx else 0,
                                  dir_y=int(np.sign(dy)), bins_y=bins if dy else 0)
            correction = Correction(CorrectionKind.EE_DELTA, (dx, dy, 0.0, 0.0, 0.0, 0.0, 0.0),
                                    directive=directive)
        else:
            correction = Correction(CorrectionKind.DIRECTIVE, directive=Directive(
                gripper=GripperCommand.CLOSE, keyframe=0))
        return Diagnosis(failed=True, failure_type=self.label, confidence=1.0, stage=stage,
                         summary=f"injected {self.fault}", correction=correction)

    def sim_parameters(self) -> dict[str, Any]:
        """The mujoco_sim parameters that set this episode up before ``~/reset``."""
        offset = [0.0, 0.0, 0.0]
        if self.fault == "translation_x":
            offset[0] = self.sign * OFFSET_M
        elif self.fault == "translation_y":
            offset[1] = self.sign * OFFSET_M
        return {
            "task": self.task, "seed": self.seed,
            "variation": json.dumps(dict(self.variation)) if self.variation else "",
            "faults.pose_offset": offset,
            "faults.close_failures": 1 if self.fault == "force_open" else 0,
            "faults.grasp_force_scale": 1.0,
            "faults.weak_grasps": 1 if self.fault == "weak_close" else 0,
        }


def _round_robin(count: int, seed0: int, variation: tuple = ()) -> list[EpisodeSpec]:
    """``count`` episodes cycling through tasks and the faults each task admits."""
    combos = [(task, fault) for fault in FAULT_LABELS for task in TASKS
              if not (task in _NO_GRASP and fault in ("force_open", "weak_close"))]
    return [EpisodeSpec(i, task, seed0 + i, fault, 1 if (i // len(combos)) % 2 == 0 else -1,
                        variation)
            for i, (task, fault) in ((i, combos[i % len(combos)]) for i in range(count))]


SUITES: dict[str, str] = {
    "demo": "18 episodes: 4 tasks x their faults (none, translation x/y, force_open, "
            "weak_close), seeds 100+",
    "smoke": "3 pick_cube episodes: none, translation_x, force_open (seeds 100-102)",
    "heldout": "18 episodes like demo on seeds 1000+ with a purple target cube (a colour the "
               "shipped checkpoint never trained on)",
    "clean": "12 episodes without faults cycling pick, place and stack (seeds 2000+): "
             "demonstrations for episode_recorder and the data engine",
}


def suite(name: str, episodes: int | None = None) -> list[EpisodeSpec]:
    """The named suite's episodes (``episodes`` truncates or extends the round robin)."""
    if name == "smoke":
        specs = [EpisodeSpec(0, "pick_cube", 100), EpisodeSpec(1, "pick_cube", 101,
                                                               "translation_x"),
                 EpisodeSpec(2, "pick_cube", 102, "force_open")]
        return specs[:episodes] if episodes else specs
    if name == "demo":
        return _round_robin(episodes or 18, 100)
    if name == "heldout":
        return _round_robin(episodes or 18, 1000, (("target_color", "purple"),))
    if name == "clean":
        grasping = [t for t in TASKS if t not in _NO_GRASP]
        return [EpisodeSpec(i, grasping[i % len(grasping)], 2000 + i)
                for i in range(episodes or 12)]
    raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")


@dataclasses.dataclass
class DiagnosisRecord:
    """One diagnosis the monitor published during an episode."""

    stamp_s: float
    failed: bool
    failure_type: str
    stage: str
    confidence: float
    latency_ms: float


@dataclasses.dataclass
class EpisodeResult:
    """What happened in one run of an episode (``monitor``: recovery enabled)."""

    spec: EpisodeSpec
    monitor: bool
    code: int
    message: str
    duration_s: float  # the executor's episode duration (simulated time)
    wall_s: float
    recoveries_attempted: int = 0
    recoveries_succeeded: int = 0
    takeovers: list[str] = dataclasses.field(default_factory=list)  # failure types acted on
    diagnoses: list[DiagnosisRecord] = dataclasses.field(default_factory=list)
    task_success: bool | None = None  # the simulator's success predicate at the end
    success_details: str = ""  # its measurements (JSON)

    @property
    def success(self) -> bool:
        """The task's success predicate held at the end (the executor's word without one).

        The executor can believe a task done that is not: a closure that stopped short of
        the cube reports a good grasp. Trials count what the simulator measures.
        """
        return self.code == 0 if self.task_success is None else self.task_success

    @property
    def executor_claimed_success(self) -> bool:
        """The executor reported SUCCEEDED."""
        return self.code == 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the run (results.json, results.csv)."""
        return {"episode": self.spec.name, "task": self.spec.task, "seed": self.spec.seed,
                "fault": self.spec.fault, "variation": dict(self.spec.variation),
                "monitor": self.monitor, "success": self.success,
                "executor_succeeded": self.executor_claimed_success, "code": self.code,
                "success_details": self.success_details,
                "message": self.message, "duration_s": round(self.duration_s, 3),
                "wall_s": round(self.wall_s, 3),
                "recoveries_attempted": self.recoveries_attempted,
                "recoveries_succeeded": self.recoveries_succeeded,
                "takeovers": self.takeovers,
                "diagnoses": [dataclasses.asdict(d) for d in self.diagnoses]}


def episode_verdict(result: EpisodeResult, threshold: float = 0.5) -> str:
    """The monitor's call on an episode: the first confident failure it reported, else none.

    A failed diagnosis at or above the executor's confidence threshold: the first verdict the
    executor counts towards a takeover (it interrupts a skill that is going fine only after
    ``interrupt_confirmations`` agreeing ones), so the accuracy scores what the monitor said
    first, and a false alarm here need not have moved the arm (see ``takeovers``).
    """
    for d in result.diagnoses:
        if d.failed and d.confidence >= threshold and d.failure_type != "stall":
            return d.failure_type
    return FailureType.NONE.value


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), None without values."""
    return float(np.percentile(values, 100 * q)) if len(values) else None


def summarize(results: Iterable[EpisodeResult], threshold: float = 0.5) -> dict[str, Any]:
    """The suite's figures; every rate says over how many episodes it was taken."""
    results = list(results)
    by_arm = {arm: {r.spec.name: r for r in results if r.monitor is arm} for arm in (False, True)}
    paired = [(by_arm[False][n], by_arm[True][n]) for n in by_arm[True] if n in by_arm[False]]
    if not paired:
        raise ValueError("no episode ran both without and with the monitor")
    without = sum(a.success for a, _ in paired)
    with_monitor = sum(b.success for _, b in paired)
    failures = [(a, b) for a, b in paired if not a.success]
    recovered = sum(b.success for _, b in failures)
    calls = {b.spec.name: episode_verdict(b, threshold) for _, b in paired}
    verdicts = [(b.spec.label.value, calls[b.spec.name]) for _, b in paired]
    correct = sum(truth == call for truth, call in verdicts)
    faulty = [(t, c) for t, c in verdicts if t != FailureType.NONE.value]
    nominal = [(t, c) for t, c in verdicts if t == FailureType.NONE.value]
    latencies = [d.latency_ms for _, b in paired for d in b.diagnoses]
    extra = [b.duration_s - a.duration_s for a, b in paired if a.success and b.success]
    per_type: dict[str, dict[str, Any]] = {}
    for a, b in paired:
        row = per_type.setdefault(b.spec.fault, {"episodes": 0, "success_without": 0,
                                                 "success_with": 0, "diagnosed": 0})
        row["episodes"] += 1
        row["success_without"] += a.success
        row["success_with"] += b.success
        row["diagnosed"] += b.spec.label.value == calls[b.spec.name]
    return {
        "episodes": len(paired),
        "success_without_monitor": _rate(without, len(paired)),
        "success_with_monitor": _rate(with_monitor, len(paired)),
        "failures_without_monitor": len(failures),
        "recovery_rate": _rate(recovered, len(failures)),
        "recoveries_attempted": sum(b.recoveries_attempted for _, b in paired),
        "recoveries_succeeded": sum(b.recoveries_succeeded for _, b in paired),
        "diagnosis_accuracy": _rate(correct, len(verdicts)),
        "fault_detection_rate": _rate(sum(c != FailureType.NONE.value for _, c in faulty),
                                      len(faulty)),
        "fault_type_accuracy": _rate(sum(t == c for t, c in faulty), len(faulty)),
        "false_alarm_episodes": sum(c != FailureType.NONE.value for _, c in nominal),
        "false_alarm_episodes_acted_on": sum(
            bool(b.takeovers) for _, b in paired if b.spec.label is FailureType.NONE),
        "nominal_episodes": len(nominal),
        "diagnoses": len(latencies),
        "latency_ms_p50": _percentile(latencies, 0.5),
        "latency_ms_p95": _percentile(latencies, 0.95),
        "extra_time_s_mean": statistics.fmean(extra) if extra else None,
        "executor_false_successes": sum(r.executor_claimed_success and not r.success
                                        for r in results),
        "confusion": metrics.confusion_counts(verdicts),
        "per_fault": per_type,
    }


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if percent:
        return f"{100 * value:.0f}%"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The closing table as (figure, value) rows."""
    s = summary
    n = s["episodes"]
    return [
        ("episodes (each run without and with the monitor)", str(n)),
        ("task success without the monitor",
         f"{_fmt(s['success_without_monitor'], True)} ({round(s['success_without_monitor'] * n)}"
         f"/{n})"),
        ("task success with the monitor",
         f"{_fmt(s['success_with_monitor'], True)} ({round(s['success_with_monitor'] * n)}/{n})"),
        ("recovery rate (failures without the monitor that succeed with it)",
         f"{_fmt(s['recovery_rate'], True)} of {s['failures_without_monitor']}"),
        ("recoveries attempted / succeeded (executor)",
         f"{s['recoveries_attempted']} / {s['recoveries_succeeded']}"),
        ("diagnosis accuracy (episode verdict = injected fault)",
         _fmt(s["diagnosis_accuracy"], True)),
        ("faults detected / typed correctly",
         f"{_fmt(s['fault_detection_rate'], True)} / {_fmt(s['fault_type_accuracy'], True)}"),
        ("nominal episodes with a false alarm / with a takeover",
         f"{s['false_alarm_episodes']} / {s['false_alarm_episodes_acted_on']} of "
         f"{s['nominal_episodes']}"),
        ("diagnosis latency p50 / p95 (ms)",
         f"{_fmt(s['latency_ms_p50'])} / {_fmt(s['latency_ms_p95'])} over {s['diagnoses']}"),
        ("extra time with the monitor, episodes both runs completed (s sim)",
         _fmt(s["extra_time_s_mean"])),
        ("runs the executor called done that the simulator did not",
         str(s["executor_false_successes"])),
    ]


def render_table(summary: dict[str, Any]) -> str:
    """The closing table as aligned text."""
    rows = table_rows(summary)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append(f"{'fault':<14}{'episodes':>9}{'success w/o':>13}{'success with':>14}"
                 f"{'diagnosed':>11}")
    for fault, row in summary["per_fault"].items():
        lines.append(f"{fault:<14}{row['episodes']:>9}{row['success_without']:>13}"
                     f"{row['success_with']:>14}{row['diagnosed']:>11}")
    return "\n".join(lines)


def write_report(out_dir, suite_name: str, results: Sequence[EpisodeResult],
                 summary: dict[str, Any], snapshots: dict[str, list], *, wall_s: float,
                 model: dict[str, Any] | None = None, threshold: float = 0.5) -> list:
    """results.json, results.csv and report.html (table, plots, frames around recoveries)."""
    from pathlib import Path

    from failrecov_ros.evaluation import report

    out = Path(out_dir)
    record = report.provenance(suite=suite_name, wall_s=round(wall_s, 1),
                               **({"model": model} if model else {}))
    data = {"suite": suite_name, "summary": summary,
            "episodes": [r.to_json() for r in results], "provenance": record}
    rows = [{k: v for k, v in r.to_json().items()
             if k not in ("diagnoses", "variation", "success_details")}
            | {"verdict": episode_verdict(r, threshold) if r.monitor else ""}
            for r in results]
    paths = [report.write_json(out / "results.json", data),
             report.write_csv(out / "results.csv", rows)]
    monitored = [r for r in results if r.monitor]
    truth = [r.spec.label.value for r in monitored]
    calls = [episode_verdict(r, threshold) for r in monitored]
    per_fault = summary["per_fault"]
    sections = [
        ("Summary", "<pre>" + render_table(summary).replace("&", "&amp;").replace("<", "&lt;")
         + "</pre>"),
        ("Task success per injected fault", report.img_html(report.bars_png(
            {f"{fault} {arm}": row[key] / row["episodes"] for fault, row in per_fault.items()
             for arm, key in (("w/o", "success_without"), ("with", "success_with"))},
            "task success without / with the monitor", "success rate", limit=(0.0, 1.05)),
            "success per fault")),
        ("Episode verdict against the injected fault", report.img_html(
            report.confusion_png(truth, calls, title="injected (rows) vs diagnosed (columns)"),
            "confusion")),
    ]
    latencies = [d.latency_ms for r in monitored for d in r.diagnoses]
    if latencies:
        sections.append(("Diagnosis latency", report.img_html(
            report.histogram_png(latencies, "model latency per window", "ms"), "latency")))
    figures = []
    for name, shots in snapshots.items():
        for caption, rgb in shots:
            if getattr(rgb, "ndim", 0) == 3:
                figures.append(f"<figure>{report.img_html(report.frame_png(rgb, text=caption))}"
                               f"<figcaption>{name}: {caption}</figcaption></figure>")
    sections.append(("Before and after each recovery",
                     "".join(figures) or "<p>No recovery was attempted.</p>"))
    sections.append(("Episodes", report.table_html(rows)))
    paths.append(report.write_html(out / "report.html",
                                   f"failrecov_ros closed-loop suite '{suite_name}'", sections,
                                   record))
    return paths
