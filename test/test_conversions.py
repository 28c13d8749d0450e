"""FailureDiagnosis message <-> core Diagnosis, including messages that break the schema."""

import pytest

from failrecov_ros.core.labels import parse_dream2fix
from failrecov_ros.core.schema import Diagnosis, SchemaError, validate
from failrecov_ros.msg import Correction, CorrectionDirective, FailureDiagnosis
from failrecov_ros.ros.conversions import diagnosis_to_msg, msg_to_diagnosis, ns_to_time, time_to_ns

FULL = validate({
    "failed": True, "failure_type": "weak_close", "stage": "keyframe", "confidence": 0.75,
    "summary": "Weak grasp.",
    "correction": {"kind": "directive", "ee_delta": [0.0, 0.01, 0.0, 0.0, 0.0, 0.1, -0.5],
                   "ee_frame": "fr3_link0",
                   "directive": {"dir_x": -1, "bins_x": 1, "dir_y": 0, "bins_y": 0, "dir_z": 1,
                                 "bins_z": 2, "gripper": "close", "keyframe": 12}}},
).with_context(episode_id="ep9", task="pick_cube", instruction="Pick up the cube.",
               skill="grasp", stamp_ns=1_700_000_001_000_000_123, window_start_ns=1_700_000_000_0,
               window_frames=10, frame_id="camera_color_optical_frame", model_name="compact",
               latency_s=0.0125, raw_output="{}")


def test_round_trip_preserves_everything():
    msg = diagnosis_to_msg(FULL)
    assert msg.header.stamp.sec == 1_700_000_001 and msg.header.stamp.nanosec == 123
    assert msg.correction.kind == Correction.KIND_DIRECTIVE
    assert msg.correction.directive.gripper_command == CorrectionDirective.GRIPPER_CLOSE
    assert msg.failure_type == FailureDiagnosis.TYPE_WEAK_CLOSE
    again = msg_to_diagnosis(msg)
    assert again.latency_s == pytest.approx(FULL.latency_s)
    assert again.confidence == pytest.approx(FULL.confidence)
    assert again.model_output()["correction"] == FULL.model_output()["correction"]
    assert again.to_dict() | {"confidence": 0, "latency_s": 0} == \
        FULL.to_dict() | {"confidence": 0, "latency_s": 0}


@pytest.mark.parametrize("diagnosis", [
    parse_dream2fix("RESULT=SUCCESS;"),
    parse_dream2fix("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_Y=-y; FIX_N_Y=2;"),
    Diagnosis.unknown("model said nonsense", raw_output="nonsense"),
])
def test_round_trip_of_other_forms(diagnosis):
    assert msg_to_diagnosis(diagnosis_to_msg(diagnosis)) == diagnosis


def test_taxonomy_constants_match_the_message():
    from failrecov_ros.core.taxonomy import FailureType

    constants = {getattr(FailureDiagnosis, name) for name in dir(FailureDiagnosis)
                 if name.startswith("TYPE_")}
    assert constants == {t.value for t in FailureType}


@pytest.mark.parametrize("mutate,fragment", [
    (lambda m: setattr(m, "failure_type", "wobble"), "failure_type: 'wobble'"),
    (lambda m: setattr(m, "confidence", float("nan")), "confidence: must be finite"),
    (lambda m: setattr(m.correction, "kind", 42), "<invalid kind 42>"),
    (lambda m: setattr(m.correction.directive, "gripper_command", 9), "<invalid 9>"),
    (lambda m: setattr(m, "failed", False), "failed=false requires failure_type 'none'"),
])
def test_messages_breaking_the_schema_are_rejected(mutate, fragment):
    msg = diagnosis_to_msg(FULL)
    mutate(msg)
    with pytest.raises(SchemaError) as info:
        msg_to_diagnosis(msg)
    assert fragment in str(info.value)


def test_time_conversion():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_763_700_000_123_456_789):
        assert time_to_ns(ns_to_time(ns)) == ns


def test_out_of_range_diagnosis_is_refused_not_wrapped():
    import dataclasses

    from failrecov_ros.core.schema import Directive

    bad = dataclasses.replace(FULL, correction=dataclasses.replace(
        FULL.correction, directive=Directive(gripper=FULL.correction.directive.gripper,
                                             keyframe=2**32 + 5)))
    with pytest.raises(SchemaError, match="keyframe"):
        diagnosis_to_msg(bad)
