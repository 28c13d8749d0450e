"""Closed-loop suites and their figures, on hand-made episode outcomes."""

import json

import numpy as np
import pytest

from failrecov_ros.evaluation import closed_loop as cl
from failrecov_ros.evaluation.closed_loop import DiagnosisRecord, EpisodeResult, EpisodeSpec


def test_suites_cover_tasks_and_faults_and_never_grasp_faults_on_push():
    demo = cl.suite("demo")
    assert len(demo) == 18
    assert {s.task for s in demo} == set(cl.TASKS)
    assert {s.fault for s in demo} == set(cl.FAULT_LABELS)
    assert not [s for s in demo if s.task == "push_cube" and s.fault in ("force_open",
                                                                        "weak_close")]
    assert len({s.name for s in demo}) == len(demo)
    assert [s.seed for s in demo] == list(range(100, 118))
    heldout = cl.suite("heldout")
    assert all(dict(s.variation) == {"target_color": "purple"} for s in heldout)
    assert not {s.seed for s in heldout} & {s.seed for s in demo}
    assert len(cl.suite("demo", 5)) == 5 and len(cl.suite("smoke")) == 3
    with pytest.raises(ValueError, match="unknown suite"):
        cl.suite("nope")
    with pytest.raises(ValueError, match="never closes the hand"):
        EpisodeSpec(0, "push_cube", 1, "force_open")


def test_sim_parameters_inject_each_fault():
    assert EpisodeSpec(0, "pick_cube", 1, "translation_y", sign=-1).sim_parameters()[
        "faults.pose_offset"] == [0.0, -cl.OFFSET_M, 0.0]
    force_open = EpisodeSpec(0, "pick_cube", 1, "force_open").sim_parameters()
    assert force_open["faults.close_failures"] == 1
    assert force_open["faults.grasp_force_scale"] == 1.0
    weak = EpisodeSpec(0, "stack_cube", 2, "weak_close",
                       variation=(("target_color", "purple"),)).sim_parameters()
    assert weak["faults.weak_grasps"] == 1 and force_open["faults.weak_grasps"] == 0
    assert json.loads(weak["variation"]) == {"target_color": "purple"}
    clean = EpisodeSpec(0, "pick_cube", 1).sim_parameters()
    assert clean["faults.pose_offset"] == [0.0, 0.0, 0.0] and clean["variation"] == ""


def test_the_truth_undoes_the_injected_fault():
    miss = EpisodeSpec(0, "pick_cube", 1, "translation_y", sign=-1).truth()
    assert miss.failed and miss.failure_type.value == "translation_y" and miss.stage == "grasp"
    assert miss.correction.ee_delta == (0.0, cl.OFFSET_M, 0.0, 0.0, 0.0, 0.0, 0.0)
    d = miss.correction.directive
    assert (d.dir_x, d.bins_x, d.dir_y, d.bins_y) == (0, 0, 1, 4)
    assert EpisodeSpec(0, "push_cube", 1, "translation_x").truth().stage == "push"
    fix = EpisodeSpec(0, "pick_cube", 1, "weak_close").truth().correction.directive
    assert fix.gripper.value == "close"
    assert not EpisodeSpec(0, "pick_cube", 1).truth().failed


def _d(failure_type, confidence=0.9, latency=10.0):
    return DiagnosisRecord(1.0, failure_type != "none", failure_type, "grasp", confidence,
                           latency)


def test_the_episode_verdict_is_the_first_confident_failure_the_executor_would_act_on():
    spec = EpisodeSpec(0, "pick_cube", 1, "translation_x")
    result = EpisodeResult(spec, True, 1, "", 10.0, 10.0, diagnoses=[
        _d("none"), _d("stall", 0.99), _d("force_open", 0.3), _d("translation_y"),
        _d("translation_x")])
    assert cl.episode_verdict(result) == "translation_y"
    assert cl.episode_verdict(result, threshold=0.95) == "none"


def test_summary_figures_match_a_hand_count():
    none, tx, fo = (EpisodeSpec(0, "pick_cube", 1), EpisodeSpec(1, "pick_cube", 2,
                                                                "translation_x"),
                    EpisodeSpec(2, "pick_cube", 3, "force_open"))
    results = [
        EpisodeResult(none, False, 0, "", 10.0, 10.0),
        EpisodeResult(none, True, 0, "", 12.0, 12.0, diagnoses=[_d("none", latency=20.0),
                                                                _d("slip", latency=40.0)]),
        EpisodeResult(tx, False, 1, "grasp failed", 6.0, 6.0),
        EpisodeResult(tx, True, 0, "", 20.0, 20.0, 1, 1, ["translation_x"],
                      [_d("translation_x", latency=30.0)]),
        EpisodeResult(fo, False, 1, "grasp failed", 6.0, 6.0),
        EpisodeResult(fo, True, 1, "grasp failed", 16.0, 16.0, diagnoses=[_d("none")]),
    ]
    s = cl.summarize(results)
    assert s["episodes"] == 3
    assert s["success_without_monitor"] == pytest.approx(1 / 3)
    assert s["success_with_monitor"] == pytest.approx(2 / 3)
    assert s["failures_without_monitor"] == 2 and s["recovery_rate"] == pytest.approx(0.5)
    # Verdicts: none -> slip (false alarm), tx -> tx, fo -> none.
    assert s["diagnosis_accuracy"] == pytest.approx(1 / 3)
    assert s["fault_detection_rate"] == pytest.approx(0.5)
    assert s["fault_type_accuracy"] == pytest.approx(0.5)
    assert s["confusion"] == {"force_open -> none": 1, "none -> slip": 1,
                              "translation_x -> translation_x": 1}
    assert (s["false_alarm_episodes"], s["nominal_episodes"]) == (1, 1)
    assert s["false_alarm_episodes_acted_on"] == 0  # one slip window: no takeover
    # Latencies 10, 20, 30, 40 ms: linear-interpolation percentiles.
    assert s["latency_ms_p50"] == pytest.approx(25.0)
    assert s["latency_ms_p95"] == pytest.approx(38.5)
    assert s["extra_time_s_mean"] == pytest.approx(2.0)
    assert s["executor_false_successes"] == 0
    assert s["per_fault"]["translation_x"] == {"episodes": 1, "success_without": 0,
                                               "success_with": 1, "diagnosed": 1}
    table = cl.render_table(s)
    assert "task success with the monitor" in table and "67% (2/3)" in table
    assert "50% of 2" in table and "1 / 0 of 1" in table


def test_a_false_alarm_the_executor_acted_on_is_counted_as_such():
    none = EpisodeSpec(0, "pick_cube", 1)
    results = [EpisodeResult(none, False, 0, "", 10.0, 10.0),
               EpisodeResult(none, True, 0, "", 14.0, 14.0, 1, 1, ["slip"],
                             [_d("slip"), _d("slip")])]
    s = cl.summarize(results)
    assert (s["false_alarm_episodes"], s["false_alarm_episodes_acted_on"]) == (1, 1)


def test_success_is_the_simulators_predicate_not_the_executors_word():
    spec = EpisodeSpec(0, "pick_cube", 1, "weak_close")
    fooled = EpisodeResult(spec, False, 0, "task pick_cube completed", 10.0, 10.0,
                           task_success=False, success_details='{"lift": 0.0}')
    caught = EpisodeResult(spec, True, 0, "", 14.0, 14.0, 1, 1, ["weak_close"],
                           [_d("weak_close")], task_success=True)
    assert fooled.executor_claimed_success and not fooled.success
    s = cl.summarize([fooled, caught])
    assert s["success_without_monitor"] == 0.0 and s["recovery_rate"] == 1.0
    assert s["executor_false_successes"] == 1


def test_a_summary_needs_paired_runs():
    spec = EpisodeSpec(0, "pick_cube", 1)
    with pytest.raises(ValueError, match="without and with"):
        cl.summarize([EpisodeResult(spec, True, 0, "", 1.0, 1.0)])


def test_the_report_carries_the_table_plots_and_frames(tmp_path):
    spec = EpisodeSpec(1, "pick_cube", 2, "translation_x")
    results = [EpisodeResult(spec, False, 1, "grasp failed", 6.0, 6.0),
               EpisodeResult(spec, True, 0, "", 20.0, 20.0, 1, 1, ["translation_x"],
                             [_d("translation_x")])]
    frame = np.zeros((48, 64, 3), np.uint8)
    paths = cl.write_report(tmp_path, "smoke", results, cl.summarize(results),
                            {spec.name: [("before recovery 1", frame)]}, wall_s=3.0)
    assert {p.name for p in paths} == {"results.json", "results.csv", "report.html"}
    page = (tmp_path / "report.html").read_text()
    assert "recovery rate" in page and "before recovery 1" in page
    assert page.count("data:image/png;base64,") >= 4  # bars, confusion, latency, frame
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"]["recovery_rate"] == 1.0
    assert data["provenance"]["suite"] == "smoke" and "git_commit" in data["provenance"]
    assert len(data["episodes"]) == 2
