"""The robot's own sensors (a RealSense D435i) behind ROS-free, testable wrappers."""
