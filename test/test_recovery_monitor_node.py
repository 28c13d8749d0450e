"""The recovery monitor node over real DDS: the installed executable, a compact checkpoint."""

import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image, JointState
from sim_process import running, wait_until
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from failrecov_ros.models.compact import TYPES, CompactConfig, CompactModel, CompactNet
from failrecov_ros.msg import FailureDiagnosis, SkillStatus
from failrecov_ros.robots import fr3
from failrecov_ros.ros.conversions import ns_to_time, time_to_ns
from failrecov_ros.ros.qos import latched_qos

WINDOW = 5


def _fixed_checkpoint(folder):
    """A compact model that always answers translation_x, nudge +x by 3 bins.

    Weights are zeroed and biases chosen: deterministic, yet loaded and run like any checkpoint.
    """
    config = CompactConfig(window_frames=WINDOW, image_size=32, stages=("approach", "pre_grasp"),
                           tasks=("pick_cube",))
    net = CompactNet(config)
    chosen = {"failure": TYPES.index("translation_x"), "stage": 1, "dir_x": 2, "bins_x": 3,
              "dir_y": 1, "bins_y": 0, "dir_z": 1, "bins_z": 0, "gripper": 0, "keyframe": 0}
    with torch.no_grad():
        for name, head in net.heads.items():
            head.weight.zero_()
            head.bias.zero_()
            if name in chosen:
                head.bias[chosen[name]] = 10.0
    CompactModel(net).save(folder)
    return folder


def _monitor(*parameters):
    args = [f"trigger.window_frames:={WINDOW}", f"trigger.every_n_frames:={WINDOW}",
            "diagnostics_period_s:=0.5", *parameters]
    return running("recovery_monitor", *(arg for p in args for arg in ("-p", p)))


class _Peer:
    """The rest of the graph: camera, joint_states and skill_status in; the monitor's out."""

    def __init__(self, context):
        self.node = rclpy.create_node("monitor_peer", context=context)
        self.images = self.node.create_publisher(Image, "camera/camera/color/image_raw", 10)
        self.joints = self.node.create_publisher(JointState, "joint_states", 10)
        self.status = self.node.create_publisher(SkillStatus, "skill_status", latched_qos())
        self.received = {"diagnosis": [], "trajectory": [], "markers": [], "diagnostics": []}
        for kind, topic, cls in (("diagnosis", "diagnosis", FailureDiagnosis),
                                 ("trajectory", "correction_trajectory", JointTrajectory),
                                 ("markers", "recovery_monitor/markers", MarkerArray),
                                 ("diagnostics", "/diagnostics", DiagnosticArray)):
            self.node.create_subscription(cls, topic, self.received[kind].append, 10)
        self.analyze = self.node.create_client(Trigger, "recovery_monitor/analyze")
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.sent_stamps = []

    def connected(self):
        """The monitor subscribes and has loaded its model (its diagnostics say so)."""
        status = self.last_status()
        return (self.images.get_subscription_count() > 0 and status is not None
                and status.level != status.ERROR and status.message != "inactive")

    def send(self, frames, encoding="rgb8", age_s=0.0, joints=fr3.HOME):
        for _ in range(frames):
            stamp_ns = self.node.get_clock().now().nanoseconds - int(age_s * 1e9)
            state = JointState(name=[*fr3.ARM_JOINTS, *fr3.FINGER_JOINTS],
                               position=[*joints, 0.02, 0.02])
            state.header.stamp = ns_to_time(stamp_ns)
            self.joints.publish(state)
            channels = 3 if encoding == "rgb8" else 1
            image = Image(height=24, width=32, encoding=encoding, step=32 * channels,
                          data=np.full(24 * 32 * channels, 90, np.uint8).tobytes())
            image.header.stamp = ns_to_time(stamp_ns)
            image.header.frame_id = "camera_color_optical_frame"
            self.images.publish(image)
            self.sent_stamps.append(stamp_ns)
            time.sleep(0.05)

    def diagnostics_values(self, key):
        """Every value ``key`` had in the monitor's diagnostics so far, oldest first."""
        return [kv.value for array in list(self.received["diagnostics"]) for status in array.status
                if status.name.startswith("recovery_monitor") for kv in status.values
                if kv.key == key]

    def diagnostics_value(self, key):
        """The newest value of ``key``, or None before the monitor reported it."""
        values = self.diagnostics_values(key)
        return values[-1] if values else None

    def last_status(self):
        for array in reversed(self.received["diagnostics"]):
            for status in array.status:
                if status.name.startswith("recovery_monitor"):
                    return status
        return None

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=10)  # a spin thread alive at exit can abort the process
        self.node.destroy_node()


@pytest.fixture
def peer(rclpy_context):
    p = _Peer(rclpy_context)
    yield p
    p.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _fixed_checkpoint(tmp_path_factory.mktemp("ckpt") / "fixed")


def test_frames_in_diagnosis_trajectory_markers_and_diagnostics_out(peer, checkpoint):
    with _monitor(f"model.path:={checkpoint}"):
        assert wait_until(peer.connected, 30), "monitor never came up"
        status = SkillStatus(episode_id="ep1", task="pick_cube", instruction="pick up the cube",
                             skill="grasp", stage="pre_grasp", state=SkillStatus.STATE_RUNNING)
        peer.status.publish(status)
        time.sleep(0.5)
        peer.send(3 * WINDOW)
        assert wait_until(lambda: max(map(float, peer.diagnostics_values("frame_rate_hz")),
                                      default=0.0) > 0, 10)
        assert wait_until(lambda: len(peer.received["trajectory"]) >= 2, 30)
        diagnosis = peer.received["diagnosis"][0]
        assert diagnosis.failed and diagnosis.failure_type == "translation_x"
        assert diagnosis.correction.directive.dir_x == 1
        assert diagnosis.correction.directive.bins_x == 3
        assert time_to_ns(diagnosis.header.stamp) in peer.sent_stamps  # the window's last frame
        assert diagnosis.window_frames == WINDOW and diagnosis.latency_s > 0
        assert diagnosis.episode_id == "ep1" and diagnosis.instruction == "pick up the cube"
        assert diagnosis.model_name == "compact:fixed"
        trajectory = peer.received["trajectory"][0]
        assert trajectory.header.stamp == diagnosis.header.stamp
        assert list(trajectory.joint_names) == list(fr3.ARM_JOINTS)
        assert np.max(np.abs(np.array(trajectory.points[-1].positions) - fr3.HOME)) > 1e-3
        assert wait_until(lambda: peer.received["markers"], 10)
        markers = peer.received["markers"][-1].markers
        assert any(m.type == Marker.ARROW and m.action == Marker.ADD for m in markers)
        assert any("translation_x" in m.text for m in markers)
        assert wait_until(lambda: int(peer.diagnostics_value("windows_analysed") or 0) >= 2, 10)
        assert float(peer.diagnostics_value("latency_p95_ms")) > 0
        assert "analysis_rate_hz" in {kv.key for kv in peer.last_status().values}


def test_wrong_encodings_and_stale_frames_are_counted_not_analysed(peer, checkpoint):
    with _monitor(f"model.path:={checkpoint}", "trigger.max_age_s:=0.5"):
        assert wait_until(peer.connected, 30), "monitor never came up"
        peer.send(WINDOW, encoding="mono8")
        assert wait_until(lambda: int(peer.diagnostics_value("rejected_frames") or 0)
                          >= WINDOW, 10)
        peer.send(2 * WINDOW, age_s=5.0)
        assert wait_until(lambda: int(peer.diagnostics_value("windows_dropped_stale") or 0)
                          >= 1, 10)
        assert not peer.received["diagnosis"]
        # It is still alive and analyses fresh frames.
        peer.send(WINDOW)
        assert wait_until(lambda: peer.received["diagnosis"], 20)


def test_a_model_that_fails_to_load_is_reported_and_the_node_stays_up(peer, tmp_path):
    with _monitor(f"model.path:={tmp_path / 'missing'}") as process:
        assert wait_until(lambda: peer.last_status() is not None, 30)
        status = peer.last_status()
        assert status.level == status.ERROR and "does not exist" in status.message
        assert wait_until(lambda: peer.analyze.service_is_ready(), 10)
        reply = peer.analyze.call_async(Trigger.Request())
        assert wait_until(reply.done, 10)
        assert not reply.result().success and "failed to load" in reply.result().message
        assert process.poll() is None  # up, not crash-looping


def test_a_checkpoint_trained_on_another_robot_is_refused_with_the_reason(peer, tmp_path):
    config = CompactConfig(window_frames=WINDOW, image_size=32, stages=("approach",),
                           tasks=("pick_cube",), robot="stretch")
    CompactModel(CompactNet(config)).save(tmp_path / "stretch")
    with _monitor(f"model.path:={tmp_path / 'stretch'}") as process:  # an fr3 monitor
        assert wait_until(lambda: peer.last_status() is not None
                          and peer.last_status().level == peer.last_status().ERROR, 30)
        assert "trained on the stretch's joints" in peer.last_status().message
        assert "robot is the fr3" in peer.last_status().message
        assert process.poll() is None


def test_on_request_analysis_of_what_is_buffered(peer, checkpoint):
    # Also the multi-threaded executor (inference in its own callback group), for slow models.
    # The request comes seconds after the frames (service discovery): allow windows that old,
    # or the staleness rule drops it, which the stale test covers.
    with _monitor(f"model.path:={checkpoint}", "trigger.every_n_frames:=0",
                  "executor_threads:=2", "trigger.max_age_s:=60.0"):
        assert wait_until(peer.connected, 30), "monitor never came up"
        peer.send(3)
        time.sleep(0.5)
        assert not peer.received["diagnosis"]
        # What the monitor buffered, by its own count: images are sensor data (keep last 2),
        # so under load one of the three may be dropped before the monitor takes it. Two
        # reports in a row with the same count (0.5 s apart): no frame is still on its way.
        reports = len(peer.diagnostics_values("frames"))

        def settled():
            counts = peer.diagnostics_values("frames")[reports:]
            return len(counts) >= 2 and counts[-1] == counts[-2]

        assert wait_until(settled, 10)
        buffered = int(peer.diagnostics_value("frames"))
        assert 1 <= buffered <= 3
        assert wait_until(lambda: peer.analyze.service_is_ready(), 10)
        reply = peer.analyze.call_async(Trigger.Request())
        assert wait_until(reply.done, 10) and reply.result().success
        assert wait_until(lambda: peer.received["diagnosis"], 10)
        assert peer.received["diagnosis"][0].window_frames == buffered
