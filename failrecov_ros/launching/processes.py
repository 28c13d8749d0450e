"""Run a launch plan: start the nodes, prefix their output, stop them all, leave nothing behind.

Each node runs in its own process group (session), so a signal reaches every process it
spawned and a terminal's Ctrl-C reaches only the runner, which forwards it once. Shutdown is
launch's: SIGINT, then SIGTERM after ``sigterm_timeout``, then SIGKILL after
``sigkill_timeout``, always to the whole group; anything still alive in a group after its
leader exited is killed too. A node with ``on_exit="shutdown"`` (required) ends the launch when
it exits; the runner then exits 1 if it failed. A second SIGINT/SIGTERM kills at once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TextIO

from failrecov_ros.launching.description import LaunchPlan, NodeProcess

POLL_S = 0.05


@dataclasses.dataclass
class _Running:
    node: NodeProcess
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    respawn_at: float | None = None
    exited: int | None = None  # last exit code of a process we did not ask to stop


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Runner:
    """Starts a plan's nodes and supervises them until shutdown; ``run()`` is the exit code."""

    def __init__(self, plan: LaunchPlan, out: TextIO | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.log = log or (lambda text: self.write("launch", text))
        self.entries = [_Running(node) for node in plan.nodes]
        self.shutdown_reason: str | None = None
        self.failed = False
        self.signals = 0

    def write(self, label: str, text: str) -> None:
        """One prefixed line, whole (threads never interleave within a line)."""
        with self.lock:
            self.out.write(f"[{label}] {text}\n")
            self.out.flush()

    def _pump(self, label: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.write(label, raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    def _start(self, entry: _Running, params_dir: str) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")  # line-by-line output through the pipe
        env.update(entry.node.env)
        cmd = entry.node.command(params_dir)
        entry.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        entry.reader = threading.Thread(target=self._pump, daemon=True,
                                        args=(entry.node.label, entry.process.stdout))
        entry.reader.start()
        self.log(f"process started with pid [{entry.process.pid}]: {entry.node.label}")

    def _on_signal(self, signum, _frame) -> None:
        self.signals += 1
        if self.shutdown_reason is None:
            self.shutdown_reason = f"signal {signal.Signals(signum).name}"

    def pids(self) -> list[int]:
        """Process ids of the nodes currently started (for tests and diagnostics)."""
        return [e.process.pid for e in self.entries if e.process is not None]

    def run(self) -> int:
        """Start everything, supervise, shut down; 1 when a required node failed, else 0."""
        previous = {s: signal.signal(s, self._on_signal)
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            with tempfile.TemporaryDirectory(prefix="failrecov_launch_") as params_dir:
                for entry in self.entries:
                    entry.node.write_generated(params_dir)
                try:
                    for entry in self.entries:
                        if self.shutdown_reason is not None:
                            break
                        self._start(entry, params_dir)
                    self._supervise(params_dir)
                except OSError as exc:  # an executable that cannot be started
                    self.failed = True
                    self.shutdown_reason = f"cannot start a process: {exc}"
                finally:
                    self._shutdown()  # whatever happened, nothing is left running
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self.failed else 0

    def _supervise(self, params_dir: str) -> None:
        while self.shutdown_reason is None:
            now = time.monotonic()
            alive = 0
            for entry in self.entries:
                if entry.process is None:
                    if entry.respawn_at is not None and now >= entry.respawn_at:
                        entry.respawn_at = None
                        self._start(entry, params_dir)
                        alive += 1
                    elif entry.respawn_at is not None:
                        alive += 1
                    continue
                code = entry.process.poll()
                if code is None:
                    alive += 1
                    continue
                self._reap(entry)
                entry.exited = code
                how = "cleanly" if code == 0 else f"with exit code {code}"
                self.log(f"process has finished {how}: {entry.node.label} "
                         f"[pid {entry.process.pid}]")
                entry.process = None
                if entry.node.required:
                    self.failed = code != 0
                    self.shutdown_reason = f"required node {entry.node.label} exited"
                    break
                if code != 0:
                    self.failed = self.failed or not entry.node.respawn
                if entry.node.respawn:
                    entry.respawn_at = now + entry.node.respawn_delay
                    alive += 1
            if self.shutdown_reason is None and alive == 0:
                self.shutdown_reason = "all processes have exited"
            time.sleep(POLL_S)

    def _reap(self, entry: _Running) -> None:
        """After a group leader exits, kill what it left in its group and drain its output."""
        pgid = entry.process.pid
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        if entry.reader is not None:
            entry.reader.join(timeout=2.0)

    def _shutdown(self) -> None:
        """SIGINT every group; per node, SIGTERM after its sigterm_timeout, then SIGKILL."""
        self.log(f"shutting down ({self.shutdown_reason})")
        for entry in self.entries:
            entry.respawn_at = None
        running = [e for e in self.entries if e.process is not None]
        asked = self.signals  # one more signal while waiting: kill at once
        stage = {id(e): 0 for e in running}
        deadline: dict[int, float] = {}
        stages = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
        while True:
            now = time.monotonic()
            pending = [e for e in running if _group_alive(e.process.pid)]
            if not pending:
                break
            if all(stage[id(e)] >= len(stages) and now > deadline[id(e)] + 5.0
                   for e in pending):
                self.log("still alive after SIGKILL (uninterruptible?): "
                         + ", ".join(e.node.label for e in pending))
                break
            for entry in pending:
                entry.process.poll()  # reap the leader so an empty group disappears
                key = id(entry)
                due = key not in deadline or now >= deadline[key] or self.signals > asked
                if not due or stage[key] >= len(stages):
                    continue
                sig = signal.SIGKILL if self.signals > asked else stages[stage[key]]
                if sig != signal.SIGINT:
                    self.log(f"sending {sig.name} to {entry.node.label}")
                _signal_group(entry.process.pid, sig)
                stage[key] = len(stages) if sig == signal.SIGKILL else stage[key] + 1
                timeout = (entry.node.sigterm_timeout if sig == signal.SIGINT
                           else entry.node.sigkill_timeout)
                deadline[key] = now + timeout
            time.sleep(POLL_S)
        for entry in running:
            try:
                code = entry.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                code = None
            self.log(f"process has finished: {entry.node.label} "
                     f"[pid {entry.process.pid}] (exit code {code})")
            if entry.reader is not None:
                entry.reader.join(timeout=2.0)


def run(plan: LaunchPlan, out: TextIO | None = None) -> int:
    """Run ``plan`` in the foreground until it shuts down; the exit code for the command."""
    return Runner(plan, out).run()
