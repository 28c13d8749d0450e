"""The D435i node at 640x480, 30 Hz: delivery, drops, transport latency and the node's CPU use.

A synthetic recording (librealsense software device + recorder, no camera) is played at its
recorded rate through the installed ``realsense_camera`` node; this process subscribes to color
and aligned depth like any consumer would. Transport latency, which the goal is stated in,
runs from the node's DDS write to this subscriber's Python callback (the write time is the
rclpy MessageInfo source timestamp); the DDS receive time splits it into the middleware's part
and the subscriber's own scheduling. End-to-end latency runs from the header stamp (the
frame's device time mapped to ROS time) to the callback, so it adds the node's alignment,
conversion and publishing. CPU is the node process's user+system time over the measured pass,
from /proc. Drops are counted against every recorded frame: each
synthetic color image carries its index, so a frame lost while playback starts (before the first
one published, which the node's own counter cannot see) counts like one lost mid-stream.
Frames that were published but did not reach the callback are split with the DDS sequence
number each message carries (rclpy MessageInfo): a gap reported by Fast DDS's message-lost
event was lost before the subscriber had it (the node's writer history replaced it before it was
delivered and acknowledged), the rest were replaced in the subscriber's own history (its executor
fell behind by more than ``--depth`` messages). The run is on a ROS domain of its own, so no other
publisher on the machine reaches the subscriber (one that does is an error, not a figure).
Goal (issue 7): at most 1 drop per 1000 frames, median transport latency at most 5 ms.
Run: ``source scripts/env.sh && python benchmarks/camera_benchmark.py [--frames 1200]``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def node_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(recording: str, frames: int, reliability: str, depth: int) -> dict:
    """Play ``recording`` once to a subscriber that already hears the node; the figures."""
    import rclpy
    from ament_index_python.packages import get_package_prefix
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_srvs.srv import Empty

    from failrecov_ros.perception.synthetic import frame_index
    from failrecov_ros.ros.conversions import time_to_ns
    from failrecov_ros.ros.qos import event_qos, sensor_qos

    qos_name = {"reliable": "SYSTEM_DEFAULT", "best_effort": "SENSOR_DATA"}[reliability]
    exe = f"{get_package_prefix('failrecov_ros')}/lib/failrecov_ros/realsense_camera"
    node_process = subprocess.Popen(
        [exe, "--ros-args", "-p", f"rosbag_filename:={recording}", "-p", "frame_timeout:=1.0",
         "-p", "reconnect_timeout:=600.0", "-p", f"rgb_camera.color_qos:={qos_name}",
         "-p", f"depth_module.depth_qos:={qos_name}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rclpy.init()
    node = rclpy.create_node("camera_benchmark")
    lock = threading.Lock()
    # Per image: header stamp, DDS write, DDS receive, callback time (ns since the epoch), the
    # recorded frame's index (color only; -1 for depth) and the writer's sequence number.
    received: dict[str, list[tuple[int, ...]]] = {"color": [], "aligned": []}
    statuses: list[dict] = []
    dds_lost = {"color": 0, "aligned": 0}  # Fast DDS: samples the reader can no longer get

    def keep(key):
        def on_image(msg, info):
            now = time.time_ns()
            index = frame_index(msg.data[:3]) if key == "color" else -1  # rgb8: pixel (0, 0)
            with lock:
                received[key].append((time_to_ns(msg.header.stamp), info["source_timestamp"],
                                      info["received_timestamp"], now, index,
                                      info.get("publication_sequence_number") or 0))
        return on_image

    def count_lost(key):
        def on_lost(event):
            with lock:
                dds_lost[key] += event.total_count_change
        return on_lost

    qos = sensor_qos(depth=depth, reliability=reliability)
    for key, topic in (("color", "camera/camera/color/image_raw"),
                       ("aligned", "camera/camera/aligned_depth_to_color/image_raw")):
        node.create_subscription(Image, topic, keep(key), qos, event_callbacks=(
            SubscriptionEventCallbacks(message_lost=count_lost(key))))
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.append(
        {kv.key: kv.value for kv in m.status[0].values}), event_qos())
    reset = node.create_client(Empty, "camera/camera/hw_reset")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def quiet_for(seconds):
        with lock:
            last = received["color"][-1][3] if received["color"] else 0
        return time.time_ns() - last > seconds * 1e9

    def stalled_after(base):
        last = statuses[-1] if statuses else None
        return (last is not None and last["state"] == "stalled"
                and int(last["reconnects"]) == int(base["reconnects"]) + 1
                and int(last["frames"]) > int(base["frames"]))

    try:
        # Frames published before DDS discovery are lost to any subscriber: let the first pass
        # end, then replay the recording from its start (hw_reset) to a subscriber that hears it.
        start = {"reconnects": "-1", "frames": "0"}
        if not reset.wait_for_service(timeout_sec=60) or not wait(
                lambda: stalled_after(start), frames / 30 + 120):
            raise RuntimeError("the node did not play the recording")
        before = statuses[-1]
        with lock:
            for values in received.values():
                values.clear()
            dds_lost.update(color=0, aligned=0)
        cpu_start, wall_start = node_cpu_seconds(node_process.pid), time.monotonic()
        reset.call_async(Empty.Request())
        if not wait(lambda: stalled_after(before), frames / 30 + 120):
            raise RuntimeError("the replay did not finish")
        cpu = node_cpu_seconds(node_process.pid) - cpu_start
        wall = time.monotonic() - wall_start
        after = statuses[-1]
        # The stall is reported a second after the last frame, but a reliable writer repairs a
        # sample that no later one follows only at its periodic heartbeat (Fast DDS: every 3 s):
        # listen until 4 s pass without an image, and say how many came that late.
        with lock:
            at_stall = len(received["color"])
        wait(lambda: quiet_for(4.0), 30.0)
        with lock:
            after_stall = len(received["color"]) - at_stall
        publishers = node.count_publishers("camera/camera/color/image_raw")
        if publishers != 1:
            raise RuntimeError(f"{publishers} publishers on the color topic: only the node's "
                               f"frames may be counted")
    finally:
        executor.shutdown()
        spinner.join(timeout=10)
        node.destroy_node()
        rclpy.try_shutdown()
        node_process.send_signal(signal.SIGINT)
        try:
            node_process.wait(15)
        except subprocess.TimeoutExpired:
            node_process.kill()
    with lock:
        color = np.array(received["color"], dtype=np.int64).reshape(-1, 6)
        aligned_stamps = {stamp for stamp, *_ in received["aligned"]}
        lost_in_dds = dds_lost["color"]
    indices = np.unique(color[:, 4])
    sequence = np.sort(color[:, 5])
    # Published in the pass but never taken by the callback: holes in the writer's numbering.
    holes = int(np.sum(np.diff(sequence) - 1)) if len(sequence) else 0
    return {"recorded": frames, "published": int(after["frames"]) - int(before["frames"]),
            "node_drops": int(after["drops"]) - int(before["drops"]),
            "delivered": len(indices), "duplicates": len(color) - len(indices),
            "first": int(indices[0]) if len(indices) else frames,
            "last": int(indices[-1]) if len(indices) else frames - 1,
            "paired": sum(s in aligned_stamps for s in color[:, 0]),
            "sequence_holes": holes, "dds_lost": lost_in_dds, "after_stall": after_stall,
            "stamp_ms": (color[:, 3] - color[:, 0]) / 1e6,
            "dds_ms": (color[:, 2] - color[:, 1]) / 1e6,
            "callback_ms": (color[:, 3] - color[:, 2]) / 1e6,
            "transport_ms": (color[:, 3] - color[:, 1]) / 1e6,
            "node_latency_ms": (after["latency_median_ms"], after["latency_p95_ms"]),
            "node_cpu_percent": 100.0 * cpu / wall}


def wait(predicate, timeout: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def main() -> int:
    """Record (or reuse) the synthetic recording, play it through the node, print the figures."""
    # rclpy before pyrealsense2 (imported to record): pyrealsense2 carries its own Fast DDS, and
    # loaded first it crashes the process at exit.
    import rclpy  # noqa: F401

    from failrecov_ros.perception.synthetic import SyntheticSpec, write_recording

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=1200, help="30 Hz frames to record")
    parser.add_argument("--recording", help="reuse (or create) this .db3 instead of a temp one")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--depth", type=int, default=10,
                        help="the subscriber's history depth (rclcpp's default QoS: 10)")
    parser.add_argument("--domain", type=int,
                        help="ROS domain for the node and the subscriber (default: a random one, "
                             "so that no other publisher on this machine is heard)")
    args = parser.parse_args()
    domain = random.SystemRandom().randint(1, 100) if args.domain is None else args.domain
    os.environ["ROS_DOMAIN_ID"] = str(domain)  # this process's and the node's
    load_start = os.getloadavg()[0]
    spec = SyntheticSpec(frames=args.frames)  # 640x480 color and depth at 30 Hz
    with tempfile.TemporaryDirectory() as folder:
        recording = args.recording or os.path.join(folder, "benchmark.db3")
        if not os.path.exists(recording):
            start = time.monotonic()
            write_recording(recording, spec)
            print(f"recorded {spec.frames} frames 640x480 @ 30 Hz in "
                  f"{time.monotonic() - start:.1f} s ({os.path.getsize(recording) / 1e6:.1f} MB)")
        figures = measure(recording, spec.frames, args.reliability, args.depth)
    # Every recorded frame that did not reach the subscriber is lost, wherever it was lost.
    recorded, delivered = figures["recorded"], figures["delivered"]
    lost = recorded - delivered
    at_start = figures["first"]  # before the first delivered frame (playback starting)
    at_end = recorded - 1 - figures["last"]
    mid_stream = lost - at_start - at_end
    stamp_ms, dds_ms, callback_ms = figures["stamp_ms"], figures["dds_ms"], figures["callback_ms"]
    transport_ms = figures["transport_ms"]
    print(f"machine: {os.cpu_count()} CPUs, load average {load_start:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end; "
          f"ROS domain {domain}, QoS {args.reliability}, subscriber depth {args.depth}, "
          f"Fast DDS profile {os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', '(none)')}, "
          f"FASTDDS_BUILTIN_TRANSPORTS="
          f"{os.environ.get('FASTDDS_BUILTIN_TRANSPORTS', '(default)')}")
    print(f"frames: {recorded} recorded, {figures['published']} published "
          f"({figures['node_drops']} counted as dropped by the node), {delivered} color "
          f"delivered to another process, {figures['paired']} of them with their aligned depth"
          + (f", {figures['duplicates']} duplicates" if figures["duplicates"] else "")
          + f"; {figures['after_stall']} of them arrived after the node reported the stall")
    print(f"drop rate: {1000.0 * lost / recorded:.2f} per 1000 recorded frames (goal <= 1): "
          f"{lost} lost = {at_start} at start-up (before the first delivered frame) + "
          f"{mid_stream} mid-stream + {at_end} at the end")
    undelivered = figures["published"] - delivered
    print(f"  where: {recorded - figures['published'] - figures['node_drops']} never published "
          f"(playback start/end), {figures['node_drops']} dropped in the node (frame-number "
          f"gaps), {undelivered} published but not delivered")
    print(f"  of those {undelivered}: {figures['sequence_holes']} holes in the DDS sequence "
          f"numbers received, {figures['dds_lost']} of them reported lost by DDS (gone from the "
          f"node's writer history before delivery), "
          f"{figures['sequence_holes'] - figures['dds_lost']} replaced in the subscriber's "
          f"history of {args.depth} (its executor fell behind)")
    print(f"transport latency, node's DDS write -> subscriber's Python callback: median "
          f"{np.median(transport_ms):.2f} ms, p95 {np.percentile(transport_ms, 95):.2f} ms "
          f"(goal median <= 5 ms)")
    print(f"  of which DDS write -> DDS receive: median {np.median(dds_ms):.2f} ms, p95 "
          f"{np.percentile(dds_ms, 95):.2f} ms; DDS receive -> Python callback: median "
          f"{np.median(callback_ms):.2f} ms, p95 {np.percentile(callback_ms, 95):.2f} ms")
    print(f"end to end, header stamp (device time) -> callback: median "
          f"{np.median(stamp_ms):.2f} ms, p95 {np.percentile(stamp_ms, 95):.2f} ms (adds the "
          f"node's alignment, conversion and publishing)")
    node_median, node_p95 = figures["node_latency_ms"]
    print(f"node's own figure (/diagnostics, its 5 s window at the end): frame stamp -> "
          f"published: median {node_median} ms, p95 {node_p95} ms")
    print(f"node CPU: {figures['node_cpu_percent']:.0f}% of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
