"""Print FailureDiagnosis messages as one validated line each.

A `ros2 topic echo` that checks the schema; optionally stops after a count and writes a JSON
summary (the demo and the DDS tests read it).
"""

from __future__ import annotations

import collections
import json

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from failrecov_ros.core.schema import SchemaError
from failrecov_ros.msg import FailureDiagnosis
from failrecov_ros.ros import entry
from failrecov_ros.ros.conversions import msg_to_diagnosis
from failrecov_ros.ros.qos import event_qos


class DiagnosisEcho(Node):
    """Subscribes to ``diagnosis`` and logs each one; counts types and schema violations."""

    def __init__(self) -> None:
        super().__init__("diagnosis_echo")
        self.expected_count = int(self.declare_parameter("expected_count", 0).value)
        self.summary_file = self.declare_parameter("summary_file", "").value
        self.received = 0
        self.invalid_messages = 0
        self.by_type: collections.Counter[str] = collections.Counter()
        self.records: list[dict] = []
        self.create_subscription(FailureDiagnosis, "diagnosis", self.on_diagnosis, event_qos())

    @property
    def done(self) -> bool:
        """True once the expected number of messages arrived (never when 0)."""
        return 0 < self.expected_count <= self.received

    def on_diagnosis(self, msg: FailureDiagnosis) -> None:
        """Validate and log one diagnosis."""
        self.received += 1
        try:
            diagnosis = msg_to_diagnosis(msg)
        except SchemaError as exc:
            self.invalid_messages += 1
            self.get_logger().error(f"message breaks the diagnosis schema: {exc}")
            return
        self.by_type[diagnosis.failure_type.value] += 1
        self.records.append(diagnosis.to_dict())
        verdict = "UNKNOWN" if diagnosis.is_unknown else "FAILED" if diagnosis.failed else "ok"
        detail = diagnosis.error if diagnosis.is_unknown else diagnosis.summary
        self.get_logger().info(
            f"[{diagnosis.episode_id}] {verdict:7s} {diagnosis.failure_type.value:14s} "
            f"stage={diagnosis.stage or '-'} conf={diagnosis.confidence:.2f} "
            f"correction={diagnosis.correction.kind.value} {detail[:100]}")

    def write_summary(self) -> None:
        """Write counts and records to ``summary_file`` if set."""
        if not self.summary_file:
            return
        with open(self.summary_file, "w", encoding="utf-8") as handle:
            json.dump({"received": self.received, "invalid_messages": self.invalid_messages,
                       "by_type": dict(self.by_type), "records": self.records}, handle, indent=1)


def main(args: list[str] | None = None) -> int:
    """Entry point: spin until the expected count arrived or SIGINT."""
    entry.init(args)
    node = DiagnosisEcho()
    try:
        while rclpy.ok() and not node.done and not entry.shutdown_requested():
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.write_summary()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
