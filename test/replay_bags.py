"""Small episode bags made in the test: synthetic frames, joint_states, skill_status, a label.

Shared by the replay tests and the bag_player smoke test. Frames are 30 Hz from T0, joint
states 100 Hz, a skill_status at the start and a ``gripper_close`` event at 1.49 s.
"""

import numpy as np
from rosbags import interfaces as rif
from rosbags.rosbag2 import StoragePlugin, Writer

from failrecov_ros.core.schema import Diagnosis
from failrecov_ros.datagen.bags import label_payload, message_definition, message_typestore
from failrecov_ros.robots import fr3

T0 = 1_700_000_000 * 10**9
FPS = 30
NAMES = list(fr3.ARM_JOINTS) + list(fr3.FINGER_JOINTS)
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04, 0.04]
_NO_TIME = rif.QosTime(0, 0)
LATCHED = rif.Qos(rif.QosHistory.KEEP_LAST, 1, rif.QosReliability.RELIABLE,
                  rif.QosDurability.TRANSIENT_LOCAL, _NO_TIME, _NO_TIME,
                  rif.QosLiveliness.AUTOMATIC, _NO_TIME, False)


def frame_ns(index: int) -> int:
    """Stamp of frame ``index`` (0-based)."""
    return T0 + round(index * 1e9 / FPS)


def write_bag(path, *, frames=90, label: Diagnosis | None = None, onset_s=None,
              storage="mcap", skip=(), size=(120, 160), seed=0, status=True):
    """Write the episode; ``skip`` leaves topics out (e.g. ``{"joint_states"}``)."""
    store = message_typestore()
    types = store.types
    rng = np.random.default_rng(seed)

    def header(ns, frame_id=""):
        stamp = types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    events = []
    if "image" not in skip:
        base = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        for i in range(frames):
            pixels = np.roll(base, i, axis=1)
            msg = types["sensor_msgs/msg/Image"](
                header=header(frame_ns(i), "camera_color_optical_frame"), height=size[0],
                width=size[1], encoding="rgb8", is_bigendian=0, step=size[1] * 3,
                data=pixels.reshape(-1))
            events.append((frame_ns(i), "/camera/camera/color/image_raw", msg, []))
    if "joint_states" not in skip:
        end = frame_ns(frames - 1)
        for k, ns in enumerate(range(T0 - 10**7, end + 2 * 10**7, 10**7)):
            q = np.array(HOME) + 0.001 * k
            msg = types["sensor_msgs/msg/JointState"](
                header=header(ns), name=NAMES, position=q, velocity=np.zeros(0),
                effort=np.zeros(0))
            events.append((ns, "/joint_states", msg, []))
    if status:
        for ns, stage, event, event_ns in ((T0 - 5 * 10**6, "approach", "skill_start", T0),
                                           (T0 + 1_490_000_000, "grasp", "gripper_close",
                                            T0 + 1_490_000_000)):
            msg = types["failrecov_ros/msg/SkillStatus"](
                header=header(ns), episode_id="ep", task="pick_cube",
                instruction="pick up the red cube", robot="fr3", state=1, skill="pick",
                skill_index=0, skill_count=1, stage=stage, step=max(0, (ns - T0) // 10**8),
                event=event, event_stamp=header(event_ns).stamp, event_step=0, message="")
            events.append((ns, "/skill_status", msg, [LATCHED]))
    if label is not None:
        onset = None if onset_s is None else T0 + round(onset_s * 1e9)
        msg = types["std_msgs/msg/String"](data=label_payload(label, onset))
        events.append((T0 - 10**7, "/failure_label", msg, [LATCHED]))
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        connections = {}
        for ns, topic, msg, qos in sorted(events, key=lambda e: (e[0], e[1])):
            if topic not in connections:
                msgdef, rihs01 = message_definition(store, msg.__msgtype__)
                connections[topic] = writer.add_connection(
                    topic, msg.__msgtype__, offered_qos_profiles=qos, msgdef=msgdef,
                    rihs01=rihs01)
            writer.write(connections[topic], ns, store.serialize_cdr(msg, msg.__msgtype__))
    return path
