"""How every node starts and stops.

``start_node``: rclpy up and the node built, or one FATAL line and no node; each executable's
``main`` returns exit code 2 when it gives None, so a launch file or a supervisor sees why a
node never came up instead of a traceback. ``spin_until_shutdown``: spin until SIGINT, SIGTERM
or an external shutdown, let the node wind down what is running, then the node's own clean-up
and rclpy's, in that order.

rclpy's own signal handler is not installed: it invalidates the context the moment the signal
arrives, so a goal still running (a task, a trajectory) dies publishing its feedback and the
clean-up meets destroyed entities. Here the first SIGINT or SIGTERM only asks for a shutdown
(``shutdown_requested``); the context stays valid until the node has stopped its work. A second
signal (launch sends SIGTERM 5 s after SIGINT) raises KeyboardInterrupt: stop now. A node whose
running work does not end in time, or is told to stop now while it waits for it, exits at once
with code 1 and no clean-up: destroying entities a running thread still uses is what breaks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

N = TypeVar("N")

_shutdown = threading.Event()
#: s between checks for a shutdown request while spinning.
POLL_PERIOD = 0.1
#: s spun after the work drained: the results and responses of the goals it ended go out.
FLUSH_PERIOD = 0.5
#: s at most to wait for callbacks already handed to an executor's threads at shutdown.
CALLBACK_WAIT = 1.0
#: s a node has to wind down its running work: under launch's sigterm_timeout (5 s).
DRAIN_TIMEOUT = 4.0


def shutdown_requested() -> bool:
    """True once SIGINT or SIGTERM arrived (the node should finish what it is doing)."""
    return _shutdown.is_set()


def wait_for_shutdown(timeout: float) -> bool:
    """Sleep up to ``timeout`` s, waking at a shutdown request; True if one came."""
    return _shutdown.wait(timeout)


def _on_signal(signum: int, frame) -> None:
    if _shutdown.is_set():
        raise KeyboardInterrupt
    _shutdown.set()


def install_signal_handlers() -> None:
    """First SIGINT/SIGTERM requests a shutdown, a second interrupts (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _on_signal)


def init(args: Sequence[str] | None = None) -> None:
    """``rclpy.init`` with this module's signal handling instead of rclpy's."""
    _shutdown.clear()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    install_signal_handlers()


def start_node(name: str, factory: Callable[[], N], args: Sequence[str] | None = None, *,
               errors: tuple[type[BaseException], ...] = (ValueError,),
               what: str = "bad parameters") -> N | None:
    """``rclpy.init`` then ``factory()``; on one of ``errors`` log FATAL, shut rclpy down."""
    init(args)
    try:
        return factory()
    except errors as error:
        rclpy.logging.get_logger(name).fatal(f"{what}: {error}")
        rclpy.try_shutdown()
        return None


def spin_until_shutdown(node, executor: Executor | None = None, *,
                        start: Callable[[], None] | None = None,
                        drain: Callable[[], bool] | None = None,
                        cleanup: Callable[[], None] | None = None,
                        drain_timeout: float = DRAIN_TIMEOUT) -> None:
    """Spin ``node`` (one thread unless ``executor`` says otherwise) until a shutdown request.

    ``start`` runs first, inside the same guard (a signal during it stops cleanly too).
    ``drain`` is then called, with the executor still spinning, until it returns True (its
    running work has ended: goals aborted, the robot stopped) or ``drain_timeout`` s pass;
    ``cleanup`` runs after the executor stopped and before the node is destroyed. Work that
    does not drain in time (or a second signal during the drain) ends the process at once.
    """
    executor = executor or SingleThreadedExecutor()
    executor.add_node(node)
    unfinished = ""
    try:
        if start is not None:
            start()
        while node.context.ok() and not _shutdown.is_set():
            executor.spin_once(timeout_sec=POLL_PERIOD)
        if drain is not None and node.context.ok():
            unfinished = (f"running work did not stop within {drain_timeout:.0f} s of the "
                          "shutdown request")
            deadline = time.monotonic() + drain_timeout
            while time.monotonic() < deadline:
                if drain():
                    unfinished = ""
                    break
                executor.spin_once(timeout_sec=POLL_PERIOD)
            flushed = time.monotonic() + FLUSH_PERIOD
            while not unfinished and time.monotonic() < flushed:
                executor.spin_once(timeout_sec=FLUSH_PERIOD / 5)
    except KeyboardInterrupt:
        if drain is not None:
            unfinished = "told to stop now while running work was winding down"
    except ExternalShutdownException:
        pass
    finally:
        if unfinished:
            _exit_now(node, unfinished)
        stop_executor(executor)
        if cleanup is not None:
            cleanup()
        node.destroy_node()
        rclpy.try_shutdown()


def _exit_now(node, why: str) -> None:
    node.get_logger().error(f"{why}: exiting without clean-up")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def stop_executor(executor: Executor, timeout: float = DRAIN_TIMEOUT) -> None:
    """Shut ``executor`` down once the callbacks it already handed to its threads have run.

    A MultiThreadedExecutor destroys its guard condition before it joins its threads, and a
    callback still queued then fails on it ("cannot use Destroyable"); one that waits on a
    future that never completes is not waited for longer than ``CALLBACK_WAIT`` s.
    """
    deadline = time.monotonic() + min(timeout, CALLBACK_WAIT)
    for task in list(getattr(executor, "_futures", ())):  # rclpy keeps them there
        while not task.done() and time.monotonic() < deadline:
            time.sleep(0.01)
    executor.shutdown(timeout_sec=timeout)


class BackgroundSpinner:
    """Spins an executor in a thread while the main thread runs a script (a suite, a test).

    ``stop`` ends the loop, lets the callbacks in flight finish and shuts the executor down,
    so the node can be destroyed with nothing left running.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def start(self) -> BackgroundSpinner:
        """Begin spinning; returns self."""
        self._thread.start()
        return self

    def _spin(self) -> None:
        context = self.executor.context
        try:
            while context.ok() and not self._stop.is_set():
                self.executor.spin_once(timeout_sec=POLL_PERIOD)
        except ExternalShutdownException:
            pass

    def stop(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """End the loop and shut the executor down (the node is then safe to destroy)."""
        self._stop.set()
        self._thread.join(timeout=timeout)
        stop_executor(self.executor, timeout)

