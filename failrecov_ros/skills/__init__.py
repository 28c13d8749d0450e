"""Skills: task library, skill state machines, motion and correction planning, recovery (no ROS)."""
