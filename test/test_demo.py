"""The main job, short: ``failrecov demo`` on one episode of the smoke suite, end to end.

The launch runner starts the simulated bringup and episode_runner over real DDS; the run must
finish, print the closing table, and leave results, a report with the table and a replayable
bag carrying the injected fault's label.
"""

import json
import subprocess
import sys

from rosbags.highlevel import AnyReader

from failrecov_ros.datagen.bags import FAILURE_LABEL, message_typestore

TIMEOUT = 600  # s: two episodes on shared CPUs, plus start-up


def test_a_short_demo_run_completes_with_table_report_and_bag(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "failrecov_ros.cli", "demo", "--suite", "smoke",
                          "--episodes", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    for row in ("task success without the monitor", "task success with the monitor",
                "recovery rate", "diagnosis accuracy", "diagnosis latency p50 / p95"):
        assert row in run.stdout, log[-6000:]
    assert "[2/4] 00_pick_cube_none with the monitor" in run.stdout
    data = json.loads((out / "results.json").read_text())
    assert len(data["episodes"]) == 4 and data["summary"]["episodes"] == 2
    assert {e["monitor"] for e in data["episodes"]} == {False, True}
    # The nominal episode succeeds without the monitor: the injected fault is what fails.
    baseline = {e["episode"]: e for e in data["episodes"] if not e["monitor"]}
    assert baseline["00_pick_cube_none"]["success"], baseline
    assert not baseline["01_pick_cube_translation_x"]["success"], baseline
    assert "grasp" in baseline["01_pick_cube_translation_x"]["message"]
    page = (out / "report.html").read_text()
    assert "task success with the monitor" in page and "data:image/png;base64," in page
    bag = out / "bags" / "01_pick_cube_translation_x"
    store = message_typestore()
    with AnyReader([bag], default_typestore=store) as reader:
        topics = reader.topics
        assert {"/camera/camera/color/image_raw", "/joint_states", "/skill_status",
                FAILURE_LABEL} <= set(topics), sorted(topics)
        assert topics["/camera/camera/color/image_raw"].msgcount > 20
        labels = [reader.deserialize(raw, conn.msgtype).data
                  for conn, _, raw in reader.messages(
                      connections=[c for c in reader.connections if c.topic == FAILURE_LABEL])]
    assert json.loads(labels[0])["diagnosis"]["failure_type"] == "translation_x"

