"""The papers' text label formats, to and from :class:`Diagnosis`.

Dream2Fix answers ``RESULT=FAIL; TYPE=translation; STAGE=pre_grasp; FIX_DIR_X=+x; FIX_N_X=2;
... SUMMARY: ...`` (gripper modes carry ``MODE``, ``FIX_G`` and ``KF_GT``); FailSafe answers
``Sub-task: <s>.<Yes>,<type>.<dA>.`` (DIGEST sections 1.2 and 3.2). Types the Dream2Fix format
cannot name (rotation, stall, ...) are written with our taxonomy value as TYPE.
"""

from __future__ import annotations

import re

from failrecov_ros.core.schema import (
    NO_CORRECTION,
    Correction,
    CorrectionKind,
    Diagnosis,
    Directive,
    GripperCommand,
    SchemaError,
    check_output_length,
    diagnose_with,
    parse_model_output,
    validate,
)
from failrecov_ros.core.taxonomy import GRIPPER_TYPES, FailureType, parse_failure_type

_D2F_FIELD = re.compile(r"([A-Z_]+)\s*=\s*([^;\n]*)\s*;?")


def format_dream2fix(diagnosis: Diagnosis) -> str:
    """Dream2Fix key-value label for a diagnosis."""
    if not diagnosis.failed:
        return f"RESULT=SUCCESS;\nSUMMARY: {diagnosis.summary}".rstrip()
    ftype = diagnosis.failure_type
    directive = diagnosis.correction.directive or Directive()
    stage = diagnosis.stage or "unknown"
    if ftype in (FailureType.TRANSLATION_X, FailureType.TRANSLATION_Y):
        parts = ["RESULT=FAIL", "TYPE=translation", f"STAGE={stage}"]
        for a in "xy":
            d, n = getattr(directive, f"dir_{a}"), getattr(directive, f"bins_{a}")
            if n:
                sign = "+" if d > 0 else "-"
                parts += [f"FIX_DIR_{a.upper()}={sign}{a}", f"FIX_N_{a.upper()}={n}"]
    elif ftype in GRIPPER_TYPES:
        parts = ["RESULT=FAIL", "TYPE=gripper", f"STAGE={stage}", f"MODE={ftype.value}",
                 f"FIX_G={directive.gripper.value.upper()}", f"KF_GT={directive.keyframe}"]
    else:
        parts = ["RESULT=FAIL", f"TYPE={ftype.value}", f"STAGE={stage}"]
    return "; ".join(parts) + ";\nSUMMARY: " + diagnosis.summary


def parse_dream2fix(text: str, confidence: float = 1.0) -> Diagnosis:
    """Parse a Dream2Fix label or answer; raises SchemaError naming what is wrong."""
    head, _, summary = text.partition("SUMMARY:")
    fields = {k: v.strip() for k, v in _D2F_FIELD.findall(head)}
    result = fields.get("RESULT", "").upper()
    if result not in ("SUCCESS", "FAIL"):
        raise SchemaError([f"RESULT: expected SUCCESS or FAIL, got {fields.get('RESULT')!r}"])
    summary = summary.strip()
    stage = _stage(fields.get("STAGE", ""))
    if result == "SUCCESS":
        return validate(Diagnosis(failed=False, failure_type=FailureType.NONE,
                                  confidence=confidence, stage=stage,
                                  summary=summary).model_output())
    kind = fields.get("TYPE", "").strip().lower()
    try:
        if kind == "translation":
            bins = {a: _int(fields, f"FIX_N_{a.upper()}", 0) for a in "xy"}
            dirs = {a: _direction(fields.get(f"FIX_DIR_{a.upper()}", ""), a) if bins[a] else 0
                    for a in "xy"}
            dominant_x = bins["x"] >= bins["y"]
            ftype = FailureType.TRANSLATION_X if dominant_x else FailureType.TRANSLATION_Y
            directive = Directive(dir_x=dirs["x"], bins_x=bins["x"], dir_y=dirs["y"],
                                  bins_y=bins["y"])
            correction = Correction(kind=CorrectionKind.DIRECTIVE, directive=directive)
        elif kind == "gripper":
            ftype = parse_failure_type(fields.get("MODE", "").strip().lower())
            if ftype not in GRIPPER_TYPES:
                raise ValueError(f"MODE {ftype.value!r} is not a gripper mode")
            gripper = GripperCommand(fields.get("FIX_G", "").strip().lower())
            directive = Directive(gripper=gripper, keyframe=_int(fields, "KF_GT", None))
            correction = Correction(kind=CorrectionKind.DIRECTIVE, directive=directive)
        else:
            ftype = parse_failure_type(kind)
            correction = NO_CORRECTION if ftype is FailureType.OTHER else Correction(
                kind=CorrectionKind.REPLAN)
    except (ValueError, KeyError) as exc:
        raise SchemaError([f"Dream2Fix label: {exc}"]) from None
    diagnosis = Diagnosis(failed=True, failure_type=ftype, confidence=confidence,
                          stage=stage, summary=summary, correction=correction)
    return validate(diagnosis.model_output())


def _stage(text: str) -> str:
    """Normalise a stage name; "unknown" (what the formatters write for none) becomes ""."""
    stage = text.strip().lower().replace(" ", "_").replace("-", "_")
    return "" if stage == "unknown" else stage


def _int(fields: dict[str, str], key: str, default: int | None) -> int:
    if key not in fields:
        if default is None:
            raise ValueError(f"{key} is missing")
        return default
    try:
        return int(fields[key])
    except ValueError:
        raise ValueError(f"{key}: expected an integer, got {fields[key]!r}") from None


def _direction(text: str, axis: str) -> int:
    text = text.strip().lower()
    if text in (f"+{axis}", "+"):
        return 1
    if text in (f"-{axis}", "-"):
        return -1
    raise ValueError(f"FIX_DIR_{axis.upper()}: expected +{axis} or -{axis}, got {text!r}")


_FAILSAFE_TYPE_NAMES = {
    FailureType.STALL: "no-op",
    FailureType.TRANSLATION_X: "translation x",
    FailureType.TRANSLATION_Y: "translation y",
    FailureType.TRANSLATION_Z: "translation z",
    FailureType.ROTATION_ROLL: "rotation x",
    FailureType.ROTATION_PITCH: "rotation y",
    FailureType.ROTATION_YAW: "rotation z",
}
# Also the paper's dataset category names (Table I: "No-ops", "Trans x", "Rot x", ...).
_FAILSAFE_TYPES = {
    **{v: k for k, v in _FAILSAFE_TYPE_NAMES.items()},
    "no-ops": FailureType.STALL, "noop": FailureType.STALL,
    **{f"trans {a}": FailureType(f"translation_{a}") for a in "xyz"},
    **{f"rot {a}": t for a, t in zip("xyz", (FailureType.ROTATION_ROLL, FailureType.ROTATION_PITCH,
                                             FailureType.ROTATION_YAW), strict=True)},
}
# Applied to stripped text without its final period; no two adjacent parts can match the same
# characters, so matching stays linear (an earlier pattern backtracked cubically on spaces).
_FAILSAFE = re.compile(
    r"Sub-task:\s*(?P<stage>[^.]*)\.\s*<?(?P<answer>yes|no)>?"
    r"(?:,(?P<type>[^.(]+)\.\s*\((?P<delta>[^()]*)\))?",
    re.IGNORECASE)


def format_failsafe(diagnosis: Diagnosis) -> str:
    """FailSafe answer: ``Sub-task: <s>.<No>.`` or ``Sub-task: <s>.<Yes>,<type>.<dA>.``."""
    stage = diagnosis.stage or "unknown"
    if not diagnosis.failed:
        return f"Sub-task: {stage}.<No>."
    name = _FAILSAFE_TYPE_NAMES.get(diagnosis.failure_type, diagnosis.failure_type.value)
    delta = diagnosis.correction.ee_delta or (0.0,) * 7
    return f"Sub-task: {stage}.<Yes>,{name}.({', '.join(f'{v:.3f}' for v in delta)})."


def parse_failsafe(text: str, confidence: float = 1.0) -> Diagnosis:
    """Parse a FailSafe answer; raises SchemaError naming what is wrong."""
    match = _FAILSAFE.fullmatch(text.strip().removesuffix("."))
    if not match:
        expected = "'Sub-task: <s>.<Yes|No>[,<type>.<dA>].'"
        raise SchemaError([f"FailSafe answer: does not match {expected}: {text[:80]!r}"])
    stage = _stage(match["stage"])
    if match["answer"].lower() == "no":
        return validate(Diagnosis(failed=False, failure_type=FailureType.NONE,
                                  confidence=confidence, stage=stage).model_output())
    if not match["type"]:
        raise SchemaError(["FailSafe answer: <Yes> without a failure type and dA"])
    name = match["type"].strip().lower()
    try:
        ftype = _FAILSAFE_TYPES.get(name) or parse_failure_type(name.replace(" ", "_"))
        delta = [float(v) for v in match["delta"].split(",")]
    except ValueError as exc:
        raise SchemaError([f"FailSafe answer: {exc}"]) from None
    return validate(Diagnosis(
        failed=True, failure_type=ftype, confidence=confidence, stage=stage,
        correction=Correction(kind=CorrectionKind.EE_DELTA, ee_delta=tuple(delta))).model_output())


def parse_any(text: str, confidence: float = 1.0) -> Diagnosis:
    """Parse model text in any supported format: our JSON, Dream2Fix key-value, FailSafe."""
    check_output_length(text)
    stripped = text.strip()
    if stripped.lower().startswith("sub-task:"):
        return parse_failsafe(stripped, confidence)
    if re.search(r"\bRESULT\s*=", stripped):
        return parse_dream2fix(stripped, confidence)
    if "{" in stripped:
        return parse_model_output(stripped, lenient=True)
    raise SchemaError([f"<root>: not JSON, a Dream2Fix label or a FailSafe answer: "
                       f"{stripped[:80]!r}"])


def diagnose_any(text: str, **context) -> Diagnosis:
    """Like :func:`parse_any`, but an invalid output becomes an ``unknown`` diagnosis."""
    return diagnose_with(lambda: parse_any(text), text, **context)
