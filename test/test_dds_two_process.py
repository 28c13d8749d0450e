"""FailureDiagnosis over real Fast DDS between two processes, in both directions.

Through the installed executables: diagnosis_replay publishes, diagnosis_echo validates.
"""

import json
import subprocess
import time

import pytest
import rclpy
from ament_index_python.packages import get_package_prefix
from rclpy.executors import SingleThreadedExecutor

from failrecov_ros.core.labels import diagnose_any
from failrecov_ros.msg import FailureDiagnosis
from failrecov_ros.ros.conversions import diagnosis_to_msg, msg_to_diagnosis
from failrecov_ros.ros.qos import event_qos

OUTPUTS = [
    {"episode_id": "a", "task": "pick_cube", "text":
     "RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=force_open; FIX_G=CLOSE; KF_GT=7;"},
    {"episode_id": "b", "task": "push_cube", "text":
     "Sub-task: push.<Yes>,Rot z.(0.01, 0.0, 0.0, 0.0, 0.0, -0.3, 0.0)."},
    {"episode_id": "c", "task": "stack_cube", "text": "Sub-task: place.<No>."},
    {"episode_id": "d", "task": "pick_cube", "text": "{\"failed\": \"maybe\"}"},
]


def _exe(name):
    return f"{get_package_prefix('failrecov_ros')}/lib/failrecov_ros/{name}"


def _spin_until(executor, predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def test_other_process_publishes_we_receive(tmp_path, rclpy_context):
    outputs = tmp_path / "outputs.jsonl"
    outputs.write_text("\n".join(json.dumps(o) for o in OUTPUTS) + "\n")
    node = rclpy.create_node("dds_test_sub", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    received = []
    node.create_subscription(FailureDiagnosis, "diagnosis", received.append, event_qos())
    replay = subprocess.Popen(
        [_exe("diagnosis_replay"), "--ros-args", "-p", f"input_file:={outputs}",
         "-p", "wait_for_subscribers:=1", "-p", "rate_hz:=50.0", "-p", "model_name:=replayed"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _spin_until(executor, lambda: len(received) >= len(OUTPUTS), 30), \
            f"received {len(received)} of {len(OUTPUTS)}"
        assert replay.wait(30) == 0
    finally:
        if replay.poll() is None:
            replay.kill()
        node.destroy_node()
        executor.shutdown()
    got = [msg_to_diagnosis(m) for m in received]
    for record, diagnosis in zip(OUTPUTS, got, strict=True):
        expected = diagnose_any(record["text"]).model_output()
        actual = diagnosis.model_output()
        # confidence travels as float32
        assert actual.pop("confidence") == pytest.approx(expected.pop("confidence"), abs=1e-6)
        assert actual == expected
        assert diagnosis.episode_id == record["episode_id"] and diagnosis.task == record["task"]
        assert diagnosis.model_name == "replayed" and diagnosis.raw_output == record["text"]
    assert got[3].is_unknown and "not of type 'boolean'" in got[3].error
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in received]
    assert stamps == sorted(stamps) and stamps[0] > 0


def test_we_publish_other_process_validates(tmp_path, rclpy_context):
    summary = tmp_path / "summary.json"
    valid = [diagnose_any(o["text"], episode_id=o["episode_id"]) for o in OUTPUTS]
    broken = diagnosis_to_msg(valid[0])
    broken.failure_type = "not_a_type"
    echo = subprocess.Popen(
        [_exe("diagnosis_echo"), "--ros-args", "-p", f"expected_count:={len(valid) + 1}",
         "-p", f"summary_file:={summary}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = rclpy.create_node("dds_test_pub", context=rclpy_context)
    publisher = node.create_publisher(FailureDiagnosis, "diagnosis", event_qos())
    try:
        deadline = time.monotonic() + 30
        while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.get_subscription_count() == 1, "echo process never matched"
        for diagnosis in valid:
            publisher.publish(diagnosis_to_msg(diagnosis))
        publisher.publish(broken)
        output, _ = echo.communicate(timeout=30)
    finally:
        if echo.poll() is None:
            echo.kill()
        node.destroy_node()
    assert echo.returncode == 0, output
    result = json.loads(summary.read_text())
    assert result["received"] == len(valid) + 1
    assert result["invalid_messages"] == 1
    assert "message breaks the diagnosis schema" in output and "not_a_type" in output
    assert result["by_type"] == {"force_open": 1, "rotation_yaw": 1, "none": 1, "unknown": 1}
    assert [r["episode_id"] for r in result["records"]] == ["a", "b", "c", "d"]
