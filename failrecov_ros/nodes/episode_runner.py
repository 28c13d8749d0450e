"""Run a closed-loop suite on the simulated robot: inject, execute, watch, recover, report.

For every episode of the suite (``failrecov_ros.evaluation.closed_loop``) it sets the
simulator's ``task``/``seed``/``variation``/``faults.*`` parameters, calls ``mujoco_sim/reset``
and sends the executor an ``ExecuteTask`` goal, first with recovery disabled (the task as it
goes without the monitor), then with it enabled (``runs``: ``both``, or only ``baseline`` /
``monitor``, e.g. the fault-free ``clean`` suite that ``episode_recorder`` turns into
demonstrations). It listens to what the rest of the graph
publishes (diagnoses, skill status, the camera), records each monitored episode as a rosbag2
MCAP bag (the colour stream centre-cropped and shrunk to keep the bag small, plus the injected
fault on ``/failure_label`` so ``failrecov eval replay`` can score it), keeps frames from before
and after each recovery, and ends with the table, ``results.json`` and ``report.html``. It exits
0 when the suite ran (whatever the figures), non-zero when it could not run it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger

from failrecov_ros.action import ExecuteTask
from failrecov_ros.datagen.bags import (
    FAILURE_LABEL,
    BagError,
    BagRecorder,
    label_payload,
    message_typestore,
)
from failrecov_ros.evaluation import closed_loop
from failrecov_ros.evaluation.closed_loop import DiagnosisRecord, EpisodeResult, EpisodeSpec
from failrecov_ros.models.compact import resize_frame
from failrecov_ros.msg import FailureDiagnosis, SkillStatus
from failrecov_ros.ros.conversions import duration_to_s, time_to_ns
from failrecov_ros.ros.entry import (
    BackgroundSpinner,
    shutdown_requested,
    start_node,
    wait_for_shutdown,
)
from failrecov_ros.ros.qos import event_qos, latched_qos, sensor_qos
from failrecov_ros.ros.requests import first_answer
from failrecov_ros.ros.sensors import image_to_array, rgb_image_msg

COLOR = "camera/camera/color/image_raw"
BAG_IMAGE_SIZE = 128  # px: the monitor looks at a centre crop shrunk further (96 px)
RUNS = {"both": (False, True), "baseline": (False,), "monitor": (True,)}  # monitor off / on


@dataclasses.dataclass
class _Episode:
    """What the subscriptions gather while one episode runs."""

    spec: EpisodeSpec
    monitor: bool
    diagnoses: list[DiagnosisRecord] = dataclasses.field(default_factory=list)
    takeovers: list[str] = dataclasses.field(default_factory=list)
    recorder: BagRecorder | None = None
    onset_ns: int | None = None
    snapshots: list[tuple[str, np.ndarray]] = dataclasses.field(default_factory=list)


class EpisodeRunner(Node):
    """The suite's client: the simulator's parameters and reset, the executor's action."""

    def __init__(self) -> None:
        super().__init__("episode_runner")
        p = self.declare_parameter
        self.suite_name = p("suite", "demo").value
        self.episodes = int(p("episodes", 0).value)
        self.output_dir = Path(p("output_dir", "failrecov_demo").value).expanduser()
        self.sim_node = p("sim_node", "mujoco_sim").value.strip("/")
        self.record_bags = bool(p("record_bags", True).value)
        self.runs = p("runs", "both").value
        if self.runs not in RUNS:
            raise ValueError(f"runs must be one of {', '.join(RUNS)}, got {self.runs!r}")
        self.episode_timeout = float(p("episode_timeout_s", 300.0).value)
        self.server_timeout = float(p("server_timeout_s", 120.0).value)
        self.settle_s = float(p("settle_s", 0.5).value)
        self.threshold = float(p("confidence_threshold", 0.5).value)
        self.specs = closed_loop.suite(self.suite_name, self.episodes or None)
        self.lock = threading.Lock()
        self.current: _Episode | None = None
        self.latest_frame: Image | None = None
        self.store = message_typestore()
        self.set_params = self.create_client(SetParameters, f"/{self.sim_node}/set_parameters")
        self.reset = self.create_client(Trigger, f"/{self.sim_node}/reset")
        self.task_success = self.create_client(Trigger, f"/{self.sim_node}/task_success")
        self.execute = ActionClient(self, ExecuteTask, "execute_task")
        self.create_subscription(FailureDiagnosis, "diagnosis", self._on_diagnosis, event_qos())
        self.create_subscription(SkillStatus, "skill_status", self._on_status, latched_qos())
        self.create_subscription(Image, COLOR, self._on_image, sensor_qos(depth=2))
        self.create_subscription(JointState, "joint_states", self._on_joints, sensor_qos(depth=10))

    # --- subscriptions (store only) ---------------------------------------------------------
    def _record(self, topic: str, msgtype: str, msg, latched: bool = False) -> None:
        episode = self.current
        if episode is None or episode.recorder is None:
            return
        stamp = getattr(getattr(msg, "header", None), "stamp", None)
        ns = time_to_ns(stamp) if stamp is not None and (stamp.sec or stamp.nanosec) \
            else self.get_clock().now().nanoseconds
        try:
            episode.recorder.add_topic(topic, msgtype, latched)
            episode.recorder.write(topic, ns, serialize_message(msg))
        except Exception as error:  # noqa: BLE001 - a bag problem must not stop the trial
            self.get_logger().error(f"recording {topic} stopped: {error}")
            episode.recorder = None

    def _on_diagnosis(self, msg: FailureDiagnosis) -> None:
        with self.lock:
            episode = self.current
            if episode is None:
                return
            episode.diagnoses.append(DiagnosisRecord(
                time_to_ns(msg.header.stamp) * 1e-9, bool(msg.failed), msg.failure_type,
                msg.stage, float(msg.confidence), 1e3 * float(msg.latency_s)))
            self._record("/diagnosis", "failrecov_ros/msg/FailureDiagnosis", msg)

    def _on_status(self, msg: SkillStatus) -> None:
        with self.lock:
            episode = self.current
            if episode is None:
                return
            if msg.event == SkillStatus.EVENT_GRIPPER_CLOSE and episode.onset_ns is None:
                episode.onset_ns = time_to_ns(msg.event_stamp)
            if msg.event == SkillStatus.EVENT_RECOVERY_START and msg.message.startswith(
                    "taking over for "):
                episode.takeovers.append(msg.message.split()[3])
                self._snapshot(episode, f"before recovery {len(episode.takeovers)}")
            if msg.event == SkillStatus.EVENT_RECOVERY_END:
                episode.snapshots.append(("pending after", np.empty(0)))
            self._record("/skill_status", "failrecov_ros/msg/SkillStatus", msg, latched=True)

    def _snapshot(self, episode: _Episode, caption: str) -> None:
        if self.latest_frame is not None:
            try:
                episode.snapshots.append((caption, image_to_array(self.latest_frame)))
            except ValueError as error:
                self.get_logger().warning(f"no snapshot: {error}")

    def _on_image(self, msg: Image) -> None:
        with self.lock:
            self.latest_frame = msg
            episode = self.current
            if episode is None:
                return
            if episode.snapshots and episode.snapshots[-1][0] == "pending after":
                episode.snapshots.pop()
                self._snapshot(episode, f"after recovery {len(episode.takeovers)}")
            if episode.recorder is not None:
                try:
                    small = resize_frame(image_to_array(msg), BAG_IMAGE_SIZE)
                except ValueError as error:
                    self.get_logger().warning(f"frame not recorded: {error}", once=True)
                    return
                self._record(f"/{COLOR}", "sensor_msgs/msg/Image",
                             rgb_image_msg(msg.header.stamp, msg.header.frame_id, small))

    def _on_joints(self, msg: JointState) -> None:
        with self.lock:
            self._record("/joint_states", "sensor_msgs/msg/JointState", msg)

    # --- the suite --------------------------------------------------------------------------
    def _wait(self, future, timeout: float, what: str):
        """``future``'s result; KeyboardInterrupt on a shutdown request, so the suite stops."""
        return self._ask(lambda: future, timeout, what, attempts=1)

    def _ask(self, send, timeout: float, what: str, attempts: int = 2, sent=None):
        """The answer to ``send()``, sent again if lost to discovery (``ros.requests``).

        ``timeout`` s for each send, so a slow answer has as long as before the first resend;
        KeyboardInterrupt on a shutdown request, so the suite stops.
        """
        def pause(seconds: float) -> None:
            if shutdown_requested():
                raise KeyboardInterrupt
            if not rclpy.ok():
                raise RuntimeError(f"no answer from {what}: ROS is shut down")
            time.sleep(seconds)

        future = first_answer(send, timeout, attempts, sent, pause)
        if future is None:
            raise RuntimeError(f"no answer from {what} to {attempts} requests of "
                               f"{timeout:.0f} s each")
        return future.result()

    def _send_goal(self, goal, sent: list):
        """The executor's answer to ``goal``; a resend's other goals are canceled if accepted.

        A goal whose answer was only slow, not lost, may still be accepted after its resend
        was: the one followed is the first answered, and any other is canceled at once.
        """
        handle = self._ask(lambda: self.execute.send_goal_async(goal), 15, "execute_task",
                           sent=sent)

        def cancel_extra(future) -> None:
            other = future.result()
            if other is not None and other is not handle and other.accepted:
                self.get_logger().warning("a resent goal was accepted twice: canceled the "
                                          "extra one")
                other.cancel_goal_async()

        for future in sent:
            future.add_done_callback(cancel_extra)
        return handle

    def _cancel(self, sent: list, name: str, timeout: float = 5.0) -> None:
        """Cancel an episode's goal (``sent``: the send_goal futures), waiting boundedly.

        The executor may accept a goal only now; then it confirms the cancel. One deadline for
        all: a send whose answer was lost never completes.
        """
        deadline = time.monotonic() + timeout

        def settle(done) -> None:
            while not done() and time.monotonic() < deadline:
                time.sleep(0.02)

        def accepted() -> list:
            return [f.result() for f in sent
                    if f.done() and f.result() is not None and f.result().accepted]

        settle(lambda: accepted() or all(f.done() for f in sent))
        handles = accepted()
        if not handles:
            self.get_logger().info(f"interrupted before the goal of {name} was accepted")
            return
        cancels = [h.cancel_goal_async() for h in handles]
        settle(lambda: all(c.done() for c in cancels))
        confirmed = any(c.done() and c.result() is not None and len(c.result().goals_canceling)
                        for c in cancels)
        self.get_logger().info(f"interrupted: {'canceled' if confirmed else 'could not cancel'} "
                               f"the running goal of {name}")

    def wait_for_graph(self) -> None:
        """The simulator's services and the executor's action, or a clear error."""
        for client, what in ((self.set_params, f"/{self.sim_node}/set_parameters"),
                             (self.reset, f"/{self.sim_node}/reset"),
                             (self.task_success, f"/{self.sim_node}/task_success")):
            if not client.wait_for_service(timeout_sec=self.server_timeout):
                raise RuntimeError(f"{what} is not available: is mujoco_sim running?")
        if not self.execute.wait_for_server(timeout_sec=self.server_timeout):
            raise RuntimeError("the execute_task action server is not available: is "
                               "skill_executor running?")

    def setup_sim(self, spec: EpisodeSpec) -> str:
        """Set the episode's simulator parameters and reset; the simulator's answer."""
        request = SetParameters.Request(parameters=[
            Parameter(k, value=v).to_parameter_msg() for k, v in spec.sim_parameters().items()])
        answer = self._ask(lambda: self.set_params.call_async(request), 15, "set_parameters")
        failed = [r.reason for r in answer.results if not r.successful]
        if failed:
            raise RuntimeError(f"the simulator refused the episode's parameters: {failed}")
        answer = self._ask(lambda: self.reset.call_async(Trigger.Request()), 60, "reset")
        if not answer.success:
            raise RuntimeError(f"the simulator did not reset: {answer.message}")
        return answer.message

    def run_episode(self, spec: EpisodeSpec, monitor: bool,
                    bags: Path | None) -> tuple[EpisodeResult, list]:
        """One run of ``spec``; recovery (the monitor's takeover) on when ``monitor``."""
        self.setup_sim(spec)
        if wait_for_shutdown(self.settle_s):  # the monitor's window and status start afresh
            raise KeyboardInterrupt
        episode = _Episode(spec, monitor)
        if bags is not None:
            try:
                episode.recorder = BagRecorder(bags / spec.name, self.store)
                episode.recorder.add_topic(FAILURE_LABEL, "std_msgs/msg/String", latched=True)
            except BagError as error:
                self.get_logger().error(f"not recording {spec.name}: {error}")
        with self.lock:
            self.current = episode
        episode_id = f"{spec.name}_{'monitor' if monitor else 'baseline'}"
        goal = ExecuteTask.Goal(task_name=spec.task, episode_id=episode_id,
                                enable_recovery=monitor)
        start = time.monotonic()
        sent: list = []
        try:
            handle = self._send_goal(goal, sent)
            if not handle.accepted:
                raise RuntimeError(f"the executor refused the goal for {spec.name}")
            outcome = self._wait(handle.get_result_async(), self.episode_timeout,
                                 f"execute_task ({spec.name})")
        except KeyboardInterrupt:  # the suite is stopped: so is the task it started
            self._cancel(sent, spec.name)
            raise
        finally:
            with self.lock:
                self.current = None
            self._close_bag(episode)
        r = outcome.result
        # Success is the simulator's predicate, not the executor's word: a weak closure is
        # reported as a good grasp while the cube stays on the table.
        truth = self._ask(lambda: self.task_success.call_async(Trigger.Request()), 15,
                          "task_success")
        return EpisodeResult(spec, monitor, int(r.error_code), r.error_string,
                             duration_to_s(r.duration), time.monotonic() - start,
                             int(r.recoveries_attempted), int(r.recoveries_succeeded),
                             episode.takeovers, episode.diagnoses, truth.success,
                             truth.message), episode.snapshots

    def _close_bag(self, episode: _Episode) -> None:
        if episode.recorder is None:
            return
        from std_msgs.msg import String

        label = episode.spec.truth()
        payload = label_payload(label, episode.onset_ns if label.failed else None)
        first = self.get_clock().now().nanoseconds
        try:
            episode.recorder.write(FAILURE_LABEL, first, serialize_message(String(data=payload)))
            episode.recorder.close()
        except Exception as error:  # noqa: BLE001
            self.get_logger().error(f"bag of {episode.spec.name} is incomplete: {error}")

    def run_suite(self) -> int:
        """Every episode without then with the monitor, then the table and report files."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        bags = self.output_dir / "bags" if self.record_bags else None
        if bags is not None:
            bags.mkdir(exist_ok=True)
        self.wait_for_graph()
        results, snapshots = [], {}
        total = len(RUNS[self.runs]) * len(self.specs)
        began = time.monotonic()
        for spec in self.specs:
            for monitor in RUNS[self.runs]:
                if shutdown_requested() or not rclpy.ok():
                    raise KeyboardInterrupt
                done = len(results)
                eta = (time.monotonic() - began) / done * (total - done) if done else None
                self.get_logger().info(
                    f"[{done + 1}/{total}] {spec.name} {'with' if monitor else 'without'} the "
                    f"monitor{f' (ETA {eta / 60:.1f} min)' if eta else ''}")
                result, shots = self.run_episode(spec, monitor,
                                                 bags if monitor else None)
                results.append(result)
                if monitor and shots:
                    snapshots[spec.name] = shots
                self.get_logger().info(
                    f"    {'succeeded' if result.success else 'failed'} in "
                    f"{result.duration_s:.1f} s sim ({result.wall_s:.1f} s wall); "
                    f"{len(result.diagnoses)} diagnoses, verdict "
                    f"{closed_loop.episode_verdict(result, self.threshold)}, recoveries "
                    f"{result.recoveries_succeeded}/{result.recoveries_attempted}; "
                    f"{result.message[:120]}")
        if self.runs != "both":  # nothing to compare: the episodes and their outcomes
            path = self.output_dir / "results.json"
            path.write_text(json.dumps({"suite": self.suite_name, "runs": self.runs,
                                        "episodes": [r.to_json() for r in results]}, indent=1))
            print(f"\n{sum(r.success for r in results)}/{len(results)} episodes succeeded "
                  f"({self.runs} runs); wrote {path}", flush=True)
            return 0
        summary = closed_loop.summarize(results, self.threshold)
        table = closed_loop.render_table(summary)
        paths = closed_loop.write_report(self.output_dir, self.suite_name, results, summary,
                                         snapshots, wall_s=time.monotonic() - began,
                                         threshold=self.threshold)
        print(f"\n{table}\n\nwrote {', '.join(str(p) for p in paths)}", flush=True)
        return 0


def main(args: list[str] | None = None) -> int:
    """Entry point: run the suite, then exit (the launch file ends with it)."""
    node = start_node("episode_runner", EpisodeRunner, args)
    if node is None:
        return 2
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spinner = BackgroundSpinner(executor).start()
    code = 1
    try:
        code = node.run_suite()
    except RuntimeError as error:
        node.get_logger().fatal(str(error))
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 130
    finally:
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return code

