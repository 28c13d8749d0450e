"""Shared by the simulator-node tests: run the installed mujoco_sim and wait on answers."""

import contextlib
import signal
import subprocess
import threading
import time

import numpy as np
from ament_index_python.packages import get_package_prefix

from failrecov_ros.ros.requests import first_answer


def wait_until(predicate, timeout=20.0):
    """True once ``predicate()`` holds, polling until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def wait_still(read, stamp, tolerance=1e-3, span=0.25, timeout=10.0):
    """The value of ``read()`` once it stops changing (joint_states can lag an action result).

    Still means two joint_states at least ``span`` s apart by their stamps agree: ``stamp()``
    is the newest message's stamp, so a publisher stalled on a busy machine (the same message
    read twice) is not taken for a robot at rest.
    """
    since, reference = stamp(), read()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now, current = stamp(), read()
        if now < since:  # the clock went back (a reset): start over from here
            since, reference = now, current
            continue
        if now - since < span:
            continue
        if np.max(np.abs(np.asarray(current) - np.asarray(reference))) < tolerance:
            return current
        since, reference = now, current
    raise AssertionError(f"still moving after {timeout} s: {reference}")


def stamp_seconds(msg) -> float:
    """A message's header stamp in seconds."""
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def wait_future(future, timeout=30.0):
    """The result of an rclpy future spun elsewhere; fails the test when none comes in time."""
    assert wait_until(future.done, timeout), "no answer in time"
    return future.result()


def ask(send, timeout=30.0, attempts=2):
    """The answer to ``send()`` (a goal or a repeatable request), sent again when lost.

    A first request right after discovery can lose its answer (``failrecov_ros.ros.requests``).
    ``timeout`` s for each send: a slow answer is not taken for a lost one.
    """
    future = first_answer(send, timeout, attempts)
    assert future is not None, f"no answer to {attempts} sends of {timeout:.0f} s each"
    return future.result()


@contextlib.contextmanager
def running(executable, *ros_args):
    """An installed executable of this package with ROS arguments; SIGINT afterwards.

    Its output is printed, so pytest shows it for a failed test.
    """
    exe = f"{get_package_prefix('failrecov_ros')}/lib/failrecov_ros/{executable}"
    process = subprocess.Popen([exe, "--ros-args", *ros_args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        print(f"--- {executable} {' '.join(ros_args)}\n{output[-4000:]}")


def running_sim(*parameters):
    """The installed ``mujoco_sim`` with ``-p`` parameters."""
    return running("mujoco_sim", *(arg for p in parameters for arg in ("-p", p)))


class SpunClient:
    """A test node that keeps the latest joint_states, spun by an executor in a thread.

    Subclasses add their subscriptions and clients, then call ``start()``.
    """

    wait_timeout = 30.0

    def __init__(self, context, name):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from sensor_msgs.msg import JointState

        self.node = rclpy.create_node(name, context=context)
        self.executor = MultiThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.joint_states = []
        self.node.create_subscription(JointState, "joint_states", self._on_joints, 50)

    def start(self):
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_joints(self, msg):
        with self.lock:
            self.joint_states.append(msg)
            del self.joint_states[:-200]

    def stamp(self) -> float:
        """The newest joint_states message's header stamp in seconds (see ``wait_still``)."""
        with self.lock:
            return stamp_seconds(self.joint_states[-1])

    def joints(self) -> dict[str, float]:
        """Name -> position of the newest joint_states message."""
        with self.lock:
            msg = self.joint_states[-1]
        return dict(zip(msg.name, msg.position, strict=True))

    def wait(self, future, timeout=None):
        """The result of ``future``, failing the test after ``timeout`` (default per class)."""
        return wait_future(future, self.wait_timeout if timeout is None else timeout)

    def ask(self, send, timeout=None):
        """The answer to ``send()``, sent again when lost (``ask``); timeout as ``wait``."""
        return ask(send, self.wait_timeout if timeout is None else timeout)

    def close(self):
        """Stop spinning, wait for the spin thread, then destroy the node.

        A spin thread still running at interpreter exit can abort the test process.
        """
        self.executor.shutdown()
        if getattr(self, "thread", None) is not None:
            self.thread.join(timeout=10)
        self.node.destroy_node()
