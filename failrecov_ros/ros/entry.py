"""How every node starts and stops.

``start_node``: rclpy up and the node built, or one FATAL line and no node; each executable's
``main`` returns exit code 2 when it gives None, so a launch file or a supervisor sees why a
node never came up instead of a traceback. ``spin_until_shutdown``: spin until SIGINT or an
external shutdown, then the node's own clean-up and rclpy's, in that order, whatever happened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor

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


def spin_until_shutdown(node, executor: Executor | None = None, *,
                        start: Callable[[], None] | None = None,
                        cleanup: Callable[[], None] | None = None) -> None:
    """Spin ``node`` (one thread unless ``executor`` says otherwise) until SIGINT.

    ``start`` runs first, inside the same guard (a SIGINT during it stops cleanly too);
    ``cleanup`` runs after the executor stopped and before the node is destroyed.
    """
    executor = executor or SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if start is not None:
            start()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        if cleanup is not None:
            cleanup()
        node.destroy_node()
        rclpy.try_shutdown()
