"""Requests to a server just discovered: send again when the answer was lost to discovery.

``wait_for_server``/``wait_for_service`` return once the client has matched the server's
endpoints, but the server may not yet have matched the client's response reader. Fast DDS then
waits 100 ms for it and drops the response (rmw_fastrtps #390, #467), and rclpy logs "Failed to
send goal response": the client waits for an answer that never comes. It happens to the first
request after discovery on a loaded machine. An rclpy action server whose goal response failed
never runs the goal, so a goal can be sent again; a service has run its callback, so only
requests that are safe to repeat (queries, set-ups, resets) go through here.

No rclpy import: anything with ``done()`` is a future.
"""

from __future__ import annotations

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
