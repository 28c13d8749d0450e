"""Data-engine throughput: verified samples per core-minute and retention per failure type.

Runs ``failrecov_ros.datagen.runner.generate`` into a temporary directory (the kinematic
calibration is excluded from the timing: it runs once per dataset) and prints the figures
the issue's goal is stated in (>= 100 verified samples per core-minute at 224x224).

    python benchmarks/datagen_benchmark.py --samples 200 --workers 2
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import tempfile
import time
from pathlib import Path

from failrecov_ros.datagen import config as datagen_config
from failrecov_ros.datagen import dataset
from failrecov_ros.datagen.runner import generate, thresholds_for


def main() -> None:
    """Generate, time and summarise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (default: built-in defaults)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    config = datagen_config.load(args.config)
    load_before = os.getloadavg()[0]  # the figure is per core: say how busy the cores were
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dataset"
        started = time.perf_counter()
        out.mkdir()
        thresholds_for(config, out)
        calibration_s = time.perf_counter() - started
        cpu_before = _cpu_s()
        result = generate(config, out, args.samples, args.workers, progress=False)
        cpu_minutes = (_cpu_s() - cpu_before) / 60
        rows = dataset.ChunkStore(out).read_attempts()
    minutes = result["elapsed_s"] / 60
    per_core = result["accepted"] / (minutes * args.workers)
    print(f"image size {config.image_size[0]}x{config.image_size[1]}, "
          f"{args.workers} worker(s), calibration {calibration_s:.1f} s (once per dataset), "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"verified samples: {result['accepted']} in {result['elapsed_s']:.1f} s "
          f"-> {per_core:.1f} per core-minute ({result['accepted'] / minutes:.1f}/min total); "
          f"{result['accepted'] / cpu_minutes:.1f} per CPU-minute used (steadier on a shared "
          "machine)")
    attempted = collections.Counter(r["failure_type"] for r in rows)
    accepted = collections.Counter(r["failure_type"] for r in rows if r["accepted"])
    print(f"{'failure_type':16s} {'accepted':>8s} {'rows':>6s} {'retention':>9s}")
    for name in sorted(attempted):
        print(f"{name:16s} {accepted[name]:8d} {attempted[name]:6d} "
              f"{accepted[name] / attempted[name]:9.0%}")
    total = sum(attempted.values())
    print(f"{'all':16s} {sum(accepted.values()):8d} {total:6d} "
          f"{sum(accepted.values()) / max(1, total):9.0%}")


def _cpu_s() -> float:
    """CPU seconds used by this process and its finished workers (render threads included)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


if __name__ == "__main__":
    main()
