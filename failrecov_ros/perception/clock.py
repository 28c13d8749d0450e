"""Device timestamps to ROS time: never in the future, never backwards.

A frame stamped in the host's clock (librealsense ``system_time``/``global_time``) keeps its stamp.
A frame stamped by the camera's own clock (``hardware_clock``) is placed on ROS time as
realsense-ros places it: a base (ROS time, device time) plus the device time elapsed since; a
jump back (the camera clock wrapped, a recording restarted) starts a new base. Unlike
realsense-ros, a frame that would land after *now* moves the base earlier: the first frame's own
delivery delay otherwise shifts every later stamp into the future (and latency measured from
stamps below zero). Recordings always take the mapped path: their stamps are from the day they
were recorded, and a replayed camera must look live. Played faster than recorded, stamps become
the arrival times. Moving the base earlier also moves the frame stamped before the move (the late
one) ahead of the frames after it, so a reference frame is stamped at least 1 ns after the
previous one, and any frame of the same moment (its depth) shares its stamp.
"""

from __future__ import annotations

from collections.abc import Callable

HOST_DOMAINS = ("system_time", "global_time")


def ms_to_ns(timestamp_ms: float) -> int:
    """Milliseconds (librealsense) to integer nanoseconds."""
    return int(round(timestamp_ms * 1_000_000))


class DeviceClock:
    """Maps device timestamps to ROS nanoseconds; ``now_ns`` is the ROS clock."""

    def __init__(self, now_ns: Callable[[], int], recorded: bool = False) -> None:
        self._now_ns = now_ns
        self._recorded = recorded
        self._base: tuple[int, float] | None = None  # (ROS ns, device ms) at the base frame
        self._previous_ms: float | None = None
        self._previous_ns: int | None = None  # the last reference frame's stamp

    def reference(self, timestamp_ms: float, domain: str) -> int:
        """Stamp of a frame of the reference stream (color), rebasing on a backward jump."""
        if not self._mapped(domain):
            self._previous_ms = self._previous_ns = None
            return ms_to_ns(timestamp_ms)
        if self._base is None or self._previous_ms is None or timestamp_ms < self._previous_ms:
            self._rebase(timestamp_ms)
        stamp = self._map(timestamp_ms)
        if self._previous_ns is not None and stamp <= self._previous_ns:
            stamp = self._previous_ns + 1  # the previous frame was the late one (see above)
        self._previous_ms, self._previous_ns = timestamp_ms, stamp
        return stamp

    def stamp(self, timestamp_ms: float, domain: str) -> int:
        """Stamp of any other frame (depth, IMU) on the reference stream's base."""
        if not self._mapped(domain):
            return ms_to_ns(timestamp_ms)
        if timestamp_ms == self._previous_ms and self._previous_ns is not None:
            return self._previous_ns  # one moment, one stamp
        return self._map(timestamp_ms)

    def _map(self, timestamp_ms: float) -> int:
        if self._base is None:
            self._rebase(timestamp_ms)
        base_ns, base_ms = self._base
        stamp, now = base_ns + ms_to_ns(timestamp_ms - base_ms), self._now_ns()
        if stamp > now:  # this frame came faster than the base frame: the base was late
            self._base = (base_ns - (stamp - now), base_ms)
            stamp = now
        return stamp

    def _mapped(self, domain: str) -> bool:
        return self._recorded or domain not in HOST_DOMAINS

    def _rebase(self, timestamp_ms: float) -> None:
        # Every stamp so far is at most the now it was made at, so this never goes backwards.
        self._base = (self._now_ns(), timestamp_ms)
