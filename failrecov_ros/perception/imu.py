"""D435i gyro and accelerometer samples, and uniting them into one IMU stream.

The two sensors run at different rates (gyro 200/400 Hz, accel 63/250 Hz), while a
``sensor_msgs/Imu`` carries both. realsense-ros ``unite_imu_method``: 0 publishes each stream on
its own, 1 (copy) pairs every gyro sample with the latest accel sample, 2 (linear_interpolation)
pairs every gyro sample with the accel interpolated at its time (so it waits for the next accel).
"""

from __future__ import annotations

import dataclasses

UNITE_METHODS = {0: "none", 1: "copy", 2: "linear_interpolation"}
_MAX_PENDING = 200  # gyro samples waiting for an accel sample (1 s at 200 Hz)


@dataclasses.dataclass(frozen=True)
class MotionSample:
    """One gyro (rad/s) or accel (m/s^2) sample in the sensor's optical axes."""

    stream: str
    timestamp_ms: float
    domain: str
    xyz: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class ImuSample:
    """A gyro sample with the accel sample that goes with it."""

    timestamp_ms: float
    domain: str
    angular_velocity: tuple[float, float, float]
    linear_acceleration: tuple[float, float, float]


class ImuUniter:
    """Feeds motion samples in arrival order; gives united samples as they become complete."""

    def __init__(self, method: int) -> None:
        if method not in (1, 2):
            raise ValueError(f"unite_imu_method must be 1 (copy) or 2 (linear_interpolation) "
                             f"to unite, got {method}")
        self.method = method
        self._accel: MotionSample | None = None
        self._pending: list[MotionSample] = []

    def add(self, sample: MotionSample) -> list[ImuSample]:
        """United samples completed by ``sample`` (possibly none)."""
        if sample.stream == "gyro":
            if self.method == 1:
                return [] if self._accel is None else [self._unite(sample, self._accel.xyz)]
            self._pending = [*self._pending, sample][-_MAX_PENDING:]
            return []
        if sample.stream != "accel":
            raise ValueError(f"not a motion stream: {sample.stream!r}")
        previous, self._accel = self._accel, sample
        if self.method == 1 or previous is None:
            self._pending = [g for g in self._pending if g.timestamp_ms > sample.timestamp_ms]
            return []
        united, waiting = [], []
        for gyro in self._pending:
            if gyro.timestamp_ms > sample.timestamp_ms:
                waiting.append(gyro)
            elif gyro.timestamp_ms >= previous.timestamp_ms:
                united.append(self._unite(gyro, _interpolate(previous, sample, gyro.timestamp_ms)))
        self._pending = waiting
        return united

    @staticmethod
    def _unite(gyro: MotionSample, accel: tuple[float, float, float]) -> ImuSample:
        return ImuSample(gyro.timestamp_ms, gyro.domain, gyro.xyz, accel)


def _interpolate(a: MotionSample, b: MotionSample, t_ms: float) -> tuple[float, float, float]:
    span = b.timestamp_ms - a.timestamp_ms
    w = 0.0 if span <= 0 else (t_ms - a.timestamp_ms) / span
    return tuple(float(x + w * (y - x)) for x, y in zip(a.xyz, b.xyz, strict=True))
