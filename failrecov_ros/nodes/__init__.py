"""Thin rclpy executables: declare parameters, convert messages, wire QoS, call the core."""
