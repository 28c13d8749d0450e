"""Evaluation: metrics with the papers' definitions (ROS-free)."""
