"""Robot descriptions: joint names, limits and home poses of the arms we drive (no ROS)."""
