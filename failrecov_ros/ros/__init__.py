"""Message <-> core conversions and QoS profiles.

With nodes/, the only layer that imports rclpy and message packages.
"""
