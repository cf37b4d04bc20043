"""`Node`: one member of an lbmkv cluster, running inside this process."""

from __future__ import annotations

import json
from collections import abc
from types import TracebackType
from typing import Callable, Iterable, Iterator, List, Optional, Type, Union, cast

from . import _lbmkv
from ._logs import sync_log_level
from ._table import BytesLike, Table
from ._types import Event, NodeInfo

__all__ = ["Node", "ConflictHandler"]

#: ``handler(key, local, remote)`` -> value to keep, or ``None`` to delete.
ConflictHandler = Callable[[bytes, Optional[bytes], Optional[bytes]], Optional[BytesLike]]

# Slice of waiting for events when no timeout is given, so that signals
# (KeyboardInterrupt) are handled promptly.
_EVENT_SLICE = 0.25


class Node:
    """Starts an lbmkv node in this process; use it as a context manager (or
    call :meth:`close`).

    Every option is keyword-only and defaults to the core's default:

    - ``name``: unique in the cluster (default ``<hostname>-<pid>``);
    - ``listen``: ``host:port`` (default ``127.0.0.1:0``, an OS-chosen port);
    - ``advertise``: the ``host:port`` peers are told to reach this node at
      (NAT, containers); default the listen address, and for a wildcard one
      (``0.0.0.0:7000``) each peer uses the address it sees this node's
      connection come from, with the listen port;
    - ``seeds``: ``host:port`` addresses to join;
    - ``min_members``: ``int``; starting waits until this many members, this
      node included, are in the view, and raises :class:`lbmkv.Unavailable`
      (naming each seed and why it was not reached) when they are not there
      within ``request_timeout``; 0 or 1 (the default 0): no wait;
    - ``cookie``: the cluster secret, ``str`` or bytes (default ``$LBMKV_COOKIE``,
      else ``~/.lbmkv.cookie``);
    - ``failure_timeout`` (2 s), ``request_timeout`` (5 s), ``heartbeat_interval``
      (0.25 s), ``handler_timeout`` (5 s), ``anti_entropy_interval`` (1 s),
      ``tombstone_retention`` (24 h): seconds, as ``float``;
    - ``conflict_log_limit`` (1,000), ``max_key_size`` (64 KiB), ``max_value_size``
      (62 MiB): ``int``;
    - ``tls_cert``, ``tls_key``, ``tls_ca``: paths of PEM files (this node's
      certificate chain, its private key, the cluster's CA), all three or none:
      mutual TLS with every peer, whose node name must be a DNS name of its
      certificate (without ``name``, the node takes its certificate's first).

    Starting waits (with the GIL released) for a first attempt to reach every seed
    and, with ``min_members``, for that many members.

    The engine's logs go to the ``lbmkv`` logger of :mod:`logging`, at the
    level it lets through when the node starts (see
    :func:`lbmkv.sync_log_level`).
    """

    __slots__ = ("_n", "__weakref__")

    def __init__(
        self,
        *,
        name: Optional[str] = None,
        listen: Optional[str] = None,
        advertise: Optional[str] = None,
        seeds: Optional[Iterable[str]] = None,
        min_members: Optional[int] = None,
        cookie: Optional[Union[str, bytes]] = None,
        failure_timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
        heartbeat_interval: Optional[float] = None,
        handler_timeout: Optional[float] = None,
        anti_entropy_interval: Optional[float] = None,
        tombstone_retention: Optional[float] = None,
        conflict_log_limit: Optional[int] = None,
        max_key_size: Optional[int] = None,
        max_value_size: Optional[int] = None,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        tls_ca: Optional[str] = None,
    ) -> None:
        seed_list = _seed_list(seeds)
        sync_log_level()
        self._n = _lbmkv.Node(
            name=name,
            listen=listen,
            advertise=advertise,
            seeds=seed_list,
            min_members=min_members,
            cookie=cookie,
            failure_timeout=failure_timeout,
            request_timeout=request_timeout,
            heartbeat_interval=heartbeat_interval,
            handler_timeout=handler_timeout,
            anti_entropy_interval=anti_entropy_interval,
            tombstone_retention=tombstone_retention,
            conflict_log_limit=conflict_log_limit,
            max_key_size=max_key_size,
            max_value_size=max_value_size,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
        )

    def __enter__(self) -> Node:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._n.closed else ""
        return f"<lbmkv.Node {self._n.name!r} at {self._n.address}{state}>"

    @property
    def name(self) -> str:
        """The node's name."""
        return self._n.name

    @property
    def address(self) -> str:
        """The address peers reach this node at, ``"host:port"``."""
        return self._n.address

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._n.closed

    def create_table(self, name: str, on_conflict: Optional[ConflictHandler] = None) -> Table:
        """Creates the table ``name`` (or opens the existing one) and returns once it
        is readable and writable here; a node that joined first receives the
        cluster's copy. ``on_conflict`` sets this node's conflict handler (see
        :meth:`Table.on_conflict`)."""
        return Table(self, self._n.create_table(name, on_conflict))

    def table(self, name: str) -> Table:
        """The existing table ``name`` (:class:`lbmkv.NoSuchTable` when there is none)."""
        return Table(self, self._n.table(name))

    def tables(self) -> List[str]:
        """Names of the tables on this node, sorted."""
        return self._n.tables()

    def members(self) -> List[str]:
        """Names of the nodes in this node's view, itself included, sorted."""
        return self._n.members()

    def info(self) -> NodeInfo:
        """The node's description (a dict typed by :class:`lbmkv.NodeInfo`):
        ``version``, ``uptime_ms``, ``name``, ``actor``, ``address``,
        ``members``, ``sequencer``, ``peers``, ``tables`` (per table ``name``,
        ``entries``, ``bytes``, ``tombstones``, ``conflicts``, ``digest``,
        ``sequencer``) and traffic counters."""
        return cast(NodeInfo, json.loads(self._n.info_json()))

    def metrics(self) -> str:
        """The node's metrics in the Prometheus text exposition format
        (version 0.0.4), ready to serve at ``/metrics``."""
        return self._n.metrics()

    def wait_for_members(self, n: int, timeout: float) -> None:
        """Waits (with the GIL released) until at least ``n`` members, this node
        included, are in the view; raises :class:`lbmkv.Unavailable` (how many
        there are, and why each seed was not reached) when they are not there
        within ``timeout`` seconds, :class:`lbmkv.Closed` when the node closes
        meanwhile. The ``min_members`` option of the start, later."""
        self._n.wait_for_members(n, timeout)

    def connect(self, addr: str) -> None:
        """Connects to the node at ``addr`` (``host:port``) and waits for the
        handshake; also lifts an earlier :meth:`disconnect` of that node."""
        self._n.connect(addr)

    def disconnect(self, name: str) -> None:
        """Drops the connection to the node ``name`` and refuses it until
        :meth:`connect` is called for it again."""
        self._n.disconnect(name)

    def next_event(self, timeout: float = 0.0) -> Optional[Event]:
        """The next event, waiting at most ``timeout`` seconds; ``None`` when none came."""
        raw = self._n.next_event(timeout)
        if raw is None:
            return None
        return cast(Event, json.loads(raw))

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """Yields the node's events (dicts typed by :data:`lbmkv.Event`) with a ``type`` (``node_up``,
        ``node_down``, ``table_created``, ``merged``, ``conflict``) and its fields,
        oldest first (events are queued from the node's start on). Ends when no
        event comes within ``timeout`` seconds, or, with ``timeout=None``, once the
        node is closed and its queue is empty."""
        while True:
            if timeout is None:
                raw = self._n.next_event(_EVENT_SLICE)
                if raw is None:
                    if self._n.closed:
                        return
                    continue
            else:
                raw = self._n.next_event(timeout)
                if raw is None:
                    return
            yield cast(Event, json.loads(raw))

    def close(self) -> None:
        """Leaves the cluster (peers see ``node_down`` at once) and stops the
        node; later calls on it or its tables raise :class:`lbmkv.Closed`.
        Calling it again does nothing."""
        self._n.close()


def _seed_list(seeds: Optional[Iterable[str]]) -> Optional[List[str]]:
    """``seeds`` as a list; a single string is a ``TypeError`` (a common slip)."""
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes)):
        raise TypeError("seeds must be a list of 'host:port' strings, not a single string")
    if not isinstance(seeds, abc.Iterable):
        raise TypeError(f"seeds must be a list of 'host:port' strings, not {type(seeds).__name__}")
    return list(seeds)
