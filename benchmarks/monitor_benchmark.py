"""Recovery-monitor speed: compact model per window, frame -> diagnosis in the simulated loop.

1. Model: ``diagnose()`` on windows of 10 new 640x480 frames (every frame resized, the worst
   case), p50/p95 over ``--windows``; the issue's target is p95 <= 30 ms on 2 cores.
2. Loop: the installed ``mujoco_sim`` (camera 640x480 at ``--fps``) and ``recovery_monitor``
   (every 10 frames on the last 10), for ``--loop-seconds``. Latency is the receive time of a
   diagnosis minus the stamp of the window's last frame; the baseline, measured in the same
   run, is the same figure for the camera images themselves (what transport alone costs).
   Target: p95 <= 60 ms.
Run: ``source scripts/env.sh && python benchmarks/monitor_benchmark.py --model DIR``
(``DIR`` a compact checkpoint; without one a random network of the default shape is timed).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import time

import numpy as np


def model_latency(model_dir: str, windows: int, threads: int) -> tuple[float, float, str]:
    """p50 and p95 (s) of diagnose() on windows of 10 fresh 640x480 frames."""
    from failrecov_ros.models.base import Window, diagnose
    from failrecov_ros.models.compact import CompactConfig, CompactModel, CompactNet

    if model_dir:
        model = CompactModel.load(model_dir, threads=threads)
    else:
        model = CompactModel(CompactNet(CompactConfig(stages=("approach",))), threads=threads)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 255, (20, 480, 640, 3), dtype=np.uint8)
    latencies = []
    for k in range(windows + 5):
        frames = pool[rng.integers(0, len(pool), 10)]
        window = Window(frames=frames, stamps_ns=tuple(range(10 * k, 10 * k + 10)),
                        instruction="pick up the red cube", task="pick_cube",
                        joint_positions=rng.normal(size=(10, 7)), gripper_width=np.zeros(10))
        diagnosis = diagnose(model, window)
        if diagnosis.is_unknown:
            raise RuntimeError(diagnosis.error)
        if k >= 5:  # warm-up
            latencies.append(diagnosis.latency_s)
    return (float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95)),
            model.name)


def loop_latency(model_dir: str, seconds: float, fps: float, threads: int) -> dict[str, float]:
    """Frame -> published diagnosis latency over DDS, with image transport as the baseline."""
    import rclpy
    from ament_index_python.packages import get_package_prefix
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from failrecov_ros.msg import FailureDiagnosis
    from failrecov_ros.ros.conversions import time_to_ns

    lib = f"{get_package_prefix('failrecov_ros')}/lib/failrecov_ros"
    with tempfile.TemporaryDirectory() as scratch:
        if not model_dir:
            from failrecov_ros.models.compact import CompactConfig, CompactModel, CompactNet

            model_dir = f"{scratch}/random"
            CompactModel(CompactNet(CompactConfig(stages=("approach",)))).save(model_dir)
        processes = [
            subprocess.Popen([f"{lib}/mujoco_sim", "--ros-args", "-p", f"camera.fps:={fps}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen([f"{lib}/recovery_monitor", "--ros-args", "-p",
                              f"model.path:={model_dir}", "-p", f"model.threads:={threads}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        rclpy.init()
        node = rclpy.create_node("monitor_benchmark")
        images, diagnoses = [], []

        def on_image(msg: Image) -> None:
            images.append(time.time_ns() - time_to_ns(msg.header.stamp))

        def on_diagnosis(msg: FailureDiagnosis) -> None:
            diagnoses.append((time.time_ns() - time_to_ns(msg.header.stamp), msg.latency_s))

        node.create_subscription(Image, "camera/camera/color/image_raw", on_image, 5)
        node.create_subscription(FailureDiagnosis, "diagnosis", on_diagnosis, 10)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            deadline = time.monotonic() + 120
            while not diagnoses and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
            images.clear()
            diagnoses.clear()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.1)
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
            for process in processes:
                process.send_signal(signal.SIGINT)
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
    if not diagnoses:
        raise RuntimeError("no diagnosis arrived: is the package built and the model loadable?")
    end_to_end = np.array([d[0] for d in diagnoses]) / 1e6
    inference = np.array([d[1] for d in diagnoses]) * 1e3
    transport = np.array(images) / 1e6
    return {"diagnoses": len(diagnoses), "frames": len(images),
            "e2e_p50_ms": float(np.percentile(end_to_end, 50)),
            "e2e_p95_ms": float(np.percentile(end_to_end, 95)),
            "inference_p95_ms": float(np.percentile(inference, 95)),
            "image_p50_ms": float(np.percentile(transport, 50)),
            "image_p95_ms": float(np.percentile(transport, 95))}


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="compact checkpoint folder")
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--loop-seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model")
    parser.add_argument("--skip-loop", action="store_true")
    args = parser.parse_args()
    p50, p95, name = model_latency(args.model, args.windows, args.threads)
    print(f"compact model ({name}, {args.threads} threads), 10 x 640x480 frames per window: "
          f"p50 {1000 * p50:.1f} ms, "
          f"p95 {1000 * p95:.1f} ms (target p95 <= 30 ms)")
    if args.skip_loop:
        return
    loop = loop_latency(args.model, args.loop_seconds, args.fps, args.threads)
    print(f"simulated loop, {loop['diagnoses']} diagnoses over {args.loop_seconds:.0f} s: "
          f"frame -> diagnosis p50 {loop['e2e_p50_ms']:.1f} ms, p95 {loop['e2e_p95_ms']:.1f} ms "
          f"(target p95 <= 60 ms); model p95 {loop['inference_p95_ms']:.1f} ms; baseline "
          f"image transport p50 {loop['image_p50_ms']:.1f} ms, p95 {loop['image_p95_ms']:.1f} ms"
          f" ({loop['frames']} frames); ratio e2e/transport p95 "
          f"{loop['e2e_p95_ms'] / max(loop['image_p95_ms'], 1e-6):.1f}x")


if __name__ == "__main__":
    main()
