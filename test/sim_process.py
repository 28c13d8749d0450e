"""Shared by the simulator-node tests: run the installed mujoco_sim and wait on answers."""

import contextlib
import signal
import subprocess
import time

import numpy as np
from ament_index_python.packages import get_package_prefix


def wait_until(predicate, timeout=20.0):
    """True once ``predicate()`` holds, polling until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def wait_still(read, tolerance=1e-3, timeout=10.0):
    """The value of ``read()`` once it stops changing (joint_states can lag an action result)."""
    previous = read()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        current = read()
        if np.max(np.abs(np.asarray(current) - np.asarray(previous))) < tolerance:
            return current
        previous = current
    raise AssertionError(f"still moving after {timeout} s: {previous}")


def wait_future(future, timeout=30.0):
    """The result of an rclpy future spun elsewhere; fails the test when none comes in time."""
    assert wait_until(future.done, timeout), "no answer in time"
    return future.result()


@contextlib.contextmanager
def running_sim(*parameters):
    """The installed ``mujoco_sim`` with ``-p`` parameters; stopped with SIGINT afterwards."""
    exe = f"{get_package_prefix('failrecov_ros')}/lib/failrecov_ros/mujoco_sim"
    command = [exe, "--ros-args"]
    for parameter in parameters:
        command += ["-p", parameter]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        print(output[-3000:])
