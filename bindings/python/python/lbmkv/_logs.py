"""Engine logs through :mod:`logging`: lbmkv's records go to the logger
``lbmkv`` and its children named after where they come from
(``lbmkv.cluster.membership``, ...)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional

from . import _lbmkv

__all__ = ["sync_log_level", "TRACE"]

#: The level of lbmkv's trace records, below ``logging.DEBUG``.
TRACE = 5

# lbmkv's levels (1 error ... 5 trace) as logging levels.
_TO_LOGGING = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: TRACE}

_logger = logging.getLogger("lbmkv")
_lock = threading.Lock()
_forwarding: Optional[int] = None


def _engine_level(level: int) -> int:
    """The most verbose lbmkv level that ``level`` lets through (0: none)."""
    for engine, py in sorted(_TO_LOGGING.items(), reverse=True):
        if level <= py:
            return engine
    return 0


def _emit(level: int, target: str, message: str) -> None:
    name = target.replace("::", ".")
    logger = logging.getLogger(name) if name.startswith("lbmkv") else _logger
    logger.log(_TO_LOGGING.get(level, logging.DEBUG), "%s", message)


def sync_log_level() -> None:
    """Forwards lbmkv's records from the level the ``lbmkv`` logger lets
    through now (its effective level). Every :class:`lbmkv.Node` calls it
    when it starts; call it after changing that level while nodes run."""
    global _forwarding
    level = _engine_level(_logger.getEffectiveLevel()) if not _logger.disabled else 0
    with _lock:
        if level == _forwarding:
            return
        _lbmkv.set_log_handler(level, _emit if level else None)
        _forwarding = level


def _after_fork() -> None:
    # The thread that forwarded records stayed in the parent.
    global _forwarding
    _forwarding = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
