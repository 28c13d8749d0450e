"""Replay evaluation: bags made here, fed through the monitor's core, scored, reported."""

import json

import pytest
from replay_bags import FPS, T0, frame_ns, write_bag

from failrecov_ros.cli import main
from failrecov_ros.core.labels import parse_dream2fix
from failrecov_ros.evaluation import replay
from failrecov_ros.monitor.supervisor import TriggerConfig

DELAY_CLOSE = parse_dream2fix(
    "RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; FIX_G=CLOSE; KF_GT=31;")
SUCCESS = parse_dream2fix("RESULT=SUCCESS;")
# every_n_frames=10 fires on frames 10, 20, 30, 40 (0-based 9..39); the gripper_close event
# at 1.49 s arms a countdown of 3 frames from frame 45 (1.5 s), firing on 0-based frame 48
# and restarting the count: 58, 68, 78, 88.
EXPECTED_WINDOW_ENDS = [9, 19, 29, 39, 48, 58, 68, 78, 88]


class FakeModel:
    """Says delay_close (0.9) once the window ends at or after ``fail_from_ns``, else ok."""

    name = "fake"

    def __init__(self, fail_from_ns=None, fail_only_at=(), bins_x=0):
        self.fail_from_ns = fail_from_ns
        self.bins_x = bins_x
        self.fail_only_at = set(fail_only_at)
        self.windows = []

    def predict(self, window):
        self.windows.append(window)
        end = window.stamps_ns[-1]
        failed = (self.fail_from_ns is not None and end >= self.fail_from_ns) or (
            end in self.fail_only_at)
        if failed:
            return {"failed": True, "failure_type": "delay_close", "stage": "keyframe",
                    "confidence": 0.9, "summary": "late close",
                    "correction": {"kind": "directive", "directive": {
                        "dir_x": 1 if self.bins_x else 0, "bins_x": self.bins_x, "dir_y": 0,
                        "bins_y": 0, "gripper": "close",
                        "keyframe": 31}}}
        return {"failed": False, "failure_type": "none", "stage": "approach", "confidence": 0.8,
                "summary": "fine", "correction": {"kind": "none"}}

    def close(self):
        pass


def test_triggers_mirror_the_node_and_delay_is_hand_computed(tmp_path):
    bag = write_bag(tmp_path / "fail", label=DELAY_CLOSE, onset_s=1.0)
    model = FakeModel(fail_from_ns=T0 + 1_000_000_000)
    result = replay.replay_bag(bag, model)
    assert result.ok and result.frames == 90
    assert [d.stamp_ns for d in result.diagnoses] == [frame_ns(i) for i in EXPECTED_WINDOW_ENDS]
    # the node's context: instruction and stage from skill_status, state from joint_states
    first, after_event = model.windows[0], model.windows[4]
    assert first.instruction == "pick up the red cube" and first.stage == "approach"
    assert after_event.stage == "grasp" and first.joint_positions.shape == (10, 7)
    # the nearest joint state to frame 0 (T0) is sample 1: fingers 0.041 each
    assert first.gripper_width[0] == pytest.approx(0.082)
    # onset 1.0 s; first window ending at/after it ends on frame 39 = 1.3 s -> 0.3 s delay
    assert result.detection_delay_s == pytest.approx(39 / FPS - 1.0)
    assert result.verdict.stamp_ns == frame_ns(39) and result.verdict.failed
    assert result.alarms == 6
    assert result.counters["analysed"] == 9 and result.counters["superseded"] == 0
    assert result.duration_s == pytest.approx(89 / FPS)


def test_slow_model_supersedes_windows_on_the_bag_clock(tmp_path):
    bag = write_bag(tmp_path / "ep")
    # 0.5 s per window: analysed at 0.3 (busy to 0.8), 0.63 taken at 0.8, 0.97 at 1.3; 1.3 is
    # superseded by the event window 1.6 (taken 1.8); 1.93 by 2.27 (taken 2.3); 2.6 at 2.8;
    # 2.93 once the bag ends.
    result = replay.replay_bag(bag, FakeModel(), replay.ReplayOptions(latency_s=0.5))
    ends = [9, 19, 29, 48, 68, 78, 88]
    assert [d.stamp_ns for d in result.diagnoses] == [frame_ns(i) for i in ends]
    assert result.counters["superseded"] == 2 and result.counters["dropped_stale"] == 0
    # the same with a 0.15 s age limit: the 0.63 s window is 0.17 s old at 0.8 and dropped
    options = replay.ReplayOptions(latency_s=0.5, trigger=TriggerConfig(max_age_s=0.15))
    stale = replay.replay_bag(bag, FakeModel(), options)
    assert stale.counters["dropped_stale"] >= 1
    assert frame_ns(19) not in [d.stamp_ns for d in stale.diagnoses]


def test_false_alarms_and_summary_on_a_successful_episode(tmp_path):
    ok = write_bag(tmp_path / "ok", label=SUCCESS, storage="sqlite3")
    fail = write_bag(tmp_path / "fail", label=DELAY_CLOSE, onset_s=1.0)
    results = [replay.replay_bag(ok, FakeModel(fail_only_at={frame_ns(58)})),
               replay.replay_bag(fail, FakeModel(fail_from_ns=T0 + 1_000_000_000))]
    assert results[0].alarms == 1 and results[0].detection_delay_s is None
    summary = replay.summarise(results)
    # one alarm over 89/30 s of successful footage
    assert summary["false_alarms_per_minute"] == pytest.approx(60 / (89 / FPS))
    # verdicts: first alarm on the success (wrong), delay_close on the failure (right)
    assert summary["binary_accuracy"] == 0.5 and summary["type_axis_accuracy"] == 0.5
    assert summary["dream2fix_correction_accuracy"] == 1.0
    assert summary["detection_rate"] == 1.0
    assert summary["detection_delay_s"]["p50_s"] == pytest.approx(0.3)


def test_sidecar_labels_override_and_resolve_relative_onsets(tmp_path):
    bag = write_bag(tmp_path / "ep7")
    labels_file = tmp_path / "labels.jsonl"
    labels_file.write_text(
        json.dumps({"bag": "ep7", "diagnosis": "RESULT=FAIL; TYPE=gripper; STAGE=keyframe; "
                    "MODE=delay_close; FIX_G=CLOSE; KF_GT=31;", "onset_s": 0.5}) + "\n"
        + json.dumps({"bag": "other", "failed": False, "failure_type": "none"}) + "\n")
    labels = replay.read_labels(labels_file)
    assert set(labels) == {"ep7", "other"}
    [result] = replay.replay_bags([bag], FakeModel(fail_from_ns=T0 + 10**9), labels=labels)
    assert result.onset_ns == T0 + 500_000_000
    assert result.detection_delay_s == pytest.approx(39 / FPS - 0.5)
    as_object = tmp_path / "labels.json"
    as_object.write_text(json.dumps({"ep7": {"failed": False, "failure_type": "none"}}))
    assert not replay.read_labels(as_object)["ep7"].diagnosis.failed
    with pytest.raises(ValueError, match="not a valid label"):
        replay.parse_label('{"failed": true, "failure_type": "none"}')


def test_missing_topic_is_a_clear_error(tmp_path):
    bag = write_bag(tmp_path / "nojs", skip={"joint_states"})
    with pytest.raises(replay.BagError) as info:
        replay.replay_bag(bag, FakeModel())
    message = str(info.value)
    assert "joint_states" in message and "/camera/camera/color/image_raw" in message
    assert "/skill_status" in message  # what the bag has
    # renaming the role fixes it: a namespaced bag topic matches the relative name
    renamed = write_bag(tmp_path / "renamed", skip={"image"})
    with pytest.raises(replay.BagError, match="camera/camera/color/image_raw"):
        replay.replay_bag(renamed, FakeModel())


def test_corrupt_bags_are_reported_and_the_rest_scored(tmp_path):
    good = write_bag(tmp_path / "good", label=SUCCESS)
    cut = write_bag(tmp_path / "cut", label=SUCCESS)
    [mcap] = cut.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    junk = write_bag(tmp_path / "junk", label=SUCCESS, storage="sqlite3")
    [db3] = junk.glob("*.db3")
    db3.write_bytes(b"not a database" * 100)
    results = replay.replay_bags([good, cut, junk, tmp_path / "absent"], FakeModel())
    assert [bool(r.error) for r in results] == [False, True, True, True]
    assert all(str(r.bag) in r.error or r.name in r.error for r in results[1:])
    assert replay.summarise(results)["errors"] == 3


def test_cli_replays_with_the_shipped_model_deterministically(tmp_path, capsys):
    fail = write_bag(tmp_path / "fail_ep", label=DELAY_CLOSE, onset_s=1.0)
    ok = write_bag(tmp_path / "ok_ep", label=SUCCESS, storage="sqlite3", seed=1)
    cut = write_bag(tmp_path / "cut_ep", label=SUCCESS)
    [mcap] = cut.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[:4000])
    runs = []
    for name, workers in (("run1", "1"), ("run2", "2")):  # also: any worker count, same result
        code = main(["eval", "replay", str(fail), str(ok), str(cut), "--out",
                     str(tmp_path / name), "--workers", workers])
        assert code == 1  # one bag could not be read; the others were scored
        runs.append(json.loads((tmp_path / name / "results.json").read_text()))
    out = capsys.readouterr().out
    assert "cut_ep" in out and "ERROR" in out and "binary_accuracy" in out
    first, second = runs
    strip = [[{k: v for k, v in d.items() if k != "latency_s"} for d in e["diagnoses_list"]]
             for e in first["episodes"]]
    assert strip == [[{k: v for k, v in d.items() if k != "latency_s"}
                      for d in e["diagnoses_list"]] for e in second["episodes"]]
    episodes = {e["name"]: e for e in first["episodes"]}
    assert len(episodes["fail_ep"]["diagnoses_list"]) == len(EXPECTED_WINDOW_ENDS)
    assert episodes["cut_ep"]["error"]
    assert all(d["model_name"] == "compact:compact" for d in episodes["ok_ep"]["diagnoses_list"])
    # the summary agrees with the episode rows it was computed from
    rows = [episodes["fail_ep"], episodes["ok_ep"]]
    assert first["summary"]["binary_accuracy"] == pytest.approx(
        sum(r["binary_correct"] for r in rows) / 2)
    provenance = first["provenance"]
    assert provenance["model"]["sha256"] and provenance["cores"] and provenance["command"]
    assert "git_commit" in provenance and len(provenance["data"]) == 3
    html = (tmp_path / "run1" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Provenance" in html
    csv_text = (tmp_path / "run1" / "results.csv").read_text()
    assert "# model:" in csv_text and "fail_ep" in csv_text


def test_cli_rejects_unknown_roles_and_missing_models(tmp_path, capsys):
    bag = write_bag(tmp_path / "ep")
    assert main(["eval", "replay", str(bag), "--topic", "camera=/x"]) == 2
    assert main(["eval", "replay", str(bag), "--topic", "required=image"]) == 2
    assert main(["eval", "replay", str(bag), "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "unknown topic role" in err and "does not exist" in err


def test_datagen_episode_bags_carry_the_label(tmp_path):
    import numpy as np

    from failrecov_ros.datagen import bags
    from failrecov_ros.robots import fr3

    names = list(fr3.ARM_JOINTS) + list(fr3.FINGER_JOINTS)
    times = np.arange(40) / 20
    positions = np.tile([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04, 0.04], (40, 1))
    rgb = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    from failrecov_ros.core.camera import Intrinsics
    from failrecov_ros.evaluation import report

    path = bags.write_episode_bag(
        tmp_path / "episode", times=times, joint_names=names, positions=positions, rgb=rgb,
        frame_times=np.arange(20) / 10, instruction="pick up the cube", label=DELAY_CLOSE,
        label_onset_s=0.7, intrinsics=Intrinsics.from_fovy(64, 48, 42.5))
    model = FakeModel(fail_from_ns=bags.DEFAULT_START_NS + 10**9, bins_x=5)
    # the simulator's camera placement: the correction becomes an arrow inside the image
    camera = report.look_at_transform((1.45, 0.55, 0.75), (0.35, 0.0, 0.12))
    options = replay.ReplayOptions(topics=replay.Topics(camera_info="camera/camera/color/"
                                                        "camera_info"),
                                   camera_from_base=tuple(camera.reshape(-1)))
    result = replay.replay_bag(path, model, options)
    assert result.intrinsics.width == 64
    (u0, v0), (u1, v1) = replay.correction_arrow(options)(result, result.verdict)
    assert 0 <= u0 <= 64 and 0 <= v0 <= 48 and (u1, v1) != (u0, v0)
    assert replay.correction_arrow(replay.ReplayOptions()) is None
    assert result.label.diagnosis.failure_type.value == "delay_close"
    assert result.onset_ns == bags.DEFAULT_START_NS + 700_000_000
    assert model.windows[0].instruction == "pick up the cube"  # no skill_status: the topic
    # frames at 10 Hz: windows end on frames 9 (0.9 s) and 19 (1.9 s); detection at 1.9 s
    assert result.detection_delay_s == pytest.approx(1.2)


def test_relative_topic_names_match_like_a_remap():
    present = ["/robot1/joint_states", "/a/image", "/b/image", "/skill_status"]
    assert replay._resolve("joint_states", present) == "/robot1/joint_states"
    assert replay._resolve("/skill_status", present) == "/skill_status"
    assert replay._resolve("image", present) is None  # two namespaces: ambiguous
    assert replay._resolve("b/image", present) == "/b/image"
    assert replay._resolve("", present) is None
