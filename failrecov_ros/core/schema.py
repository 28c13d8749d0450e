"""Diagnosis and correction data model, its JSON schema, and strict validation.

Every producer of diagnoses (dataset labels, the compact model, VLMs, servers) goes through
this module, so a malformed output is rejected the same way whatever emitted it. The JSON
schema is what a VLM is constrained to (vLLM structured outputs); the semantic checks below it
catch what JSON schema cannot say (NaN, cross-field consistency).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema

from failrecov_ros.core.taxonomy import FAILURE_TYPES, FailureType, parse_failure_type

#: Bounds that catch garbage, not safety limits (the safety gate owns those).
MAX_TRANSLATION_M = 0.5
MAX_ROTATION_RAD = math.pi
MAX_BINS = 10
MAX_SUMMARY_CHARS = 2000
#: Longest model text parsed at all; beyond it the output is rejected unread.
MAX_OUTPUT_CHARS = 20000
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
#: Stamps whose seconds fit builtin_interfaces/Time (int32).
MAX_STAMP_NS = INT32_MAX * 1_000_000_000
STAGE_PATTERN = r"^([a-z][a-z0-9_]{0,63})?$"
EE_DELTA_FIELDS = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "dgripper")


class SchemaError(ValueError):
    """A diagnosis that does not satisfy the schema; ``problems`` lists every violation."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid diagnosis: " + "; ".join(self.problems))


class CorrectionKind(str, enum.Enum):
    """Which correction form is primary."""

    NONE = "none"
    EE_DELTA = "ee_delta"
    DIRECTIVE = "directive"
    REPLAN = "replan"
    NEEDS_HELP = "needs_help"


class GripperCommand(str, enum.Enum):
    """Gripper fix of a Dream2Fix directive."""

    NONE = "none"
    CLOSE = "close"
    OPEN = "open"


@dataclasses.dataclass(frozen=True)
class Directive:
    """Dream2Fix directive: per-axis direction (-1/0/+1) and bins, gripper command at a keyframe."""

    dir_x: int = 0
    bins_x: int = 0
    dir_y: int = 0
    bins_y: int = 0
    dir_z: int = 0
    bins_z: int = 0
    gripper: GripperCommand = GripperCommand.NONE
    keyframe: int = -1

    @classmethod
    def from_displacement(cls, displacement: Sequence[float],
                          metres_per_bin: float) -> Directive:
        """The move by ``displacement`` (m; x-y or x-y-z) in whole bins (<= MAX_BINS each).

        The inverse of :meth:`displacement`, up to the binning: an axis moved by less than half
        a bin gets no move. No gripper fix.
        """
        if not 2 <= len(displacement) <= 3:
            raise ValueError(f"a directive moves on x-y or x-y-z, got {len(displacement)} axes")
        moves: list[int] = []
        for value in displacement:
            bins = min(round(abs(float(value)) / metres_per_bin), MAX_BINS)
            moves += [int(math.copysign(1.0, value)) if bins else 0, int(bins)]
        return cls(*moves)

    def displacement(self, metres_per_bin: float) -> tuple[float, float, float]:
        """Cartesian displacement (m) the directive asks for, given the size of one bin."""
        return (self.dir_x * self.bins_x * metres_per_bin,
                self.dir_y * self.bins_y * metres_per_bin,
                self.dir_z * self.bins_z * metres_per_bin)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = dataclasses.asdict(self)
        out["gripper"] = self.gripper.value
        return out


@dataclasses.dataclass(frozen=True)
class Correction:
    """A correction in FailSafe form (7-DoF ee delta), Dream2Fix form (directive), or both."""

    kind: CorrectionKind = CorrectionKind.NONE
    ee_delta: tuple[float, ...] | None = None
    ee_frame: str = "base"
    directive: Directive | None = None

    @classmethod
    def close_gripper(cls, keyframe: int, max_gripper_width: float) -> Correction:
        """The Dream2Fix gripper fix in both forms: close at ``keyframe``.

        As a directive, and as a delta that shuts the fingers from fully open.
        """
        return cls(CorrectionKind.DIRECTIVE, (0.0,) * 6 + (-float(max_gripper_width),), "base",
                   Directive(gripper=GripperCommand.CLOSE, keyframe=keyframe))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; absent forms are omitted."""
        out: dict[str, Any] = {"kind": self.kind.value}
        if self.ee_delta is not None:
            out["ee_delta"] = [float(v) for v in self.ee_delta]
            out["ee_frame"] = self.ee_frame
        if self.directive is not None:
            out["directive"] = self.directive.to_dict()
        return out


NO_CORRECTION = Correction()


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """A verdict over a window of frames: what a model emits plus the runtime's context.

    Construct through :func:`validate` / :func:`parse_model_output` / :meth:`unknown` to get
    a checked instance; direct construction is for code that already holds valid values.
    """

    failed: bool
    failure_type: FailureType
    confidence: float
    stage: str = ""
    summary: str = ""
    correction: Correction = NO_CORRECTION
    # Context filled by the runtime, not by the model.
    episode_id: str = ""
    task: str = ""
    instruction: str = ""
    skill: str = ""
    stamp_ns: int = 0
    window_start_ns: int = 0
    window_frames: int = 0
    frame_id: str = ""
    model_name: str = ""
    latency_s: float = 0.0
    raw_output: str = ""
    error: str = ""

    @classmethod
    def unknown(cls, error: str, raw_output: str = "", **context: Any) -> Diagnosis:
        """The diagnosis for a model output that did not validate: no verdict, no correction."""
        return cls(failed=False, failure_type=FailureType.UNKNOWN, confidence=0.0,
                   summary="model output rejected", error=error or "unspecified error",
                   raw_output=raw_output, **context)

    @property
    def is_unknown(self) -> bool:
        """True when the model output was rejected."""
        return self.failure_type is FailureType.UNKNOWN

    def with_context(self, **context: Any) -> Diagnosis:
        """Copy with runtime context fields (episode, stamps, model, latency...) replaced."""
        bad = set(context) - set(CONTEXT_FIELDS)
        if bad:
            raise TypeError(f"not context fields: {sorted(bad)}")
        return dataclasses.replace(self, **context)

    def model_output(self) -> dict[str, Any]:
        """The part a model emits (and is trained to emit), as a JSON-ready dict."""
        return {
            "failed": self.failed,
            "failure_type": self.failure_type.value,
            "stage": self.stage,
            "confidence": float(self.confidence),
            "summary": self.summary,
            "correction": self.correction.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Full record (model output + context), JSON-ready."""
        out = self.model_output()
        out.update({name: getattr(self, name) for name in CONTEXT_FIELDS})
        return out

    def to_json(self, full: bool = False) -> str:
        """Compact JSON of the model output, or of the full record when ``full``."""
        return json.dumps(self.to_dict() if full else self.model_output(), allow_nan=False,
                          separators=(",", ":"))


CONTEXT_FIELDS = ("episode_id", "task", "instruction", "skill", "stamp_ns", "window_start_ns",
                  "window_frames", "frame_id", "model_name", "latency_s", "raw_output", "error")

_DIRECTIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["dir_x", "bins_x", "dir_y", "bins_y", "gripper", "keyframe"],
    "properties": {
        **{f"dir_{a}": {"type": "integer", "enum": [-1, 0, 1]} for a in "xyz"},
        **{f"bins_{a}": {"type": "integer", "minimum": 0, "maximum": MAX_BINS} for a in "xyz"},
        "gripper": {"type": "string", "enum": [g.value for g in GripperCommand]},
        "keyframe": {"type": "integer", "minimum": -1, "maximum": INT32_MAX},
    },
}

#: JSON schema of what a model emits; give it to constrained decoding as is.
MODEL_OUTPUT_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "FailureDiagnosis",
    "type": "object",
    "additionalProperties": False,
    "required": ["failed", "failure_type", "stage", "confidence", "summary", "correction"],
    "properties": {
        "failed": {"type": "boolean"},
        "failure_type": {"type": "string",
                         "enum": [FailureType.NONE.value] + [t.value for t in FAILURE_TYPES]},
        "stage": {"type": "string", "pattern": STAGE_PATTERN},
        "confidence": {"type": "number", "minimum": 0.0, "maximum": 1.0},
        "summary": {"type": "string", "maxLength": MAX_SUMMARY_CHARS},
        "correction": {
            "type": "object",
            "additionalProperties": False,
            "required": ["kind"],
            "properties": {
                "kind": {"type": "string", "enum": [k.value for k in CorrectionKind]},
                "ee_delta": {"type": "array", "items": {"type": "number"},
                             "minItems": 7, "maxItems": 7},
                "ee_frame": {"type": "string", "minLength": 1},
                "directive": _DIRECTIVE_SCHEMA,
            },
        },
    },
}

#: JSON schema of a full record (dataset rows, logs): model output plus context.
RECORD_SCHEMA: dict[str, Any] = {
    **MODEL_OUTPUT_SCHEMA,
    "title": "FailureDiagnosisRecord",
    "properties": {
        **MODEL_OUTPUT_SCHEMA["properties"],
        "failure_type": {"type": "string", "enum": [t.value for t in FailureType]},
        "episode_id": {"type": "string"},
        "task": {"type": "string"},
        "instruction": {"type": "string"},
        "skill": {"type": "string"},
        "stamp_ns": {"type": "integer", "minimum": 0, "maximum": MAX_STAMP_NS},
        "window_start_ns": {"type": "integer", "minimum": 0, "maximum": MAX_STAMP_NS},
        "window_frames": {"type": "integer", "minimum": 0, "maximum": UINT32_MAX},
        "frame_id": {"type": "string"},
        "model_name": {"type": "string"},
        "latency_s": {"type": "number", "minimum": 0.0},
        "raw_output": {"type": "string"},
        "error": {"type": "string"},
    },
}

_MODEL_VALIDATOR = jsonschema.Draft7Validator(MODEL_OUTPUT_SCHEMA)
_RECORD_VALIDATOR = jsonschema.Draft7Validator(RECORD_SCHEMA)


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


def _value_problems(value: Any, path: str = "") -> list[str]:
    """NaN/inf floats and strings that are not encodable UTF-8 (lone surrogates), by path.

    Only called on data that passed the JSON schema, which bounds the nesting depth.
    """
    where = path or "<root>"
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}: must be finite, got {value}"]
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [f"{where}: not valid UTF-8 text"]
        return []
    if isinstance(value, Mapping):
        return [p for k, v in value.items()
                for p in _value_problems(v, f"{path}.{k}" if path else k)]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _value_problems(v, f"{path}[{i}]")]
    return []


def _semantic_problems(data: Mapping[str, Any]) -> list[str]:
    """Cross-field rules JSON schema cannot express."""
    problems = []
    if not re.fullmatch(STAGE_PATTERN, data["stage"]):  # the schema's "$" admits a final \n
        problems.append(f"stage: {data['stage']!r} is not a lower_snake_case name")
    failed, ftype = data["failed"], data["failure_type"]
    correction = data["correction"]
    kind = correction["kind"]
    if ftype == FailureType.UNKNOWN.value:
        if failed or kind != CorrectionKind.NONE.value:
            problems.append("failure_type 'unknown' must have failed=false and no correction")
        if not data.get("error"):
            problems.append("failure_type 'unknown' requires a non-empty error")
    elif failed and ftype == FailureType.NONE.value:
        problems.append("failed=true requires a failure_type other than 'none'")
    elif not failed and ftype != FailureType.NONE.value:
        problems.append(f"failed=false requires failure_type 'none', got {ftype!r}")
    if not failed and kind != CorrectionKind.NONE.value:
        problems.append(f"failed=false requires correction kind 'none', got {kind!r}")
    if kind == CorrectionKind.EE_DELTA.value and "ee_delta" not in correction:
        problems.append("correction kind 'ee_delta' requires correction.ee_delta")
    if kind == CorrectionKind.DIRECTIVE.value and "directive" not in correction:
        problems.append("correction kind 'directive' requires correction.directive")
    delta = correction.get("ee_delta")
    if delta is not None:
        for i, (name, value) in enumerate(zip(EE_DELTA_FIELDS, delta, strict=True)):
            bound = MAX_TRANSLATION_M if i < 3 else MAX_ROTATION_RAD if i < 6 else 1.0
            if abs(value) > bound:
                problems.append(f"correction.ee_delta[{i}] ({name}) = {value} exceeds +-{bound}")
    directive = correction.get("directive")
    if directive is not None:
        for a in "xyz":
            d, n = directive.get(f"dir_{a}", 0), directive.get(f"bins_{a}", 0)
            if (d == 0) != (n == 0):
                problems.append(f"correction.directive: dir_{a}={d} and bins_{a}={n} must both "
                                "be zero or both non-zero")
        has_gripper = directive["gripper"] != GripperCommand.NONE.value
        if has_gripper and directive["keyframe"] < 0:
            problems.append("correction.directive: a gripper command needs keyframe >= 0")
        if not has_gripper and directive["keyframe"] >= 0:
            problems.append("correction.directive: keyframe given without a gripper command")
    return problems


def validate(data: Any, record: bool = False) -> Diagnosis:
    """Check a decoded JSON value and build the Diagnosis, or raise SchemaError listing why.

    ``record`` accepts the full record (context fields and ``unknown``) instead of a bare
    model output.
    """
    if not isinstance(data, Mapping):
        raise SchemaError([f"<root>: expected a JSON object, got {type(data).__name__}"])
    validator = _RECORD_VALIDATOR if record else _MODEL_VALIDATOR
    problems = [f"{_path(e)}: {e.message}"
                for e in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))]
    if problems:
        raise SchemaError(problems)
    problems = _value_problems(data) or _semantic_problems(data)
    if problems:
        raise SchemaError(problems)
    c = data["correction"]
    directive = None
    if "directive" in c:
        d = c["directive"]
        directive = Directive(**{k: int(v) for k, v in d.items() if k != "gripper"},
                              gripper=GripperCommand(d["gripper"]))
    correction = Correction(
        kind=CorrectionKind(c["kind"]),
        ee_delta=tuple(float(v) for v in c["ee_delta"]) if "ee_delta" in c else None,
        ee_frame=c.get("ee_frame", "base"),
        directive=directive)
    context = {name: data[name] for name in CONTEXT_FIELDS if name in data} if record else {}
    return Diagnosis(failed=data["failed"], failure_type=parse_failure_type(data["failure_type"]),
                     confidence=float(data["confidence"]), stage=data["stage"],
                     summary=data["summary"], correction=correction, **context)


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not valid JSON")


def check_output_length(text: str) -> None:
    """Refuse model text too long to parse safely (SchemaError), before any regex touches it."""
    if len(text) > MAX_OUTPUT_CHARS:
        raise SchemaError([f"<root>: {len(text)} characters exceed {MAX_OUTPUT_CHARS}"])


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_model_output(text: str, lenient: bool = False, record: bool = False) -> Diagnosis:
    """Parse and validate model text. Strict: the text must be one JSON object.

    ``lenient`` also accepts a Markdown code fence or prose around the first JSON object,
    which chat models often add even when asked not to. Raises SchemaError.
    """
    if not isinstance(text, str):
        raise SchemaError([f"<root>: expected text, got {type(text).__name__}"])
    check_output_length(text)
    candidate = text
    if lenient:
        fenced = _FENCE.match(text)
        candidate = fenced.group(1) if fenced else _first_json_object(text)
    try:
        data = json.loads(candidate, parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError) as exc:
        snippet = text[:80] + ("..." if len(text) > 80 else "")
        raise SchemaError([f"<root>: not valid JSON ({exc}); text starts {snippet!r}"]) from None
    return validate(data, record=record)


def _first_json_object(text: str) -> str:
    """The first balanced {...} in text (string-literal aware), or the text itself."""
    start = text.find("{")
    if start < 0:
        return text
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return text[start:]


def diagnose_from_text(text: str, lenient: bool = True, **context: Any) -> Diagnosis:
    """Model text to Diagnosis for the runtime: anything invalid becomes ``unknown`` with why.

    Never raises on bad model output, so a node can publish (and count) the rejection.
    """
    return diagnose_with(lambda: parse_model_output(text, lenient=lenient), text, **context)


def diagnose_with(parse: Callable[[], Diagnosis], text: str, **context: Any) -> Diagnosis:
    """Run ``parse``; any failure becomes an ``unknown`` diagnosis carrying the reason.

    The catch-all is deliberate: whatever a model emits, the runtime must publish a verdict
    rather than die, and an unexpected parser error is reported with its type.
    """
    try:
        diagnosis = parse()
    except SchemaError as exc:
        return Diagnosis.unknown(str(exc), raw_output=text, **context)
    except Exception as exc:  # noqa: BLE001 - see docstring
        return Diagnosis.unknown(f"parser error {type(exc).__name__}: {exc}", raw_output=text,
                                 **context)
    return diagnosis.with_context(raw_output=text, **context)
