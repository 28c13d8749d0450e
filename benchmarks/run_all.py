"""Run every benchmark and write one results file (text of each, plus how and where it ran).

Each benchmark is its own script that prints its figures; this runs them one after another
(never in parallel: they measure the same two cores), echoes their output, and writes
``benchmarks/results/<date>_<host>.json`` with each script's command, exit status, wall time
and printed lines, and the provenance (commit, CPU, cores) of evaluation/report.py.
Run: ``source scripts/env.sh && python benchmarks/run_all.py [--quick] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

from failrecov_ros.evaluation import report

HERE = Path(__file__).resolve().parent
#: name -> (script, full arguments, --quick arguments)
BENCHMARKS = {
    "monitor": ("monitor_benchmark.py", [], ["--windows", "60", "--loop-seconds", "10"]),
    "replay": ("replay_benchmark.py", [], ["--episodes", "2", "--seconds", "5"]),
    "datagen": ("datagen_benchmark.py", ["--samples", "200", "--workers", "2"],
                ["--samples", "40", "--workers", "2"]),
    "sim": ("sim_benchmark.py", [], ["--seconds", "1", "--frames", "20", "--node-seconds", "5"]),
    "camera": ("camera_benchmark.py", [], ["--frames", "300"]),
}


def run(name: str, quick: bool, timeout: float) -> dict:
    """One benchmark as a subprocess; its output is echoed and kept."""
    script, full, short = BENCHMARKS[name]
    command = [sys.executable, str(HERE / script), *(short if quick else full)]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        code, output = None, f"timed out after {timeout:.0f} s\n{error.stdout or ''}"
    print(output, flush=True)
    return {"command": command[1:], "exit_code": code,
            "wall_s": round(time.monotonic() - start, 1),
            "output": [line for line in output.splitlines() if line.strip()]}


def main() -> int:
    """Run the chosen benchmarks and write the results file; non-zero if one failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (noisier figures)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--timeout", type=float, default=1800.0, help="s per benchmark")
    parser.add_argument("--out", help="results file (default: benchmarks/results/...)")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    results = {name: run(name, args.quick, args.timeout) for name in names}
    record = report.provenance(quick=args.quick)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else \
        HERE / "results" / f"{stamp}_{record['hostname']}.json"
    report.write_json(out, {"provenance": record, "benchmarks": results})
    failed = [n for n, r in results.items() if r["exit_code"] != 0]
    print(f"wrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
