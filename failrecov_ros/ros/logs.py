"""Logging at a severity chosen at run time, for core code that reports through a callback.

rclpy keys each log call by its call site and refuses a second severity from the same one
("Logger severity cannot be changed between calls"), so ``{"info": logger.info, ...}[level](m)``
raises the first time a level differs from the previous one there. Each severity gets its own
call here.
"""

from __future__ import annotations

#: Levels the core's ``log(level, message)`` callbacks use; anything else logs as an error.
LEVELS = ("debug", "info", "warn", "error")


def log_at(logger, level: str, message: str) -> None:
    """Log ``message`` on an rclpy logger at ``level`` (one of :data:`LEVELS`)."""
    if level == "debug":
        logger.debug(message)
    elif level == "info":
        logger.info(message)
    elif level == "warn":
        logger.warning(message)
    else:
        logger.error(message)
