"""ROS-free core: schema, taxonomy, label formats. Never imports rclpy or message packages."""
