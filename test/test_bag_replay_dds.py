"""bag_player -> recovery_monitor -> replay_scorer over real DDS, on the bag's /clock."""

import json
import subprocess

from replay_bags import frame_ns, write_bag
from sim_process import running, wait_until

from failrecov_ros.core.labels import parse_dream2fix


def _monitor_active(context):
    """True once the monitor logged (on /rosout, latched) that its model is loaded.

    Its /diagnostics timer runs on sim time, which stands still until the bag plays.
    """
    import rclpy
    from rcl_interfaces.msg import Log
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile

    seen = []
    node = rclpy.create_node("replay_test_probe", context=context)
    node.create_subscription(Log, "/rosout", lambda m: seen.append((m.name, m.msg)),
                             QoSProfile(depth=1000, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def ready():
        executor.spin_once(timeout_sec=0.1)
        return any(name == "recovery_monitor" and "monitoring" in text for name, text in seen)

    try:
        return wait_until(ready, timeout=60)
    finally:
        executor.shutdown()
        node.destroy_node()


def test_bag_player_drives_the_live_monitor_and_the_scorer_writes_results(tmp_path,
                                                                          rclpy_context):
    label = parse_dream2fix("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; "
                            "FIX_G=CLOSE; KF_GT=31;")
    bag = write_bag(tmp_path / "episode", label=label, onset_s=1.0)
    out = tmp_path / "results"
    with running("replay_scorer", "-p", f"output:={out}", "-p", "use_sim_time:=true"), \
            running("recovery_monitor", "-p", "use_sim_time:=true"):
        assert _monitor_active(rclpy_context), "the monitor never became active"
        from ament_index_python.packages import get_package_prefix

        player = f"{get_package_prefix('failrecov_ros')}/lib/failrecov_ros/bag_player"
        played = subprocess.run([player, "--ros-args", "-p", f"bag:={bag}", "-p", "rate:=1.0"],
                                capture_output=True, text=True, timeout=60)
        assert played.returncode == 0, played.stdout + played.stderr
        assert "done: 393 messages" in played.stdout + played.stderr
    results = json.loads((out / "results.json").read_text())
    [episode] = results["episodes"]
    assert episode["label_type"] == "delay_close" and episode["onset_ns"] == frame_ns(30)
    stamps = [d["stamp_ns"] for d in episode["diagnoses_list"]]
    assert len(stamps) >= 3, episode
    # every diagnosis analysed a window of the bag's frames, on the bag's clock
    assert set(stamps) <= {frame_ns(i) for i in range(90)}
    assert (out / "report.html").exists() and (out / "results.csv").exists()


def test_bag_player_reports_an_unreadable_bag(tmp_path):
    from ament_index_python.packages import get_package_prefix

    player = f"{get_package_prefix('failrecov_ros')}/lib/failrecov_ros/bag_player"
    played = subprocess.run([player, "--ros-args", "-p", f"bag:={tmp_path / 'absent'}"],
                            capture_output=True, text=True, timeout=60)
    assert played.returncode == 1 and "no such bag" in played.stdout + played.stderr
