"""Object poses from perception, used only when they are newer than the moment they were asked for.

A skill reads its objects' poses when it starts, and again after a recovery for a lost object
(a slip, an early release). A cached pose from before the object moved would send the arm to
where the object was, so :meth:`PoseBoard.fresh` waits for a pose stamped at or after the
request and fails with the reason (nothing ever arrived, or only older poses) after a timeout.
"""

from __future__ import annotations

import threading
import time

from failrecov_ros.skills.library import Pose


class ObjectPoseError(RuntimeError):
    """No usable pose of an object arrived in time (the message says why)."""


class PoseBoard:
    """The latest stamped pose (or the reason it is unusable) per object, fed from any thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._latest: dict[str, tuple[int, Pose | str]] = {}

    def offer(self, name: str, stamp_ns: int, pose: Pose | str) -> None:
        """A perceived pose of ``name`` stamped ``stamp_ns``, or why it cannot be used."""
        with self._changed:
            self._latest[name] = (int(stamp_ns), pose)
            self._changed.notify_all()

    def fresh(self, name: str, after_ns: int, timeout: float) -> Pose:
        """The first pose of ``name`` stamped at or after ``after_ns``, waiting up to ``timeout`` s.

        Raises :class:`ObjectPoseError` when none arrives in time or the fresh one is unusable.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                stamp, pose = self._latest.get(name, (None, None))
                if stamp is not None and stamp >= after_ns:
                    if isinstance(pose, str):
                        raise ObjectPoseError(f"the pose of object {name!r} is unusable: {pose}")
                    return pose
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        if stamp is None:
            why = "none has arrived"
        else:
            why = f"the latest is stamped {(after_ns - stamp) / 1e9:.2f} s before the request"
        raise ObjectPoseError(f"no pose of object {name!r} stamped after the request arrived "
                              f"within {timeout:.1f} s ({why})")
