"""Replay evaluation speed: bag time scored per second of wall time, with the compact model.

Writes ``--episodes`` episode bags (640x480 rgb8 at 30 Hz, joint_states at 100 Hz, a label) of
``--seconds`` each with the data engine's writer, then replays them through the monitor's core
and the model exactly as ``failrecov eval replay`` does (every 10 frames on the last 10, the
default triggers). Prints x real time overall and split into reading + decoding the bag
(replay with a model that answers instantly) and the model itself. Goal: >= 20x.
Run: ``source scripts/env.sh && python benchmarks/replay_benchmark.py [--model DIR]
[--workers 2]``
(default: the shipped checkpoint, checkpoints/compact).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class _Instant:
    """A model that costs nothing: what is left is reading, decoding and the monitor core."""

    name = "instant"

    def predict(self, window):
        return {"failed": False, "failure_type": "none", "stage": "", "confidence": 1.0,
                "summary": "", "correction": {"kind": "none"}}

    def close(self):
        pass


def write_bags(folder: Path, episodes: int, seconds: float, storage: str) -> list[Path]:
    """Episode bags with moving synthetic frames (the model's cost does not depend on them)."""
    from failrecov_ros.core.labels import parse_dream2fix
    from failrecov_ros.datagen.bags import write_episode_bag
    from failrecov_ros.robots import fr3

    names = list(fr3.ARM_JOINTS) + list(fr3.FINGER_JOINTS)
    home = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04, 0.04])
    label = parse_dream2fix("RESULT=FAIL; TYPE=gripper; STAGE=keyframe; MODE=delay_close; "
                            "FIX_G=CLOSE; KF_GT=31;")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    paths = []
    for k in range(episodes):
        times = np.arange(int(seconds * 100)) / 100
        frame_times = np.arange(int(seconds * 30)) / 30
        frames = [np.roll(base, 7 * i + k, axis=1) for i in range(len(frame_times))]
        positions = home + 0.01 * np.sin(times)[:, None]
        paths.append(write_episode_bag(
            folder / f"episode_{k:03d}", times=times, joint_names=names, positions=positions,
            rgb=frames, frame_times=frame_times, instruction="pick up the red cube",
            storage=storage, label=label, label_onset_s=seconds / 2))
    return paths


def main() -> None:
    """Write the bags, replay them twice (instant model, real model), print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "compact"))
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0,
                        help="also time replay_bags_parallel with this many processes "
                        "(wall time including their start-up)")
    args = parser.parse_args()

    from failrecov_ros.evaluation import metrics, replay
    from failrecov_ros.models.registry import ModelSpec, load_model

    with tempfile.TemporaryDirectory(prefix="replay_bench_") as tmp:
        started = time.perf_counter()
        bags = write_bags(Path(tmp), args.episodes, args.seconds, args.storage)
        size = sum(f.stat().st_size for b in bags for f in b.iterdir()) / 1e6
        print(f"wrote {len(bags)} bags x {args.seconds:.0f} s of 640x480 @ 30 Hz "
              f"({size:.0f} MB, {args.storage}) in {time.perf_counter() - started:.1f} s")
        replay.make_supervisor(replay.ReplayOptions())  # load kinematics outside the timing
        baseline = replay.replay_bags(bags, _Instant())
        model = load_model(ModelSpec(backend="compact", path=args.model, threads=args.threads))
        replay.replay_bags(bags[:1], model)  # warm-up (first torch call)
        cpu_started = time.process_time()
        results = replay.replay_bags(bags, model)
        cpu = time.process_time() - cpu_started
        model.close()
        parallel_wall = None
        if args.workers > 1:
            import functools

            started = time.perf_counter()
            parallel = replay.replay_bags_parallel(
                bags, functools.partial(load_model, ModelSpec(
                    backend="compact", path=args.model, threads=args.threads)), args.workers)
            parallel_wall = time.perf_counter() - started
            results_parallel = [d.to_dict() | {"latency_s": 0} for r in parallel
                                for d in r.diagnoses]
            assert results_parallel == [d.to_dict() | {"latency_s": 0} for r in results
                                        for d in r.diagnoses], "parallel differs"
    errors = [r.error for r in baseline + results if r.error]
    if errors:
        raise SystemExit(f"replay failed: {errors}")
    footage = sum(r.duration_s for r in results)
    read_wall = sum(r.wall_s for r in baseline)
    wall = sum(r.wall_s for r in results)
    latencies = [d.latency_s for r in results for d in r.diagnoses]
    windows = len(latencies)
    lat = metrics.latency_summary(latencies)
    print(f"footage {footage:.1f} s, {windows} windows analysed, {args.threads} torch thread(s)")
    print(f"read + decode + monitor core only: {read_wall:.2f} s = "
          f"{footage / read_wall:.1f}x real time")
    print(f"model per window: p50 {1000 * lat['p50_s']:.1f} ms, p95 {1000 * lat['p95_s']:.1f} "
          f"ms, total {sum(latencies):.2f} s")
    print(f"replay with the compact model: {wall:.2f} s = {footage / wall:.1f}x real time "
          f"(goal >= 20x)")
    print(f"CPU time of that replay (all threads): {cpu:.2f} s = {footage / cpu:.1f}x real time "
          "per core used (robust to other load on a shared machine)")
    if parallel_wall is not None:
        print(f"{args.workers} worker processes, start-up included: {parallel_wall:.2f} s = "
              f"{footage / parallel_wall:.1f}x real time")


if __name__ == "__main__":
    main()
