"""Joint limits as one typed table.

The simulator, the trajectory checks and the safety gate read the same numbers for a robot.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class JointLimit:
    """Position (rad or m), velocity (/s), acceleration (/s^2) and effort bounds of a joint."""

    name: str
    lower: float
    upper: float
    velocity: float
    acceleration: float = math.inf
    effort: float = math.inf

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("joint limit needs a name")
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)) or self.lower > self.upper:
            raise ValueError(f"{self.name}: bad position range [{self.lower}, {self.upper}]")
        for field in ("velocity", "acceleration", "effort"):
            value = getattr(self, field)
            if math.isnan(value) or value <= 0:
                raise ValueError(f"{self.name}: {field} limit must be positive, got {value}")

    def contains(self, position: float, margin: float = 0.0) -> bool:
        """True when ``position`` lies within the range shrunk by ``margin`` on both sides."""
        return self.lower + margin <= position <= self.upper - margin


@dataclasses.dataclass(frozen=True)
class JointLimits:
    """Ordered limits of a kinematic chain; lookups by name, vector views in that order."""

    joints: tuple[JointLimit, ...]

    def __post_init__(self) -> None:
        names = [j.name for j in self.joints]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate joint names in {names}")

    @classmethod
    def of(cls, joints: Iterable[JointLimit]) -> JointLimits:
        """Limits from any iterable of JointLimit, in order."""
        return cls(tuple(joints))

    @property
    def names(self) -> tuple[str, ...]:
        """Joint names in order."""
        return tuple(j.name for j in self.joints)

    @property
    def lower(self) -> np.ndarray:
        """Lower position bounds in joint order."""
        return np.array([j.lower for j in self.joints])

    @property
    def upper(self) -> np.ndarray:
        """Upper position bounds in joint order."""
        return np.array([j.upper for j in self.joints])

    @property
    def velocity(self) -> np.ndarray:
        """Velocity bounds in joint order."""
        return np.array([j.velocity for j in self.joints])

    @property
    def acceleration(self) -> np.ndarray:
        """Acceleration bounds in joint order."""
        return np.array([j.acceleration for j in self.joints])

    def __len__(self) -> int:
        return len(self.joints)

    def __contains__(self, name: object) -> bool:
        return any(j.name == name for j in self.joints)

    def __getitem__(self, name: str) -> JointLimit:
        for joint in self.joints:
            if joint.name == name:
                return joint
        raise KeyError(f"unknown joint {name!r}; known: {', '.join(self.names)}")

    def subset(self, names: Sequence[str]) -> JointLimits:
        """The limits of ``names`` in that order (KeyError names the first unknown joint)."""
        return JointLimits(tuple(self[n] for n in names))

    def clip(self, positions: Sequence[float], margin: float = 0.0) -> np.ndarray:
        """Positions clamped into the ranges shrunk by ``margin``."""
        return np.clip(np.asarray(positions, float), self.lower + margin, self.upper - margin)

    def position_violations(self, positions: Sequence[float], margin: float = 0.0) -> list[str]:
        """One human-readable line per joint outside its range (empty when all are inside)."""
        problems = []
        for joint, value in zip(self.joints, positions, strict=True):
            if not math.isfinite(value):
                problems.append(f"{joint.name}: position {value} is not finite")
            elif not joint.contains(value, margin):
                problems.append(
                    f"{joint.name}: position {value:.4f} outside "
                    f"[{joint.lower + margin:.4f}, {joint.upper - margin:.4f}]"
                )
        return problems
