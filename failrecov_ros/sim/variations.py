"""Environment variations (RoboMD's catalogue): discrete factors, each with a nominal value.

A variation is a mapping factor -> value; the nominal variation leaves every factor at its
first value. Factors are discrete so the RL failure-mode search can pick them as actions, and
every episode records the variation it ran under.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from failrecov_ros.sim.scene import COLORS

#: factor -> allowed values; the first value is the nominal one.
DEFAULT_CATALOGUE: dict[str, tuple[Any, ...]] = {
    "target_color": ("red", "green", "blue", "yellow", "orange", "purple"),
    "other_color": ("blue", "green", "yellow", "orange", "purple", "red"),
    "cube_size": (0.04, 0.035, 0.05, 0.03),
    "table_color": ("wood", "white", "gray", "brown", "black"),
    "table_size": ((1.2, 1.2), (0.9, 0.9), (1.6, 1.4)),
    "robot_color": ("white", "gray", "black"),
    "light": ("default", "dim", "bright", "side"),
    "camera_jitter_m": (0.0, 0.02, 0.05),
    "object_pose_spread": (1.0, 1.5, 2.0),
    "object_friction": (1.0, 0.6, 0.3),
}
LIGHTS = {
    "default": ((-0.3, 0.2, -1.0), 0.7, 0.3),
    "dim": ((-0.3, 0.2, -1.0), 0.25, 0.12),
    "bright": ((0.0, 0.0, -1.0), 1.0, 0.45),
    "side": ((-1.0, 0.6, -0.4), 0.8, 0.2),
}


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """The factors a run may vary, each with its allowed values (first = nominal)."""

    factors: Mapping[str, tuple[Any, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_CATALOGUE))

    def __post_init__(self) -> None:
        for name, values in self.factors.items():
            if name not in DEFAULT_CATALOGUE:
                raise ValueError(f"unknown variation factor {name!r}; "
                                 f"known: {', '.join(DEFAULT_CATALOGUE)}")
            if not values:
                raise ValueError(f"variation factor {name!r} has no values")
            for value in values:
                _check_value(name, value)

    @classmethod
    def from_yaml(cls, path: str) -> Catalogue:
        """A catalogue from ``factors: {name: [values]}`` in a YAML file (first = nominal)."""
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream) or {}
        factors = data.get("factors", data)
        if not isinstance(factors, dict):
            raise ValueError(f"{path}: expected a mapping of factor -> list of values")
        return cls({k: tuple(tuple(v) if isinstance(v, list) else v for v in values)
                    for k, values in factors.items()})

    def nominal(self) -> dict[str, Any]:
        """Every factor at its nominal (first) value."""
        return {name: DEFAULT_CATALOGUE[name][0] for name in DEFAULT_CATALOGUE} | {
            name: values[0] for name, values in self.factors.items()}

    def sample(self, rng: np.random.Generator, factors: tuple[str, ...] | None = None) -> dict:
        """Nominal values except ``factors`` (default: all), each drawn uniformly."""
        variation = self.nominal()
        for name in factors if factors is not None else tuple(self.factors):
            values = self.factors[name]
            variation[name] = values[int(rng.integers(len(values)))]
        return variation

    def actions(self) -> list[tuple[str, Any]]:
        """Every (factor, non-nominal value) pair: the action space of a failure-mode search."""
        return [(name, value) for name, values in self.factors.items() for value in values[1:]]


def _check_value(name: str, value: Any) -> None:
    ok = {
        "target_color": lambda v: v in COLORS, "other_color": lambda v: v in COLORS,
        "table_color": lambda v: v in COLORS, "robot_color": lambda v: v in COLORS,
        "cube_size": lambda v: 0.02 <= float(v) <= 0.06,
        "table_size": lambda v: len(v) == 2 and all(0.6 <= float(x) <= 2.5 for x in v),
        "light": lambda v: v in LIGHTS,
        "camera_jitter_m": lambda v: 0.0 <= float(v) <= 0.2,
        "object_pose_spread": lambda v: 0.0 <= float(v) <= 3.0,
        "object_friction": lambda v: 0.05 <= float(v) <= 2.0,
    }[name]
    try:
        valid = ok(value)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"variation factor {name!r}: invalid value {value!r}")


def validate(variation: Mapping[str, Any]) -> dict[str, Any]:
    """A complete variation (missing factors nominal); raises on unknown factors or values."""
    full = Catalogue().nominal()
    for name, value in variation.items():
        if name not in DEFAULT_CATALOGUE:
            raise ValueError(f"unknown variation factor {name!r}")
        _check_value(name, value)
        full[name] = tuple(value) if isinstance(value, list) else value
    return full
