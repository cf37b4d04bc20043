"""The exceptions of lbmkv.

Every exception is an :class:`Error` and also inherits the built-in exception it
resembles, so ``except TimeoutError`` catches :class:`Timeout` and
``except ValueError`` catches :class:`InvalidArgument`. Each class has a stable
``code`` (the same codes as the C, Node.js and command-line surfaces).
"""

from __future__ import annotations

from typing import Dict, Type

__all__ = [
    "Error",
    "Unavailable",
    "Timeout",
    "InvalidArgument",
    "Closed",
    "NoSuchTable",
    "WouldDeadlock",
    "Aborted",
    "IoError",
    "ProtocolError",
    "InternalError",
]


class Error(Exception):
    """Base class of every lbmkv error."""

    code: str = "ERROR"


class Unavailable(Error, ConnectionError):
    """A write could not reach or be acknowledged by the nodes it needs."""

    code = "UNAVAILABLE"


class Timeout(Error, TimeoutError):
    """The operation did not finish within the request timeout."""

    code = "TIMEOUT"


class InvalidArgument(Error, ValueError):
    """A value is not acceptable: invalid name, oversize key or value, bad
    pattern, bad address, bad option."""

    code = "INVALID_ARGUMENT"


class Closed(Error, RuntimeError):
    """The node (or the node of the table) has been closed."""

    code = "CLOSED"


class NoSuchTable(Error, KeyError):
    """No table of that name exists on this node."""

    code = "NO_SUCH_TABLE"

    # KeyError quotes its message; an lbmkv message reads better as is.
    __str__ = Exception.__str__


class WouldDeadlock(Error, RuntimeError):
    """A blocking lbmkv call was made from a thread that runs lbmkv's own work,
    for example from inside a conflict handler or an update function."""

    code = "WOULD_DEADLOCK"


class Aborted(Error, RuntimeError):
    """A user function failed and the operation was not applied."""

    code = "ABORTED"


class IoError(Error, OSError):
    """A network or operating-system failure (bind, resolve, connect)."""

    code = "IO"


class ProtocolError(Error):
    """A peer broke the protocol or authentication failed."""

    code = "PROTOCOL"


class InternalError(Error, RuntimeError):
    """A bug in lbmkv; the message says where."""

    code = "INTERNAL"


_BY_CODE: Dict[str, Type[Error]] = {
    cls.code: cls
    for cls in (
        Unavailable,
        Timeout,
        InvalidArgument,
        Closed,
        NoSuchTable,
        WouldDeadlock,
        Aborted,
        IoError,
        ProtocolError,
        InternalError,
    )
}


def _from_code(code: str, message: str) -> Error:
    """The exception for an error of the core (called by the native module)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = Error(message)
        err.code = code
        return err
    return cls(message)
