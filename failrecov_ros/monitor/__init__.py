"""The recovery monitor without ROS: buffers, triggers, windows, counters."""
