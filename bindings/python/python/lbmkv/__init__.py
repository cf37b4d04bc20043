"""lbmkv: an embedded, replicated, partition-tolerant in-memory key-value store.

.. code-block:: python

    import lbmkv

    with lbmkv.Node(name="a", cookie="secret") as node:
        users = node.create_table("users")
        users["alice"] = "admin"
        assert users["alice"] == b"admin"
"""

from ._errors import (
    Aborted,
    Closed,
    Error,
    InternalError,
    InvalidArgument,
    IoError,
    NoSuchTable,
    ProtocolError,
    Timeout,
    Unavailable,
    WouldDeadlock,
)
from ._lbmkv import __version__
from ._logs import TRACE, sync_log_level
from ._node import ConflictHandler, Node
from ._table import BytesLike, ConflictRecord, Table

__all__ = [
    "Node",
    "Table",
    "ConflictRecord",
    "ConflictHandler",
    "BytesLike",
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
    "sync_log_level",
    "TRACE",
    "__version__",
]
