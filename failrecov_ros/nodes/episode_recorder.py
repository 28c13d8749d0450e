"""Record successful live episodes as rosbag2 demonstrations for the data engine.

The data-generation node of the runtime: while the skill executor runs tasks (on a real FR3 or
in the simulator), it writes each episode, from the executor's first ``running`` status to its
end, into an MCAP bag: joint states (arm and gripper), the colour stream (rate-limited),
optionally aligned depth and camera_info, the executor's ``skill_status`` and the instruction
on ``/task_instruction``. Messages are stored as the CDR bytes they arrived in (raw
subscriptions, as ``ros2 bag record`` does). An episode that succeeded without a recovery is
kept as ``output_dir/<episode>/`` with a ``demonstration.yaml`` sidecar (task, instruction,
outcome); the others are deleted, or kept under ``output_dir/rejected/`` with
``keep_rejected``. ``success_service`` (e.g. ``/mujoco_sim/task_success``) makes a ground-truth
check decide instead of the executor's word. Then::

    failrecov datagen --demonstrations OUTPUT_DIR --out DATA --samples N

perturbs the kept demonstrations (Dream2Fix) and rolls them out in the physics world model.
"""

from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path

import yaml
from rclpy.node import Node
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from failrecov_ros.datagen.bags import INSTRUCTION, BagError, BagRecorder, message_typestore
from failrecov_ros.datagen.recorded import (
    DEMONSTRATION_FILE,
    TERMINAL_STATES,
    Cut,
    EpisodeCutter,
)
from failrecov_ros.msg import SkillStatus
from failrecov_ros.ros.entry import spin_until_shutdown, start_node
from failrecov_ros.ros.qos import latched_qos, sensor_qos

STATE_NAMES = {
    SkillStatus.STATE_IDLE: "idle", SkillStatus.STATE_RUNNING: "running",
    SkillStatus.STATE_RECOVERING: "recovering", SkillStatus.STATE_SUCCEEDED: "succeeded",
    SkillStatus.STATE_FAILED: "failed", SkillStatus.STATE_NEEDS_HELP: "needs_help",
    SkillStatus.STATE_CANCELED: "canceled",
}
RECORDING_DIR = ".recording"  # bags being written; find_bags skips hidden folders
REJECTED_DIR = "rejected"


class _Bag:
    """One episode's bag while it is written."""

    def __init__(self, cut: Cut, path: Path, recorder: BagRecorder, started_ns: int) -> None:
        self.cut, self.path, self.recorder, self.started_ns = cut, path, recorder, started_ns
        self.last_write_ns: dict[str, int] = {}


class EpisodeRecorder(Node):
    """Raw subscriptions into one bag per episode; episode boundaries from skill_status."""

    def __init__(self) -> None:
        super().__init__("episode_recorder")
        p = self.declare_parameter
        self.output_dir = Path(p("output_dir", "failrecov_demonstrations").value).expanduser()
        joint_topics = list(p("joint_states_topics",
                              ["joint_states", "franka_gripper/joint_states"]).value)
        image_topic = p("image_topic", "camera/camera/color/image_raw").value
        info_topic = p("camera_info_topic", "camera/camera/color/camera_info").value
        depth_topic = p("depth_topic", "").value
        rate = float(p("image_rate_hz", 10.0).value)
        reliability = p("image_reliability", "reliable").value
        self.robot = p("robot", "fr3").value
        self.keep_rejected = bool(p("keep_rejected", False).value)
        success_service = p("success_service", "").value
        if rate < 0:
            raise ValueError(f"image_rate_hz must be >= 0 (0 = every frame), got {rate}")
        if not joint_topics:
            raise ValueError("joint_states_topics is empty: a demonstration needs joint states")
        self.image_period_ns = int(1e9 / rate) if rate > 0 else 0
        self.cutter = EpisodeCutter(keep_recovered=bool(p("keep_recovered", False).value))
        self.store = message_typestore()
        self.bag: _Bag | None = None
        self.pending: set[_Bag] = set()  # finished bags waiting for the success check
        self.kept = self.rejected = 0
        self.success_check = (self.create_client(Trigger, success_service)
                              if success_service else None)
        (self.output_dir / RECORDING_DIR).mkdir(parents=True, exist_ok=True)
        self.topics: dict[str, tuple[str, bool]] = {}  # resolved name -> (type, rate-limited)
        camera_qos = sensor_qos(depth=2, reliability=reliability)
        streams = [(t, JointState, sensor_qos(depth=50), False) for t in joint_topics]
        streams += [(topic, msg_type, camera_qos, True) for topic, msg_type in (
            (image_topic, Image), (info_topic, CameraInfo), (depth_topic, Image)) if topic]
        resolved: dict[str, str] = {}
        for topic, msg_type, qos, limited in streams:
            sub = self.create_subscription(
                msg_type, topic, lambda data, t=topic: self._on_message(resolved[t], data), qos,
                raw=True)
            resolved[topic] = sub.topic_name  # the bag keeps full names, as ros2 bag record
            self.topics[sub.topic_name] = (f"sensor_msgs/msg/{msg_type.__name__}", limited)
        self.status_topic = self.create_subscription(SkillStatus, "skill_status",
                                                     self._on_status, latched_qos()).topic_name
        self.get_logger().info(
            f"recording successful episodes into {self.output_dir} "
            f"({', '.join(self.topics)}; images at "
            f"{f'{rate:g} Hz' if rate else 'full rate'})")

    # --- callbacks ----------------------------------------------------------------------------
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_message(self, topic: str, data: bytes) -> None:
        bag = self.bag
        if bag is None:
            return
        now = self._now_ns()
        msgtype, limited = self.topics[topic]
        if limited and self.image_period_ns and \
                now - bag.last_write_ns.get(topic, -self.image_period_ns) < self.image_period_ns:
            return
        self._write(bag, topic, msgtype, now, data)

    def _write(self, bag: _Bag, topic: str, msgtype: str, ns: int, data: bytes,
               latched: bool = False) -> None:
        try:
            bag.recorder.add_topic(topic, msgtype, latched)
            bag.recorder.write(topic, ns, data)
            bag.last_write_ns[topic] = ns
        except Exception as error:  # noqa: BLE001 - a full disk must not take the robot down
            self.get_logger().error(f"{bag.path.name}: recording stopped: {error}")
            self._discard(bag, f"write failed: {error}")
            self.bag = None

    def _on_status(self, msg: SkillStatus) -> None:
        state = STATE_NAMES.get(msg.state, "idle")
        written = False
        for cut in self.cutter.update(msg.episode_id, state, msg.task, msg.instruction,
                                      int(msg.step)):
            if cut.action == "start":
                self._start(cut)
                continue
            if state in TERMINAL_STATES and not written:  # the end belongs to its episode
                written = self._write_status(msg)
            self._end(cut)
        if not written:
            self._write_status(msg)

    def _write_status(self, msg: SkillStatus) -> bool:
        if self.bag is not None:
            self._write(self.bag, self.status_topic, "failrecov_ros/msg/SkillStatus",
                        self._now_ns(), serialize_message(msg), latched=True)
        return True

    # --- episodes -----------------------------------------------------------------------------
    def _start(self, cut: Cut) -> None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cut.episode.episode_id).strip("._") or "episode"
        if (self.output_dir / name).exists() or (self.output_dir / REJECTED_DIR / name).exists():
            name += datetime.datetime.now().strftime("_%Y%m%dT%H%M%S%f")
        path = self.output_dir / RECORDING_DIR / name
        if path.exists():
            shutil.rmtree(path)  # left by a recorder killed mid-episode: never a demonstration
        try:
            recorder = BagRecorder(path, self.store)
        except BagError as error:
            self.get_logger().error(f"not recording {name}: {error}")
            return
        self.bag = _Bag(cut, path, recorder, self._now_ns())
        self._write(self.bag, INSTRUCTION, "std_msgs/msg/String", self.bag.started_ns,
                    serialize_message(String(data=cut.episode.instruction)), latched=True)
        self.get_logger().info(f"recording {name} ({cut.episode.task or 'task'}: "
                               f"{cut.episode.instruction!r})")

    def _end(self, cut: Cut) -> None:
        bag, self.bag = self.bag, None
        if bag is None or bag.cut.episode is not cut.episode:
            return  # its bag could not be opened
        try:
            bag.recorder.close()
        except Exception as error:  # noqa: BLE001
            self._discard(bag, f"could not finish the bag: {error}")
            return
        duration = (self._now_ns() - bag.started_ns) * 1e-9
        if not cut.keep:
            self._discard(bag, cut.reason, duration)
        elif self.success_check is None:
            self._keep(bag, cut.reason, duration)
        elif not self.success_check.service_is_ready():
            self._discard(bag, f"{self.success_check.srv_name} is not available to confirm "
                          "the success", duration)
        else:
            self.pending.add(bag)
            future = self.success_check.call_async(Trigger.Request())
            future.add_done_callback(lambda f: self._on_checked(bag, f, duration))

    def _on_checked(self, bag: _Bag, future, duration: float) -> None:
        self.pending.discard(bag)
        answer = future.result()
        if answer is not None and answer.success:
            self._keep(bag, f"succeeded; confirmed by {self.success_check.srv_name}", duration)
        else:
            why = answer.message if answer is not None else "no answer"
            self._discard(bag, f"the executor reported success but "
                          f"{self.success_check.srv_name} says no: {why}", duration)

    def _sidecar(self, bag: _Bag, outcome: str, reason: str, duration: float) -> dict:
        episode = bag.cut.episode
        return {"task": episode.task, "instruction": episode.instruction, "robot": self.robot,
                "episode_id": episode.episode_id, "outcome": outcome, "reason": reason,
                "final_state": episode.final_state, "recovered": episode.recovered,
                "duration_s": round(duration, 3), "messages": bag.recorder.messages,
                "topics": sorted(bag.last_write_ns),
                "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}

    def _write_sidecar(self, bag: _Bag, outcome: str, reason: str, duration: float) -> None:
        (bag.path / DEMONSTRATION_FILE).write_text(yaml.safe_dump(
            self._sidecar(bag, outcome, reason, duration), sort_keys=False))

    def _keep(self, bag: _Bag, reason: str, duration: float) -> None:
        final = self.output_dir / bag.path.name
        self._write_sidecar(bag, "demonstration", reason, duration)
        bag.path.rename(final)
        self.kept += 1
        self.get_logger().info(f"kept demonstration {final} ({duration:.1f} s, "
                               f"{bag.recorder.messages} messages; {self.kept} kept, "
                               f"{self.rejected} rejected)")

    def _discard(self, bag: _Bag, reason: str, duration: float = 0.0) -> None:
        self.rejected += 1
        if self.keep_rejected and bag.path.exists():
            self._write_sidecar(bag, "rejected", reason, duration)
            target = self.output_dir / REJECTED_DIR / bag.path.name
            target.parent.mkdir(exist_ok=True)
            bag.path.rename(target)
        else:
            shutil.rmtree(bag.path, ignore_errors=True)
        self.get_logger().info(f"not a demonstration: {bag.path.name} ({reason}; "
                               f"{self.kept} kept, {self.rejected} rejected)")

    def close(self) -> None:
        """At shutdown: drop an unfinished episode; leave unconfirmed ones where they are."""
        for cut in self.cutter.close():
            self._end(cut)
        for bag in self.pending:
            self._write_sidecar(bag, "unconfirmed", "shut down before the success check answered",
                                0.0)
            self.get_logger().warning(f"{bag.path}: the success check never answered; the bag "
                                      "stays there, unconfirmed")


def main(args: list[str] | None = None) -> int:
    """Entry point: record until SIGINT; an unfinished episode is dropped, not kept."""
    node = start_node("episode_recorder", EpisodeRecorder, args, errors=(ValueError, OSError))
    if node is None:
        return 2
    spin_until_shutdown(node, cleanup=node.close)
    return 0
