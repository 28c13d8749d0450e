"""Simulator speed on this machine: physics, RGB-D rendering and the ROS node's real-time factor.

Prints one line per figure. The rendering baseline is mujoco.Renderer (one pass for color and
one for depth) measured in the same run, so the ratio shows what the single-pass camera buys.
Run: ``source scripts/env.sh && python benchmarks/sim_benchmark.py [--node-seconds 10]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from failrecov_ros.sim.camera import RgbdCamera  # noqa: E402
from failrecov_ros.sim.expert import ExpertRunner  # noqa: E402
from failrecov_ros.sim.scene import Simulation  # noqa: E402
from failrecov_ros.sim.tasks import make_task  # noqa: E402


def physics(seconds: float) -> tuple[float, float]:
    """Steps/s with the arm holding still, and during expert episodes (contacts, IK)."""
    sim = Simulation(make_task("place_in_bowl", 0).scene)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sim.step(500)
        steps += 500
    idle = steps / (time.perf_counter() - start)
    steps, start = 0, time.perf_counter()
    seed = 0
    while time.perf_counter() - start < seconds:
        sim = Simulation(make_task("place_in_bowl", seed).scene)
        runner = ExpertRunner(sim, make_task("place_in_bowl", seed))
        runner.run()
        steps += runner._step
        seed += 1
    return idle, steps / (time.perf_counter() - start)


def rendering(width: int, height: int, frames: int) -> tuple[float, float]:
    """RGB-D frames/s: our single-pass camera vs mujoco.Renderer color + depth passes."""
    task = make_task("place_in_bowl", 0)
    sim = Simulation(task.scene)
    with RgbdCamera(sim.model, "camera", width, height) as camera:
        camera.render(sim.data)
        start = time.perf_counter()
        for _ in range(frames):
            sim.step(50)
            camera.render(sim.data)
        ours = frames / (time.perf_counter() - start)
    renderer = mujoco.Renderer(sim.model, height, width)
    renderer.update_scene(sim.data, "camera")
    renderer.render()
    start = time.perf_counter()
    for _ in range(frames):
        sim.step(50)
        renderer.update_scene(sim.data, "camera")
        renderer.disable_depth_rendering()
        rgb = renderer.render()
        renderer.enable_depth_rendering()
        depth = renderer.render()
    baseline = frames / (time.perf_counter() - start)
    renderer.close()
    assert rgb.shape == (height, width, 3) and np.isfinite(depth).any()
    return ours, baseline


def node_real_time_factor(seconds: float, rtf: float) -> tuple[float, float, int]:
    """Run the mujoco_sim node (camera 640x480 at 10 Hz of sim time) and measure it over DDS."""
    import rclpy
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from failrecov_ros.ros.qos import sensor_qos

    process = subprocess.Popen(
        [_executable("mujoco_sim"), "--ros-args",
         "-p", f"real_time_factor:={rtf}", "-p", "publish_clock:=true", "-p", "camera.fps:=10.0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rclpy.init()
    node = rclpy.create_node("sim_benchmark")
    clock: list[float] = []
    frames: list[float] = []
    node.create_subscription(Clock, "/clock", lambda m: clock.append(
        m.clock.sec + m.clock.nanosec * 1e-9), QoSProfile(depth=100))
    node.create_subscription(Image, "camera/camera/color/image_raw",
                             lambda m: frames.append(time.monotonic()), sensor_qos(depth=5))
    try:
        deadline = time.monotonic() + 60
        while not frames and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        if not frames:
            raise RuntimeError("the simulator node published no image within 60 s")
        sim_start, wall_start, count_start = clock[-1], time.monotonic(), len(frames)
        while time.monotonic() - wall_start < seconds:
            rclpy.spin_once(node, timeout_sec=0.05)
        wall = time.monotonic() - wall_start
        sim_elapsed = clock[-1] - sim_start
        received = len(frames) - count_start
        return sim_elapsed / wall, received / wall, round(sim_elapsed * 10)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        process.send_signal(2)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _executable(name: str) -> str:
    from ament_index_python.packages import get_package_prefix

    return f"{get_package_prefix('failrecov_ros')}/lib/failrecov_ros/{name}"


def main() -> int:
    """Print every figure; ``--skip-node`` measures only the ROS-free parts."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--node-seconds", type=float, default=10.0)
    parser.add_argument("--skip-node", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, MUJOCO_GL={os.environ['MUJOCO_GL']}, "
          f"mujoco {mujoco.__version__}")
    idle, busy = physics(args.seconds)
    step = 0.002
    print(f"physics: {idle:,.0f} steps/s holding still ({idle * step:.0f}x real time), "
          f"{busy:,.0f} steps/s running the expert with IK and contacts "
          f"({busy * step:.0f}x real time)")
    for width, height in ((640, 480), (224, 224)):
        ours, baseline = rendering(width, height, args.frames)
        print(f"rgbd {width}x{height}: {ours:.1f} frames/s single pass; mujoco.Renderer "
              f"color+depth {baseline:.1f} frames/s; ratio {ours / baseline:.2f}x")
    if not args.skip_node:
        for rtf in (1.0, 0.0):
            achieved, fps, expected = node_real_time_factor(args.node_seconds, rtf)
            label = "paced at 1.0" if rtf else "unpaced (as fast as possible)"
            print(f"node {label}: real-time factor {achieved:.2f}, camera 640x480 "
                  f"{fps:.1f} frames/s received in another process "
                  f"(10 Hz of sim time -> {expected / args.node_seconds:.1f}/s expected)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
