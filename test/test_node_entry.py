"""How nodes stop (ros/entry.py), in child processes: a signal must not hang or crash them."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

NODE = textwrap.dedent("""
    import sys, time
    from rclpy.node import Node
    from failrecov_ros.ros import entry

    class Worker(Node):
        def __init__(self):
            super().__init__("entry_test_worker")
            self.requests = 0
            self.create_timer(0.05, lambda: None)

        def drain(self):
            self.requests += 1
            if self.requests == 1:
                print("draining", flush=True)
            return MODE == "drains" and self.requests >= 3

    MODE = sys.argv[1]
    node = entry.start_node("entry_test_worker", Worker)
    print("spinning", flush=True)
    entry.spin_until_shutdown(node, drain=node.drain,
                              cleanup=lambda: print("cleanup", flush=True), drain_timeout=2.0)
    print(f"exited after {node.requests} drain calls", flush=True)
""")


def _start(mode):
    process = subprocess.Popen([sys.executable, "-c", NODE, mode], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout.readline().strip() == "spinning"
    return process


def _finish(process, timeout=15):
    try:
        return process.communicate(timeout=timeout)[0]
    finally:
        if process.poll() is None:
            process.kill()


def test_a_node_drains_then_cleans_up_on_sigint():
    process = _start("drains")
    process.send_signal(signal.SIGINT)
    output = _finish(process)
    assert process.returncode == 0, output
    assert output.index("draining") < output.index("cleanup") < output.index("exited after 3")
    assert "Traceback" not in output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_work_that_does_not_drain_in_time_ends_the_process_without_clean_up(signum):
    process = _start("hangs")
    started = time.monotonic()
    process.send_signal(signum)
    output = _finish(process)
    assert process.returncode == 1, output
    assert 2.0 <= time.monotonic() - started < 10
    assert "did not stop within 2 s" in output and "exiting without clean-up" in output
    assert "cleanup" not in output.replace("clean-up", "")


def test_a_second_signal_during_the_drain_stops_at_once():
    process = _start("hangs")
    process.send_signal(signal.SIGINT)
    for line in process.stdout:
        if "draining" in line:
            break
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output = _finish(process)
    assert process.returncode == 1, output
    assert time.monotonic() - started < 1.5
    assert "told to stop now" in output and "Traceback" not in output


def test_a_runtime_severity_can_change_from_call_to_call():
    """One call site refuses a second severity in rclpy; log_at gives each its own."""
    import rclpy
    from rclpy.context import Context

    from failrecov_ros.ros.logs import LEVELS, log_at

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("log_at_test", context=context)
    try:
        logger = node.get_logger()
        for level in (*LEVELS, "info", "debug", "warn", "info", "error", "warn"):
            log_at(logger, level, f"at {level}")

        def one_site(level):  # what log_at replaced: the bug it guards against
            {"info": logger.info, "warn": logger.warning}[level]("x")

        one_site("info")
        with pytest.raises(ValueError, match="severity cannot be changed"):
            one_site("warn")
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
