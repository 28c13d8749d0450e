"""Action streams of a demonstration, gripper keyframes, and Dream2Fix's keyframe operators.

Dream2Fix perturbs the *actions* a world model is conditioned on, in a window
W_k = [k - w, k + w] around a gripper keyframe k ("the timestep at which the gripper
transitions between open and close states"), DIGEST section 1.1:

- ``delay_close``: g'_t = g_{t - delta} on W_k (the close comes delta steps late);
- ``weak_close``: g'_t = alpha * g_t (a softer closure); a Franka grasp sets its force once,
  so the weaker command holds until the gripper next opens;
- ``force_open``: g'_t = open from the start of W_k until the gripper next opens ("fails to
  close entirely ..., remaining open"); only on W_k the gripper would close at k + w, which is
  a ``delay_close`` of w and looks the same in every frame;
- ``translation``: (x'_t, y'_t) = (x_t, y_t) + eps, eps ~ N(0, sigma^2 I2) drawn once per
  sample, on W_k (approach, contact, close), faded in and out so the arm is not asked to jump.

The gripper channel is a closure command c in [0, 1]: 0 is open, c > 0 closes with c times
the nominal grasp force. ROS-free and pure numpy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

OPERATORS = ("delay_close", "weak_close", "force_open", "translation")


@dataclasses.dataclass(frozen=True)
class ActionStream:
    """Per-step commands at a fixed rate: joint targets, the TCP pose they reach, closure.

    ``tcp`` is (T, 7) x, y, z, qw, qx, qy, qz. ``moved`` marks steps whose TCP pose was edited
    after ``arm_q`` was recorded, so a world model must solve IK for them.
    """

    times: np.ndarray
    arm_q: np.ndarray
    tcp: np.ndarray
    closure: np.ndarray
    moved: np.ndarray

    @classmethod
    def from_states(cls, times, arm_q, tcp, closure) -> ActionStream:
        """Actions that replay a recorded state sequence (each step commands the next state)."""
        times = np.asarray(times, dtype=float)
        arm_q, tcp = np.asarray(arm_q, dtype=float), np.asarray(tcp, dtype=float)
        closure = np.asarray(closure, dtype=float)
        n = len(times)
        if not (arm_q.shape[0] == tcp.shape[0] == closure.shape[0] == n) or n < 2:
            raise ValueError("times, arm_q, tcp and closure need the same length >= 2")
        if not (np.all(np.isfinite(arm_q)) and np.all(np.isfinite(tcp))
                and np.all(np.isfinite(closure))):
            raise ValueError("action stream holds NaN or inf")
        if np.any(np.diff(times) <= 0):
            raise ValueError("action stream times must increase")
        return cls(times, arm_q, tcp, np.clip(closure, 0.0, 1.0), np.zeros(n, dtype=bool))

    def __len__(self) -> int:
        return len(self.times)

    @property
    def dt(self) -> float:
        """Median step period in seconds."""
        return float(np.median(np.diff(self.times)))

    def replace(self, **changes) -> ActionStream:
        """Copy with fields replaced."""
        return dataclasses.replace(self, **changes)


def closure_from_width(width: np.ndarray, *, rate_threshold: float = 0.002,
                       settle: int = 2) -> np.ndarray:
    """Closure command (0 open / 1 closed) inferred from measured gripper width.

    A close starts where the width falls by more than ``rate_threshold`` per step while open,
    an open where it rises by as much while closed; ``settle`` steps after a transition are
    ignored so finger ringing does not toggle the state.
    """
    width = np.asarray(width, dtype=float)
    closure = np.zeros(len(width))
    state, hold = 0.0, 0
    for t in range(len(width) - 1):
        step = width[t + 1] - width[t]
        if hold:
            hold -= 1
        elif state == 0.0 and step < -rate_threshold:
            state, hold = 1.0, settle
        elif state == 1.0 and step > rate_threshold:
            state, hold = 0.0, settle
        closure[t] = state
    closure[-1] = state
    return closure


def keyframes(closure: np.ndarray) -> list[tuple[int, str]]:
    """Indices where the closure command switches, with 'close' or 'open'."""
    closed = np.asarray(closure) > 0
    out = []
    for t in np.flatnonzero(closed[1:] != closed[:-1]) + 1:
        out.append((int(t), "close" if closed[t] else "open"))
    return out


def window(k: int, half_width: int, length: int) -> tuple[int, int]:
    """W_k = [k - w, k + w] clipped to the stream, as a half-open range."""
    return max(0, k - half_width), min(length, k + half_width + 1)


def delay_close(stream: ActionStream, k: int, half_width: int, delay: int) -> ActionStream:
    """g'_t = g_{t - delay} on W_k."""
    if delay <= 0:
        raise ValueError(f"delay must be positive, got {delay}")
    lo, hi = window(k, half_width, len(stream))
    closure = stream.closure.copy()
    source = np.clip(np.arange(lo, hi) - delay, 0, None)
    closure[lo:hi] = stream.closure[source]
    return stream.replace(closure=closure)


def weak_close(stream: ActionStream, k: int, half_width: int, scale: float) -> ActionStream:
    """g'_t = scale * g_t from the start of W_k until the gripper next opens."""
    if not 0 < scale < 1:
        raise ValueError(f"scale must be in (0, 1), got {scale}")
    lo, end = _grasp_span(stream.closure, k, half_width)
    closure = stream.closure.copy()
    closure[lo:end] *= scale
    return stream.replace(closure=closure)


def force_open(stream: ActionStream, k: int, half_width: int) -> ActionStream:
    """g'_t = open from the start of W_k until the gripper next opens."""
    lo, end = _grasp_span(stream.closure, k, half_width)
    closure = stream.closure.copy()
    closure[lo:end] = 0.0
    return stream.replace(closure=closure)


def _grasp_span(closure: np.ndarray, k: int, half_width: int) -> tuple[int, int]:
    """From the start of W_k to the end of the grasp that closes at ``k`` (half-open)."""
    lo, _ = window(k, half_width, len(closure))
    end = lo
    while end < len(closure) and (end <= k or closure[end] > 0):
        end += 1
    return lo, end


def translation(stream: ActionStream, k: int, half_width: int, offset_xy,
                ramp: int = 3) -> ActionStream:
    """(x, y) + offset on W_k, faded in over ``ramp`` steps before it and out after it.

    The offset is held through the approach, the contact and the close, so the gripper closes
    displaced; the fades keep the commanded motion continuous instead of teleporting the arm.
    """
    offset = np.asarray(offset_xy, dtype=float)
    if offset.shape != (2,) or not np.all(np.isfinite(offset)):
        raise ValueError(f"offset must be two finite numbers, got {offset_xy!r}")
    n = len(stream)
    lo, hi = window(k, half_width, n)
    t = np.arange(n, dtype=float)
    weight = np.zeros(n)
    weight[lo:hi] = 1.0
    if ramp > 0:
        before = (t >= lo - ramp) & (t < lo)
        weight[before] = 0.5 - 0.5 * np.cos(np.pi * (t[before] - (lo - ramp)) / ramp)
        after = (t >= hi) & (t < hi + ramp)
        weight[after] = 0.5 + 0.5 * np.cos(np.pi * (t[after] - hi + 1) / (ramp + 1))
    tcp = stream.tcp.copy()
    tcp[:, :2] += weight[:, None] * offset[None, :]
    return stream.replace(tcp=tcp, moved=stream.moved | (weight > 0))


def apply(stream: ActionStream, operator: str, k: int, half_width: int,
          **parameters) -> ActionStream:
    """Apply one named operator with its parameters (see module docstring)."""
    if operator == "delay_close":
        return delay_close(stream, k, half_width, int(parameters["delay"]))
    if operator == "weak_close":
        return weak_close(stream, k, half_width, float(parameters["scale"]))
    if operator == "force_open":
        return force_open(stream, k, half_width)
    if operator == "translation":
        return translation(stream, k, half_width, parameters["offset"],
                           int(parameters.get("ramp", 3)))
    raise ValueError(f"unknown operator {operator!r}; expected one of {OPERATORS}")
