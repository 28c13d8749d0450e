"""Recorded demonstrations in, generated episodes out, as rosbag2 (MCAP or sqlite3).

Uses the pure-Python ``rosbags`` library, so the data engine needs no ROS install to read what
``ros2 bag record`` wrote on the robot (Humble or Jazzy) or to write bags ``ros2 bag play`` can
replay into the runtime. Conventions follow ``failrecov_ros.ros.sensors`` and realsense-ros:
``rgb8`` colour, ``16UC1`` aligned depth in millimetres, header stamps equal to log times.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rosbags import interfaces as rif
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from failrecov_ros.core.camera import Intrinsics, depth_to_z16
from failrecov_ros.core.schema import Diagnosis
from failrecov_ros.robots import fr3

JOINT_STATES = "/joint_states"
GRIPPER_JOINT_STATES = "/franka_gripper/joint_states"
COLOR_IMAGE = "/camera/camera/color/image_raw"
COLOR_INFO = "/camera/camera/color/camera_info"
DEPTH_IMAGE = "/camera/camera/aligned_depth_to_color/image_raw"
DEPTH_INFO = "/camera/camera/aligned_depth_to_color/camera_info"
INSTRUCTION = "/task_instruction"
#: The episode's ground truth for replay scoring (failrecov_ros.evaluation.replay).
FAILURE_LABEL = "/failure_label"
OPTICAL_FRAME = "camera_color_optical_frame"
DEFAULT_START_NS = 1_700_000_000 * 10**9
JOINT_STATE_T, IMAGE_T, STRING_T = ("sensor_msgs/msg/JointState", "sensor_msgs/msg/Image",
                                    "std_msgs/msg/String")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}
# Latched, as the runtime's instruction subscriber expects (0 s durations = rmw default).
_NO_TIME = rif.QosTime(0, 0)
_LATCHED = rif.Qos(rif.QosHistory.KEEP_LAST, 1, rif.QosReliability.RELIABLE,
                   rif.QosDurability.TRANSIENT_LOCAL, _NO_TIME, _NO_TIME,
                   rif.QosLiveliness.AUTOMATIC, _NO_TIME, False)
# What rosbags (and the apsw/mcap parsing under it) raises on corrupt or truncated files.
_READ_ERRORS = (AnyReaderError, ReaderError, SerdeError, OSError, struct.error, EOFError,
                KeyError, IndexError, UnicodeDecodeError, RuntimeError)


class BagError(ValueError):
    """A bag that cannot be read or written; the message names the file and what to fix."""


@functools.cache
def typestore() -> Typestore:
    """Humble message types for reading and writing (identical to Jazzy for the ones used)."""
    return get_typestore(Stores.ROS2_HUMBLE)


@dataclasses.dataclass
class Demonstration:
    """One recorded execution as arrays; times in seconds from the first arm joint state."""

    source: str
    times: np.ndarray
    joint_names: tuple[str, ...]
    arm_q: np.ndarray
    gripper_width: np.ndarray
    frames: list[np.ndarray]
    frame_times: np.ndarray
    instruction: str = ""


def read_demonstration(path: str | Path, *,
                       joint_states_topics: Sequence[str] = (JOINT_STATES, GRIPPER_JOINT_STATES),
                       image_topic: str = COLOR_IMAGE, instruction_topic: str = INSTRUCTION,
                       arm_joints: Sequence[str] = fr3.ARM_JOINTS,
                       finger_joints: Sequence[str] = fr3.FINGER_JOINTS,
                       max_frames: int | None = None) -> Demonstration:
    """Read a bag directory or a single .mcap/.db3 file into a Demonstration.

    Joint states from all ``joint_states_topics`` are merged by header stamp (log time when the
    stamp is zero); the gripper width is interpolated onto the arm samples. ``max_frames`` keeps
    that many images evenly spaced over the recording (None: all, 0: none).
    Raises BagError naming the file and the problem.
    """
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0 or None, got {max_frames}")
    bag = _bag_path(Path(path))
    try:
        with AnyReader([bag], default_typestore=typestore()) as reader:
            states, frames, instruction = _collect(
                reader, bag, tuple(joint_states_topics), image_topic, instruction_topic,
                max_frames)
    except _READ_ERRORS as err:
        raise BagError(f"cannot read {bag} as a rosbag2 recording (corrupt, truncated or not a "
                       f"bag? 'mcap recover' can salvage a cut .mcap): {type(err).__name__}: "
                       f"{err}") from err
    arm_ns, arm_q = _arm_samples(bag, states, tuple(arm_joints))
    width = _gripper_width(bag, states, tuple(finger_joints), arm_ns)
    frames.sort(key=lambda item: item[0])
    return Demonstration(
        source=str(bag), times=(arm_ns - arm_ns[0]) * 1e-9, joint_names=tuple(arm_joints),
        arm_q=arm_q, gripper_width=width, frames=[image for _, image in frames],
        frame_times=np.array([(ns - arm_ns[0]) * 1e-9 for ns, _ in frames], dtype=np.float64),
        instruction=instruction)


def find_bags(paths: Sequence[str | Path]) -> list[str]:
    """Every bag named by ``paths``, sorted and absolute.

    Bag folders and files count as given; a folder that is not a bag itself (a recorder's
    output folder) contributes the bags directly inside it.
    """
    found: set[str] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise BagError(f"no such bag or folder: {path}")
        if path.is_file() or (path / "metadata.yaml").exists():
            found.add(str(path.resolve()))
            continue
        # Storage files directly inside count too: a killed recorder leaves no metadata.yaml.
        children = [c for c in sorted(path.iterdir()) if not c.name.startswith(".") and (
            (c.is_dir() and (c / "metadata.yaml").exists())
            or c.suffix in (".mcap", ".db3"))]
        if not children:
            raise BagError(f"{path} holds no rosbag2 bag (folders with metadata.yaml, or "
                           ".mcap/.db3 files)")
        found.update(str(c.resolve()) for c in children)
    return sorted(found)


def _bag_path(path: Path) -> Path:
    """The file or directory to open; a killed recorder leaves no metadata.yaml: use the file."""
    if not path.exists():
        raise BagError(f"no such bag: {path}")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        files = sorted(path.glob("*.mcap")) + sorted(path.glob("*.db3"))
        if len(files) != 1:
            raise BagError(f"{path} is not a rosbag2 directory (no metadata.yaml and "
                           f"{len(files)} .mcap/.db3 files); try 'ros2 bag reindex {path}'")
        return files[0]
    return path


def _collect(reader: AnyReader, bag: Path, state_topics: tuple[str, ...], image_topic: str,
             instruction_topic: str, max_frames: int | None):
    """Joint positions keyed by stamp (ns), stamped RGB frames and the instruction, one pass."""
    topics = reader.topics
    wanted = {t: JOINT_STATE_T for t in state_topics if t in topics}
    if not wanted:
        raise BagError(f"{bag} has no joint-state topic (looked for {', '.join(state_topics)}); "
                       f"its topics are {', '.join(sorted(topics)) or 'none'}")
    if max_frames != 0 and image_topic in topics:
        wanted[image_topic] = IMAGE_T
    if instruction_topic in topics:
        wanted[instruction_topic] = STRING_T
    for topic, msgtype in wanted.items():
        if topics[topic].msgtype != msgtype:
            raise BagError(f"{bag}: {topic} is {topics[topic].msgtype}, expected {msgtype}")
    keep = None  # indices (in recording order) of the images to decode
    if max_frames is not None and image_topic in wanted:
        count = topics[image_topic].msgcount
        keep = set(np.linspace(0, count - 1, min(max_frames, count)).round().astype(int).tolist())
    states: dict[int, dict[str, float]] = {}
    last: dict[tuple, int] = {}
    frames: list[tuple[int, np.ndarray]] = []
    instruction, image_index = "", -1
    for conn, log_ns, raw in reader.messages([c for c in reader.connections
                                              if c.topic in wanted]):
        if conn.topic == image_topic:
            image_index += 1
            if keep is not None and image_index not in keep:
                continue
        msg = reader.deserialize(raw, conn.msgtype)
        if conn.topic == instruction_topic:
            instruction = instruction or msg.data
            continue
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec or log_ns
        if conn.topic == image_topic:
            frames.append((stamp, _image_rgb(bag, image_topic, msg)))
            continue
        publisher = (conn.topic, tuple(msg.name))  # several publishers may share a topic
        if stamp < last.get(publisher, stamp):
            raise BagError(f"{bag}: joint-state time on {conn.topic} goes backwards "
                           f"({last[publisher] * 1e-9:.6f} s -> {stamp * 1e-9:.6f} s); the "
                           "recording spans a clock reset or mixes sim and wall time")
        last[publisher] = stamp
        positions = np.asarray(msg.position, dtype=np.float64).tolist()
        states.setdefault(stamp, {}).update(zip(msg.name, positions, strict=False))
    return states, frames, instruction


def _image_rgb(bag: Path, topic: str, msg) -> np.ndarray:
    """An rgb8/bgr8/mono8 Image as an HxWx3 RGB array, skipping row padding (``step``)."""
    channels = _CHANNELS.get(msg.encoding)
    if channels is None:
        raise BagError(f"{bag}: image encoding {msg.encoding!r} on {topic} is not supported; "
                       f"expected one of {', '.join(_CHANNELS)}")
    row, data = msg.width * channels, np.asarray(msg.data, dtype=np.uint8)
    if msg.step < row or data.size < msg.step * msg.height:
        raise BagError(f"{bag}: {msg.encoding} image {msg.width}x{msg.height} on {topic} has "
                       f"step {msg.step} and {data.size} bytes, too few to hold it")
    pixels = data[:msg.step * msg.height].reshape(msg.height, msg.step)[:, :row]
    pixels = pixels.reshape(msg.height, msg.width, channels)
    if msg.encoding == "bgr8":
        pixels = pixels[..., ::-1]
    return np.ascontiguousarray(np.repeat(pixels, 3, axis=2) if channels == 1 else pixels)


def _check_finite(bag: Path, names: Sequence[str], values: np.ndarray) -> None:
    """Raise BagError naming every joint with NaN/inf positions and how many."""
    bad = (~np.isfinite(values)).sum(axis=0)
    if bad.any():
        listing = ", ".join(f"{name} ({count} of {len(values)} samples)"
                            for name, count in zip(names, bad, strict=True) if count)
        raise BagError(f"{bag}: NaN/inf joint positions in {listing}")


def _arm_samples(bag: Path, states: dict[int, dict[str, float]], arm: tuple[str, ...]):
    """Stamps (ns) at which every arm joint is known, and the (T, n) positions there."""
    seen = set().union(*states.values())
    if missing := [j for j in arm if j not in seen]:
        raise BagError(f"{bag}: arm joints {', '.join(missing)} never appear in the joint "
                       f"states (names there: {', '.join(sorted(seen)) or 'none'})")
    stamps = [ns for ns in sorted(states) if all(j in states[ns] for j in arm)]
    if len(stamps) < 2:
        raise BagError(f"{bag}: {len(stamps)} joint-state sample(s) carry all arm joints; "
                       "a demonstration needs at least 2")
    q = np.array([[states[ns][j] for j in arm] for ns in stamps], dtype=np.float64)
    _check_finite(bag, arm, q)
    return np.array(stamps, dtype=np.int64), q


def _gripper_width(bag: Path, states: dict[int, dict[str, float]], fingers: tuple[str, ...],
                   arm_ns: np.ndarray) -> np.ndarray:
    """Finger sum (2x one finger if only one is published), interpolated at the arm stamps."""
    width, found = np.zeros(len(arm_ns)), 0
    for joint in fingers:
        stamps = [ns for ns in sorted(states) if joint in states[ns]]
        if not stamps:
            continue
        values = np.array([states[ns][joint] for ns in stamps], dtype=np.float64)
        _check_finite(bag, (joint,), values[:, None])
        width += np.interp((arm_ns - arm_ns[0]).astype(np.float64),
                           (np.array(stamps, dtype=np.int64) - arm_ns[0]).astype(np.float64),
                           values)
        found += 1
    if not found:
        raise BagError(f"{bag}: no gripper finger joint ({', '.join(fingers)}) in the joint "
                       f"states; record {GRIPPER_JOINT_STATES} or pass finger_joints")
    return width * 2.0 if found == 1 else width


def message_definition(store: Typestore, msgtype: str) -> tuple[str, str]:
    """(msgdef, rihs01) for ``Writer.add_connection`` that rosbags can read back.

    rosbags 0.11.9 writes an empty string constant (SkillStatus' ``EVENT_NONE=""``) as
    ``string EVENT_NONE=`` and then fails to parse that definition when opening the bag;
    quoting it fixes the round trip (``ros2 bag record`` stores the .msg text, which reads fine).
    """
    text, _ = store.generate_msgdef(msgtype, ros_version=2)
    lines = [line + '""' if line.startswith("string ") and line.endswith("=") else line
             for line in text.split("\n")]
    return "\n".join(lines), store.hash_rihs01(msgtype)


def label_payload(diagnosis: Diagnosis, onset_ns: int | None = None) -> str:
    """The label topic's JSON: ``{"diagnosis": <model-output schema>, "onset_ns": int|null}``.

    ``onset_ns`` is on the header-stamp clock (null for a successful episode).
    """
    return json.dumps({"diagnosis": diagnosis.model_output(), "onset_ns": onset_ns},
                      separators=(",", ":"))


def write_episode_bag(path: str | Path, *, times, joint_names: Sequence[str], positions,
                      velocities=None, rgb=None, depth_m=None, frame_times=None,
                      intrinsics: Intrinsics | None = None, instruction: str = "",
                      storage: str = "mcap", start_ns: int = DEFAULT_START_NS,
                      label: Diagnosis | None = None,
                      label_onset_s: float | None = None) -> Path:
    """Write an episode as a rosbag2 directory (metadata v8, readable by Humble and Jazzy).

    ``times``/``frame_times`` are seconds, stamped ``start_ns`` + t on headers and log times.
    ``rgb`` (N HxWx3 uint8) and ``depth_m`` (N HxW metres) share ``frame_times``; camera_info
    is written beside each image when ``intrinsics`` is given. ``label`` (the ground truth,
    failure onset at ``label_onset_s``) goes on :data:`FAILURE_LABEL`, latched, at the start,
    so replay can score the bag without a sidecar file. Returns the bag directory.
    """
    path = Path(path)
    if path.exists():
        raise BagError(f"{path} already exists; rosbag2 never overwrites a bag: remove it or "
                       "choose a new path")
    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    stamps = _stamps(times, start_ns, "times")
    q = _matrix(positions, (len(stamps), len(joint_names)), "positions")
    qd = None if velocities is None else _matrix(velocities, q.shape, "velocities")
    events = [(ns, 1, JOINT_STATES, functools.partial(
        _joint_state, list(joint_names), q[i], None if qd is None else qd[i]))
        for i, ns in enumerate(stamps.tolist())]
    streams = [(COLOR_IMAGE, COLOR_INFO, "rgb8", _frames(rgb, "rgb", intrinsics))]
    streams += [(DEPTH_IMAGE, DEPTH_INFO, "16UC1",
                 [depth_to_z16(f) for f in _frames(depth_m, "depth_m", intrinsics)])]
    streams = [s for s, given in zip(streams, (rgb, depth_m), strict=True) if given is not None]
    first = stamps[0]
    if streams:
        if frame_times is None:
            raise ValueError("frame_times is required with rgb or depth_m")
        frame_stamps = _stamps(frame_times, start_ns, "frame_times")
        first = min(first, frame_stamps[0])
        for image_topic, info_topic, encoding, frames in streams:
            if len(frames) != len(frame_stamps):
                raise ValueError(f"{len(frames)} {encoding} frames for {len(frame_stamps)} "
                                 "frame_times")
            for ns, frame in zip(frame_stamps.tolist(), frames, strict=True):
                events.append((ns, 2, image_topic, functools.partial(_image, frame, encoding)))
                if intrinsics is not None:
                    events.append((ns, 3, info_topic, functools.partial(_info, intrinsics)))
    if instruction:
        events.append((int(first), 0, INSTRUCTION,
                       lambda _: typestore().types[STRING_T](data=instruction)))
    if label is not None:
        onset = None if label_onset_s is None else start_ns + round(label_onset_s * 1e9)
        payload = label_payload(label, onset)
        events.append((int(first), 0, FAILURE_LABEL,
                       lambda _: typestore().types[STRING_T](data=payload)))
    try:
        with Writer(path, version=8, storage_plugin=plugins[storage]) as writer:
            connections = {}
            for ns, _, topic, make in sorted(events, key=lambda e: e[:3]):
                msg = make(_header(ns))
                if topic not in connections:
                    connections[topic] = writer.add_connection(
                        topic, msg.__msgtype__, typestore=typestore(),
                        offered_qos_profiles=[_LATCHED] if topic in (INSTRUCTION, FAILURE_LABEL)
                        else [])
                writer.write(connections[topic], ns,
                             typestore().serialize_cdr(msg, msg.__msgtype__))
    except WriterError as err:
        raise BagError(f"cannot write {path}: {err}") from err
    return path


def _stamps(times, start_ns: int, label: str) -> np.ndarray:
    """Seconds to int64 nanoseconds after ``start_ns``; equal stamps would merge on reading."""
    seconds = np.asarray(times, dtype=np.float64)
    if seconds.ndim != 1 or not len(seconds) or not np.isfinite(seconds).all():
        raise ValueError(f"{label} must be a non-empty 1-D array of finite seconds")
    stamps = start_ns + np.rint(seconds * 1e9).astype(np.int64)
    if (np.diff(stamps) <= 0).any() or stamps[0] < 0:
        raise ValueError(f"{label} must increase strictly (by >= 1 ns) and not reach before "
                         f"-start_ns")
    return stamps


def _matrix(values, shape: tuple[int, int], label: str) -> np.ndarray:
    """A float64 array of exactly ``shape`` (times x joints) with finite entries."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape or not np.isfinite(array).all():
        raise ValueError(f"{label} must be finite with shape {shape} (times x joint_names), "
                         f"got {array.shape}")
    return array


def _frames(images, label: str, intrinsics: Intrinsics | None) -> list[np.ndarray]:
    """Frames as arrays, checked against the expected layout and ``intrinsics`` when given."""
    frames = [np.asarray(f) for f in images] if images is not None else []
    color = label == "rgb"
    for frame in frames:
        if frame.ndim != 2 + color or (color and (frame.shape[2] != 3 or frame.dtype != np.uint8)):
            raise ValueError(f"{label} frames must be {'HxWx3 uint8' if color else 'HxW'}, got "
                             f"{frame.dtype} {frame.shape}")
        if intrinsics and frame.shape[:2] != (intrinsics.height, intrinsics.width):
            raise ValueError(f"{label} frame {frame.shape[:2]} does not match intrinsics "
                             f"{intrinsics.height}x{intrinsics.width}")
    return frames


def _header(ns: int):
    """std_msgs/Header at ``ns`` in the colour optical frame (aligned depth shares it)."""
    types = typestore().types
    stamp = types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=OPTICAL_FRAME)


def _joint_state(names: list[str], q: np.ndarray, qd: np.ndarray | None, header):
    """sensor_msgs/JointState as the runtime publishes it (empty velocity when unknown)."""
    header.frame_id = ""
    return typestore().types[JOINT_STATE_T](
        header=header, name=names, position=q, velocity=np.zeros(0) if qd is None else qd,
        effort=np.zeros(0))


def _image(pixels: np.ndarray, encoding: str, header):
    """An rgb8 (HxWx3 uint8) or little-endian 16UC1 (HxW uint16) sensor_msgs/Image."""
    data = np.ascontiguousarray(pixels.astype("<u2") if encoding == "16UC1" else pixels)
    return typestore().types[IMAGE_T](
        header=header, height=data.shape[0], width=data.shape[1], encoding=encoding,
        is_bigendian=0, step=data.strides[0], data=data.reshape(-1).view(np.uint8))


def _info(intrinsics: Intrinsics, header):
    """sensor_msgs/CameraInfo of the rectified colour camera."""
    types = typestore().types
    roi = types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types["sensor_msgs/msg/CameraInfo"](
        header=header, height=intrinsics.height, width=intrinsics.width,
        distortion_model=intrinsics.distortion_model, d=np.array(intrinsics.distortion),
        k=np.array(intrinsics.k), r=np.eye(3).reshape(-1), p=np.array(intrinsics.p),
        binning_x=0, binning_y=0, roi=roi)


@functools.cache
def message_typestore() -> Typestore:
    """Humble types plus this package's messages, for bags that do not embed definitions."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    folder = _msg_folder()
    if folder is not None:
        types: dict = {}
        for file in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(file.read_text(), f"failrecov_ros/msg/{file.stem}"))
        store.register(types)
    return store


def _msg_folder() -> Path | None:
    """``msg/`` of the source tree or of an installed share folder."""
    here = Path(__file__).resolve()
    up = here.parents
    candidates = [up[2] / "msg"]
    if len(up) > 5:  # <prefix>/lib/python3.X/site-packages/failrecov_ros/datagen
        candidates.append(up[5] / "share" / "failrecov_ros" / "msg")
    candidates += [Path(p) / "share" / "failrecov_ros" / "msg"
                   for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return next((c for c in candidates if (c / "SkillStatus.msg").exists()), None)


class BagRecorder:
    """Write already-serialized (CDR) messages into a rosbag2 MCAP directory as they arrive.

    What ``ros2 bag record`` does for live topics, for machines without rosbag2_py: rclpy
    raw subscriptions hand over the bytes, this stores them under their log time. ``latched``
    topics are offered as transient-local so ``ros2 bag play`` republishes them that way.
    """

    def __init__(self, path: str | Path, store: Typestore | None = None) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} already exists; rosbag2 never overwrites a bag")
        self._store = store or message_typestore()
        self._writer = Writer(self.path, version=8, storage_plugin=StoragePlugin.MCAP)
        self._connections: dict[str, object] = {}
        self.messages = 0
        try:
            self._writer.open()
        except WriterError as err:
            raise BagError(f"cannot write {self.path}: {err}") from err

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None:
        """Declare a topic before writing to it (``msgtype`` as ``pkg/msg/Name``)."""
        if topic not in self._connections:
            msgdef, rihs01 = message_definition(self._store, msgtype)
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, msgdef=msgdef, rihs01=rihs01,
                offered_qos_profiles=[_LATCHED] if latched else [])

    def write(self, topic: str, log_time_ns: int, cdr: bytes) -> None:
        """Store one serialized message of a declared topic."""
        self._writer.write(self._connections[topic], int(log_time_ns), cdr)
        self.messages += 1

    def close(self) -> None:
        """Finish the bag (metadata.yaml); without it the .mcap needs 'ros2 bag reindex'."""
        self._writer.close()
