"""Offline data engine: inject failures into successful executions, verify, label, write.

ROS-free: generators and verifiers run on the MuJoCo simulation and on recorded rosbag2
demonstrations read with the ``rosbags`` library; writers produce Parquet shards and MCAP bags.
"""
