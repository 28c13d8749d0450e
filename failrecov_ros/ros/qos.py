"""QoS profiles by data class (style.md practice 5), shared by every node."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE,
                "best_effort": ReliabilityPolicy.BEST_EFFORT}


def sensor_qos(depth: int = 2, reliability: str = "reliable") -> QoSProfile:
    """Camera/state streams: shallow keep-last, reliability as a parameter.

    realsense-ros and rviz default to reliable. Images between processes want Fast DDS shared
    memory segments larger than one image (config/fastdds_shm.xml): with the default ones a
    640x480 frame is fragmented, arrives ~10 ms later, and best effort loses most of them.
    """
    if reliability not in _RELIABILITY:
        raise ValueError(f"reliability must be one of {sorted(_RELIABILITY)}, got {reliability!r}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=_RELIABILITY[reliability], durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """Latest-state topics (skill status): a late subscriber still gets the last message."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def event_qos(depth: int = 10) -> QoSProfile:
    """Commands and events (diagnoses, corrections): reliable, none silently dropped."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
