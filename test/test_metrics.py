"""Metric functions against hand-computed cases (DIGEST 1.5 and 3.5 definitions)."""

import dataclasses
import math

import pytest

from failrecov_ros.core.labels import parse_dream2fix, parse_failsafe
from failrecov_ros.core.schema import Correction, CorrectionKind, Diagnosis, Directive
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.evaluation import metrics


def d2f(text):
    return parse_dream2fix(text)


OK = parse_failsafe("Sub-task: grasp.<No>.")
UNKNOWN = Diagnosis.unknown("bad output")
TRANS_GT = d2f("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=2; "
               "FIX_DIR_Y=+y; FIX_N_Y=3;")
GRIP_GT = d2f("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; FIX_G=CLOSE; KF_GT=31;")


def test_binary_and_type_accuracy():
    truth = [OK, TRANS_GT, GRIP_GT, OK]
    predicted = [OK, GRIP_GT, UNKNOWN, TRANS_GT]
    # right: OK/OK (1), failure/failure (2); unknown is wrong; failure on a success is wrong
    assert metrics.binary_accuracy(predicted, truth) == 0.5
    # exact type: only sample 0
    assert metrics.type_axis_accuracy(predicted, truth) == 0.25
    assert metrics.type_accuracy(predicted, truth) == 0.25


def test_always_no_failure_scores_binary_on_type_axis_too():
    # FailSafe Table V: Qwen2.5-VL always answers "no" and gets 0.2401 on both metrics.
    truth = [OK] * 24 + [TRANS_GT] * 76
    predicted = [OK] * 100
    assert metrics.binary_accuracy(predicted, truth) == metrics.type_axis_accuracy(
        predicted, truth) == 0.24


def test_type_accuracy_ignores_the_axis():
    trans_y = d2f("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_Y=+y; FIX_N_Y=3;")
    trans_x = d2f("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=3;")
    assert metrics.type_accuracy([trans_x], [trans_y]) == 1.0
    assert metrics.type_axis_accuracy([trans_x], [trans_y]) == 0.0


@pytest.mark.parametrize("prediction,expected", [
    # identical: (1 + 1 + 1 + 1) / 4
    ("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=2; FIX_DIR_Y=+y; "
     "FIX_N_Y=3;", 1.0),
    # x bins off by 1: s_x = 1 - 1/3; y right -> (1 + 1 + 2/3 + 1) / 4
    ("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=1; FIX_DIR_Y=+y; "
     "FIX_N_Y=3;", (3 + 2 / 3) / 4),
    # wrong y direction: s_y = 0; wrong stage: s_stage = 0 -> (1 + 0 + 1 + 0) / 4
    ("RESULT=FAIL; TYPE=translation; STAGE=keyframe; FIX_DIR_X=+x; FIX_N_X=2; FIX_DIR_Y=-y; "
     "FIX_N_Y=3;", 0.5),
    # x bins off by 3 or more: s_x = max(0, 1 - 3/3) = 0 -> (1 + 1 + 0 + 1) / 4
    ("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=5; FIX_DIR_Y=+y; "
     "FIX_N_Y=3;", 0.75),
    # predicted a gripper failure: s_type 0, stage 0, no directions -> 0
    ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=weak_close; FIX_G=CLOSE; KF_GT=3;", 0.0),
])
def test_dream2fix_translation_partial_credit(prediction, expected):
    assert metrics.dream2fix_correction_score(d2f(prediction), TRANS_GT) == pytest.approx(expected)


@pytest.mark.parametrize("prediction,tolerance,expected", [
    ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; FIX_G=CLOSE; KF_GT=31;", 0, 1),
    ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; FIX_G=CLOSE; KF_GT=33;", 2, 1),
    ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; FIX_G=CLOSE; KF_GT=34;", 2,
     2 / 3),
    ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=weak_close; FIX_G=CLOSE; KF_GT=31;", 2,
     2 / 3),
    ("RESULT=FAIL; TYPE=gripper; STAGE=pre_grasp; MODE=force_open; FIX_G=CLOSE; KF_GT=0;", 2, 0),
])
def test_dream2fix_gripper_keyframe_tolerance(prediction, tolerance, expected):
    score = metrics.dream2fix_correction_score(d2f(prediction), GRIP_GT,
                                               keyframe_tolerance=tolerance)
    assert score == pytest.approx(expected)


def test_dream2fix_accuracy_averages_over_its_failure_types_only():
    truth = [TRANS_GT, GRIP_GT, OK]
    predicted = [TRANS_GT, UNKNOWN, OK]
    assert metrics.dream2fix_correction_accuracy(predicted, truth) == 0.5
    with pytest.raises(ValueError, match="no Dream2Fix labels"):
        metrics.dream2fix_correction_accuracy([OK], [OK])


def failsafe_label(failure_type, delta):
    """A FailSafe-procedure label the way the data engine writes it: dA, and dA binned."""
    return Diagnosis(True, FailureType(failure_type), 1.0, "lift", "",
                     Correction(CorrectionKind.EE_DELTA, delta, "base",
                                Directive(dir_z=1, bins_z=2)))


def test_each_correction_metric_scores_its_own_papers_labels():
    # An early release whose dA leaves the gripper alone: its directive has no keyframe, so
    # the gripper formula would give even the label itself 2/3. It is FailSafe's to score.
    early = failsafe_label("early_release", (0.0, 0.0, 0.02, 0.0, 0.0, 0.0, 0.0))
    assert metrics.is_failsafe_label(early) and not metrics.is_dream2fix_label(early)
    assert metrics.dream2fix_correction_score(early, early) == pytest.approx(2 / 3)
    truth = [TRANS_GT, GRIP_GT, early]
    assert metrics.dream2fix_correction_accuracy(truth, truth) == 1.0
    # A Dream2Fix gripper fix restated as a delta (fingers shut) is not a FailSafe dA: only
    # the early release counts, and a prediction without a delta scores it 0.
    grip = dataclasses.replace(GRIP_GT, correction=Correction.close_gripper(31, 0.08))
    assert metrics.is_dream2fix_label(grip) and not metrics.is_failsafe_label(grip)
    assert metrics.delta_cosine([grip, grip, OK], [grip, grip, early]) == 0.0
    assert metrics.delta_cosine([grip, early], [grip, early]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no FailSafe labels"):
        metrics.delta_cosine([grip], [grip])


def test_delta_cosine():
    gt = parse_failsafe("Sub-task: grasp.<Yes>,Trans x.(0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0).")
    same_direction = parse_failsafe(
        "Sub-task: grasp.<Yes>,Trans x.(0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0).")
    diagonal = parse_failsafe("Sub-task: grasp.<Yes>,Trans x.(0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0).")
    opposite = parse_failsafe("Sub-task: grasp.<Yes>,Trans x.(-0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0).")
    assert metrics.delta_cosine([same_direction], [gt]) == pytest.approx(1.0)
    assert metrics.delta_cosine([diagonal], [gt]) == pytest.approx(1 / math.sqrt(2))
    assert metrics.delta_cosine([opposite], [gt]) == pytest.approx(-1.0)
    # no delta predicted (a "no failure" answer) is the zero vector: cosine 0; OK labels skipped
    assert metrics.delta_cosine([OK, same_direction, OK], [gt, gt, OK]) == pytest.approx(0.5)


def test_delta_length_ratio_is_the_median_over_translations_both_have():
    def failsafe(x, y=0.0, yaw=0.0):
        return parse_failsafe(
            f"Sub-task: grasp.<Yes>,Trans x.({x}, {y}, 0.0, 0.0, 0.0, {yaw}, 0.0).")

    gt = failsafe(0.1)
    half, double, sideways = failsafe(0.05), failsafe(0.0, 0.2), failsafe(0.0, 0.1)
    # lengths only: a sideways delta of the right length is 1 (the cosine says it is wrong)
    assert metrics.delta_length_ratio([half, double, sideways], [gt, gt, gt]) == pytest.approx(1.0)
    assert metrics.delta_length_ratio([half, half, double], [gt, gt, gt]) == pytest.approx(0.5)
    # skipped: no prediction, a rotation-only prediction, a label with no translation, OK labels
    rotation_only, rotation_label = failsafe(0.0, yaw=0.3), failsafe(0.0, yaw=0.3)
    assert metrics.delta_length_ratio([OK, rotation_only, double, half, OK],
                                      [gt, gt, rotation_label, gt, OK]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no FailSafe labels"):
        metrics.delta_length_ratio([OK, rotation_only], [gt, gt])


def test_label_agreement_pairs_labels_of_one_run_and_type_only():
    x, y, minus_x = (1, 0, 0, 0, 0, 0, 0), (0, 1, 0, 0, 0, 0, 0), (-1, 0, 0, 0, 0, 0, 0)
    labels = [("run1", "translation_x", x), ("run1", "translation_x", y),
              ("run1", "translation_x", minus_x),  # pairs: x.y 0, x.-x -1, y.-x 0
              ("run2", "stall", x), ("run2", "stall", x),  # one pair, cosine 1
              ("run3", "stall", minus_x),  # alone in its run: no pair with run2's labels
              ("run2", "translation_x", y)]  # another type in run2: not paired with stalls
    agreement = metrics.label_agreement(labels)
    assert agreement["translation_x"] == (3, pytest.approx(-1 / 3))
    assert agreement["stall"] == (1, pytest.approx(1.0))
    assert metrics.label_agreement([("r", "stall", x)]) == {}


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" = 5 tokens
    score = metrics.rouge_l("the cat sat on the mat", "the cat is on the mat")
    assert score == pytest.approx(5 / 6)
    assert metrics.rouge_l("a b c", "a b c") == 1.0
    assert metrics.rouge_l("x y", "a b") == 0.0
    assert metrics.rouge_l("", "") == 1.0 and metrics.rouge_l("", "a") == 0.0
    # precision 2/2, recall 2/4 -> F1 = 2 * 1 * 0.5 / 1.5
    assert metrics.rouge_l("gripper open", "the gripper stays open") == pytest.approx(2 / 3)


def test_type_confusion_counts_commonest_first_with_the_axis():
    truth = [OK, TRANS_GT, TRANS_GT, GRIP_GT, OK]
    predicted = [OK, GRIP_GT, GRIP_GT, UNKNOWN, OK]
    counts = metrics.type_confusion(predicted, truth)
    assert counts == {"none -> none": 2, "translation_y -> delay_close": 2,
                      "delay_close -> unknown": 1}
    # Commonest first, ties by name: the same predictions always write the same file.
    assert list(counts) == ["none -> none", "translation_y -> delay_close",
                            "delay_close -> unknown"]
    assert list(metrics.confusion_counts([("b", "b"), ("a", "c"), ("b", "b"), ("a", "a")])) \
        == ["b -> b", "a -> a", "a -> c"]
    with pytest.raises(ValueError, match="1 predictions for 2 labels"):
        metrics.type_confusion([OK], [OK, OK])


def test_misaligned_or_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        metrics.binary_accuracy([OK, OK], [OK])
    with pytest.raises(ValueError, match="no samples"):
        metrics.binary_accuracy([], [])
    with pytest.raises(ValueError, match="not 'slip'"):
        metrics.dream2fix_correction_score(OK, parse_dream2fix(
            "RESULT=FAIL; TYPE=slip; STAGE=transport;"))


def _at(diagnosis, stamp_s, confidence=None):
    """The diagnosis stamped at ``stamp_s`` seconds (and with another confidence)."""
    import dataclasses

    changed = dataclasses.replace(diagnosis, stamp_ns=round(stamp_s * 1e9))
    return changed if confidence is None else dataclasses.replace(changed,
                                                                  confidence=confidence)


def test_episode_verdict_is_first_confident_failure_else_last():
    weak = _at(GRIP_GT, 1.0, confidence=0.3)
    series = [_at(OK, 0.5), weak, _at(TRANS_GT, 2.0), _at(GRIP_GT, 3.0), _at(OK, 4.0)]
    assert metrics.episode_verdict(series) is series[2]  # the 0.3 one is below 0.5
    assert metrics.episode_verdict(series, min_confidence=0.2) is weak
    never = [_at(OK, 0.5), weak, _at(OK, 1.5)]
    assert metrics.episode_verdict(never) is never[-1]
    assert metrics.episode_verdict([]).is_unknown


def test_detection_delay_counts_from_onset_only():
    series = [_at(GRIP_GT, 0.8), _at(OK, 1.1), _at(GRIP_GT, 1.4, confidence=0.4),
              _at(GRIP_GT, 1.75)]
    # onset 1.0 s: the 0.8 s alarm is before it, the 1.4 s one not confident -> 1.75 - 1.0
    assert metrics.detection_delay_s(series, onset_ns=10**9) == pytest.approx(0.75)
    # at the onset exactly counts, with delay 0
    assert metrics.detection_delay_s(series, onset_ns=round(1.75e9)) == 0.0
    assert metrics.detection_delay_s(series, onset_ns=2 * 10**9) is None


def test_false_alarms_per_minute():
    # 30 s with 2 confident alarms (one weak ignored) + 90 s with 1: 3 alarms in 2 minutes
    first = [_at(GRIP_GT, 1), _at(TRANS_GT, 2), _at(GRIP_GT, 3, confidence=0.1), _at(OK, 4)]
    second = [_at(OK, 1), _at(GRIP_GT, 50)]
    assert metrics.false_alarms_per_minute([(first, 30.0), (second, 90.0)]) == 1.5
    assert metrics.false_alarms_per_minute([(first, 30.0)], min_confidence=0.05) == 6.0
    with pytest.raises(ValueError, match="no successful episode time"):
        metrics.false_alarms_per_minute([])


def test_latency_percentiles_hand_computed():
    values = [0.010, 0.020, 0.030, 0.040, 0.100]
    summary = metrics.latency_summary(values)
    # p50: the middle value; p95: position 0.95 * 4 = 3.8 -> 0.04 + 0.8 * (0.1 - 0.04)
    assert summary["p50_s"] == pytest.approx(0.030)
    assert summary["p95_s"] == pytest.approx(0.088)
    assert summary["max_s"] == 0.100 and summary["count"] == 5
    assert summary["mean_s"] == pytest.approx(0.040)
    assert metrics.percentile([5.0], 95) == 5.0
    assert metrics.percentile([1.0, 2.0], 0) == 1.0 and metrics.percentile([1.0, 2.0], 100) == 2.0
    with pytest.raises(ValueError):
        metrics.latency_summary([])
