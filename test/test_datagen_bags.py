"""rosbag2 demonstrations and episodes: round trips, foreign bags, and bags that are wrong."""

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from failrecov_ros.core.camera import Intrinsics, depth_to_z16
from failrecov_ros.datagen import bags
from failrecov_ros.robots import fr3

NAMES = list(fr3.ARM_JOINTS) + list(fr3.FINGER_JOINTS)
T0 = 1_700_000_000 * 10**9


def _episode(steps=6, frames=3, seed=0):
    rng = np.random.default_rng(seed)
    times = np.arange(steps) * 0.05
    positions = rng.uniform(-1.0, 1.0, (steps, len(NAMES)))
    positions[:, 7:] = rng.uniform(0.0, 0.04, (steps, 2))
    rgb = rng.integers(0, 256, (frames, 12, 16, 3), dtype=np.uint8)
    depth = rng.uniform(0.2, 2.0, (frames, 12, 16))
    return times, positions, rgb, depth, np.linspace(0.0, times[-1], frames)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_written_episode_reads_back_exactly(tmp_path, storage):
    times, positions, rgb, depth, frame_times = _episode()
    intrinsics = Intrinsics.from_fovy(16, 12, 58.0)
    path = bags.write_episode_bag(
        tmp_path / "episode", times=times, joint_names=NAMES, positions=positions,
        velocities=positions * 2, rgb=rgb, depth_m=depth, frame_times=frame_times,
        intrinsics=intrinsics, instruction="put the cube in the bowl", storage=storage)
    assert path.is_dir() and list(path.glob("*.mcap" if storage == "mcap" else "*.db3"))

    demo = bags.read_demonstration(path)
    assert demo.joint_names == fr3.ARM_JOINTS
    np.testing.assert_allclose(demo.times, times, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(demo.arm_q, positions[:, :7])
    assert demo.arm_q.dtype == np.float64
    np.testing.assert_array_equal(demo.gripper_width, positions[:, 7] + positions[:, 8])
    assert len(demo.frames) == 3
    for got, want in zip(demo.frames, rgb, strict=True):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(demo.frame_times, frame_times, rtol=0, atol=1e-9)
    assert demo.instruction == "put the cube in the bowl"

    # What the reader does not return: depth in mm, camera_info, velocities, stamps = log times.
    with AnyReader([path], default_typestore=bags.typestore()) as reader:
        assert reader.topics[bags.DEPTH_IMAGE].msgcount == 3
        assert reader.topics[bags.INSTRUCTION].msgcount == 1
        depth_mm, infos = [], []
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if hasattr(msg, "header"):
                assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == log_ns
            if conn.topic == bags.DEPTH_IMAGE:
                assert (msg.encoding, msg.step) == ("16UC1", 32)
                depth_mm.append(np.frombuffer(msg.data.tobytes(), "<u2").reshape(12, 16))
            elif conn.topic == bags.COLOR_INFO:
                infos.append(msg)
            elif conn.topic == bags.JOINT_STATES:
                np.testing.assert_array_equal(msg.velocity, 2 * np.asarray(msg.position))
    np.testing.assert_array_equal(np.stack(depth_mm), depth_to_z16(depth))
    assert infos[0].header.frame_id == bags.OPTICAL_FRAME
    np.testing.assert_array_equal(infos[0].k, intrinsics.k)


def test_writer_refuses_to_overwrite(tmp_path):
    times, positions, *_ = _episode()
    path = bags.write_episode_bag(tmp_path / "ep", times=times, joint_names=NAMES,
                                  positions=positions)
    with pytest.raises(bags.BagError, match="already exists"):
        bags.write_episode_bag(path, times=times, joint_names=NAMES, positions=positions)
    with pytest.raises(ValueError, match="frame_times"):
        bags.write_episode_bag(tmp_path / "ep2", times=times, joint_names=NAMES,
                               positions=positions, rgb=np.zeros((1, 12, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="increase strictly"):
        bags.write_episode_bag(tmp_path / "ep2", times=np.zeros(len(times)), joint_names=NAMES,
                               positions=positions)
    assert not (tmp_path / "ep2").exists()


# Bags written the way a robot recording looks, with rosbags directly rather than our writer.

def _stamp(ns):
    types = bags.typestore().types
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
        frame_id="")


def _joint_state(ns, names, positions):
    return bags.typestore().types[bags.JOINT_STATE_T](
        header=_stamp(ns), name=list(names), position=np.asarray(positions, dtype=np.float64),
        velocity=np.zeros(0), effort=np.zeros(0))


def _image(ns, encoding, width, height, step, data):
    return bags.typestore().types[bags.IMAGE_T](
        header=_stamp(ns), height=height, width=width, encoding=encoding, is_bigendian=0,
        step=step, data=np.frombuffer(bytes(data), np.uint8))


def _raw_bag(path, messages, storage=StoragePlugin.MCAP):
    """Write (topic, log ns, msg) in log-time order with the rosbags Writer."""
    store = bags.typestore()
    with Writer(path, version=9, storage_plugin=storage) as writer:
        connections = {}
        for topic, ns, msg in sorted(messages, key=lambda m: m[1]):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msg.__msgtype__,
                                                           typestore=store)
            writer.write(connections[topic], ns, store.serialize_cdr(msg, msg.__msgtype__))
    return path


def _arm_messages(count=5, names=fr3.ARM_JOINTS, value=lambda j, t: 0.1 * j + t):
    return [(bags.JOINT_STATES, T0 + k * 10**7,
             _joint_state(T0 + k * 10**7, names, [value(fr3.ARM_JOINTS.index(n), k * 0.01)
                                                  for n in names]))
            for k in range(count)]


def _finger_messages(count=3, period_ns=3 * 10**7):
    return [(bags.GRIPPER_JOINT_STATES, T0 + k * period_ns,
             _joint_state(T0 + k * period_ns, fr3.FINGER_JOINTS, [0.01 + k * 0.003, 0.02]))
            for k in range(count)]


def test_reader_merges_gripper_topic_reorders_joints_and_converts_bgr(tmp_path):
    shuffled = [fr3.ARM_JOINTS[i] for i in (3, 0, 6, 2, 5, 1, 4)]
    arm = _arm_messages(count=31, names=shuffled)  # 100 Hz for 0.3 s
    fingers = _finger_messages(count=11, period_ns=3 * 10**7)  # 33 Hz, linear in t
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 12, 16, 3), dtype=np.uint8)
    images = []
    for k, frame in enumerate(rgb):
        padded = np.full((12, 16 * 3 + 8), 0xAB, np.uint8)
        padded[:, :48] = frame[..., ::-1].reshape(12, 48)
        ns = T0 + 5 * 10**6 + k * 7 * 10**7
        delay = 10**8 if k == 1 else 10**6  # frame 1 is logged after frame 2: order by stamp
        images.append((bags.COLOR_IMAGE, ns + delay,
                       _image(ns, "bgr8", 16, 12, 56, padded.tobytes())))
    instruction = bags.typestore().types[bags.STRING_T](data="open the drawer")
    path = _raw_bag(tmp_path / "robot", [*arm, *fingers, *images,
                                         (bags.INSTRUCTION, T0, instruction)])

    for target in (path, next(path.glob("*.mcap"))):  # directory or the single file
        demo = bags.read_demonstration(target)
        assert demo.joint_names == fr3.ARM_JOINTS
        t = np.arange(31) * 0.01
        np.testing.assert_allclose(demo.times, t, atol=1e-12)
        np.testing.assert_allclose(demo.arm_q, 0.1 * np.arange(7) + t[:, None], atol=1e-12)
        # finger1 = 0.01 + 0.1 * t (0.003 per 30 ms), finger2 = 0.02: interpolated, summed.
        np.testing.assert_allclose(demo.gripper_width, 0.03 + 0.1 * t, atol=1e-12)
        for got, want in zip(demo.frames, rgb, strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(demo.frame_times, 0.005 + 0.07 * np.arange(4), atol=1e-12)
        assert demo.instruction == "open the drawer"

    fewer = bags.read_demonstration(path, max_frames=2)
    np.testing.assert_array_equal(np.stack(fewer.frames), rgb[[0, 3]])
    assert bags.read_demonstration(path, max_frames=0).frames == []


def test_mono8_and_one_finger(tmp_path):
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    one_finger = [(bags.JOINT_STATES, T0 + k * 10**7,
                   _joint_state(T0 + k * 10**7, fr3.FINGER_JOINTS[:1], [0.015]))
                  for k in range(3)]
    messages = [*_arm_messages(3), *one_finger,
                (bags.COLOR_IMAGE, T0 + 2 * 10**7,  # header stamp 0: the log time counts
                 _image(0, "mono8", 16, 12, 16, gray.tobytes()))]
    demo = bags.read_demonstration(_raw_bag(tmp_path / "b", messages, StoragePlugin.SQLITE3))
    np.testing.assert_allclose(demo.gripper_width, [0.03, 0.03, 0.03], rtol=1e-15)
    np.testing.assert_array_equal(demo.frames[0], np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_allclose(demo.frame_times, [0.02], atol=1e-12)


def test_missing_path(tmp_path):
    with pytest.raises(bags.BagError, match="no such bag"):
        bags.read_demonstration(tmp_path / "nowhere")


@pytest.mark.parametrize("storage,damage", [
    ("mcap", lambda data: data[: len(data) // 2]),
    ("mcap", lambda data: b"\0" * 64 + data[64:]),
    ("sqlite3", lambda data: b"not a database" + data[14:]),
    ("sqlite3", lambda data: data[:100]),
])
def test_corrupt_bag(tmp_path, storage, damage):
    times, positions, *_ = _episode()
    path = bags.write_episode_bag(tmp_path / "ep", times=times, joint_names=NAMES,
                                  positions=positions, storage=storage)
    (storage_file,) = path.glob("*.mcap" if storage == "mcap" else "*.db3")
    storage_file.write_bytes(damage(storage_file.read_bytes()))
    with pytest.raises(bags.BagError, match="corrupt") as caught:
        bags.read_demonstration(path)
    assert str(path) in str(caught.value)


def test_missing_arm_joint_is_named(tmp_path):
    names = [n for n in fr3.ARM_JOINTS if n != "fr3_joint4"]
    path = _raw_bag(tmp_path / "b", [*_arm_messages(names=names), *_finger_messages()])
    with pytest.raises(bags.BagError, match="fr3_joint4") as caught:
        bags.read_demonstration(path)
    assert "fr3_joint1" not in str(caught.value).split("(")[0]


def test_nan_positions_name_joint_and_count(tmp_path):
    def value(j, t):
        return float("nan") if j == 2 and t > 0.015 else t

    path = _raw_bag(tmp_path / "b", [*_arm_messages(5, value=value), *_finger_messages()])
    with pytest.raises(bags.BagError, match=r"fr3_joint3 \(3 of 5 samples\)"):
        bags.read_demonstration(path)


def test_unsupported_encoding_is_named(tmp_path):
    depth = np.ones((12, 16), np.float32)
    image = (bags.COLOR_IMAGE, T0, _image(T0, "32FC1", 16, 12, 64, depth.tobytes()))
    path = _raw_bag(tmp_path / "b", [image, *_arm_messages(), *_finger_messages()])
    with pytest.raises(bags.BagError, match="32FC1"):
        bags.read_demonstration(path)
    assert len(bags.read_demonstration(path, max_frames=0).times) == 5


def test_bags_without_usable_joint_states(tmp_path):
    only_images = _raw_bag(tmp_path / "a", [(bags.COLOR_IMAGE, T0, _image(T0, "rgb8", 1, 1, 3,
                                                                          b"abc"))])
    with pytest.raises(bags.BagError, match="no joint-state topic.*/joint_states"):
        bags.read_demonstration(only_images)
    one_sample = _raw_bag(tmp_path / "b", [*_arm_messages(1), *_finger_messages(1)])
    with pytest.raises(bags.BagError, match="at least 2"):
        bags.read_demonstration(one_sample)
    backwards = _arm_messages(3)
    backwards[2] = (bags.JOINT_STATES, T0 + 3 * 10**7,
                    _joint_state(T0, fr3.ARM_JOINTS, np.zeros(7)))  # stamp jumps back
    with pytest.raises(bags.BagError, match="backwards"):
        bags.read_demonstration(_raw_bag(tmp_path / "c", [*backwards, *_finger_messages()]))
    no_fingers = _raw_bag(tmp_path / "d", _arm_messages(3))
    with pytest.raises(bags.BagError, match="fr3_finger_joint1"):
        bags.read_demonstration(no_fingers)
