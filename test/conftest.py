"""Test isolation: every pytest process gets its own ROS_DOMAIN_ID and stays on localhost."""

import os
import random

import pytest


def pytest_configure(config):
    # A per-run domain keeps concurrent test runs (and anything else on the machine) apart.
    # Set before rclpy initialises; child processes inherit it.
    if not os.environ.get("FAILRECOV_TEST_KEEP_DOMAIN"):
        os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # Iron and later
    if os.environ.get("ROS_DISTRO") == "humble":
        os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "fastdds_shm.xml"))


@pytest.fixture
def rclpy_context():
    """An initialised rclpy context, shut down after the test."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)
