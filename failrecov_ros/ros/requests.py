"""Requests to a server just discovered: send again when the answer was lost to discovery.

``wait_for_server``/``wait_for_service`` return once the client has matched the server's
endpoints, but the server may not yet have matched the client's response reader. Fast DDS then
waits 100 ms for it and drops the response (rmw_fastrtps #390, #467), and rclpy logs "Failed to
send goal response": the client waits for an answer that never comes. It happens to the first
request after discovery on a loaded machine. An rclpy action server whose goal response failed
never runs the goal, so a goal can be sent again; a service has run its callback, so only
requests that are safe to repeat (queries, set-ups, resets) go through here. The server's half
is :class:`TaskSlot`: a goal admitted but never run must not keep the server closed to the resend.

No rclpy import: anything with ``done()`` is a future.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar


class _Future(Protocol):
    def done(self) -> bool: ...


F = TypeVar("F", bound=_Future)

#: s between looks at the futures.
POLL = 0.02


def first_answer(send: Callable[[], F], timeout: float, attempts: int = 3,
                 sent: list[F] | None = None,
                 pause: Callable[[float], object] = time.sleep) -> F | None:
    """The first answered future of up to ``attempts`` sends, each given ``timeout`` s.

    Every future sent stays watched, so a late answer to an earlier send still counts (and wins
    over a later send's). ``sent`` collects the futures for a caller that has to cancel them;
    ``pause`` waits between looks (it may raise to abandon the wait). None when no answer came.
    """
    if attempts < 1 or timeout <= 0:
        raise ValueError(f"need attempts >= 1 and timeout > 0, got {attempts} and {timeout}")
    futures: list[F] = [] if sent is None else sent
    for _ in range(attempts):
        futures.append(send())
        deadline = time.monotonic() + timeout
        while True:
            answered = next((f for f in futures if f.done()), None)
            if answered is not None:
                return answered
            if time.monotonic() >= deadline:
                break
            pause(POLL)
    return None


class TaskSlot:
    """Admits one task at a time, from the moment its goal is accepted until it ends.

    An action server accepts a goal and runs it later, so two goals arriving together both
    pass a check of "is a task running?" and the second is accepted only to be refused. The
    slot is therefore claimed when a goal is judged (``claim``), held once the server has told
    the client it accepted (``hold``), and freed when the task ends (``release``). A claim
    never held lapses after ``claim_timeout_s``: when the goal response is lost (above) rclpy
    never runs the goal, and the client's resend must not find the server closed. The slot
    keeps its holder (the goal handle), so a server asks it which goal is the one to run.
    """

    def __init__(self, claim_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(claim_timeout_s) and claim_timeout_s > 0):
            raise ValueError(f"claim_timeout_s must be positive, got {claim_timeout_s}")
        self._timeout, self._clock = claim_timeout_s, clock
        self._lock = threading.Lock()
        self._claimed_at: float | None = None
        self._holder: object | None = None

    def _claim_live(self) -> bool:
        return self._claimed_at is not None and \
            self._clock() - self._claimed_at < self._timeout

    def claim(self) -> bool:
        """Reserve the slot for a goal being judged; False while a task holds or claims it."""
        with self._lock:
            if self._holder is not None or self._claim_live():
                return False
            self._claimed_at = self._clock()
            return True

    def hold(self, holder: object) -> bool:
        """The claimed goal ``holder`` was accepted: keep the slot until ``release``.

        False if a task already holds it: a claim that lapsed while its goal was being
        answered, and was claimed again meanwhile, lets two goals be accepted; one runs.
        """
        if holder is None:
            raise ValueError("the slot's holder must not be None")
        with self._lock:
            if self._holder is not None:
                return False
            self._holder, self._claimed_at = holder, None
            return True

    @property
    def holder(self) -> object | None:
        """The accepted goal holding the slot; None when none does."""
        with self._lock:
            return self._holder

    def release(self) -> None:
        """The task ended (or never started): free the slot."""
        with self._lock:
            self._holder, self._claimed_at = None, None

    @property
    def busy(self) -> bool:
        """A task holds the slot, or a goal's live claim does."""
        with self._lock:
            return self._holder is not None or self._claim_live()
