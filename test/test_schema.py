"""Core schema: round trips, the JSON schema itself, and malformed inputs with clear errors."""

import copy
import json
import math

import jsonschema
import pytest

from failrecov_ros.core import taxonomy
from failrecov_ros.core.schema import (
    MAX_BINS,
    MODEL_OUTPUT_SCHEMA,
    RECORD_SCHEMA,
    CorrectionKind,
    Diagnosis,
    Directive,
    GripperCommand,
    SchemaError,
    diagnose_from_text,
    parse_model_output,
    validate,
)
from failrecov_ros.core.taxonomy import FailureType

TRANSLATION = {
    "failed": True, "failure_type": "translation_x", "stage": "pre_grasp", "confidence": 0.8,
    "summary": "Misaligned in x.",
    "correction": {"kind": "ee_delta", "ee_delta": [0.04, 0.0, -0.02, 0.05, 0.0, 0.0, 0.0],
                   "ee_frame": "fr3_link0",
                   "directive": {"dir_x": 1, "bins_x": 2, "dir_y": 0, "bins_y": 0,
                                 "gripper": "none", "keyframe": -1}},
}
GRIPPER = {
    "failed": True, "failure_type": "delay_close", "stage": "keyframe", "confidence": 0.9,
    "summary": "Closed too late.",
    "correction": {"kind": "directive",
                   "directive": {"dir_x": 0, "bins_x": 0, "dir_y": 0, "bins_y": 0,
                                 "gripper": "close", "keyframe": 31}},
}
SUCCESS = {"failed": False, "failure_type": "none", "stage": "", "confidence": 1.0,
           "summary": "", "correction": {"kind": "none"}}


@pytest.mark.parametrize("data", [TRANSLATION, GRIPPER, SUCCESS])
def test_valid_outputs_round_trip(data):
    diagnosis = validate(data)
    assert diagnosis.model_output() == validate(diagnosis.model_output()).model_output()
    assert parse_model_output(diagnosis.to_json()) == diagnosis
    jsonschema.validate(diagnosis.model_output(), MODEL_OUTPUT_SCHEMA)


def test_fields_are_typed():
    diagnosis = validate(TRANSLATION)
    assert diagnosis.failure_type is FailureType.TRANSLATION_X
    assert diagnosis.correction.kind is CorrectionKind.EE_DELTA
    assert diagnosis.correction.ee_delta == (0.04, 0.0, -0.02, 0.05, 0.0, 0.0, 0.0)
    assert diagnosis.correction.ee_frame == "fr3_link0"
    assert diagnosis.correction.directive.displacement(0.01) == pytest.approx((0.02, 0.0, 0.0))
    gripper = validate(GRIPPER).correction.directive
    assert gripper.gripper is GripperCommand.CLOSE and gripper.keyframe == 31


def test_full_record_round_trip_keeps_context():
    diagnosis = validate(TRANSLATION).with_context(
        episode_id="ep3", task="pick_cube", stamp_ns=1_700_000_000_123_456_789,
        window_frames=10, model_name="compact", latency_s=0.012, raw_output="{...}")
    again = parse_model_output(diagnosis.to_json(full=True), record=True)
    assert again == diagnosis
    jsonschema.validate(diagnosis.to_dict(), RECORD_SCHEMA)


def test_schemas_are_valid_draft7():
    jsonschema.Draft7Validator.check_schema(MODEL_OUTPUT_SCHEMA)
    jsonschema.Draft7Validator.check_schema(RECORD_SCHEMA)
    assert set(MODEL_OUTPUT_SCHEMA["properties"]["failure_type"]["enum"]) == {
        t.value for t in FailureType} - {"unknown"}


def _mutated(base, path, value):
    data = copy.deepcopy(base)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


MALFORMED = [
    # (case, data, expected fragment of the message)
    ("missing field", _mutated(TRANSLATION, ["confidence"], KeyError),
     "'confidence' is a required"),
    ("extra field", {**SUCCESS, "verdict": "ok"}, "Additional properties"),
    ("wrong type", _mutated(TRANSLATION, ["failed"], "yes"), "failed: 'yes' is not of type"),
    ("unknown type", _mutated(TRANSLATION, ["failure_type"], "wobble"), "failure_type: 'wobble'"),
    ("confidence > 1", _mutated(SUCCESS, ["confidence"], 1.5), "confidence: 1.5 is greater"),
    ("nan confidence", _mutated(SUCCESS, ["confidence"], math.nan), "confidence: must be finite"),
    ("inf in delta", _mutated(TRANSLATION, ["correction", "ee_delta", 3], math.inf),
     "correction.ee_delta[3]: must be finite"),
    ("short delta", _mutated(TRANSLATION, ["correction", "ee_delta"], [0.1, 0.2]),
     "correction.ee_delta: [0.1, 0.2] is too short"),
    ("huge delta", _mutated(TRANSLATION, ["correction", "ee_delta", 1], 2.0),
     "ee_delta[1] (dy) = 2.0 exceeds"),
    ("huge rotation", _mutated(TRANSLATION, ["correction", "ee_delta", 5], 4.0),
     "ee_delta[5] (dyaw) = 4.0 exceeds"),
    ("bad stage", _mutated(TRANSLATION, ["stage"], "Pre Grasp!"), "stage: 'Pre Grasp!' does not"),
    ("failed without type", _mutated(TRANSLATION, ["failure_type"], "none"),
     "failed=true requires a failure_type"),
    ("success with type", _mutated(SUCCESS, ["failure_type"], "slip"),
     "failed=false requires failure_type 'none'"),
    ("success with correction",
     _mutated(SUCCESS, ["correction"], {"kind": "ee_delta", "ee_delta": [0] * 7}),
     "failed=false requires correction kind 'none'"),
    ("kind without form", _mutated(GRIPPER, ["correction"], {"kind": "ee_delta"}),
     "requires correction.ee_delta"),
    ("direction without bins", _mutated(TRANSLATION, ["correction", "directive", "bins_x"], 0),
     "dir_x=1 and bins_x=0"),
    ("gripper without keyframe", _mutated(GRIPPER, ["correction", "directive", "keyframe"], -1),
     "needs keyframe >= 0"),
    ("bad direction", _mutated(TRANSLATION, ["correction", "directive", "dir_x"], 2),
     "2 is not one of [-1, 0, 1]"),
    ("bool as int", _mutated(TRANSLATION, ["correction", "directive", "bins_x"], True),
     "True is not of type 'integer'"),
    ("unknown from a model", {**SUCCESS, "failure_type": "unknown"}, "failure_type: 'unknown'"),
    ("not an object", [1, 2, 3], "expected a JSON object, got list"),
]


@pytest.mark.parametrize("case,data,fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_is_rejected_with_a_clear_message(case, data, fragment):
    with pytest.raises(SchemaError) as info:
        validate(data)
    assert fragment in str(info.value), str(info.value)
    assert info.value.problems


def test_all_problems_are_reported_at_once():
    data = _mutated(_mutated(SUCCESS, ["confidence"], 3), ["summary"], 5)
    with pytest.raises(SchemaError) as info:
        validate(data)
    assert len(info.value.problems) == 2


@pytest.mark.parametrize("text,fragment", [
    ("", "not valid JSON"),
    ("{\"failed\": tru", "not valid JSON"),
    ('{"failed": false, "failure_type": "none", "stage": "", "confidence": NaN, "summary": "",'
     ' "correction": {"kind": "none"}}', "non-finite number NaN"),
    (json.dumps(SUCCESS) + " trailing", "not valid JSON"),
])
def test_strict_text_parsing(text, fragment):
    with pytest.raises(SchemaError, match=fragment):
        parse_model_output(text)


def test_lenient_parsing_accepts_fences_and_prose():
    fenced = "```json\n" + json.dumps(GRIPPER) + "\n```"
    prose = "Sure! Here is the diagnosis: " + json.dumps(GRIPPER) + " Hope it helps {not json}"
    assert parse_model_output(fenced, lenient=True) == validate(GRIPPER)
    assert parse_model_output(prose, lenient=True) == validate(GRIPPER)
    with pytest.raises(SchemaError):
        parse_model_output(prose)


def test_invalid_text_becomes_unknown_with_reason_and_no_correction():
    diagnosis = diagnose_from_text("I think it failed", model_name="m", episode_id="e")
    assert diagnosis.is_unknown and not diagnosis.failed
    assert diagnosis.correction.kind is CorrectionKind.NONE
    assert "not valid JSON" in diagnosis.error
    assert diagnosis.raw_output == "I think it failed" and diagnosis.model_name == "m"
    # an unknown record validates as a record, never as a model output
    assert validate(diagnosis.to_dict(), record=True) == diagnosis


def test_valid_text_keeps_raw_output_and_context():
    text = json.dumps(TRANSLATION)
    diagnosis = diagnose_from_text(text, model_name="compact", latency_s=0.01)
    assert not diagnosis.is_unknown
    assert diagnosis.raw_output == text and diagnosis.latency_s == 0.01


def test_with_context_rejects_model_fields():
    with pytest.raises(TypeError):
        validate(SUCCESS).with_context(failed=True)


def test_unknown_requires_an_error_in_records():
    record = Diagnosis.unknown("x").to_dict()
    record["error"] = ""
    with pytest.raises(SchemaError, match="requires a non-empty error"):
        validate(record, record=True)


def test_taxonomy_families_and_axes():
    assert taxonomy.family("translation_y") is taxonomy.Family.TRANSLATION
    assert taxonomy.axis("rotation_pitch") == "pitch"
    assert taxonomy.family("weak_close") is taxonomy.Family.GRIPPER
    assert taxonomy.axis("stall") == ""
    assert set(taxonomy.FAILURE_TYPES).isdisjoint({FailureType.NONE, FailureType.UNKNOWN})
    with pytest.raises(ValueError, match="unknown failure type 'bogus'; expected one of"):
        taxonomy.parse_failure_type("bogus")
    # every paper type is representable
    for name in ["translation_x", "translation_y", "translation_z", "rotation_roll",
                 "rotation_pitch", "rotation_yaw", "stall", "delay_close", "weak_close",
                 "force_open", "early_release", "slip", "other"]:
        assert taxonomy.parse_failure_type(name) in taxonomy.FAILURE_TYPES


# Regressions found in review: hostile model outputs must never raise or hang.
@pytest.mark.parametrize("text", [
    '{"failed":' + "[" * 600 + "]" * 600 + "}",
    '{"a":' + "[" * 2000,
    '{"failed": false, "failure_type": "none", "stage": "", "confidence": 1.0, '
    '"summary": "\\ud800", "correction": {"kind": "none"}}',
    "x" * 50_000,
])
def test_hostile_text_becomes_unknown(text):
    diagnosis = diagnose_from_text(text)
    assert diagnosis.is_unknown and diagnosis.error


def test_stage_with_trailing_newline_is_rejected():
    with pytest.raises(SchemaError, match="not a lower_snake_case name"):
        validate({**SUCCESS, "stage": "grasp\n"})


@pytest.mark.parametrize("field,value", [("keyframe", 2**31), ("keyframe", 2**40)])
def test_integers_must_fit_their_message_fields(field, value):
    with pytest.raises(SchemaError, match="is greater than the maximum"):
        validate(_mutated(GRIPPER, ["correction", "directive", field], value))


def test_record_integers_must_fit():
    record = Diagnosis.unknown("x").to_dict()
    with pytest.raises(SchemaError, match="window_frames"):
        validate({**record, "window_frames": 2**32}, record=True)
    with pytest.raises(SchemaError, match="stamp_ns"):
        validate({**record, "stamp_ns": 2**31 * 10**9}, record=True)


@pytest.mark.parametrize("offset,expected", [
    ((0.034, -0.004), (-1, 3, 0, 0)),   # y under half a bin: no move on y
    ((-0.026, 0.015), (1, 3, -1, 2)),   # 1.5 bins rounds to even (2), like the labels always did
    ((0.25, -0.0), (-1, MAX_BINS, 0, 0)),  # capped at MAX_BINS
])
def test_a_directive_undoing_an_offset_moves_back_in_whole_bins(offset, expected):
    d = Directive.from_displacement([-v for v in offset], 0.01)
    assert (d.dir_x, d.bins_x, d.dir_y, d.bins_y) == expected
    assert (d.dir_z, d.bins_z, d.gripper, d.keyframe) == (0, 0, GripperCommand.NONE, -1)


def test_a_directive_from_a_displacement_bins_z_too_and_inverts_displacement():
    d = Directive.from_displacement((0.021, -0.049, 0.004), 0.01)
    assert (d.dir_x, d.bins_x, d.dir_y, d.bins_y, d.dir_z, d.bins_z) == (1, 2, -1, 5, 0, 0)
    assert d.displacement(0.01) == pytest.approx((0.02, -0.05, 0.0))
    with pytest.raises(ValueError, match="x-y or x-y-z"):
        Directive.from_displacement((0.01,), 0.01)
