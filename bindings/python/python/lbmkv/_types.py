"""Types of what nodes report: ``info()``, events and the items of a watch.

Both are plain ``dict`` objects at run time (decoded from the engine's JSON), so
code written against the dicts keeps working; these ``TypedDict`` classes give
them their keys and types for type checkers. An event's ``type`` tells which
one it is, and a type checker narrows the union on it::

    for ev in node.events(timeout=1.0):
        if ev["type"] == "node_down":
            print(ev["node"], ev["reason"])
"""

from __future__ import annotations

from typing import List, Literal, Optional, TypedDict, Union

__all__ = [
    "TableInfo",
    "PeerInfo",
    "NodeInfo",
    "NodeUpEvent",
    "NodeDownEvent",
    "TableCreatedEvent",
    "MergedEvent",
    "ConflictEvent",
    "Event",
    "Change",
    "Lagged",
    "WatchItem",
]


class TableInfo(TypedDict):
    """One table in :class:`NodeInfo`."""

    #: The table's name.
    name: str
    #: Live entries on this node.
    entries: int
    #: Bytes of live keys and values.
    bytes: int
    #: Tombstones kept for merges.
    tombstones: int
    #: Entries in the table's conflict log.
    conflicts: int
    #: The table's digest: equal digests, equal replicas.
    digest: str
    #: The member that orders the table's writes for this node, if any yet.
    sequencer: Optional[str]


class PeerInfo(TypedDict):
    """One connected peer in :class:`NodeInfo`."""

    #: The peer's name.
    name: str
    #: The address the peer listens on, as it announced it.
    address: str
    #: Milliseconds since the connection joined this node's view.
    connected_ms: int
    #: Bytes queued for the peer and not yet handed to its socket.
    send_queue_bytes: int
    #: Milliseconds since the last frame from the peer.
    last_heard_ms: int
    #: The last round trip of a probe to the peer, in microseconds; ``None`` on
    #: a node that has not sequenced since the connection began.
    round_trip_us: Optional[int]


class NodeInfo(TypedDict):
    """What ``Node.info()`` returns."""

    #: The version of lbmkv the node runs.
    version: str
    #: Milliseconds since the node started.
    uptime_ms: int
    #: The node's name.
    name: str
    #: The node's actor id (name and incarnation).
    actor: str
    #: The address peers reach it at, ``"host:port"``.
    address: str
    #: Names of the nodes in its view, itself included, sorted.
    members: List[str]
    #: The member whose sequencer this node follows, if any.
    sequencer: Optional[str]
    #: The peers this node is connected to, sorted by name.
    peers: List[PeerInfo]
    #: Tables, sorted by name, each with its sequencer.
    tables: List[TableInfo]
    #: Bytes written to peers.
    bytes_sent: int
    #: Bytes read from peers.
    bytes_received: int
    #: Bytes of merge traffic written.
    merge_bytes_sent: int
    #: Bytes queued for peers and not yet handed to their sockets.
    send_queue_bytes: int
    #: Bytes of the write budget held by writes waiting for sequencers.
    write_budget_in_use: int


class NodeUpEvent(TypedDict):
    """A peer joined this node's view."""

    type: Literal["node_up"]
    #: The peer's name.
    node: str


class NodeDownEvent(TypedDict):
    """A peer left this node's view (closed, cut off, or silent too long)."""

    type: Literal["node_down"]
    #: The peer's name.
    node: str
    #: Why it left.
    reason: str


class TableCreatedEvent(TypedDict):
    """A table appeared on this node (created here or by a peer)."""

    type: Literal["table_created"]
    #: The table's name.
    table: str


class MergedEvent(TypedDict):
    """A merge with a peer finished for one table."""

    type: Literal["merged"]
    #: The table's name.
    table: str
    #: The peer merged with.
    peer: str
    #: Keys whose local version changed.
    keys_changed: int
    #: Concurrent versions found.
    conflicts: int


class ConflictEvent(TypedDict):
    """A conflict found by a merge was settled."""

    type: Literal["conflict"]
    #: The table's name.
    table: str
    #: The key, decoded as UTF-8 (lossily) for display.
    key: str
    #: How it was settled: ``"handler"``, ``"fallback"`` or ``"handler_failed"``.
    resolution: Literal["handler", "fallback", "handler_failed"]


#: Any event of a node; ``ev["type"]`` says which.
Event = Union[NodeUpEvent, NodeDownEvent, TableCreatedEvent, MergedEvent, ConflictEvent]


class Change(TypedDict):
    """One change seen by a watch (:meth:`lbmkv.Table.watch`)."""

    type: Literal["change"]
    #: The table's name.
    table: str
    #: The key.
    key: bytes
    #: The new value; ``None``: the key was deleted (or expired).
    value: Optional[bytes]
    #: The value before; ``None``: the key was absent.
    prev: Optional[bytes]
    #: Why it changed: ``"write"`` (this node ordered the write as the table's
    #: sequencer), ``"replicated"`` (a write applied from the sequencer),
    #: ``"merge"`` (a version that came in by a merge), ``"resolve"`` (a
    #: conflict handler's decision) or ``"expiry"`` (the delete of an expired key).
    cause: Literal["write", "replicated", "merge", "resolve", "expiry"]
    #: The node that wrote the new version (the sequencer that ordered it).
    node: str


class Lagged(TypedDict):
    """The consumer fell behind the watch's buffer: ``count`` changes were
    dropped here, between the items before and after this one. Re-read the
    table (``match``) to catch up."""

    type: Literal["lagged"]
    #: How many changes were dropped.
    count: int


#: What a watch yields; ``item["type"]`` says which.
WatchItem = Union[Change, Lagged]
