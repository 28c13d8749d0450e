"""Scores a live replay: collects the monitor's diagnoses and the episode label, writes results.

Subscribes to ``diagnosis`` (FailureDiagnosis) and the label topic ``failure_label``
(std_msgs/String JSON, latched; see failrecov_ros.evaluation.replay) unless ``labels`` names a
sidecar file. At shutdown (SIGINT) it scores the episode with the same rules as
``failrecov eval replay`` and writes JSON, CSV and HTML results to ``output``: a folder
(results.json, results.csv, report.html) or ``NAME.json`` (NAME.csv and NAME.html beside
it). Without camera frames the footage span is taken from the diagnosed windows.
"""

from __future__ import annotations

from pathlib import Path

from rclpy.node import Node
from std_msgs.msg import String

from failrecov_ros.core.schema import SchemaError
from failrecov_ros.evaluation import metrics, replay, report
from failrecov_ros.msg import FailureDiagnosis
from failrecov_ros.ros.conversions import msg_to_diagnosis
from failrecov_ros.ros.entry import spin_until_shutdown, start_node
from failrecov_ros.ros.qos import event_qos, latched_qos


class ReplayScorer(Node):
    """Keeps every diagnosis and the label; :meth:`write` scores them."""

    def __init__(self) -> None:
        super().__init__("replay_scorer")
        p = self.declare_parameter
        self.labels_path = str(p("labels", "").value)
        self.output = str(p("output", "replay_results").value)
        self.episode = str(p("episode", "").value)
        self.min_confidence = float(p("min_confidence", metrics.CONFIDENT).value)
        self.keyframe_tolerance = int(p("keyframe_tolerance", 2).value)
        if not self.output:
            raise ValueError("parameter 'output' (a results folder) must not be empty")
        self.label: replay.Label | None = None
        if self.labels_path:
            labels = replay.read_labels(self.labels_path)
            key = self.episode or (next(iter(labels)) if len(labels) == 1 else "")
            if key not in labels:
                raise ValueError(f"{self.labels_path} has {len(labels)} labels; set 'episode' "
                                 f"to one of {sorted(labels)[:10]}")
            self.label, self.episode = labels[key], key
        else:
            self.create_subscription(String, "failure_label", self._on_label, latched_qos())
        self.diagnoses = []
        self.rejected = 0
        self.create_subscription(FailureDiagnosis, "diagnosis", self._on_diagnosis, event_qos())

    def _on_diagnosis(self, msg: FailureDiagnosis) -> None:
        try:
            self.diagnoses.append(msg_to_diagnosis(msg))
        except SchemaError as err:
            self.rejected += 1
            self.get_logger().warning(f"diagnosis breaks the schema: {err}")

    def _on_label(self, msg: String) -> None:
        try:
            label = replay.parse_label(msg.data, "failure_label")
        except ValueError as err:
            self.get_logger().error(str(err))
            return
        if label.diagnosis.failed and label.onset_ns is None and label.onset_s is None:
            label = replay.Label(label.diagnosis, self.get_clock().now().nanoseconds)
        self.label = label
        self.get_logger().info(f"label: {label.diagnosis.failure_type.value}")

    def write(self) -> dict[str, Path]:
        """Score what arrived and write the result files."""
        diagnoses = sorted(self.diagnoses, key=lambda d: d.stamp_ns)
        result = replay.EpisodeResult(
            bag="live", name=self.episode or (diagnoses[0].episode_id if diagnoses else "")
            or "episode", label=self.label, diagnoses=diagnoses,
            first_frame_ns=min((d.window_start_ns for d in diagnoses), default=None),
            last_frame_ns=max((d.stamp_ns for d in diagnoses), default=None),
            min_confidence=self.min_confidence,
            counters={"received": len(self.diagnoses), "rejected_messages": self.rejected})
        summary = replay.summarise([result], self.keyframe_tolerance, self.min_confidence)
        models = sorted({d.model_name for d in diagnoses})
        record = report.provenance(model={"name": ", ".join(models) or "unknown"},
                                   data="live topics (diagnosis, failure_label)",
                                   labels=self.labels_path or "failure_label topic")
        return report.write_replay_report(self.output, [result], summary, record,
                                          title="Live replay evaluation")


def main(args: list[str] | None = None) -> int:
    """Entry point: collect until SIGINT, then write the results."""
    node = start_node("replay_scorer", ReplayScorer, args, errors=(ValueError, OSError))
    if node is None:
        return 2
    def write() -> None:
        paths = node.write()
        node.get_logger().info(f"{len(node.diagnoses)} diagnoses scored; wrote "
                               f"{', '.join(str(p) for p in paths.values())}")

    spin_until_shutdown(node, cleanup=write)
    return 0
