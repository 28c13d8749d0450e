"""Replay recorded bags through the monitor's own core and score what it says (no ROS needed).

Each bag (rosbag2, MCAP or sqlite3, ours or from ``ros2 bag record``) is read with ``rosbags``
and fed, in recording (log time) order, into the same :class:`~failrecov_ros.monitor.supervisor
.Supervisor` calls the ``recovery_monitor`` node makes: ``add_frame`` with the image header
stamp, ``add_joint_state`` with the JointState header stamp, ``set_context`` from
``SkillStatus``; windows are analysed with :func:`failrecov_ros.models.base.diagnose`. So the
trigger policy, window shape, state lookup and staleness are the live ones, not a copy.

The clock is the bag's: "now" for the staleness check is the log time of the message being
delivered, moved into the header-stamp domain by the offset seen on the first frame (so a bag
recorded on wall time with sim-time stamps still replays sensibly). The model is treated as
taking ``latency_s`` of that clock per window (default 0: it keeps up, and the run is
deterministic); ``latency_s=None`` uses each call's measured latency, so a slow model
supersedes and drops windows exactly as it would live. Replay itself runs as fast as the
model allows: with a fixed latency the windows do not depend on the model's answers, so a
helper process reads, decodes and windows the bag (and applies a model's ``frame_transform``,
e.g. the compact model's shrinking) while the model works on the previous window
(``ReplayOptions.read_ahead``; the same windows and diagnoses as reading inline).

Departures from live, on purpose: a bag without ``skill_status`` but with the data engine's
``task_instruction`` topic gives the monitor that instruction (live, only the executor
supplies it); a zero header stamp is replaced by the message's log time.

Labels come from a topic in the bag (:data:`LABEL_TOPIC`, ``std_msgs/String`` holding JSON,
see :func:`label_json`) or from a sidecar file (:func:`read_labels`). A bag that cannot be
read is reported in its :class:`EpisodeResult` (``error``), never raised out of
:func:`replay_bags`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import multiprocessing
import multiprocessing.util
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader

from failrecov_ros.core.camera import Intrinsics
from failrecov_ros.core.labels import parse_any
from failrecov_ros.core.schema import Diagnosis, SchemaError, validate
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.datagen.bags import (
    _READ_ERRORS,
    FAILURE_LABEL,
    BagError,
    _bag_path,
    _image_rgb,
    label_payload,
    message_typestore,
)
from failrecov_ros.evaluation import metrics
from failrecov_ros.models.base import DiagnosisModel, Window, diagnose
from failrecov_ros.monitor.supervisor import NS, SkillContext, Supervisor, TriggerConfig

#: Where the data engine and our tests put the episode label (std_msgs/String JSON).
LABEL_TOPIC = FAILURE_LABEL
_MODEL_FIELDS = ("failed", "failure_type", "stage", "confidence", "summary", "correction")
_RUNNING_STATES = (1, 2)  # SkillStatus.STATE_RUNNING, STATE_RECOVERING


@dataclasses.dataclass(frozen=True)
class Topics:
    """Topic names, relative like the node's (a bag's ``/ns/name`` matches ``name``)."""

    image: str = "camera/camera/color/image_raw"
    joint_states: str = "joint_states"
    skill_status: str = "skill_status"
    label: str = LABEL_TOPIC.lstrip("/")
    camera_info: str = "camera/camera/color/camera_info"
    instruction: str = "task_instruction"
    #: Topics whose absence makes a bag unusable (an error naming them and the bag's topics).
    required: tuple[str, ...] = ("image", "joint_states")


@dataclasses.dataclass(frozen=True)
class ReplayOptions:
    """How to replay: the monitor's trigger parameters, robot, clock model and scoring rule."""

    topics: Topics = Topics()
    trigger: TriggerConfig = TriggerConfig()
    robot: str = "fr3"
    latency_s: float | None = 0.0
    min_confidence: float = metrics.CONFIDENT
    #: 4x4 robot base -> camera optical frame (row-major 16 values), to draw corrections as
    #: arrows with the bag's camera_info; None: corrections are captions only.
    camera_from_base: tuple[float, ...] | None = None
    metres_per_bin: float = 0.01  # Dream2Fix directive step, as the monitor's parameter
    #: Read, decode and window bags in a helper process while the model runs (when latency_s
    #: is fixed and there are two CPUs; the same windows and diagnoses as reading inline).
    read_ahead: bool = True

    def __post_init__(self) -> None:
        if self.robot not in ("fr3", "stretch"):
            raise ValueError(f"robot must be 'fr3' or 'stretch', got {self.robot!r}")
        if self.latency_s is not None and self.latency_s < 0:
            raise ValueError(f"latency_s must be >= 0 or None, got {self.latency_s}")


@dataclasses.dataclass(frozen=True)
class Label:
    """The true outcome of an episode and when its failure began.

    ``onset_ns`` is on the header-stamp clock; ``onset_s`` (sidecar files) counts from the
    episode's first camera frame. A successful episode has neither.
    """

    diagnosis: Diagnosis
    onset_ns: int | None = None
    onset_s: float | None = None

    def onset_at(self, first_frame_ns: int | None) -> int | None:
        """Onset on the stamp clock, resolving a relative ``onset_s`` against the first frame."""
        if self.onset_ns is not None:
            return self.onset_ns
        if self.onset_s is not None and first_frame_ns is not None:
            return first_frame_ns + round(self.onset_s * NS)
        return None


#: The label topic's payload: ``{"diagnosis": <model-output schema>, "onset_ns": int|null}``.
label_json = label_payload


def parse_label(data: Any, where: str = "label") -> Label:
    """A label from JSON text or a decoded object; ValueError naming ``where`` if malformed.

    Accepted: ``{"diagnosis": {...} | "<Dream2Fix/FailSafe text>", "onset_ns" | "onset_s"}``
    or the diagnosis fields flat beside the onset.
    """
    try:
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        body = data.get("diagnosis", {k: v for k, v in data.items() if k in _MODEL_FIELDS})
        if isinstance(body, str):
            diagnosis = parse_any(body)
        else:
            body = dict(body)
            body.setdefault("confidence", 1.0)
            body.setdefault("summary", "")
            body.setdefault("stage", "")
            body.setdefault("correction", {"kind": "none"})
            diagnosis = validate(body)
        onset_ns = data.get("onset_ns")
        onset_s = data.get("onset_s")
        return Label(diagnosis, None if onset_ns is None else int(onset_ns),
                     None if onset_s is None else float(onset_s))
    except (SchemaError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{where}: not a valid label ({err})") from err


def read_labels(path: str | Path) -> dict[str, Label]:
    """Sidecar labels keyed by bag name: a JSON object, or JSON Lines with a ``bag`` field."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    labels: dict[str, Label] = {}
    stripped = text.lstrip()
    if stripped.startswith("{") and not _is_jsonl(stripped):
        data = json.loads(text)
        for name, value in data.items():
            labels[name] = parse_label(value, f"{path}: {name}")
        return labels
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, Mapping) or "bag" not in record:
            raise ValueError(f"{path}:{number}: a JSON Lines label needs a 'bag' field")
        labels[str(record["bag"])] = parse_label(record, f"{path}:{number}")
    return labels


def _is_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
    except ValueError:
        return False
    return True


def bag_name(path: str | Path) -> str:
    """What labels are keyed by: the bag directory's name, or a file's name without suffix."""
    path = Path(path)
    return path.stem if path.suffix in (".mcap", ".db3") else path.name


def lookup_label(labels: Mapping[str, Label], path: str | Path) -> Label | None:
    """The sidecar label for a bag (by name, file name or stem)."""
    path = Path(path)
    for key in (bag_name(path), path.name, str(path)):
        if key in labels:
            return labels[key]
    return None


@dataclasses.dataclass
class EpisodeResult:
    """What replaying one bag gave: every diagnosis, the verdict, its scores, or the error."""

    bag: str
    name: str
    error: str = ""
    label: Label | None = None
    diagnoses: list[Diagnosis] = dataclasses.field(default_factory=list)
    frames: int = 0
    first_frame_ns: int | None = None
    last_frame_ns: int | None = None
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0
    intrinsics: Intrinsics | None = None
    #: Frames (and arm joints, if known) at the stamps of the first alarm and of the last
    #: diagnosis, for the report.
    frames_at: dict[int, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    joints_at: dict[int, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    min_confidence: float = metrics.CONFIDENT

    @property
    def ok(self) -> bool:
        """Read to the end without an error."""
        return not self.error

    @property
    def duration_s(self) -> float:
        """Footage length: first to last camera frame stamp."""
        if self.first_frame_ns is None or self.last_frame_ns is None:
            return 0.0
        return (self.last_frame_ns - self.first_frame_ns) / NS

    @property
    def verdict(self) -> Diagnosis:
        """The diagnosis the episode is scored by (:func:`metrics.episode_verdict`)."""
        return metrics.episode_verdict(self.diagnoses, self.min_confidence)

    @property
    def onset_ns(self) -> int | None:
        """Failure onset on the stamp clock, when labelled as a failure."""
        if self.label is None or not self.label.diagnosis.failed:
            return None
        return self.label.onset_at(self.first_frame_ns)

    @property
    def detection_delay_s(self) -> float | None:
        """Seconds from onset to the first confident failed diagnosis at or after it."""
        onset = self.onset_ns
        if onset is None:
            return None
        return metrics.detection_delay_s(self.diagnoses, onset, self.min_confidence)

    @property
    def alarms(self) -> int:
        """Confident failed diagnoses in the episode."""
        return sum(metrics.is_alarm(d, self.min_confidence) for d in self.diagnoses)

    def row(self) -> dict[str, Any]:
        """One flat record (CSV row / JSON entry)."""
        verdict = self.verdict
        truth = self.label.diagnosis if self.label else None
        delay = self.detection_delay_s
        return {
            "bag": self.bag, "name": self.name, "error": self.error,
            "frames": self.frames, "duration_s": round(self.duration_s, 6),
            "diagnoses": len(self.diagnoses), "alarms": self.alarms,
            "label_failed": None if truth is None else truth.failed,
            "label_type": None if truth is None else truth.failure_type.value,
            "label_stage": None if truth is None else truth.stage,
            "onset_ns": self.onset_ns,
            "verdict_failed": verdict.failed,
            "verdict_type": verdict.failure_type.value,
            "verdict_stage": verdict.stage,
            "verdict_confidence": round(float(verdict.confidence), 6),
            "verdict_stamp_ns": verdict.stamp_ns,
            "verdict_correction": json.dumps(verdict.correction.to_dict(),
                                             separators=(",", ":")),
            "binary_correct": None if truth is None else (not verdict.is_unknown
                                                          and verdict.failed == truth.failed),
            "type_correct": None if truth is None else verdict.failure_type == truth.failure_type,
            "detection_delay_s": None if delay is None else round(delay, 6),
            "latency_p50_s": (round(metrics.percentile([d.latency_s for d in self.diagnoses],
                                                       50), 6) if self.diagnoses else None),
            "wall_s": round(self.wall_s, 6),
            **{f"monitor_{k}": v for k, v in self.counters.items()},
        }


class _Topics:
    """The bag's connections resolved against the wanted (relative) names."""

    def __init__(self, reader: AnyReader, bag: Path, wanted: Topics):
        present = sorted(reader.topics)
        self.names: dict[str, str | None] = {}
        for role in ("image", "joint_states", "skill_status", "label", "camera_info",
                     "instruction"):
            self.names[role] = _resolve(getattr(wanted, role), present)
        missing = [f"{getattr(wanted, role)} ({role})" for role in wanted.required
                   if self.names[role] is None]
        if missing:
            raise BagError(f"{bag}: expected topic(s) {', '.join(missing)} not in the bag; it "
                           f"has {', '.join(present) or 'no topics'} (set the topic names, "
                           "e.g. --topic image=/my/color)")
        if self.names["skill_status"] is not None:
            self.names["instruction"] = None  # the executor's context wins, as live
        self.role = {topic: role for role, topic in self.names.items() if topic is not None}
        self.connections = [c for c in reader.connections if c.topic in self.role]


def _resolve(name: str, present: Sequence[str]) -> str | None:
    """``name`` as a bag topic: exact (with or without the leading /) or a unique namespace."""
    bare = name.strip("/")
    if not bare:
        return None
    if "/" + bare in present:
        return "/" + bare
    matches = [t for t in present if t.endswith("/" + bare)]
    return matches[0] if len(matches) == 1 else None


def replay_bag(path: str | Path, model: DiagnosisModel, options: ReplayOptions = ReplayOptions(),
               label: Label | None = None, supervisor_factory: Callable[[], Supervisor] | None
               = None) -> EpisodeResult:
    """Replay one bag; raises BagError (naming the file) when it cannot be read to the end.

    ``label`` (a sidecar entry) overrides a label topic in the bag. With ``options.read_ahead``
    (and a fixed ``latency_s``, the default supervisor, two CPUs) a helper process reads,
    decodes and windows the bag while ``model`` runs here: the windows are those of an inline
    replay, since with a fixed latency they do not depend on the model's answers.
    """
    bag = _bag_path(Path(path))
    result = EpisodeResult(bag=str(path), name=bag_name(path), label=label,
                           min_confidence=options.min_confidence)
    supervisor = (supervisor_factory or functools.partial(make_supervisor, options))()
    scorer = _Scorer(model, options, result, supervisor)
    started = time.perf_counter()
    try:
        ahead = (_claim_read_ahead() if supervisor_factory is None and _reads_ahead(options)
                 else None)
        if ahead is not None:
            try:
                ahead.replay(bag, options, scorer)
            finally:
                _READ_AHEAD_LOCK.release()
        else:
            with AnyReader([bag], default_typestore=message_typestore()) as reader:
                _Replayer(reader, bag, options, supervisor, result, scorer.score).run()
    except BagError:
        raise
    except _READ_ERRORS as err:
        raise BagError(f"cannot read {bag} to the end (corrupt or truncated? 'mcap recover' "
                       f"can salvage a cut .mcap): {type(err).__name__}: {err}") from err
    finally:
        result.wall_s = time.perf_counter() - started
        stats = supervisor.stats
        result.counters = {"triggered": stats.triggered, "superseded": stats.superseded,
                           "dropped_stale": stats.dropped_stale, "analysed": stats.analysed,
                           "rejected_frames": stats.rejected_frames, "unknown": stats.unknown}
    return result


def _kinematics_joints(robot: str) -> tuple[str, ...]:
    return tuple(_kinematics(robot).joint_names)


def _robot(robot: str):
    from failrecov_ros.robots import fr3, stretch

    return {"fr3": fr3, "stretch": stretch}[robot]


def make_supervisor(options: ReplayOptions) -> Supervisor:
    """The Supervisor exactly as the node configures it for ``options.robot``."""
    robot = _robot(options.robot)
    aliases = getattr(robot, "JOINT_STATE_ALIASES", {})
    return Supervisor(options.trigger, [aliases.get(n, n) for n in
                                        _kinematics_joints(options.robot)], robot.gripper_width)


#: What replaying does with a window: (window, its newest frame as delivered or None) ->
#: seconds of bag clock the model takes for it.
Score = Callable[[Window, "np.ndarray | None"], float]


class _Replayer:
    """One pass over a bag: deliver messages as the node's callbacks would, score windows."""

    def __init__(self, reader: AnyReader, bag: Path, options: ReplayOptions,
                 supervisor: Supervisor, result: EpisodeResult, score: Score,
                 stop: Callable[[], bool] | None = None):
        self.reader, self.bag, self.score, self.stop = reader, bag, score, stop
        self.options, self.supervisor, self.result = options, supervisor, result
        self.topics = _Topics(reader, bag, options.topics)
        self.offset_ns: int | None = None   # header stamp - log time, from the first frame
        self.busy_until: int | None = None  # stamp clock: when the model is free again
        self.pending = False
        self.recent: collections.deque = collections.deque(maxlen=options.trigger.window_frames)
        self.label_from_bag: Label | None = None

    def _decoded(self):
        role, stop = self.topics.role, self.stop
        for conn, log_ns, raw in self.reader.messages(self.topics.connections):
            if stop is not None and stop():
                raise _CancelledError
            # A memoryview: deserialising then slices it instead of copying the CDR payload,
            # so an image's pixels are read where the bag reader put them.
            yield role[conn.topic], log_ns, self.reader.deserialize(memoryview(raw),
                                                                    conn.msgtype)

    def run(self) -> None:
        last_now = None
        for role, log_ns, msg in self._decoded():
            now = log_ns + (self.offset_ns or 0)
            if self.pending and self.busy_until is not None and self.busy_until <= now:
                self._analyse(self.busy_until)  # the model freed up between two messages
            getattr(self, f"_on_{role}")(msg, log_ns)
            now = log_ns + (self.offset_ns or 0)
            if self.pending and (self.busy_until is None or self.busy_until <= now):
                self._analyse(now)
            last_now = now
        if self.pending:  # the last window, once the model is free (live: before shutdown)
            self._analyse(max(self.busy_until or 0, last_now or 0))
        if self.result.label is None:
            self.result.label = self.label_from_bag
        if self.result.frames == 0:
            raise BagError(f"{self.bag}: no frames on {self.topics.names['image']}")

    # --- the node's callbacks, through the same Supervisor calls --------------------------
    def _on_image(self, msg, log_ns: int) -> None:
        stamp = _stamp_ns(msg.header.stamp) or log_ns
        if self.offset_ns is None:
            self.offset_ns = stamp - log_ns
        try:
            if msg.encoding not in ("rgb8", "bgr8"):
                raise BagError(f"expected a colour image, got encoding {msg.encoding}")
            rgb = _image_rgb(self.bag, self.topics.names["image"], msg)
        except BagError:
            self.supervisor.reject_frame()
            return
        self.supervisor.frame_id = msg.header.frame_id
        result = self.result
        result.frames += 1
        result.first_frame_ns = stamp if result.first_frame_ns is None else result.first_frame_ns
        result.last_frame_ns = stamp
        self.recent.append((stamp, rgb))
        if self.supervisor.add_frame(stamp, rgb):
            self.pending = True

    def _on_joint_states(self, msg, log_ns: int) -> None:
        self.supervisor.add_joint_state(_stamp_ns(msg.header.stamp) or log_ns, list(msg.name),
                                        np.asarray(msg.position, dtype=np.float64).tolist())

    def _on_skill_status(self, msg, log_ns: int) -> None:
        self.supervisor.set_context(SkillContext(
            episode_id=msg.episode_id, task=msg.task, instruction=msg.instruction,
            skill=msg.skill, stage=msg.stage, step=int(msg.step), event=msg.event,
            event_stamp_ns=_stamp_ns(msg.event_stamp), running=msg.state in _RUNNING_STATES))

    def _on_instruction(self, msg, log_ns: int) -> None:
        context = self.supervisor.context
        if not context.instruction:
            self.supervisor.set_context(dataclasses.replace(
                context, instruction=msg.data, episode_id=context.episode_id or self.result.name))

    def _on_label(self, msg, log_ns: int) -> None:
        label = parse_label(msg.data, f"{self.bag}: {self.topics.names['label']}")
        if label.diagnosis.failed and label.onset_ns is None and label.onset_s is None:
            label = dataclasses.replace(label, onset_ns=log_ns + (self.offset_ns or 0))
        self.label_from_bag = label

    def _on_camera_info(self, msg, log_ns: int) -> None:
        if self.result.intrinsics is None:
            try:
                self.result.intrinsics = Intrinsics(
                    int(msg.width), int(msg.height), float(msg.k[0]), float(msg.k[4]),
                    float(msg.k[2]), float(msg.k[5]))
            except (ValueError, IndexError):
                pass  # an uncalibrated camera_info: the report falls back to text

    # --- inference ---------------------------------------------------------------------------
    def _analyse(self, now_ns: int) -> None:
        self.pending = False
        window = self.supervisor.take_pending(now_ns)
        if window is None:
            return
        frame = next((rgb for stamp, rgb in reversed(self.recent) if stamp == window.stamps_ns[-1]),
                     None)
        latency = self.score(window, frame)
        self.busy_until = now_ns + round(latency * NS)


class _Scorer:
    """The model's side of a replay: diagnose windows, count them, keep frames for the report."""

    def __init__(self, model: DiagnosisModel, options: ReplayOptions, result: EpisodeResult,
                 supervisor: Supervisor):
        self.model, self.options, self.result, self.supervisor = model, options, result, supervisor
        self.first_alarm_stamp: int | None = None

    def score(self, window: Window, frame: np.ndarray | None) -> float:
        """Diagnose ``window``; returns the bag-clock seconds the model is charged for it."""
        diagnosis = diagnose(self.model, window)
        self.supervisor.record(diagnosis)
        latency = diagnosis.latency_s if self.options.latency_s is None else self.options.latency_s
        self.result.diagnoses.append(diagnosis)
        if frame is None:
            return latency
        alarm = metrics.is_alarm(diagnosis, self.options.min_confidence)
        keep = {diagnosis.stamp_ns}
        if self.first_alarm_stamp is None and alarm:
            self.first_alarm_stamp = diagnosis.stamp_ns
        if self.first_alarm_stamp is not None:
            keep.add(self.first_alarm_stamp)
        frames, joints = self.result.frames_at, self.result.joints_at
        frames[diagnosis.stamp_ns] = frame
        if window.joint_positions is not None:
            joints[diagnosis.stamp_ns] = np.asarray(window.joint_positions[-1])
        for stamp in [s for s in frames if s not in keep]:
            del frames[stamp]
            joints.pop(stamp, None)
        return latency


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * NS + int(stamp.nanosec)


# --- read-ahead: the bag side of a replay in its own process --------------------------------
# Reading and deserialising a bag is Python that holds the GIL, so a thread cannot overlap it
# with the model; a process can. The reader process runs the same _Replayer up to the model and
# sends each window here. A model with a ``frame_transform`` (the compact one: crop + shrink)
# may get the window's frames transformed there (small, through the pipe, see _Shipper);
# otherwise they come whole, through shared memory (_RING_SLOTS slots sized for the bag's
# images), as does the frame kept for the report. This process copies arrays out of a slot
# at once and frees it, so a model may keep what it is given.
_RING_SLOTS = 4
#: Where a model's frame_transform runs: "auto" (reader while this process is busy, else the
#: model), "always" (reader) or "never" (model); tests pin it.
_TRANSFORM_AHEAD = "auto"
_STAT_FIELDS = ("frames", "rejected_frames", "buffer_resets", "triggered", "superseded",
                "dropped_stale", "last_frame_stamp_ns")
_READ_AHEAD: _ReadAhead | None = None
_READ_AHEAD_LOCK = threading.Lock()


class _CancelledError(Exception):
    """The replaying process gave up on the bag (its own error, an interrupt)."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _reads_ahead(options: ReplayOptions) -> bool:
    """Whether this replay may use the reader process (see :attr:`ReplayOptions.read_ahead`)."""
    return options.read_ahead and options.latency_s is not None and _cpus() >= 2


def _frame_transform(model: DiagnosisModel) -> Callable[[np.ndarray], np.ndarray] | None:
    """The model's ``frame_transform`` if it has one that can be sent to another process.

    A model may offer one: a picklable function that its ``predict`` applies to every frame
    before anything else, such that predicting on frames it returned gives the same output.
    """
    transform = getattr(model, "frame_transform", None)
    if transform is None:
        return None
    try:
        pickle.dumps(transform)
    except Exception:  # noqa: BLE001 - not picklable (a lambda, a bound method of a net)
        return None
    return transform


def _read_ahead() -> _ReadAhead:
    """This process's reader process, started on first use (and again if it died)."""
    global _READ_AHEAD
    if _READ_AHEAD is None or not _READ_AHEAD.usable():
        if _READ_AHEAD is not None:
            _READ_AHEAD.close()
        _READ_AHEAD = _ReadAhead()
    return _READ_AHEAD


def _claim_read_ahead() -> _ReadAhead | None:
    """The reader process, locked for one replay; None if busy or impossible (read inline).

    Busy: another thread replays with it. Impossible: no process can be started here.
    """
    if not _READ_AHEAD_LOCK.acquire(blocking=False):
        return None
    try:
        return _read_ahead()
    except OSError:
        _READ_AHEAD_LOCK.release()
        return None
    except BaseException:
        _READ_AHEAD_LOCK.release()
        raise


def start_read_ahead() -> None:
    """Start the reader process now (it takes a moment), e.g. while a model loads."""
    with _READ_AHEAD_LOCK:
        _read_ahead()


def stop_read_ahead() -> None:
    """Stop the reader process, if one runs (also done at exit)."""
    global _READ_AHEAD
    with _READ_AHEAD_LOCK:
        if _READ_AHEAD is not None:
            _READ_AHEAD.close()
            _READ_AHEAD = None


# Before multiprocessing ends its daemonic children at exit (also in a pool worker, where atexit
# does not run), so that the reader removes its shared memory itself.
multiprocessing.util.Finalize(None, stop_read_ahead, exitpriority=10)


class _ReadAhead:
    """The replaying process's end of a reader process."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")  # never fork a process holding torch
        self.conn, child = context.Pipe()
        self.free = context.Semaphore(_RING_SLOTS)
        self.taken = context.Value("q", 0, lock=False)  # windows received here (one writer)
        self.cancel = context.Event()
        self.process = context.Process(target=_reader_main, name="failrecov-bag-reader",
                                       args=(child, self.free, self.taken, self.cancel),
                                       daemon=True)
        self.process.start()
        child.close()
        self.owner = os.getpid()
        self.ring: shared_memory.SharedMemory | None = None
        self.slot_bytes = 0
        self.broken = False

    def usable(self) -> bool:
        return not self.broken and self.owner == os.getpid() and self.process.is_alive()

    def replay(self, bag: Path, options: ReplayOptions, scorer: _Scorer) -> None:
        """Replay ``bag`` there, score its windows here; raises what the reader raised."""
        request = (str(bag), options, scorer.result.name, _frame_transform(scorer.model),
                   _TRANSFORM_AHEAD)
        try:
            self.conn.send(request)  # (what cannot be pickled raises before anything is sent)
        except OSError as err:
            self.broken = True
            raise RuntimeError(f"the bag reader process is gone ({err})") from None
        finished = False
        try:
            while True:
                kind, body = self._receive()
                if kind == "window":
                    self.taken.value += 1
                    fields, frames, report = body
                    frames = self._take(frames)
                    report = (frames[-1].copy() if isinstance(report, str)
                              else self._take(report))
                    scorer.score(Window(frames=frames, **fields), report)
                elif kind == "ring":
                    self._attach(*body)
                elif kind == "done":
                    finished = True
                    self._finish(body, scorer)
                    return
                else:  # "error"
                    finished = True
                    raise body
        finally:
            if not finished:
                self._abandon()

    def _receive(self) -> tuple[str, Any]:
        while not self.conn.poll(1.0):
            if not self.process.is_alive():
                self.broken = True
                raise RuntimeError(f"the bag reader process exited (code "
                                   f"{self.process.exitcode})")
        try:
            return self.conn.recv()
        except EOFError:
            self.broken = True
            raise RuntimeError("the bag reader process exited") from None

    def _attach(self, name: str, slot_bytes: int) -> None:
        if self.ring is not None:
            self.ring.close()
        self.ring, self.slot_bytes = shared_memory.SharedMemory(name=name), slot_bytes

    def _take(self, item: Any) -> Any:
        """An array the reader sent: inline, or copied out of its slot (freed)."""
        if not isinstance(item, _InSlot):
            return item
        view = np.ndarray(item.shape, np.uint8, self.ring.buf, item.slot * self.slot_bytes)
        array = view.copy()
        del view  # the ring can only be closed without views on it
        self.free.release()
        return array

    def _finish(self, summary: dict[str, Any], scorer: _Scorer) -> None:
        result, stats = scorer.result, scorer.supervisor.stats
        for name in ("frames", "first_frame_ns", "last_frame_ns", "intrinsics"):
            setattr(result, name, summary[name])
        if result.label is None:
            result.label = summary["label"]
        for name in _STAT_FIELDS:
            setattr(stats, name, summary["stats"][name])

    def _abandon(self) -> None:
        """Stop the reader on this bag and drain what it sent; kill it if that fails."""
        try:
            self.cancel.set()
            while True:
                kind, body = self._receive()
                if kind == "window":
                    self.taken.value += 1
                    for item in body[1:]:
                        if isinstance(item, _InSlot):
                            self.free.release()
                elif kind == "ring":
                    self._attach(*body)
                elif kind in ("done", "error"):
                    break
            self.cancel.clear()
        except BaseException:
            self.broken = True
            self.close()
            raise

    def close(self) -> None:
        """Ask the reader to exit (it removes the shared memory), or end it."""
        if self.owner != os.getpid():
            return
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.process.is_alive() and not self.broken:
            try:
                self.conn.send(None)
                self.process.join(timeout=5)
            except (OSError, ValueError):
                pass
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.conn.close()


@dataclasses.dataclass(frozen=True)
class _InSlot:
    """A uint8 array of ``shape`` in slot ``slot`` of the shared ring."""

    slot: int
    shape: tuple[int, ...]


class _Shipper:
    """The reader process's side: each window goes to the replaying process, in order.

    With a model's frame transform, a window is transformed here while the replaying process
    still has an earlier one waiting ("auto"; the two processes then share the work whatever
    else loads the machine), otherwise sent whole for the model to transform itself: the same
    output either way.
    """

    def __init__(self, conn, free, taken):
        self.conn, self.free, self.taken = conn, free, taken
        self.ring: shared_memory.SharedMemory | None = None
        self.slot_bytes = 0
        self.next_slot = 0
        self.sent = 0  # windows sent, to compare with ``taken`` (the replaying side's count)
        self.options, self.transform, self.mode = ReplayOptions(), None, "auto"
        self.transformed: collections.OrderedDict = collections.OrderedDict()

    def start_bag(self, options: ReplayOptions, transform, mode: str) -> None:
        self.options, self.transform, self.mode = options, transform, mode
        self.transformed.clear()

    def ship(self, window: Window, frame: np.ndarray | None) -> float:
        """Send ``window`` (and the frame for the report); the model's time is the fixed one."""
        fields = {f.name: getattr(window, f.name) for f in dataclasses.fields(window)
                  if f.name != "frames"}
        frames, report = window.frames, frame
        transform = self.transform is not None and (
            self.mode == "always" or (self.mode == "auto" and self.sent > self.taken.value))
        if transform:
            frames = np.stack([self._transformed(s, f) for s, f in zip(window.stamps_ns, frames,
                                                                         strict=True)])
            need = 0 if frame is None else frame.nbytes
        else:
            if frame is not None and np.array_equal(frame, frames[-1]):
                report = "last"  # the replaying process takes the window's newest frame
            need = max(frames.nbytes, self.options.trigger.window_frames * frames[:1].nbytes)
        if need > self.slot_bytes:
            self._grow(need)
        if not transform:
            frames = self._put(frames)
        if isinstance(report, np.ndarray):
            report = self._put(report)
        self.conn.send(("window", (fields, frames, report)))
        self.sent += 1
        return self.options.latency_s

    def _transformed(self, stamp: int, frame: np.ndarray) -> np.ndarray:
        # as the compact model caches its resized frames: windows may overlap
        key = (stamp, frame.shape, hash(frame[::31, ::29].tobytes()))
        out = self.transformed.get(key)
        if out is None:
            out = self.transformed[key] = self.transform(frame)
            while len(self.transformed) > 4 * self.options.trigger.window_frames:
                self.transformed.popitem(last=False)
        return out

    def _put(self, array: np.ndarray) -> Any:
        if array.dtype != np.uint8 or array.nbytes > self.slot_bytes:
            return array  # inline (an image larger than the bag's first ones)
        self.free.acquire()
        slot = self.next_slot
        self.next_slot = (slot + 1) % _RING_SLOTS
        view = np.ndarray(array.shape, np.uint8, self.ring.buf, slot * self.slot_bytes)
        view[...] = array
        del view
        return _InSlot(slot, array.shape)

    def _grow(self, slot_bytes: int) -> None:
        for _ in range(_RING_SLOTS):  # every slot back: nothing is read from the old ring
            self.free.acquire()
        old, self.ring = self.ring, shared_memory.SharedMemory(create=True,
                                                               size=slot_bytes * _RING_SLOTS)
        self.slot_bytes, self.next_slot = slot_bytes, 0
        self.conn.send(("ring", (self.ring.name, slot_bytes)))
        if old is not None:
            old.close()
            old.unlink()
        for _ in range(_RING_SLOTS):
            self.free.release()

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring.unlink()
            self.ring = None


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any failure to round-trip: send the text instead
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def _reader_main(conn, free, taken, cancel) -> None:
    """The reader process: replay each requested bag up to the model, until told to stop."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the replaying process decides
    shipper: _Shipper | None = None
    try:
        while (request := conn.recv()) is not None:
            bag, options, name, transform, mode = request
            shipper = shipper or _Shipper(conn, free, taken)
            shipper.start_bag(options, transform, mode)
            result = EpisodeResult(bag=bag, name=name, min_confidence=options.min_confidence)
            supervisor = make_supervisor(options)
            try:
                with AnyReader([Path(bag)], default_typestore=message_typestore()) as reader:
                    _Replayer(reader, Path(bag), options, supervisor, result, shipper.ship,
                              cancel.is_set).run()
            except BaseException as err:  # noqa: BLE001 - re-raised in the replaying process
                conn.send(("error", _picklable(err)))
                continue
            stats = supervisor.stats
            conn.send(("done", {
                "frames": result.frames, "first_frame_ns": result.first_frame_ns,
                "last_frame_ns": result.last_frame_ns, "intrinsics": result.intrinsics,
                "label": result.label,
                "stats": {name: getattr(stats, name) for name in _STAT_FIELDS}}))
    except (EOFError, OSError):
        pass  # the replaying process is gone
    finally:
        if shipper is not None:
            shipper.close()


def replay_bags(paths: Iterable[str | Path], model: DiagnosisModel,
                options: ReplayOptions = ReplayOptions(),
                labels: Mapping[str, Label] | None = None,
                progress: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Replay every bag; a bag that fails is reported in its result, the others still scored."""
    results = []
    for path in paths:
        label = lookup_label(labels, path) if labels else None
        try:
            result = replay_bag(path, model, options, label)
        except (BagError, ValueError) as err:
            result = EpisodeResult(bag=str(path), name=bag_name(path), error=str(err),
                                   label=label, min_confidence=options.min_confidence)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def correction_arrow(options: ReplayOptions):
    """``arrow_for`` of :func:`report.write_replay_report` for these options.

    The correction's translation is drawn from the tool centre point (FK of the recorded
    joints) through the bag's camera_info and ``options.camera_from_base``; None (caption
    only) when anything is missing.
    """
    from failrecov_ros.evaluation.report import project_arrow

    if options.camera_from_base is None:
        return None
    transform = np.asarray(options.camera_from_base, dtype=float).reshape(4, 4)

    def arrow(result: EpisodeResult, diagnosis: Diagnosis):
        q = result.joints_at.get(diagnosis.stamp_ns)
        correction = diagnosis.correction
        if q is None or result.intrinsics is None or not diagnosis.failed:
            return None
        if correction.directive is not None and any(correction.directive.displacement(1.0)):
            move = correction.directive.displacement(options.metres_per_bin)
        elif correction.ee_delta is not None:
            move = correction.ee_delta[:3]
        else:
            return None
        tcp = _kinematics(options.robot).fk(q)[:3, 3]
        return project_arrow(result.intrinsics, transform, tcp, move)

    return arrow


@functools.cache
def _kinematics(robot: str):
    from failrecov_ros.robots.kinematics import make_kinematics

    return make_kinematics(robot)


_WORKER_MODEL: DiagnosisModel | None = None


def _worker_init(load: Callable[[], DiagnosisModel]) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = load()


def _worker_replay(path, options: ReplayOptions, label: Label | None) -> EpisodeResult:
    [result] = replay_bags([path], _WORKER_MODEL, options, {str(path): label} if label else None)
    return result


def replay_bags_parallel(paths: Sequence[str | Path], load: Callable[[], DiagnosisModel],
                         workers: int, options: ReplayOptions = ReplayOptions(),
                         labels: Mapping[str, Label] | None = None,
                         progress: Callable[[EpisodeResult], None] | None = None
                         ) -> list[EpisodeResult]:
    """:func:`replay_bags` over ``workers`` processes, each loading its model with ``load``.

    ``load`` must be picklable (e.g. ``functools.partial(load_model, spec)``). Each bag is
    replayed whole by one process, so results equal a sequential run; they come back in the
    order of ``paths``. Worth it for many bags: each worker pays the model's start-up. Workers
    read ahead (``options.read_ahead``) only where there are two CPUs for each.
    """
    import concurrent.futures

    if workers <= 1:
        if _reads_ahead(options):
            start_read_ahead()  # the reader process starts while the model loads
        model = load()
        try:
            return replay_bags(paths, model, options, labels, progress)
        finally:
            model.close()
    options = dataclasses.replace(options, read_ahead=options.read_ahead
                                  and _cpus() >= 2 * workers)
    context = multiprocessing.get_context("spawn")  # never fork a process holding torch threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_worker_init,
                                                initargs=(load,)) as pool:
        futures = [pool.submit(_worker_replay, path, options,
                               lookup_label(labels, path) if labels else None) for path in paths]
        results = []
        for future in futures:
            results.append(future.result())
            if progress is not None:
                progress(results[-1])
    return results


def summarise(results: Sequence[EpisodeResult], keyframe_tolerance: int = 2,
              min_confidence: float = metrics.CONFIDENT) -> dict[str, Any]:
    """The papers' metrics over episode verdicts, plus detection delay, false alarms, latency.

    Metrics that do not apply to the labels present (e.g. Dream2Fix accuracy without any
    translation or gripper failure) are None, not a made-up number.
    """
    ok = [r for r in results if r.ok]
    scored = [r for r in ok if r.label is not None]
    out: dict[str, Any] = {"bags": len(results), "replayed": len(ok),
                           "errors": len(results) - len(ok), "labelled": len(scored),
                           "min_confidence": min_confidence,
                           "keyframe_tolerance": keyframe_tolerance}
    predicted = [r.verdict for r in scored]
    truth = [r.label.diagnosis for r in scored]

    def maybe(fn, *args):
        try:
            return fn(*args)
        except ValueError:
            return None

    out["binary_accuracy"] = maybe(metrics.binary_accuracy, predicted, truth)
    out["type_accuracy"] = maybe(metrics.type_accuracy, predicted, truth)
    out["type_axis_accuracy"] = maybe(metrics.type_axis_accuracy, predicted, truth)
    out["dream2fix_correction_accuracy"] = maybe(
        metrics.dream2fix_correction_accuracy, predicted, truth, keyframe_tolerance)
    out["delta_cosine"] = maybe(metrics.delta_cosine, predicted, truth)
    out["confusion"] = sorted([t.failure_type.value, p.failure_type.value]
                              for p, t in zip(predicted, truth, strict=True))
    failures = [r for r in scored if r.onset_ns is not None]
    delays = [r.detection_delay_s for r in failures if r.detection_delay_s is not None]
    out["failures_with_onset"] = len(failures)
    out["detected"] = len(delays)
    out["detection_rate"] = len(delays) / len(failures) if failures else None
    out["detection_delay_s"] = (metrics.latency_summary(delays) if delays else None)
    successes = [(r.diagnoses, r.duration_s) for r in scored
                 if r.label.diagnosis.failure_type is FailureType.NONE]
    out["successful_episodes"] = len(successes)
    out["false_alarms_per_minute"] = maybe(metrics.false_alarms_per_minute, successes,
                                           min_confidence)
    latencies = [d.latency_s for r in ok for d in r.diagnoses]
    out["latency"] = metrics.latency_summary(latencies) if latencies else None
    footage = sum(r.duration_s for r in ok)
    wall = sum(r.wall_s for r in ok)
    out["footage_s"] = footage
    out["wall_s"] = wall
    out["x_real_time"] = footage / wall if wall > 0 else None
    return out


# --- raw playback (the bag_player node's core) -----------------------------------------------
@dataclasses.dataclass(frozen=True)
class RecordedTopic:
    """A topic of a bag and the QoS its publishers offered (None when the bag does not say)."""

    name: str
    msgtype: str
    count: int
    reliability: str | None = None   # "reliable" | "best_effort"
    durability: str | None = None    # "transient_local" | "volatile"
    depth: int | None = None


def _qos_fields(profiles) -> dict[str, Any]:
    """The recorded QoS if every publisher offered the same, as ``ros2 bag play`` decides."""
    known = {(p.reliability.name.lower(), p.durability.name.lower(),
              p.depth if p.history.name == "KEEP_LAST" else None) for p in profiles}
    if len(known) != 1:
        return {}
    reliability, durability, depth = known.pop()
    return {"reliability": reliability if reliability in ("reliable", "best_effort") else None,
            "durability": (durability if durability in ("transient_local", "volatile")
                           else None),
            "depth": depth or None}


class Recording:
    """A bag opened for raw playback: its topics and its messages as CDR bytes in log order.

    Use as a context manager; read errors become BagError naming the file.
    """

    def __init__(self, path: str | Path):
        self.path = _bag_path(Path(path))
        self._reader: AnyReader | None = None

    def __enter__(self) -> Recording:
        try:
            self._reader = AnyReader([self.path], default_typestore=message_typestore())
            self._reader.open()
        except _READ_ERRORS as err:
            raise BagError(f"cannot open {self.path} as a rosbag2 recording: "
                           f"{type(err).__name__}: {err}") from err
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.close()

    @property
    def topics(self) -> list[RecordedTopic]:
        """Every topic with its type, message count and recorded QoS."""
        by_topic: dict[str, list] = {}
        for conn in self._reader.connections:
            by_topic.setdefault(conn.topic, []).append(conn)
        out = []
        for name, conns in sorted(by_topic.items()):
            profiles = [p for c in conns for p in getattr(c.ext, "offered_qos_profiles", [])]
            out.append(RecordedTopic(name, conns[0].msgtype, sum(c.msgcount for c in conns),
                                     **_qos_fields(profiles)))
        return out

    def messages(self, topics: Iterable[str] | None = None):
        """(topic, log time ns, CDR bytes) in log-time order; BagError on a corrupt file."""
        wanted = None if topics is None else set(topics)
        connections = [c for c in self._reader.connections
                       if wanted is None or c.topic in wanted]
        try:
            for conn, log_ns, raw in self._reader.messages(connections):
                yield conn.topic, log_ns, bytes(raw)
        except _READ_ERRORS as err:
            raise BagError(f"{self.path}: stopped reading (corrupt or truncated?): "
                           f"{type(err).__name__}: {err}") from err
