"""`failrecov`: the command-line entry point.

Schema tools, the demo, the simulator's expert, data generation, training and evaluation of
the compact model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from failrecov_ros.core.labels import diagnose_any
from failrecov_ros.core.outputs_file import read_outputs
from failrecov_ros.core.schema import MODEL_OUTPUT_SCHEMA, RECORD_SCHEMA

PACKAGE = "failrecov_ros"


def _share_dir() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(PACKAGE))


def _executable(name: str) -> str:
    from ament_index_python.packages import get_package_prefix

    path = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: was the package built with colcon?")
    return str(path)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON schema models are constrained to (or the full record schema)."""
    print(json.dumps(RECORD_SCHEMA if args.record else MODEL_OUTPUT_SCHEMA, indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a JSON Lines file of model outputs; exit 1 when any is invalid."""
    try:
        records = read_outputs(args.file)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    invalid = 0
    for index, record in enumerate(records):
        diagnosis = diagnose_any(record["text"])
        if diagnosis.is_unknown:
            invalid += 1
            print(f"{index}: INVALID {diagnosis.error}")
        else:
            print(f"{index}: ok {diagnosis.failure_type.value} {diagnosis.correction.kind.value}")
    print(f"{len(records) - invalid} valid, {invalid} invalid")
    return 1 if invalid else 0


def _stop(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGINT, wait, then SIGKILL (rclpy executors may ignore SIGTERM)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cmd_demo(args: argparse.Namespace) -> int:
    """Round-trip recorded model outputs through the schema and real DDS between two processes.

    Until the simulated closed loop exists this is the end-to-end path that does: parse and
    validate each output, publish it as a FailureDiagnosis from one process, receive and
    re-validate it in another, and summarise.
    """
    outputs = Path(args.outputs or _share_dir() / "config" / "demo_model_outputs.jsonl")
    records = read_outputs(outputs)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="failrecov_demo_") as tmp:
        summary_path = Path(tmp) / "summary.json"
        print(f"demo: {len(records)} model outputs from {outputs}")
        echo = subprocess.Popen(
            [_executable("diagnosis_echo"), "--ros-args", "-p",
             f"expected_count:={len(records)}", "-p", f"summary_file:={summary_path}"], env=env)
        try:
            replay = subprocess.run(
                [_executable("diagnosis_replay"), "--ros-args", "-p", f"input_file:={outputs}",
                 "-p", "wait_for_subscribers:=1", "-p", f"rate_hz:={args.rate}"],
                env=env, timeout=args.timeout)
            deadline = time.monotonic() + args.timeout
            while echo.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            _stop(echo)
        if replay.returncode != 0 or not summary_path.exists():
            print(f"demo: FAILED (replay exit {replay.returncode}, echo exit {echo.returncode})")
            return 1
        summary = json.loads(summary_path.read_text())
    print("\n  failure_type     count")
    for name, count in sorted(summary["by_type"].items()):
        print(f"  {name:16s} {count:5d}")
    unknown = summary["by_type"].get("unknown", 0)
    print(f"\ndemo: sent {len(records)}, received {summary['received']} over DDS, "
          f"{summary['received'] - unknown} valid, {unknown} rejected as unknown, "
          f"{summary['invalid_messages']} messages breaking the schema")
    return 0 if summary["received"] == len(records) and summary["invalid_messages"] == 0 else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cmd_expert(args: argparse.Namespace) -> int:
    """Run the scripted expert over seeds and print its success rate per task."""
    from failrecov_ros.sim.expert import run_expert
    from failrecov_ros.sim.tasks import TASKS, make_task

    tasks = TASKS if args.task == "all" else (args.task,)
    worst = 1.0
    for name in tasks:
        started = time.perf_counter()
        failures = [seed for seed in range(args.first_seed, args.first_seed + args.seeds)
                    if not run_expert(make_task(name, seed)).success]
        rate = 1 - len(failures) / args.seeds
        worst = min(worst, rate)
        print(f"{name}: {args.seeds - len(failures)}/{args.seeds} = {rate:.1%} "
              f"({(time.perf_counter() - started) / args.seeds:.2f} s/episode)"
              + (f"; failed seeds {failures}" if failures else ""))
    return 0 if worst >= args.require else 1


def cmd_datagen(args: argparse.Namespace) -> int:
    """Generate a verified failure/correction dataset (resumes an interrupted run)."""
    import dataclasses
    import shlex

    from failrecov_ros.datagen import config as datagen_config
    from failrecov_ros.datagen.runner import generate

    try:
        config = datagen_config.load(args.config)
        if args.seed is not None:
            config = dataclasses.replace(config, seed=args.seed)
        command = "failrecov " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        result = generate(config, args.out, args.samples, args.workers, command=command,
                          progress=not args.quiet)
    except ValueError as error:
        print(f"datagen: {error}", file=sys.stderr)
        return 2
    rate = result["new_accepted"] / max(result["elapsed_s"], 1e-9) * 60
    print(f"datagen: {result['accepted']} verified samples in {args.out} "
          f"({result['new_accepted']} new, {rate:.0f}/min with {args.workers} workers); "
          f"card: {args.out}/README.md")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the compact model on data-engine output; writes a checkpoint folder."""
    import dataclasses

    from failrecov_ros.training.compact import TrainConfig, load_samples, parse_filter, train

    try:
        settings = TrainConfig(epochs=args.epochs, image_size=args.image_size, seed=args.seed,
                               validation_fraction=args.validation_fraction,
                               threads=args.threads, batch_size=args.batch_size)
        exclude = parse_filter(args.exclude)
        started = time.monotonic()
        samples = load_samples(args.data, settings.image_size, exclude=exclude or None)
        print(f"train: {len(samples)} samples decoded in {time.monotonic() - started:.0f} s"
              + (f" (excluding {exclude})" if exclude else ""), file=sys.stderr)
    except (ValueError, OSError) as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    trained_on = f"{Path(args.data).resolve()}" + (f" excluding {exclude}" if exclude else "")
    report = train(samples, settings, args.out, trained_on=trained_on,
                   progress=lambda line: print(f"train: {line}", file=sys.stderr))
    print(json.dumps({"out": str(args.out), **report,
                      "settings": dataclasses.asdict(settings)}, indent=1))
    return 0


def cmd_eval_dataset(args: argparse.Namespace) -> int:
    """Score a compact checkpoint on a generated dataset with the papers' metrics."""
    from failrecov_ros.models.base import ModelLoadError
    from failrecov_ros.models.compact import CompactModel
    from failrecov_ros.training.compact import (
        load_samples,
        matches_variation,
        parse_filter,
        predict,
        score,
    )

    try:
        model = CompactModel.load(args.model, threads=args.threads)
        samples = load_samples(args.data, model.config.image_size,
                               window_frames=model.config.window_frames,
                               only=parse_filter(args.only) or None)
    except (ModelLoadError, ValueError, OSError) as error:
        print(f"eval: {error}", file=sys.stderr)
        return 2
    predicted = predict(model.net, samples)
    result = {"model": str(args.model), "data": str(args.data), "filter": args.only,
              "all": score(predicted, samples.labels, args.keyframe_tolerance)}
    for factor_value in args.breakdown:
        wanted = parse_filter([factor_value])
        index = [i for i, v in enumerate(samples.variations) if matches_variation(v, wanted)]
        if index:
            result[factor_value] = score([predicted[i] for i in index],
                                         [samples.labels[i] for i in index],
                                         args.keyframe_tolerance)
    print(json.dumps(result, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and shell completion)."""
    parser = argparse.ArgumentParser(prog="failrecov", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("schema", help="print the diagnosis JSON schema")
    p.add_argument("--record", action="store_true", help="full record schema (with context)")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("validate", help="validate a JSON Lines file of model outputs")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("demo", help="run the end-to-end demo")
    p.add_argument("--outputs", help="JSON Lines model outputs (default: the packaged sample)")
    p.add_argument("--rate", type=float, default=20.0, help="publish rate, Hz")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before giving up")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("datagen", help="generate verified failure/correction training data")
    p.add_argument("--config", help="YAML config (default: the built-in defaults, see "
                   "config/datagen/default.yaml)")
    p.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    p.add_argument("--samples", type=_positive_int, required=True,
                   help="verified samples wanted (whole chunks: it may end a little above)")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_datagen)
    p = sub.add_parser("train", help="train the compact model on `failrecov datagen` output")
    p.add_argument("--data", required=True, help="a `failrecov datagen` output folder")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--epochs", type=_positive_int, default=12)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--image-size", type=_positive_int, default=96)
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="episodes held out for the validation report")
    p.add_argument("--exclude", action="append", default=[], metavar="FACTOR=VALUE",
                   help="leave out samples with this variation (held-out variation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=2)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate models")
    eval_sub = p.add_subparsers(dest="eval_command", required=True)
    q = eval_sub.add_parser("dataset", help="score a compact checkpoint on a generated dataset")
    q.add_argument("--model", required=True, help="compact checkpoint folder")
    q.add_argument("--data", required=True, help="a `failrecov datagen` output folder")
    q.add_argument("--only", action="append", default=[], metavar="FACTOR=VALUE",
                   help="score only samples with this variation")
    q.add_argument("--breakdown", action="append", default=[], metavar="FACTOR=VALUE",
                   help="also report the subset with this variation")
    q.add_argument("--keyframe-tolerance", type=int, default=2,
                   help="Dream2Fix delta_k in frames")
    q.add_argument("--threads", type=_positive_int, default=2)
    q.set_defaults(func=cmd_eval_dataset)
    p = sub.add_parser("expert", help="measure the scripted expert's success rate in simulation")
    p.add_argument("--task", default="all", choices=["all", "pick_cube", "place_in_bowl",
                                                    "push_cube", "stack_cube"])
    p.add_argument("--seeds", type=_positive_int, default=50)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--require", type=float, default=0.0,
                   help="exit 1 when a task's success rate is below this fraction")
    p.set_defaults(func=cmd_expert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
