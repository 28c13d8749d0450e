"""A strict runner for the ROS 2 XML launch frontend (no ``launch``/``launch_ros`` needed).

``description`` turns a ``.launch.xml`` file into a plan of node processes with the command
lines launch_ros would build; ``processes`` runs that plan. Neither imports rclpy or message
packages, so the same launch files run here and under ``ros2 launch`` on a workstation.
"""
