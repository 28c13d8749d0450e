"""Publish recorded model outputs as FailureDiagnosis messages (replay a model without it).

Each output is parsed by the same code as a live model's; invalid ones are published as
``unknown`` diagnoses carrying the reason, exactly as the monitor would.
"""

from __future__ import annotations

import time

import rclpy
from rclpy.node import Node

from failrecov_ros.core.labels import diagnose_any
from failrecov_ros.core.outputs_file import read_outputs
from failrecov_ros.msg import FailureDiagnosis
from failrecov_ros.ros.conversions import diagnosis_to_msg
from failrecov_ros.ros.qos import event_qos


class DiagnosisReplay(Node):
    """Reads a JSON Lines file of model outputs and publishes them at a fixed rate."""

    def __init__(self) -> None:
        super().__init__("diagnosis_replay")
        self.input_file = self.declare_parameter("input_file", "").value
        self.rate_hz = float(self.declare_parameter("rate_hz", 10.0).value)
        self.model_name = self.declare_parameter("model_name", "replay").value
        self.frame_id = self.declare_parameter("frame_id", "camera_color_optical_frame").value
        self.wait_for_subscribers = int(self.declare_parameter("wait_for_subscribers", 0).value)
        self.subscriber_timeout_s = float(
            self.declare_parameter("subscriber_timeout_s", 10.0).value)
        if not self.input_file:
            raise ValueError("parameter 'input_file' is required")
        if self.rate_hz <= 0:
            raise ValueError(f"parameter 'rate_hz' must be > 0, got {self.rate_hz}")
        self.records = read_outputs(self.input_file)
        self.publisher = self.create_publisher(FailureDiagnosis, "diagnosis", event_qos())

    def wait_for_peers(self) -> bool:
        """Block until enough subscribers matched (DDS discovery is asynchronous)."""
        deadline = time.monotonic() + self.subscriber_timeout_s
        while self.publisher.get_subscription_count() < self.wait_for_subscribers:
            if time.monotonic() > deadline:
                self.get_logger().error(
                    f"only {self.publisher.get_subscription_count()} of "
                    f"{self.wait_for_subscribers} subscribers after {self.subscriber_timeout_s} s")
                return False
            time.sleep(0.05)
        return True

    def publish_all(self) -> int:
        """Publish every record; returns how many were rejected as invalid."""
        rejected = 0
        for index, record in enumerate(self.records):
            stamp_ns = self.get_clock().now().nanoseconds
            diagnosis = diagnose_any(
                record["text"], episode_id=str(record.get("episode_id", "replay")),
                task=str(record.get("task", "")), instruction=str(record.get("instruction", "")),
                skill=str(record.get("skill", "")), stamp_ns=stamp_ns, window_start_ns=stamp_ns,
                window_frames=int(record.get("window_frames", 0)), frame_id=self.frame_id,
                model_name=self.model_name)
            if diagnosis.is_unknown:
                rejected += 1
                self.get_logger().warning(f"record {index}: rejected: {diagnosis.error}")
            self.publisher.publish(diagnosis_to_msg(diagnosis))
            time.sleep(1.0 / self.rate_hz)
        self.get_logger().info(
            f"published {len(self.records)} diagnoses ({rejected} rejected as unknown)")
        return rejected


def main(args: list[str] | None = None) -> int:
    """Entry point: publish the file once, then exit."""
    rclpy.init(args=args)
    try:
        node = DiagnosisReplay()
    except (ValueError, OSError) as exc:
        rclpy.logging.get_logger("diagnosis_replay").error(str(exc))
        rclpy.try_shutdown()
        return 2
    try:
        if not node.wait_for_peers():
            return 3
        node.publish_all()
        time.sleep(0.5)  # let reliable delivery finish before the participant goes away
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
