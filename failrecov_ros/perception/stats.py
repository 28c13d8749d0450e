"""Frame rate, drops and latency of the published stream, for /diagnostics.

Drops are counted from the device's frame numbers, so a frame lost anywhere before publishing
(USB, librealsense's queue, a capture thread that fell behind) shows up; a frame number that goes
back means the stream restarted (reconnect, replayed recording), not a drop. The capture thread
records while the executor's diagnostics timer takes snapshots, so every access holds one lock.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class StatsSnapshot:
    """What the diagnostics report."""

    frames: int
    drops: int
    fps: float
    latency_median_ms: float | None
    latency_p95_ms: float | None
    since_last_frame_s: float | None


class StreamStats:
    """Counts over the whole run and rates over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f"window must be positive, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[float, float]] = collections.deque()
        self._first: float | None = None
        self._last: float | None = None
        self._last_number: int | None = None
        self.frames = 0
        self.drops = 0

    def record(self, frame_number: int, latency_s: float) -> None:
        """One published frame, ``latency_s`` after its capture (its stamp) when published."""
        with self._lock:
            now = self._clock()
            if self._last_number is not None and frame_number > self._last_number + 1:
                self.drops += frame_number - self._last_number - 1
            self._last_number = frame_number
            self.frames += 1
            self._first = now if self._first is None else self._first
            self._last = now
            self._recent.append((now, latency_s))
            self._trim(now)

    def restart(self) -> None:
        """A new stream (reconnected): its frame numbers say nothing about the old one's."""
        with self._lock:
            self._last_number = None

    def snapshot(self) -> StatsSnapshot:
        """Counts, the frame rate over the window (falls to 0 in a stall) and latency."""
        with self._lock:
            now = self._clock()
            self._trim(now)
            fps = 0.0
            if self._recent:
                fps = len(self._recent) / max(min(self.window_s, now - self._first), 1e-3)
            latencies = np.array([latency for _, latency in self._recent]) * 1000.0
            frames, drops, last = self.frames, self.drops, self._last
        return StatsSnapshot(
            frames=frames, drops=drops, fps=fps,
            latency_median_ms=float(np.median(latencies)) if latencies.size else None,
            latency_p95_ms=float(np.percentile(latencies, 95)) if latencies.size else None,
            since_last_frame_s=None if last is None else now - last)

    def _trim(self, now: float) -> None:  # with the lock held
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()
