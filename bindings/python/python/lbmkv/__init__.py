"""lbmkv: an embedded, replicated, partition-tolerant in-memory key-value store.

.. code-block:: python

    import lbmkv

    with lbmkv.Node(name="a", cookie="secret") as node:
        users = node.create_table("users")
        users["alice"] = "admin"
        assert users["alice"] == b"admin"
        lbmkv.update(users, "visits", lambda k, v: str(int(v or 0) + 1))

The asyncio API is :mod:`lbmkv.aio`.
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
from ._table import BytesLike, ConflictRecord, Table, UpdateFn, Watch, update
from ._types import (
    Change,
    ConflictEvent,
    Event,
    Lagged,
    MergedEvent,
    NodeDownEvent,
    NodeInfo,
    NodeUpEvent,
    PeerInfo,
    TableCreatedEvent,
    TableInfo,
    WatchItem,
)

__all__ = [
    "Node",
    "Table",
    "ConflictRecord",
    "ConflictHandler",
    "BytesLike",
    "UpdateFn",
    "update",
    "NodeInfo",
    "PeerInfo",
    "TableInfo",
    "Event",
    "NodeUpEvent",
    "NodeDownEvent",
    "TableCreatedEvent",
    "MergedEvent",
    "ConflictEvent",
    "Watch",
    "WatchItem",
    "Change",
    "Lagged",
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
