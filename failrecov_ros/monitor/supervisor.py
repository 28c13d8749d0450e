"""When to analyse, what to analyse, and what happened: the recovery monitor without ROS.

Frames and robot state go into ring buffers; a trigger policy (every N frames, every T
seconds, on executor events after a settling delay, when Dream2Fix's per-skill action budget
is exceeded, or on request) turns the newest frames into a pending :class:`Window`. There is
one pending slot: a new window replaces an unanalysed one (never a backlog), and a window
older than ``max_age_s`` when the model gets to it is dropped. Every such decision is counted
for diagnostics.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from failrecov_ros.core.schema import Diagnosis
from failrecov_ros.models.base import Window

NS = 1_000_000_000
#: The robot's rule for the gripper opening (m) from joint positions by name; None if absent.
GripperWidth = Callable[[Mapping[str, float]], "float | None"]


@dataclasses.dataclass(frozen=True)
class TriggerConfig:
    """Trigger policy and window shape (parameters of the monitor node)."""

    window_frames: int = 10
    every_n_frames: int = 10          # FailSafe: every 10 steps on the last 10 frames; 0 = off
    every_s: float = 0.0              # 0 = off
    on_events: tuple[str, ...] = ("gripper_close", "gripper_open", "skill_end")
    event_delay_frames: int = 3       # let the outcome of the event show before analysing
    action_budget_steps: int = 0      # Dream2Fix: analyse once a skill runs past this; 0 = off
    max_age_s: float = 1.0            # a window older than this is dropped, not analysed
    min_frames: int = 1               # fewer frames than this: wait (short windows are padded)
    state_max_gap_s: float = 0.2      # robot state further than this from a frame is missing

    def __post_init__(self) -> None:
        if self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {self.window_frames}")
        if self.every_n_frames < 0 or self.every_s < 0 or self.action_budget_steps < 0:
            raise ValueError("every_n_frames, every_s and action_budget_steps must be >= 0")
        if self.max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {self.max_age_s}")
        if not 1 <= self.min_frames <= self.window_frames:
            raise ValueError("min_frames must be in [1, window_frames]")
        if self.event_delay_frames < 0:
            raise ValueError("event_delay_frames must be >= 0")


@dataclasses.dataclass(frozen=True)
class SkillContext:
    """The executor's latest status, as far as the monitor cares."""

    episode_id: str = ""
    task: str = ""
    instruction: str = ""
    skill: str = ""
    stage: str = ""
    step: int = 0
    event: str = ""
    event_stamp_ns: int = 0
    running: bool = True


@dataclasses.dataclass
class MonitorStats:
    """Counters for diagnostics; latencies are kept for the last ``latency_window`` results."""

    frames: int = 0
    rejected_frames: int = 0
    buffer_resets: int = 0  # frames that went back in time or changed size: buffer restarted
    triggered: int = 0
    superseded: int = 0
    dropped_stale: int = 0
    analysed: int = 0
    unknown: int = 0
    failures_reported: int = 0
    latencies_s: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=200))
    last_frame_stamp_ns: int = 0

    def latency_percentile(self, q: float) -> float:
        """Percentile of recent model latencies (s); 0 before the first result."""
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else 0.0


@dataclasses.dataclass(frozen=True)
class _Frame:
    stamp_ns: int
    rgb: np.ndarray


class Supervisor:
    """Thread-safe core of the monitor node.

    Subscription callbacks add, the inference callback takes; both hold the lock only for
    bookkeeping, never during inference.
    """

    def __init__(self, config: TriggerConfig, joint_names: Sequence[str] = (),
                 gripper_width: GripperWidth | None = None, frame_id: str = ""):
        self.config = config
        self.joint_names = tuple(joint_names)
        self.gripper_width = gripper_width
        self.frame_id = frame_id
        self.stats = MonitorStats()
        self.context = SkillContext()
        self._lock = threading.Lock()
        self._frames: collections.deque[_Frame] = collections.deque(
            maxlen=max(config.window_frames, config.min_frames))
        history = max(200, 20 * config.window_frames)
        self._state_stamps: collections.deque[int] = collections.deque(maxlen=history)
        self._states: collections.deque[tuple[np.ndarray, float]] = collections.deque(
            maxlen=history)
        self._pending: Window | None = None
        self._frames_since_trigger = 0
        self._last_trigger_ns: int | None = None
        self._event_countdown: int | None = None
        self._seen_event_ns = 0
        self._skill_start_step: int | None = None
        self._budget_fired_for: tuple[str, str] | None = None
        self._request = False

    # --- inputs (subscription callbacks) ----------------------------------------------------
    def add_frame(self, stamp_ns: int, rgb: np.ndarray) -> bool:
        """Store a frame; True when it completed a trigger (a window is now pending).

        Frames going back in time (a bag looped, the clock jumped) or of another size (the
        camera was reconfigured, a second publisher on the topic) reset the buffer rather
        than mix two timelines or two image shapes in one window; resets are counted.
        """
        with self._lock:
            self.stats.frames += 1
            if self._frames and (stamp_ns <= self._frames[-1].stamp_ns
                                 or rgb.shape != self._frames[-1].rgb.shape):
                self.stats.buffer_resets += 1
                self._frames.clear()
                self._frames_since_trigger = 0
                self._last_trigger_ns = None
            self._frames.append(_Frame(int(stamp_ns), rgb))
            self.stats.last_frame_stamp_ns = int(stamp_ns)
            self._frames_since_trigger += 1
            if not self._should_trigger(stamp_ns):
                return False
            return self._make_pending(stamp_ns)

    def reject_frame(self) -> None:
        """Count a frame the node could not convert (wrong encoding, bad size)."""
        with self._lock:
            self.stats.rejected_frames += 1

    def add_joint_state(self, stamp_ns: int, names: Sequence[str],
                        positions: Sequence[float]) -> None:
        """Store arm positions and gripper width (m, the robot's own rule) at ``stamp_ns``.

        A message without our arm joints (another robot's, a gripper-only topic) or with NaN
        is ignored: the window then simply has no state for that time. A message without the
        gripper's joints has width 0, the closed gripper (the normalised mean).
        """
        by_name = dict(zip(names, positions, strict=False))
        if self.joint_names and not all(n in by_name for n in self.joint_names):
            return
        q = np.array([by_name[n] for n in self.joint_names], dtype=np.float64)
        width = self.gripper_width(by_name) if self.gripper_width is not None else None
        width = 0.0 if width is None else float(width)
        if not (np.all(np.isfinite(q)) and np.isfinite(width)):
            return
        with self._lock:
            if self._state_stamps and stamp_ns < self._state_stamps[-1]:
                self._state_stamps.clear()
                self._states.clear()
            self._state_stamps.append(int(stamp_ns))
            self._states.append((q, width))

    def set_context(self, context: SkillContext) -> None:
        """New executor status: arms the event and budget triggers."""
        with self._lock:
            if context.skill != self.context.skill or context.episode_id != self.context.episode_id:
                self._skill_start_step = context.step
            if (context.event in self.config.on_events
                    and context.event_stamp_ns > self._seen_event_ns):
                self._event_countdown = self.config.event_delay_frames
            self._seen_event_ns = max(self._seen_event_ns, context.event_stamp_ns)
            self.context = context

    def request(self) -> None:
        """Analyse the newest frames as soon as possible (the on-request service)."""
        with self._lock:
            self._request = True
            if self._frames:
                self._make_pending(self._frames[-1].stamp_ns)

    # --- the inference side -----------------------------------------------------------------
    def take_pending(self, now_ns: int) -> Window | None:
        """The window to analyse now, or None; a too-old one is dropped and counted."""
        with self._lock:
            window, self._pending = self._pending, None
            if window is None:
                return None
            if now_ns - window.stamps_ns[-1] > self.config.max_age_s * NS:
                self.stats.dropped_stale += 1
                return None
            return window

    def record(self, diagnosis: Diagnosis) -> None:
        """Count a published diagnosis."""
        with self._lock:
            self.stats.analysed += 1
            self.stats.unknown += int(diagnosis.is_unknown)
            self.stats.failures_reported += int(diagnosis.failed)
            self.stats.latencies_s.append(diagnosis.latency_s)

    def frame_age_s(self, now_ns: int) -> float | None:
        """Seconds since the newest frame's stamp; None before any frame."""
        with self._lock:
            if not self.stats.last_frame_stamp_ns:
                return None
            return (now_ns - self.stats.last_frame_stamp_ns) / NS

    def latest_joint_positions(self) -> np.ndarray | None:
        """Newest arm positions (for planning a correction from where the arm is)."""
        with self._lock:
            return self._states[-1][0].copy() if self._states else None

    # --- internals (lock held) --------------------------------------------------------------
    def _should_trigger(self, stamp_ns: int) -> bool:
        c, fired = self.config, False
        if len(self._frames) < c.min_frames:
            return False
        if c.every_n_frames and self._frames_since_trigger >= c.every_n_frames:
            fired = True
        if c.every_s and (self._last_trigger_ns is None
                          or stamp_ns - self._last_trigger_ns >= c.every_s * NS):
            fired = True
        if self._event_countdown is not None:
            if self._event_countdown <= 0:
                self._event_countdown, fired = None, True
            else:
                self._event_countdown -= 1
        if c.action_budget_steps and self._skill_start_step is not None:
            key = (self.context.episode_id, self.context.skill)
            over = self.context.step - self._skill_start_step > c.action_budget_steps
            if over and self.context.running and self._budget_fired_for != key:
                self._budget_fired_for, fired = key, True
        if self._request:
            fired = True
        return fired

    def _make_pending(self, stamp_ns: int) -> bool:
        frames = list(self._frames)[-self.config.window_frames:]
        stamps = tuple(f.stamp_ns for f in frames)
        q, width = self._state_at(stamps)
        ctx = self.context
        window = Window(frames=np.stack([f.rgb for f in frames]), stamps_ns=stamps,
                        instruction=ctx.instruction, task=ctx.task, skill=ctx.skill,
                        stage=ctx.stage, episode_id=ctx.episode_id, frame_id=self.frame_id,
                        joint_positions=q, gripper_width=width)
        if self._pending is not None:
            self.stats.superseded += 1
        self._pending = window
        self.stats.triggered += 1
        self._frames_since_trigger = 0
        self._last_trigger_ns = stamp_ns
        self._request = False
        return True

    def _state_at(self, stamps: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Robot state at each frame stamp (nearest sample), or None when any is missing."""
        if not self._states:
            return None, None
        known = list(self._state_stamps)
        q, width = [], []
        for stamp in stamps:
            i = bisect.bisect_left(known, stamp)
            best = min((j for j in (i - 1, i) if 0 <= j < len(known)),
                       key=lambda j: abs(known[j] - stamp))
            if abs(known[best] - stamp) > self.config.state_max_gap_s * NS:
                return None, None
            q.append(self._states[best][0])
            width.append(self._states[best][1])
        return np.stack(q), np.asarray(width)
