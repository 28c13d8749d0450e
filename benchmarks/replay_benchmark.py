"""Replay evaluation speed: bag time scored per second of wall time, with the compact model.

Writes ``--episodes`` episode bags (640x480 rgb8 at 30 Hz, joint_states at 100 Hz, a label) of
``--seconds`` each with the data engine's writer, then replays them through the monitor's core
and the model exactly as ``failrecov eval replay`` does (every 10 frames on the last 10, the
default triggers). Prints x real time overall and split into reading + decoding the bag
(replay with a model that answers instantly) and the model itself. Goal: >= 20x.
By default bags are read ahead in a helper process (``ReplayOptions.read_ahead``); the same
bags are also replayed inline, alternating ``--repeat`` times, and both must give the same
diagnoses. The load average is printed with the figures: the machine may be shared.
Run: ``source scripts/env.sh && python benchmarks/replay_benchmark.py [--model DIR]
[--workers 2] [--repeat 3]``
(default: the shipped checkpoint, checkpoints/compact; the code of this checkout, not of
install/).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package (a reader process inherits the path)


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


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def _timed(replay, bags, model, options):
    """Replay; (results, CPU s of this process, CPU s of the reader process)."""
    reader = replay._READ_AHEAD
    pid = reader.process.pid if reader is not None and options.read_ahead else None
    reader_cpu = _cpu_s(pid) if pid else 0.0
    cpu = time.process_time()
    results = replay.replay_bags(bags, model, options)
    cpu = time.process_time() - cpu
    return results, cpu, (_cpu_s(pid) - reader_cpu) if pid else 0.0


def _same(results) -> list:
    return [(r.error, r.counters, [d.to_dict() | {"latency_s": 0} for d in r.diagnoses])
            for r in results]


def main() -> None:
    """Write the bags, replay them (instant model; real model read ahead and inline), print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "compact"))
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed replays of each kind (read ahead, inline), alternating")
    parser.add_argument("--workers", type=int, default=0,
                        help="also time replay_bags_parallel with this many processes "
                        "(wall time including their start-up)")
    args = parser.parse_args()

    from failrecov_ros.evaluation import metrics, replay
    from failrecov_ros.models.registry import ModelSpec, load_model

    ahead = replay.ReplayOptions()
    inline = dataclasses.replace(ahead, read_ahead=False)
    print(f"replay code: {replay.__file__}; {os.cpu_count()} CPUs; {_load()}")
    if not replay._reads_ahead(ahead):
        print("read-ahead is off here (one CPU): both kinds below replay inline")
    runs: dict[str, list] = {"read ahead": [], "inline": []}
    with tempfile.TemporaryDirectory(prefix="replay_bench_") as tmp:
        started = time.perf_counter()
        bags = write_bags(Path(tmp), args.episodes, args.seconds, args.storage)
        size = sum(f.stat().st_size for b in bags for f in b.iterdir()) / 1e6
        print(f"wrote {len(bags)} bags x {args.seconds:.0f} s of 640x480 @ 30 Hz "
              f"({size:.0f} MB, {args.storage}) in {time.perf_counter() - started:.1f} s")
        replay.make_supervisor(ahead)  # load kinematics outside the timing
        started = time.perf_counter()
        replay.start_read_ahead()
        replay.replay_bags(bags[:1], _Instant(), ahead)  # the reader process's imports
        print(f"reader process start-up (once per run): {time.perf_counter() - started:.2f} s")
        baseline = replay.replay_bags(bags, _Instant(), inline)
        model = load_model(ModelSpec(backend="compact", path=args.model, threads=args.threads))
        replay.replay_bags(bags[:1], model, inline)  # warm-up (first torch call)
        [first] = replay.replay_bags(bags[:1], model, ahead)
        print(f"first bag read ahead with this model: {first.wall_s:.2f} s (once per run: the "
              "reader imports the module of the model's frame_transform, torch)")
        for _ in range(args.repeat):
            for name, options in (("read ahead", ahead), ("inline", inline)):
                runs[name].append((*_timed(replay, bags, model, options), _load()))
        model.close()
        parallel_wall = None
        if args.workers > 1:
            import functools

            started = time.perf_counter()
            parallel = replay.replay_bags_parallel(
                bags, functools.partial(load_model, ModelSpec(
                    backend="compact", path=args.model, threads=args.threads)), args.workers)
            parallel_wall = time.perf_counter() - started
            assert _same(parallel) == _same(runs["inline"][0][0]), "parallel differs"
    reference = _same(runs["inline"][0][0])
    for name, timed in runs.items():
        assert all(_same(results) == reference for results, *_ in timed), f"{name} differs"
    errors = [r.error for r in baseline + runs["inline"][0][0] if r.error]
    if errors:
        raise SystemExit(f"replay failed: {errors}")
    results = runs["inline"][0][0]
    footage = sum(r.duration_s for r in results)
    read_wall = sum(r.wall_s for r in baseline)
    windows = sum(len(r.diagnoses) for r in results)
    print(f"footage {footage:.1f} s, {windows} windows analysed, {args.threads} torch "
          "thread(s); read ahead and inline gave the same diagnoses")
    print(f"read + decode + monitor core only (inline): {read_wall:.2f} s = "
          f"{footage / read_wall:.1f}x real time")
    for name, what in (("inline", "shrink frames + network"),
                       ("read ahead", "network; the reader shrank the frames")):
        latencies = [d.latency_s for r in runs[name][0][0] for d in r.diagnoses]
        lat = metrics.latency_summary(latencies)
        print(f"model per window, {name} ({what}): p50 {1000 * lat['p50_s']:.1f} ms, p95 "
              f"{1000 * lat['p95_s']:.1f} ms, total {sum(latencies):.2f} s")
    for name, timed in runs.items():
        for results, cpu, reader_cpu, load in timed:
            wall = sum(r.wall_s for r in results)
            reader = f" + reader process {reader_cpu:.2f} s" if reader_cpu else ""
            print(f"replay with the compact model, {name:10s}: {wall:.2f} s = "
                  f"{footage / wall:5.1f}x real time (goal >= 20x); CPU {cpu:.2f} s"
                  f"{reader} ({load})")
    best = {name: max(footage / sum(r.wall_s for r in timed_run[0]) for timed_run in timed)
            for name, timed in runs.items()}
    print("best of each: " + ", ".join(f"{name} {x:.1f}x" for name, x in best.items()))
    if parallel_wall is not None:
        print(f"{args.workers} worker processes, start-up included: {parallel_wall:.2f} s = "
              f"{footage / parallel_wall:.1f}x real time")


if __name__ == "__main__":
    main()
