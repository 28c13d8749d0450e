"""The papers' label formats (Dream2Fix key-value, FailSafe Q/A) to and from Diagnosis."""

import re

import pytest

from failrecov_ros.core.labels import (
    diagnose_any,
    format_dream2fix,
    format_failsafe,
    parse_any,
    parse_dream2fix,
    parse_failsafe,
)
from failrecov_ros.core.schema import CorrectionKind, GripperCommand, SchemaError
from failrecov_ros.core.taxonomy import FailureType

# The two samples printed in DIGEST section 1.2 (Dream2Fix project page).
D2F_TRANSLATION = (
    "RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=2; FIX_DIR_Y=+y; "
    "FIX_N_Y=3;\nSUMMARY: The execution failed due to a translation misalignment before grasping.")
D2F_GRIPPER = ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; FIX_G=CLOSE; "
               "KF_GT=31;\nSUMMARY: Gripper closes too late; at keyframe it is still open.")


def test_dream2fix_translation_sample():
    d = parse_dream2fix(D2F_TRANSLATION)
    assert d.failed and d.stage == "pre_grasp"
    assert d.failure_type is FailureType.TRANSLATION_Y  # 3 bins in y dominate 2 in x
    directive = d.correction.directive
    assert (directive.dir_x, directive.bins_x, directive.dir_y, directive.bins_y) == (1, 2, 1, 3)
    assert d.correction.kind is CorrectionKind.DIRECTIVE
    assert format_dream2fix(d) == D2F_TRANSLATION


def test_dream2fix_gripper_sample():
    d = parse_dream2fix(D2F_GRIPPER)
    assert d.failure_type is FailureType.DELAY_CLOSE and d.stage == "keyframe"
    assert d.correction.directive.gripper is GripperCommand.CLOSE
    assert d.correction.directive.keyframe == 31
    assert format_dream2fix(d) == D2F_GRIPPER


def test_dream2fix_success_and_extension_types():
    assert not parse_dream2fix("RESULT=SUCCESS;").failed
    rot = parse_dream2fix("RESULT=FAIL; TYPE=rotation_yaw; STAGE=grasp;\nSUMMARY: Yawed.")
    assert rot.failure_type is FailureType.ROTATION_YAW
    assert parse_dream2fix(format_dream2fix(rot)) == rot


@pytest.mark.parametrize("text,fragment", [
    ("RESULT=MAYBE;", "RESULT: expected SUCCESS or FAIL"),
    ("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=up; FIX_N_X=2;",
     "FIX_DIR_X: expected +x or -x"),
    ("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=two;",
     "FIX_N_X: expected an integer"),
    ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; FIX_G=CLOSE;",
     "KF_GT is missing"),
    ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=slip; FIX_G=CLOSE; KF_GT=3;",
     "not a gripper mode"),
    ("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=weak_close; FIX_G=SQUEEZE; KF_GT=3;",
     "'squeeze' is not a valid GripperCommand"),
    ("RESULT=FAIL; TYPE=wobble; STAGE=grasp;", "unknown failure type 'wobble'"),
    ("RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=99;",
     "99 is greater than the maximum"),
])
def test_dream2fix_malformed(text, fragment):
    with pytest.raises(SchemaError, match=re.escape(fragment)):
        parse_dream2fix(text)


def test_failsafe_paper_example():
    d = parse_failsafe(
        "Sub-task: grasp.<Yes>,Trans x.(0.043, 0.003, -0.022, 0.048, -0.008, -0.006, 0.0).")
    assert d.failure_type is FailureType.TRANSLATION_X and d.stage == "grasp"
    assert d.correction.ee_delta == (0.043, 0.003, -0.022, 0.048, -0.008, -0.006, 0.0)
    assert parse_failsafe(format_failsafe(d)) == d


def test_failsafe_no_failure_and_noop():
    assert not parse_failsafe("Sub-task: Move to the cube.<No>.").failed
    noop = parse_failsafe("Sub-task: lift.<Yes>,no-op.(0, 0, 0.02, 0, 0, 0, 0).")
    assert noop.failure_type is FailureType.STALL


@pytest.mark.parametrize("text,fragment", [
    ("Sub-task: grasp.<Maybe>.", "does not match"),
    ("Sub-task: grasp.<Yes>.", "without a failure type"),
    ("Sub-task: grasp.<Yes>,Trans x.(0.1, 0.2).", "too short"),
    ("Sub-task: grasp.<Yes>,Trans q.(0, 0, 0, 0, 0, 0, 0).", "unknown failure type"),
])
def test_failsafe_malformed(text, fragment):
    with pytest.raises(SchemaError, match=re.escape(fragment)):
        parse_failsafe(text)


def test_parse_any_dispatches_and_diagnose_any_never_raises():
    assert parse_any(D2F_GRIPPER).failure_type is FailureType.DELAY_CLOSE
    assert parse_any("Sub-task: x.<No>.").failure_type is FailureType.NONE
    unknown = diagnose_any("gibberish", model_name="m")
    assert unknown.is_unknown
    assert "not JSON, a Dream2Fix label or a FailSafe answer" in unknown.error


def test_failsafe_parser_is_linear_on_long_whitespace():
    # an earlier pattern backtracked cubically: 4000 spaces took minutes
    text = "Sub-task: a.<Yes>,x.(" + " " * 15_000 + "!"
    assert diagnose_any(text).is_unknown


def test_dream2fix_success_is_validated_too():
    with pytest.raises(SchemaError, match="stage"):
        parse_dream2fix("RESULT=SUCCESS; STAGE=Pre-Grasp!!/..;")
    with pytest.raises(SchemaError, match="summary"):
        parse_dream2fix("RESULT=SUCCESS;\nSUMMARY: " + "x" * 5000)


def test_unknown_stage_round_trips_as_empty():
    d = parse_dream2fix("RESULT=FAIL; TYPE=rotation_roll; STAGE=unknown;")
    assert d.stage == ""
    assert parse_dream2fix(format_dream2fix(d)) == d
    assert parse_failsafe(format_failsafe(parse_failsafe("Sub-task: unknown.<No>."))).stage == ""


def test_json_inside_prose_is_found_by_parse_any():
    text = ('Answer: {"failed": false, "failure_type": "none", "stage": "", "confidence": 1, '
            '"summary": "", "correction": {"kind": "none"}} done')
    assert parse_any(text).failure_type is FailureType.NONE
