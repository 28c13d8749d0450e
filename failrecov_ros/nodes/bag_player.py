"""Plays a rosbag2 recording into the ROS graph (``ros2 bag play`` for machines without it).

Every topic whose message type is importable is published as recorded CDR bytes (no
deserialisation) at recorded timing scaled by ``rate``, with the bag's QoS where every
recorded publisher agreed on one (else reliable, volatile, depth 10), and ``/clock`` from the
bag's log time when ``publish_clock``. The node waits ``start_delay_s`` (default 3 s) so
subscribers are discovered and a monitor started beside it has loaded its model, logs a
summary at the end and exits 0 (1 if the bag cannot be read). Reading is
:class:`failrecov_ros.evaluation.replay.Recording` (rosbags, MCAP or sqlite3).
"""

from __future__ import annotations

import importlib
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from failrecov_ros.datagen.bags import BagError
from failrecov_ros.evaluation.replay import RecordedTopic, Recording
from failrecov_ros.ros.conversions import ns_to_time
from failrecov_ros.ros.entry import shutdown_requested, start_node, wait_for_shutdown

_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE,
                "best_effort": ReliabilityPolicy.BEST_EFFORT}
_DURABILITY = {"transient_local": DurabilityPolicy.TRANSIENT_LOCAL,
               "volatile": DurabilityPolicy.VOLATILE}
_CLOCK_PERIOD_NS = 5_000_000  # /clock at most every 5 ms of bag time (and before each message)


def message_class(msgtype: str):
    """``pkg/msg/Name`` to its Python class; None when the package is not installed."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        return None


def topic_qos(topic: RecordedTopic) -> QoSProfile:
    """The recorded QoS, defaults for what the bag does not say."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=topic.depth or 10,
                      reliability=_RELIABILITY.get(topic.reliability, ReliabilityPolicy.RELIABLE),
                      durability=_DURABILITY.get(topic.durability, DurabilityPolicy.VOLATILE))


class BagPlayer(Node):
    """Publishers for a bag's topics; :meth:`play` runs the recording once."""

    def __init__(self) -> None:
        super().__init__("bag_player")
        p = self.declare_parameter
        self.bag = str(p("bag", "").value)
        self.rate = float(p("rate", 1.0).value)
        self.publish_clock = bool(p("publish_clock", True).value)
        self.start_delay_s = float(p("start_delay_s", 3.0).value)
        if not self.bag:
            raise ValueError("parameter 'bag' (a bag directory or .mcap/.db3 file) is required")
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.start_delay_s < 0:
            raise ValueError(f"start_delay_s must be >= 0, got {self.start_delay_s}")
        self.clock_pub = (self.create_publisher(Clock, "/clock", 10)
                          if self.publish_clock else None)

    def play(self) -> int:
        """Publish the whole bag at recorded timing; returns the exit code."""
        log = self.get_logger()
        try:
            with Recording(self.bag) as recording:
                publishers = {}
                for topic in recording.topics:
                    cls = message_class(topic.msgtype)
                    if cls is None:
                        log.warning(f"skipping {topic.name}: type {topic.msgtype} not installed")
                        continue
                    publishers[topic.name] = self.create_publisher(cls, topic.name,
                                                                   topic_qos(topic))
                log.info(f"playing {recording.path}: {len(publishers)} topics at rate "
                         f"{self.rate}")
                if wait_for_shutdown(self.start_delay_s):  # subscribers discover publishers
                    log.info("interrupted")
                    return 0
                sent, first_ns, started, last_clock = 0, None, time.monotonic(), None
                for topic, log_ns, raw in recording.messages(publishers):
                    if not rclpy.ok() or shutdown_requested():
                        log.info("interrupted")
                        return 0
                    first_ns = log_ns if first_ns is None else first_ns
                    delay = started + (log_ns - first_ns) / 1e9 / self.rate - time.monotonic()
                    if delay > 0 and wait_for_shutdown(delay):
                        log.info("interrupted")
                        return 0
                    if self.clock_pub is not None and (last_clock is None or
                                                       log_ns - last_clock >= _CLOCK_PERIOD_NS):
                        self.clock_pub.publish(Clock(clock=ns_to_time(log_ns)))
                        last_clock = log_ns
                    publishers[topic].publish(raw)
                    sent += 1
        except BagError as err:
            log.error(str(err))
            return 1
        elapsed = time.monotonic() - started
        log.info(f"done: {sent} messages in {elapsed:.2f} s")
        time.sleep(0.5)  # reliable writers hand over the last messages before we go
        return 0


def main(args: list[str] | None = None) -> int:
    """Entry point: play once, then exit (0 at the end, 1 for an unreadable bag)."""
    node = start_node("bag_player", BagPlayer, args)
    if node is None:
        return 2
    code = 0
    try:
        code = node.play()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return code
