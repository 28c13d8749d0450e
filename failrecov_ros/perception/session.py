"""Keeping a camera streaming: connect, notice a stall, restart, retry; never stall silently.

States: ``connecting`` (no camera open; an attempt every ``reconnect_timeout`` seconds),
``streaming``, ``stalled`` (open, but no frameset for ``frame_timeout`` seconds: a warning), and
``failed`` (gave up: no device within ``wait_for_device_timeout``, or a request the device can
never satisfy). Unplugging and plugging in are noticed at once through ``DeviceEvents`` (fed by
librealsense's devices-changed callback): the camera is closed the moment its device goes, and
opened the moment it comes back instead of at the next attempt. A stall that lasts another
``reconnect_timeout`` still closes the camera and reconnects: that covers a device that hangs
without leaving the bus and a recording that ended. Time and sleeping are injected, so the whole
machine runs under a fake clock in tests.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
import time
from collections.abc import Callable, Iterable

from failrecov_ros.perception.realsense import Capture


class State(enum.Enum):
    """Where the session is."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """Timeouts in seconds, named after realsense-ros's parameters."""

    frame_timeout: float = 1.0
    reconnect_timeout: float = 6.0
    wait_for_device_timeout: float = -1.0  # < 0: wait for ever
    read_timeout: float = 0.1  # longest a single read blocks (how quickly a stop is seen)

    def __post_init__(self) -> None:
        values = (self.frame_timeout, self.reconnect_timeout, self.read_timeout)
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"frame_timeout, reconnect_timeout and read_timeout must be "
                             f"positive, got {values}")


Logger = Callable[[str, str], None]  # (level: info | warn | error, message)


class DeviceEvents:
    """Devices unplugged and plugged in, handed from librealsense's thread to the capture thread.

    ``serial_no`` is the device the session wants ('' = any): only its arrival is worth
    connecting for. Removals are kept by serial number; the session knows which one it has open.
    """

    def __init__(self, serial_no: str = "") -> None:
        self.serial_no = serial_no
        self._lock = threading.Lock()
        self._removed: set[str] = set()
        self._arrived = False

    def notify(self, removed: Iterable[str] = (), added: Iterable[str] = ()) -> None:
        """Called from librealsense's devices-changed callback (its own thread)."""
        added = list(added)
        with self._lock:
            self._removed.update(removed)
            if any(not self.serial_no or serial == self.serial_no for serial in added):
                self._arrived = True

    def take(self) -> tuple[frozenset[str], bool]:
        """Serial numbers removed and whether the wanted device arrived, since the last take."""
        with self._lock:
            removed, arrived = frozenset(self._removed), self._arrived
            self._removed.clear()
            self._arrived = False
        return removed, arrived


class CameraSession:
    """Drives one camera through its states; ``poll()`` from a single capture thread."""

    def __init__(self, open_camera: Callable[[], object], config: SessionConfig,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep,
                 log: Logger = lambda level, message: None,
                 events: DeviceEvents | None = None) -> None:
        self._open = open_camera
        self._events = events
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._log = log
        self.state = State.CONNECTING
        self.camera = None
        self.connections = 0  # successful opens; more than one means it reconnected
        self.last_error = ""
        self._started = clock()
        self._next_attempt = self._started
        self._last_frame = self._started

    @property
    def reconnects(self) -> int:
        """How many times the camera was opened again after the first time."""
        return max(0, self.connections - 1)

    def poll(self) -> Capture | None:
        """One step: connect if due, else read; a capture when one came, None otherwise."""
        if self.state is State.FAILED:
            return None
        if self._events is not None:
            self._device_events()
        if self.camera is None:
            self._connect()
            return None
        try:
            capture = self.camera.read(self.config.read_timeout)
        except Exception as error:  # noqa: BLE001 - any driver error means: reopen
            self._restart(f"camera error: {error}", now=self._clock())
            return None
        now = self._clock()
        if capture is not None and capture.rgbd is not None:
            if self.state is State.STALLED:
                self._log("info", f"frames resumed after {now - self._last_frame:.1f} s")
            self.state = State.STREAMING
            self._last_frame = now
            return capture
        silent = now - self._last_frame
        if self.state is State.STREAMING and silent >= self.config.frame_timeout:
            self.state = State.STALLED
            self._log("warn", f"no frame for {silent:.1f} s (frame_timeout "
                              f"{self.config.frame_timeout} s); restarting the camera if none "
                              f"comes within reconnect_timeout {self.config.reconnect_timeout} s")
        elif (self.state is State.STALLED
              and silent >= self.config.frame_timeout + self.config.reconnect_timeout):
            self._restart(f"no frame for {silent:.1f} s", now)
        return capture

    def _device_events(self) -> None:
        removed, arrived = self._events.take()
        serial = getattr(getattr(self.camera, "info", None), "serial", None)
        if self.camera is not None and serial in removed:
            # Reading on would only time out: frame_timeout + reconnect_timeout lost for nothing.
            self._restart(f"device {serial} was unplugged", self._clock())
        elif arrived and self.camera is None and self.state is State.CONNECTING:
            if self._next_attempt > self._clock():
                self._log("info", "device plugged in: connecting now")
            self._next_attempt = self._clock()

    def _connect(self) -> None:
        now = self._clock()
        if now < self._next_attempt:
            self._sleep(min(self._next_attempt - now, self.config.read_timeout))
            return
        try:
            camera = self._open()
        except ValueError as error:  # a request no retry can satisfy
            self._fail(f"cannot stream: {error}")
            return
        except Exception as error:  # noqa: BLE001 - no device, busy, unreadable: retry
            self.last_error = str(error)
            now = self._clock()
            wait = self.config.wait_for_device_timeout
            if self.connections == 0 and 0 <= wait <= now - self._started:
                self._fail(f"{error}; gave up after wait_for_device_timeout {wait} s")
                return
            self._next_attempt = now + self.config.reconnect_timeout
            sooner = " (or as soon as it is plugged in)" if self._events is not None else ""
            self._log("error", f"{error}; retrying in {self.config.reconnect_timeout} s{sooner}")
            return
        self.camera = camera
        self.connections += 1
        self.state = State.STREAMING
        self._last_frame = self._clock()
        info = getattr(camera, "info", None)
        source = f"{info.name} {info.serial}" if info is not None else "camera"
        self._log("info", f"streaming from {source}"
                          + (f" (reconnect {self.reconnects})" if self.reconnects else ""))

    def reset(self) -> None:
        """realsense-ros ``hw_reset``: reset the device and reconnect (a recording restarts)."""
        if self.state is State.FAILED:
            return
        if self.camera is not None:
            self.camera.hardware_reset()
        self._log("info", "hw_reset: restarting the camera")
        self.close()
        self.state = State.CONNECTING
        self._next_attempt = self._clock()

    def _restart(self, reason: str, now: float) -> None:
        self.last_error = reason
        self._log("error", f"{reason}: restarting the camera")
        self.close()
        self.state = State.CONNECTING
        self._next_attempt = now

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        self.state = State.FAILED
        self._log("error", reason)

    def close(self) -> None:
        """Stop the camera if one is open."""
        camera, self.camera = self.camera, None
        if camera is not None:
            camera.close()

    def level(self) -> str:
        """Diagnostic level of the current state: ``ok``, ``warn`` or ``error``."""
        if self.state is State.STREAMING:
            return "ok"
        if self.state is State.STALLED or (self.state is State.CONNECTING
                                           and not self.last_error):
            return "warn"
        return "error"
