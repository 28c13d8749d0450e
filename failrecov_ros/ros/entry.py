"""How every node starts: rclpy up and the node built, or one FATAL line and no node.

Each executable's ``main`` returns exit code 2 when this gives None, so a launch file or a
supervisor sees why a node never came up instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import rclpy

N = TypeVar("N")


def start_node(name: str, factory: Callable[[], N], args: Sequence[str] | None = None, *,
               errors: tuple[type[BaseException], ...] = (ValueError,),
               what: str = "bad parameters") -> N | None:
    """``rclpy.init`` then ``factory()``; on one of ``errors`` log FATAL, shut rclpy down."""
    rclpy.init(args=args)
    try:
        return factory()
    except errors as error:
        rclpy.logging.get_logger(name).fatal(f"{what}: {error}")
        rclpy.try_shutdown()
        return None
