"""``failrecov launch``: ``ros2 launch``'s command line on top of the strict runner."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from failrecov_ros.launching import description, processes


def resolve(target: str, rest: Sequence[str]) -> tuple[Path, list[str]]:
    """``FILE [args]`` or ``PACKAGE FILE [args]`` (as ``ros2 launch``) -> file and arguments."""
    path = Path(target)
    if path.is_file():
        return path, list(rest)
    if rest and ":=" not in rest[0]:
        return description.find_launch_file(target, rest[0]), list(rest[1:])
    if ":=" not in target and path.suffix == ".xml":
        raise description.LaunchError(f"launch file {target} does not exist")
    raise description.LaunchError(f"{target!r} is neither a launch file nor a package "
                                  "followed by a launch file name")


def main(target: str, rest: Sequence[str], print_only: bool = False) -> int:
    """Load the plan, print it or run it; 2 for a launch file that cannot be run."""
    try:
        path, tokens = resolve(target, rest)
        plan = description.load(path, description.parse_cli_arguments(tokens))
    except description.LaunchError as exc:
        print(f"failrecov launch: error: {exc}", file=sys.stderr)
        return 2
    if print_only:
        try:
            print(plan.describe())
        except BrokenPipeError:  # `--print | head`
            sys.stderr.close()
        return 0
    return processes.run(plan)
