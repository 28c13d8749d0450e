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


def cmd_roundtrip(args: argparse.Namespace) -> int:
    """Round-trip recorded model outputs through the schema and real DDS between two processes.

    Parse and validate each output, publish it as a FailureDiagnosis from one process, receive
    and re-validate it in another, and summarise (a smoke test of a workstation's DDS set-up).
    """
    outputs = Path(args.outputs or _share_dir() / "config" / "demo_model_outputs.jsonl")
    records = read_outputs(outputs)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="failrecov_demo_") as tmp:
        summary_path = Path(tmp) / "summary.json"
        print(f"roundtrip: {len(records)} model outputs from {outputs}")
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
            print(f"roundtrip: FAILED (replay exit {replay.returncode}, echo exit "
                  f"{echo.returncode})")
            return 1
        summary = json.loads(summary_path.read_text())
    print("\n  failure_type     count")
    for name, count in sorted(summary["by_type"].items()):
        print(f"  {name:16s} {count:5d}")
    unknown = summary["by_type"].get("unknown", 0)
    print(f"\nroundtrip: sent {len(records)}, received {summary['received']} over DDS, "
          f"{summary['received'] - unknown} valid, {unknown} rejected as unknown, "
          f"{summary['invalid_messages']} messages breaking the schema")
    return 0 if summary["received"] == len(records) and summary["invalid_messages"] == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The closed-loop demo: ``launch/demo.launch.xml`` under the launch runner.

    The simulated FR3 runs the suite's episodes with failures injected, once without and once
    with the monitor; episode_runner prints progress and the closing table and writes
    results.json, results.csv, report.html and bags/ to ``--out``. With the compact backend and
    no checkpoint (neither ``--model`` nor the shipped one), one is trained first.
    """
    from failrecov_ros.launching.command import main as launch_main

    model = Path(args.model).expanduser() if args.model else _share_dir() / "checkpoints" / \
        "compact"
    if not (model / "model.safetensors").exists():
        if args.model:
            print(f"demo: no compact checkpoint at {model} (model.safetensors missing)",
                  file=sys.stderr)
            return 2
        model = Path(args.out).expanduser().resolve() / "checkpoint"
        if not (model / "model.safetensors").exists():
            print(f"demo: no shipped checkpoint; training one into {model} first "
                  "(datagen + train, about 15 min on 2 cores)", flush=True)
            code = _train_demo_checkpoint(model)
            if code:
                return code
    out = Path(args.out).expanduser().resolve()
    launch_args = [f"suite:={args.suite}", f"episodes:={args.episodes}", f"output_dir:={out}",
                   f"model_path:={model}", f"log_level:={args.log_level}",
                   f"real_time_factor:={args.real_time_factor}"]
    print(f"demo: suite '{args.suite}' ({closed_loop_suites()[args.suite]}); results in {out}",
          flush=True)
    return launch_main("failrecov_ros", ["demo.launch.xml", *launch_args], False)


def closed_loop_suites() -> dict[str, str]:
    """Suite name -> description (imported late: the parser stays light)."""
    from failrecov_ros.evaluation.closed_loop import SUITES

    return SUITES


def _train_demo_checkpoint(out: Path) -> int:
    """A small dataset and a short training run (the first-run path without a checkpoint)."""
    data = out.parent / "train_data"
    for argv in (["datagen", "--out", str(data), "--samples", "600", "--workers", "2",
                  "--seed", "0"],
                 ["train", "--data", str(data), "--out", str(out), "--epochs", "12"]):
        code = main(argv)
        if code:
            print(f"demo: 'failrecov {' '.join(argv)}' failed ({code})", file=sys.stderr)
            return code
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _weights(text: str) -> dict[str, float]:
    """``name=weight,...`` as a mapping (argparse type)."""
    weights = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got {item!r}")
    return weights


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
    from failrecov_ros.datagen.bags import find_bags
    from failrecov_ros.datagen.runner import generate

    try:
        config = datagen_config.load(args.config)
        if args.seed is not None:
            config = dataclasses.replace(config, seed=args.seed)
        if args.demonstrations:
            changes = {"demonstrations": tuple(find_bags(args.demonstrations))}
            if args.demonstration_task:
                changes["demonstration_task"] = args.demonstration_task
            config = dataclasses.replace(config, **changes)
        command = "failrecov " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        result = generate(config, args.out, args.samples, args.workers, command=command,
                          progress=not args.quiet)
    except (ValueError, RuntimeError) as error:
        print(f"datagen: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndatagen: interrupted; the chunks committed and the attempts staged in "
              f"{args.out} are kept: run the same command to resume", file=sys.stderr)
        return 130
    rate = result["new_accepted"] / max(result["elapsed_s"], 1e-9) * 60
    print(f"datagen: {result['accepted']} verified samples in {args.out} "
          f"({result['new_accepted']} new, {rate:.0f}/min with {args.workers} workers); "
          f"card: {args.out}/README.md")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    """Closed-loop windows: the skill executor's runs in lockstep, seen as the monitor sees them."""
    import shlex

    from failrecov_ros.datagen.closed_loop import CollectConfig, collect

    try:
        given = {"hold_s": args.hold_s, "none_keep": args.none_keep,
                 "image_size": args.image_size, "tasks": tuple(args.task) or None,
                 "weak_close_mode": args.weak_close, "faults": args.fault_weights}
        config = CollectConfig(seed=args.seed,
                               **{k: v for k, v in given.items() if v is not None})
        library = args.task_library or str(_share_dir() / "config" / "skills" / "tasks.yaml")
        command = "failrecov " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        result = collect(config, args.out, args.episodes, library, command=command,
                         progress=None if args.quiet else
                         lambda line: print(f"collect: {line}", file=sys.stderr))
    except ValueError as error:
        print(f"collect: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), **result}, indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the compact model on data-engine output; writes a checkpoint folder."""
    import dataclasses

    from failrecov_ros.models.base import ModelLoadError
    from failrecov_ros.training.compact import TrainConfig, load_samples, parse_filter, train

    try:
        settings = TrainConfig(epochs=args.epochs, image_size=args.image_size, seed=args.seed,
                               validation_fraction=args.validation_fraction,
                               threads=args.threads, batch_size=args.batch_size,
                               learning_rate=args.learning_rate, init=args.init or "",
                               balance=args.balance,
                               delta_cosine_weight=args.delta_cosine_weight,
                               robot="" if args.robot == "none" else args.robot,
                               stage_input=args.stage_input,
                               stage_dropout=args.stage_dropout)
        exclude = parse_filter(args.exclude)
        started = time.monotonic()
        samples = load_samples(args.data, settings.image_size, exclude=exclude or None)
        print(f"train: {len(samples)} samples decoded in {time.monotonic() - started:.0f} s"
              + (f" (excluding {exclude})" if exclude else ""), file=sys.stderr)
        trained_on = f"{Path(args.data).resolve()}" + (f" excluding {exclude}" if exclude
                                                       else "")
        report = train(samples, settings, args.out, trained_on=trained_on,
                       progress=lambda line: print(f"train: {line}", file=sys.stderr))
    except (ValueError, OSError, ModelLoadError) as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), **report,
                      "settings": dataclasses.asdict(settings)}, indent=1))
    return 0


def _grouped(keys: list[str]) -> dict[str, list[int]]:
    """The indices of each distinct key, in key order (the report's subsets)."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return dict(sorted(groups.items()))


def cmd_eval_dataset(args: argparse.Namespace) -> int:
    """Score a compact checkpoint on a generated dataset with the papers' metrics."""
    from failrecov_ros.evaluation.metrics import type_confusion
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
              "all": score(predicted, samples.labels, args.keyframe_tolerance),
              "confusion": type_confusion(predicted, samples.labels)}
    subsets = {}
    for factor_value in args.breakdown:
        wanted = parse_filter([factor_value])
        subsets[factor_value] = [i for i, v in enumerate(samples.variations)
                                 if matches_variation(v, wanted)]
    if args.by_type:
        subsets.update(_grouped([f"type={label.failure_type.value}" for label in samples.labels]))
    if args.by_stage:
        subsets.update(_grouped([f"type={label.failure_type.value},task={task},stage={label.stage}"
                                 for label, task in zip(samples.labels, samples.tasks,
                                                        strict=True)]))
    for name, index in subsets.items():
        if index:
            result[name] = score([predicted[i] for i in index],
                                 [samples.labels[i] for i in index], args.keyframe_tolerance)
    print(json.dumps(result, indent=1))
    return 0


def cmd_eval_replay(args: argparse.Namespace) -> int:
    """Replay bags through the monitor's core and model; print and write the scores.

    Exit 0 when every bag replayed, 1 when some could not be read (each reported), 2 on bad
    arguments or a model that does not load.
    """
    import dataclasses
    import functools

    from failrecov_ros.evaluation import replay, report
    from failrecov_ros.models.base import ModelLoadError
    from failrecov_ros.models.registry import ModelSpec, load_model
    from failrecov_ros.monitor.supervisor import TriggerConfig

    try:
        if args.model is None:
            path = _share_dir() / "checkpoints" / "compact"
            spec = ModelSpec(backend="compact", path=str(path), threads=args.threads)
        elif "=" in args.model:
            defaults = ModelSpec(backend="openai", endpoint="x")
            fields = {key: type(getattr(defaults, key))(value) for key, value in
                      (item.split("=", 1) for item in args.model.split(","))}
            spec = ModelSpec(**{"threads": args.threads, **fields})
        else:
            spec = ModelSpec(backend="compact", path=args.model, threads=args.threads)
        topics = dict(item.split("=", 1) for item in args.topic)
        roles = {f.name for f in dataclasses.fields(replay.Topics)} - {"required"}
        unknown = set(topics) - roles
        if unknown:
            raise ValueError(f"unknown topic role(s) {sorted(unknown)}; roles: image, "
                             "joint_states, skill_status, label, camera_info, instruction")
        trigger = {}
        for item in args.trigger:
            key, value = item.split("=", 1)
            default = getattr(TriggerConfig(), key)
            trigger[key] = (tuple(value.split()) if isinstance(default, tuple)
                            else type(default)(value))
        camera = None
        if args.camera_look_at:
            values = [float(v) for v in args.camera_look_at.split(",")]
            if len(values) != 6:
                raise ValueError("--camera-look-at takes px,py,pz,tx,ty,tz")
            camera = tuple(report.look_at_transform(values[:3], values[3:]).reshape(-1))
        options = replay.ReplayOptions(
            topics=replay.Topics(**topics), trigger=TriggerConfig(**trigger), robot=args.robot,
            latency_s=None if args.latency == "measured" else float(args.latency),
            min_confidence=args.min_confidence, camera_from_base=camera)
        labels = replay.read_labels(args.labels) if args.labels else None
        model = load_model(spec)  # fails here, with the reason, before any worker starts
    except (ModelLoadError, ValueError, TypeError, AttributeError, OSError) as error:
        print(f"eval replay: {error}", file=sys.stderr)
        return 2

    def progress(result) -> None:
        if result.error:
            print(f"  {result.name}: ERROR {result.error}", file=sys.stderr)
        else:
            print(f"  {result.name}: {len(result.diagnoses)} diagnoses, verdict "
                  f"{report.verdict_text(result.verdict)}", file=sys.stderr)

    if args.workers > 1:
        model.close()  # each worker loads its own
        loader = functools.partial(load_model, spec)
    else:
        loader = functools.partial(lambda loaded: loaded, model)
    results = replay.replay_bags_parallel(args.bags, loader, args.workers, options, labels,
                                          progress)
    summary = replay.summarise(results, args.keyframe_tolerance, args.min_confidence)
    record = report.provenance(
        model=report.model_record(spec.display_name, spec.path or None, backend=spec.backend),
        data=[str(Path(b).resolve()) for b in args.bags],
        labels=str(Path(args.labels).resolve()) if args.labels else "label topic",
        options={"topics": dataclasses.asdict(options.topics),
                 "trigger": dataclasses.asdict(options.trigger), "robot": options.robot,
                 "latency_s": options.latency_s, "min_confidence": options.min_confidence})
    paths = report.write_replay_report(args.out, results, summary, record,
                                       arrow_for=replay.correction_arrow(options))
    print(f"\n{'bag':28s} {'label':14s} {'verdict':14s} {'conf':>5s} {'delay_s':>8s} "
          f"{'alarms':>6s}")
    for r in results:
        if r.error:
            print(f"{r.name[:28]:28s} ERROR: {r.error[:90]}")
            continue
        delay = r.detection_delay_s
        print(f"{r.name[:28]:28s} {(r.label.diagnosis.failure_type.value if r.label else '-'):14s} "
              f"{r.verdict.failure_type.value:14s} {r.verdict.confidence:5.2f} "
              f"{'-' if delay is None else f'{delay:.3f}':>8s} {r.alarms:6d}")
    print()
    for key in ("binary_accuracy", "type_accuracy", "type_axis_accuracy",
                "dream2fix_correction_accuracy", "delta_cosine", "detection_rate",
                "false_alarms_per_minute", "x_real_time"):
        value = summary.get(key)
        print(f"{key:30s} {'-' if value is None else f'{value:.3f}'}")
    if summary.get("latency"):
        lat = summary["latency"]
        print(f"{'latency p50/p95/max ms':30s} {1000 * lat['p50_s']:.1f} / "
              f"{1000 * lat['p95_s']:.1f} / {1000 * lat['max_s']:.1f}")
    print(f"\nwrote {paths['json']}, {paths['csv']}, {paths['html']}")
    return 1 if summary["errors"] else 0


def cmd_launch(args: argparse.Namespace) -> int:
    """Run (or --print) a launch file like ``ros2 launch``; see failrecov_ros/launching."""
    from failrecov_ros.launching.command import main as launch_main

    return launch_main(args.target, args.rest, args.print)


def _closed_loop_arguments(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--suite", default="demo", choices=sorted(closed_loop_suites()),
                   help="closed-loop suite (default: demo): " + "; ".join(
                       f"{k}: {v}" for k, v in closed_loop_suites().items()))
    p.add_argument("--episodes", type=int, default=0, help="episodes to run; 0 = the suite's")
    p.add_argument("--out", default=default_out, help=f"output folder (default: ./{default_out})")
    p.add_argument("--model", help="compact checkpoint folder (default: the shipped one)")
    p.add_argument("--real-time-factor", type=float, default=1.5,
                   help="simulated seconds per wall second (default 1.5: the demo's budget; "
                   "the nodes run on simulated time)")
    p.add_argument("--log-level", default="warn", help="node log level (default: warn)")


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
    p = sub.add_parser("demo", help="run the closed-loop demo (simulated FR3, injected "
                       "failures, monitor and executor)")
    _closed_loop_arguments(p, default_out="failrecov_demo")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("roundtrip", help="round-trip recorded model outputs over DDS")
    p.add_argument("--outputs", help="JSON Lines model outputs (default: the packaged sample)")
    p.add_argument("--rate", type=float, default=20.0, help="publish rate, Hz")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before giving up")
    p.set_defaults(func=cmd_roundtrip)
    p = sub.add_parser("datagen", help="generate verified failure/correction training data")
    p.add_argument("--config", help="YAML config (default: the built-in defaults, see "
                   "config/datagen/default.yaml)")
    p.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    p.add_argument("--samples", type=_positive_int, required=True,
                   help="verified samples wanted (whole chunks: it may end a little above)")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--demonstrations", nargs="+", metavar="BAG",
                   help="recorded demonstrations (rosbag2 folders/files, or folders of them, "
                   "e.g. episode_recorder's output) perturbed instead of the scripted expert's "
                   "runs (Dream2Fix operators and clean windows only)")
    p.add_argument("--demonstration-task",
                   choices=["pick_cube", "place_in_bowl", "stack_cube"],
                   help="task of the bags that have no recorder sidecar (default: the "
                   "config's demonstration_task)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_datagen)
    p = sub.add_parser("collect", help="closed-loop training windows: the skill executor in "
                       "lockstep with the simulator, faults injected, windows as the monitor "
                       "takes them")
    p.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    p.add_argument("--episodes", type=_positive_int, required=True)
    p.add_argument("--seed", type=int, default=0, help="episodes are drawn from this seed")
    p.add_argument("--task", action="append", default=[],
                   choices=["pick_cube", "place_in_bowl", "push_cube", "stack_cube"],
                   help="task to run (repeat; default: all four, in turn)")
    p.add_argument("--hold-s", type=float, help="seconds recorded after the runner ends")
    p.add_argument("--none-keep", type=float, help="fraction of nominal windows written")
    p.add_argument("--image-size", type=_positive_int, help="stored frame size (px)")
    p.add_argument("--weak-close", choices=["force", "closure", "both"],
                   help="how weak_close is injected (default force: a weak grip; closure: the "
                   "fingers stop short, as in the demo suite)")
    p.add_argument("--fault-weights", type=_weights, metavar="FAULT=W,...",
                   help="relative weights of none, pose_offset, force_open, weak_close "
                   "(default 0.25, 0.35, 0.2, 0.2)")
    p.add_argument("--task-library", help="executor task library (default: the installed "
                   "config/skills/tasks.yaml)")
    p.add_argument("--quiet", action="store_true", help="no per-episode lines")
    p.set_defaults(func=cmd_collect)
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
    p.add_argument("--learning-rate", type=float, default=2e-3, help="AdamW peak learning rate")
    p.add_argument("--init", metavar="CHECKPOINT", help="start from this compact checkpoint "
                   "(fine-tune; its architecture and vocabularies are kept)")
    p.add_argument("--balance", type=float, default=0.0, metavar="EXPONENT",
                   help="draw windows with probability count(type)**-EXPONENT per epoch "
                   "(0: each once; 1: every failure type equally often)")
    p.add_argument("--robot", default="fr3", choices=["fr3", "stretch", "none"],
                   help="whose forward kinematics give the network each frame's tool pose "
                   "(none: joint angles only, as checkpoints before this input)")
    p.add_argument("--delta-cosine-weight", type=float, default=0.0, metavar="W",
                   help="add W * (1 - cosine) of the predicted and true dA to the loss, on the "
                   "unscaled deltas as the FailSafe metric takes them (0: off)")
    p.add_argument("--stage-input", action="store_true",
                   help="give the network the stage the skill executor reports (from scratch)")
    p.add_argument("--stage-dropout", type=float, default=0.15, metavar="P",
                   help="with --stage-input: hide the stage from this fraction of training "
                   "windows, so the model also works without an executor")
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
    q.add_argument("--by-type", action="store_true",
                   help="also report each true failure type's samples (type=...)")
    q.add_argument("--by-stage", action="store_true",
                   help="also report each (true type, task, true stage) group's samples "
                   "(type=...,task=...,stage=...): where in a task a metric is lost")
    q.add_argument("--keyframe-tolerance", type=int, default=2,
                   help="Dream2Fix delta_k in frames")
    q.add_argument("--threads", type=_positive_int, default=2)
    q.set_defaults(func=cmd_eval_dataset)
    q = eval_sub.add_parser("replay", help="replay rosbag2 bags through the monitor and score "
                            "them")
    q.add_argument("bags", nargs="+", metavar="BAG", help="bag directories or .mcap/.db3 files")
    q.add_argument("--labels", help="JSON/JSONL labels keyed by bag name (default: the "
                   "/failure_label topic in each bag)")
    q.add_argument("--model", help="compact checkpoint folder, or a spec "
                   "backend=...,path=...[,name=...] (default: the shipped checkpoint)")
    q.add_argument("--topic", action="append", default=[], metavar="ROLE=NAME",
                   help="topic name for a role: image, joint_states, skill_status, label, "
                   "camera_info, instruction (default: the node's names)")
    q.add_argument("--trigger", action="append", default=[], metavar="KEY=VALUE",
                   help="trigger parameter of the monitor, e.g. every_n_frames=5")
    q.add_argument("--robot", default="fr3", choices=["fr3", "stretch"])
    q.add_argument("--latency", default="0", help="model time per window on the bag clock: "
                   "seconds, or 'measured' (live-like superseding, not deterministic)")
    q.add_argument("--min-confidence", type=float, default=0.5,
                   help="a failed diagnosis counts (alarm, verdict) from this confidence")
    q.add_argument("--keyframe-tolerance", type=int, default=2,
                   help="Dream2Fix delta_k in frames")
    q.add_argument("--camera-look-at", metavar="PX,PY,PZ,TX,TY,TZ",
                   help="camera position and target in the robot base frame: corrections are "
                   "drawn as arrows with the bag's camera_info (the simulator's default: "
                   "1.45,0.55,0.75,0.35,0,0.12)")
    q.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    q.add_argument("--workers", type=_positive_int, default=1,
                   help="processes replaying bags in parallel (each loads the model)")
    q.add_argument("--out", default="replay_results", help="folder for results.json, "
                   "results.csv and report.html")
    q.set_defaults(func=cmd_eval_replay)
    q = eval_sub.add_parser("closed-loop", help="run a closed-loop suite in the simulator "
                            "without and with the monitor (what `failrecov demo` runs)")
    _closed_loop_arguments(q, default_out="closed_loop_results")
    q.set_defaults(func=cmd_demo)
    p = sub.add_parser("expert", help="measure the scripted expert's success rate in simulation")
    p.add_argument("--task", default="all", choices=["all", "pick_cube", "place_in_bowl",
                                                    "push_cube", "stack_cube"])
    p.add_argument("--seeds", type=_positive_int, default=50)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--require", type=float, default=0.0,
                   help="exit 1 when a task's success rate is below this fraction")
    p.set_defaults(func=cmd_expert)
    p = sub.add_parser("launch", help="run an XML launch file (ros2 launch's subset, strict)")
    p.add_argument("target", help="launch file path, or a package name followed by a file name")
    p.add_argument("rest", nargs="*", help="[FILE] name:=value launch arguments")
    p.add_argument("--print", action="store_true", help="print the resolved plan, start nothing")
    p.set_defaults(func=cmd_launch)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
