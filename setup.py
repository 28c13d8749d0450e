"""pip entry point for the ROS-free parts (`pip install .`); messages come only from colcon."""

from setuptools import setup

setup()
