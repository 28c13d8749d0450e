"""MuJoCo simulation: robot models, scenes, simulated RGB-D camera, tasks, expert, fault hooks.

Nothing here imports rclpy; the ROS face lives in ``failrecov_ros.nodes.sim``.
"""
