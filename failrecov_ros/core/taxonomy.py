"""The unified failure taxonomy shared by every data source, model and metric.

It is the union of FailSafe (translation/rotation per axis, no-op stalls), Dream2Fix
(delay_close, weak_close, force_open, x-y translation) and the FailSafe article (early
release, slip), plus ``other``; ``none`` labels a success and ``unknown`` a model output that
did not validate (see DIGEST section 6.1).
"""

from __future__ import annotations

import enum


class FailureType(str, enum.Enum):
    """Leaf failure types; the value is the wire string used in messages and JSON."""

    NONE = "none"
    TRANSLATION_X = "translation_x"
    TRANSLATION_Y = "translation_y"
    TRANSLATION_Z = "translation_z"
    ROTATION_ROLL = "rotation_roll"
    ROTATION_PITCH = "rotation_pitch"
    ROTATION_YAW = "rotation_yaw"
    STALL = "stall"
    DELAY_CLOSE = "delay_close"
    WEAK_CLOSE = "weak_close"
    FORCE_OPEN = "force_open"
    EARLY_RELEASE = "early_release"
    SLIP = "slip"
    OTHER = "other"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


class Family(str, enum.Enum):
    """Coarse grouping used by metrics that score the type without its axis."""

    NONE = "none"
    TRANSLATION = "translation"
    ROTATION = "rotation"
    STALL = "stall"
    GRIPPER = "gripper"
    GRASP_LOSS = "grasp_loss"
    OTHER = "other"
    UNKNOWN = "unknown"


_FAMILY = {
    FailureType.NONE: Family.NONE,
    FailureType.TRANSLATION_X: Family.TRANSLATION,
    FailureType.TRANSLATION_Y: Family.TRANSLATION,
    FailureType.TRANSLATION_Z: Family.TRANSLATION,
    FailureType.ROTATION_ROLL: Family.ROTATION,
    FailureType.ROTATION_PITCH: Family.ROTATION,
    FailureType.ROTATION_YAW: Family.ROTATION,
    FailureType.STALL: Family.STALL,
    FailureType.DELAY_CLOSE: Family.GRIPPER,
    FailureType.WEAK_CLOSE: Family.GRIPPER,
    FailureType.FORCE_OPEN: Family.GRIPPER,
    FailureType.EARLY_RELEASE: Family.GRIPPER,
    FailureType.SLIP: Family.GRASP_LOSS,
    FailureType.OTHER: Family.OTHER,
    FailureType.UNKNOWN: Family.UNKNOWN,
}

_AXIS = {
    FailureType.TRANSLATION_X: "x",
    FailureType.TRANSLATION_Y: "y",
    FailureType.TRANSLATION_Z: "z",
    FailureType.ROTATION_ROLL: "roll",
    FailureType.ROTATION_PITCH: "pitch",
    FailureType.ROTATION_YAW: "yaw",
}

#: Types a model may predict for a failed window (everything but the two bookkeeping values).
FAILURE_TYPES = tuple(t for t in FailureType if t not in (FailureType.NONE, FailureType.UNKNOWN))

#: Types whose correction is a gripper command at a keyframe (Dream2Fix gripper modes).
GRIPPER_TYPES = frozenset(
    {FailureType.DELAY_CLOSE, FailureType.WEAK_CLOSE, FailureType.FORCE_OPEN,
     FailureType.EARLY_RELEASE})

#: Stage names used by our skills and the papers' labels; free-form stages are allowed too.
KNOWN_STAGES = (
    "approach", "pre_grasp", "grasp", "keyframe", "lift", "transport", "place", "release",
    "push", "retreat", "home",
)


def parse_failure_type(value: str | FailureType) -> FailureType:
    """Return the taxonomy member for ``value``, raising ValueError listing the valid ones."""
    if isinstance(value, FailureType):
        return value
    try:
        return FailureType(value)
    except ValueError:
        valid = ", ".join(t.value for t in FailureType)
        raise ValueError(f"unknown failure type {value!r}; expected one of: {valid}") from None


def family(failure_type: str | FailureType) -> Family:
    """Coarse family of a failure type (translation, rotation, gripper, ...)."""
    return _FAMILY[parse_failure_type(failure_type)]


def axis(failure_type: str | FailureType) -> str:
    """Axis of a translation/rotation type (x, y, z, roll, pitch, yaw), else ''."""
    return _AXIS.get(parse_failure_type(failure_type), "")
