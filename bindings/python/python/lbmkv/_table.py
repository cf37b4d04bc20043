"""`Table`: a replicated table with the interface of a ``MutableMapping``."""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping, ValuesView
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Type, TypeVar, Union, cast, overload

from . import _lbmkv
from ._types import WatchItem

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["Table", "Watch", "ConflictRecord", "BytesLike", "UpdateFn", "update"]

#: What keys, values and patterns may be given as; ``str`` is encoded as UTF-8.
#: Keys and values always come back as ``bytes``.
BytesLike = Union[bytes, bytearray, memoryview, str]

#: ``fn(key, value)`` of :meth:`Table.update_key`: the new value, ``None`` to
#: delete, or the old value to write nothing.
UpdateFn = Callable[[bytes, Optional[bytes]], Optional[BytesLike]]

_T = TypeVar("_T")

_BYTES_TYPES = (bytes, bytearray, memoryview, str)

# Marks an argument that was not given (None is a meaningful default elsewhere).
_MISSING = object()


class ConflictRecord(NamedTuple):
    """A losing version kept in a table's conflict log."""

    key: bytes
    #: The version that was kept (``None``: deleted).
    kept: Optional[bytes]
    #: The version that lost (``None``: deleted).
    lost: Optional[bytes]
    #: The peer the merge was with.
    peer: str
    #: When, in milliseconds since the Unix epoch.
    at_ms: int


class Watch(Iterator[WatchItem]):
    """The changes of a table's keys under a prefix on this node, from the
    moment it was opened (from :meth:`Table.watch`).

    ``for item in watch`` yields :class:`lbmkv.Change` dicts (``type``
    ``"change"``: ``table``, ``key``, ``value`` (``None``: deleted), ``prev``,
    ``cause``, ``node``) in the order this node applied them, and a
    :class:`lbmkv.Lagged` dict (``type`` ``"lagged"``, ``count``) in place of
    the changes a slow consumer missed. Iteration ends once the watch or its
    node is closed (after what was buffered). Also a context manager that
    closes the watch.
    """

    __slots__ = ("_w", "_table")

    def __init__(self, table: Table, native: _lbmkv.Watch) -> None:
        self._w = native
        self._table = table

    @property
    def table(self) -> Table:
        """The watched table."""
        return self._table

    def __repr__(self) -> str:
        return f"<lbmkv.Watch of table {self._table.name!r}>"

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchItem:
        while True:
            item = self._w.next(None)
            if item is False:
                raise StopIteration
            if item is not None:
                return cast(WatchItem, item)

    def next(self, timeout: Optional[float] = None) -> Optional[WatchItem]:
        """The next item, waiting at most ``timeout`` seconds (``None``: until
        one comes); ``None`` when none came in time. Raises ``StopIteration``
        once the watch ended (closed, or its node closed)."""
        item = self._w.next(timeout)
        if item is False:
            raise StopIteration
        return cast(Optional[WatchItem], item)

    def close(self) -> None:
        """Ends the watch: iteration stops, also in another thread waiting
        in :meth:`next`. Calling it again does nothing."""
        self._w.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class _Items(ItemsView):  # type: ignore[type-arg]
    """Items of a table, read from one consistent snapshot."""

    _mapping: Table

    def __iter__(self) -> Iterator[Tuple[bytes, bytes]]:
        return iter(self._mapping.match().items())


class _Values(ValuesView):  # type: ignore[type-arg]
    """Values of a table, read from one consistent snapshot."""

    _mapping: Table

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._mapping.match().values())


class _TableReads:
    """What a table handle does on its own node, without the network: local
    reads, the ttl of a key, the conflict handler and log. Shared by
    :class:`lbmkv.Table` and :class:`lbmkv.aio.Table`, whose writes differ."""

    __slots__ = ("_t", "_node")

    #: How ``repr`` names the handle's class.
    _KIND = "lbmkv.Table"

    def __init__(self, node: Any, native: _lbmkv.Table) -> None:
        self._t = native
        self._node = node

    @property
    def name(self) -> str:
        """The table's name."""
        return self._t.name

    def __repr__(self) -> str:
        return f"<{self._KIND} {self._t.name!r} on node {self._node.name!r}>"

    def __getitem__(self, key: BytesLike) -> bytes:
        value = self._t.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._t.keys())

    def __len__(self) -> int:
        return self._t.len()

    def __contains__(self, key: object) -> bool:
        return self._t.contains(key)  # type: ignore[arg-type]

    def match(self, key_pattern: BytesLike = "*", value_pattern: BytesLike = "*") -> Dict[bytes, bytes]:
        """Local entries whose key and value match the glob patterns (``*``, ``?``,
        ``[...]``, ``\\`` escapes, on bytes), in key order."""
        return self._t.match_entries(key_pattern, value_pattern)

    def ttl(self, key: BytesLike) -> Optional[float]:
        """Seconds ``key`` has left before it expires, by this node's clock;
        ``None`` when it is absent or never expires."""
        return self._t.ttl(key)

    def on_conflict(self, handler: Optional[Callable[[bytes, Optional[bytes], Optional[bytes]], Optional[BytesLike]]]) -> None:
        """Sets (or with ``None`` removes) this node's conflict handler for the table.

        ``handler(key, local, remote)`` gets both versions (``None``: deleted) and
        returns the value to keep, or ``None`` to delete. It runs on an lbmkv
        thread; an exception counts as unresolved (the fallback applies) and is
        logged to the ``lbmkv`` logger.
        """
        self._t.set_conflict_handler(handler)

    def conflicts(self) -> List[ConflictRecord]:
        """The table's conflict log (versions that lost a merge), oldest first."""
        return [ConflictRecord(*r) for r in self._t.conflicts()]


class Table(_TableReads, MutableMapping[bytes, bytes]):
    """A handle to a replicated table, obtained from :meth:`lbmkv.Node.create_table`
    or :meth:`lbmkv.Node.table`.

    Reads (``t[k]``, ``get``, ``in``, ``len``, iteration, ``match``) are local and
    never touch the network. Writes are ordered by the table's sequencer and
    return once every member of the view applied them. Keys and values may be
    given as ``bytes``, ``bytearray``, ``memoryview`` or ``str`` (UTF-8) and come
    back as ``bytes``. Iteration goes over a sorted snapshot of the keys.

    ``update`` is ``MutableMapping.update`` (written as one atomic batch);
    the atomic read-modify-write of one key is :meth:`update_key` (also
    reachable as ``lbmkv.update(table, key, fn)``, lbm_kv's spelling).
    """

    __slots__ = ()

    @property
    def node(self) -> Node:
        """The node this handle belongs to."""
        return cast("Node", self._node)

    # Mapping protocol (reads: see _TableReads).

    def __setitem__(self, key: BytesLike, value: BytesLike) -> None:
        self._t.put(key, value)

    def __delitem__(self, key: BytesLike) -> None:
        if self._t.delete(key) is None:
            raise KeyError(key)

    def items(self) -> ItemsView[bytes, bytes]:
        return _Items(self)

    def values(self) -> ValuesView[bytes]:
        return _Values(self)

    @overload
    def get(self, key: BytesLike, default: None = None, *, strong: bool = False) -> Optional[bytes]: ...

    @overload
    def get(self, key: BytesLike, default: Union[bytes, _T], *, strong: bool = False) -> Union[bytes, _T]: ...

    def get(self, key: BytesLike, default: object = None, *, strong: bool = False) -> object:
        """The value of ``key``, or ``default`` when it has none.

        Local by default; with ``strong=True`` the table's sequencer answers,
        ordered after every write acknowledged before (this waits on the network).
        """
        value = self._t.get_strong(key) if strong else self._t.get(key)
        if value is None:
            return default
        return value

    @overload
    def pop(self, key: BytesLike) -> bytes: ...

    @overload
    def pop(self, key: BytesLike, default: Union[bytes, _T]) -> Union[bytes, _T]: ...

    def pop(self, key: BytesLike, default: object = _MISSING) -> object:
        """Deletes ``key`` and returns its previous value (``default``, or
        ``KeyError``, when it had none)."""
        previous = self._t.delete(key)
        if previous is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return previous

    def setdefault(self, key: BytesLike, default: Optional[BytesLike] = None) -> Optional[bytes]:  # type: ignore[override]
        """Atomically sets ``key`` to ``default`` unless it has a value; returns
        the value it has afterwards."""
        return self._t.update(key, lambda _k, v: v if v is not None else default)[1]

    def clear(self) -> None:
        """Deletes every entry, in one atomic batch."""
        keys: List[BytesLike] = list(self._t.keys())
        self._t.delete_many(keys)

    # lbmkv operations.

    def put(self, key: BytesLike, value: BytesLike, ttl: Optional[float] = None) -> Optional[bytes]:
        """Sets ``key`` to ``value`` on every member; returns the previous value.

        With ``ttl`` (seconds, at least 0.001) the key expires: when its time is
        up it is deleted on every node (a watch sees the cause ``"expiry"``), and
        reads hide it from its deadline on. Writing it again with a ttl refreshes
        it; without one makes it permanent.
        """
        return self._t.put(key, value, ttl)

    def put_many(
        self,
        entries: Union[Mapping[BytesLike, BytesLike], Iterable[Tuple[BytesLike, BytesLike]]],
        ttl: Optional[float] = None,
    ) -> Dict[bytes, bytes]:
        """Sets all entries atomically (a mapping or an iterable of ``(key, value)``
        pairs), each expiring after ``ttl`` seconds when given; returns the
        previous values of the keys that had one."""
        return self._t.put_many(_pairs(entries, "put_many"), ttl)

    def watch(self, prefix: BytesLike = b"", *, buffer: Optional[int] = None) -> Watch:
        """Watches the changes of the keys that start with ``prefix`` (empty: the
        whole table) on this node, from now on; see :class:`Watch`. ``buffer``
        is how many changes are kept for a slow consumer (default 4096)
        before it gets a ``"lagged"`` item."""
        return Watch(self, self._t.watch(prefix, buffer))

    def delete(self, key: BytesLike) -> Optional[bytes]:
        """Deletes ``key`` everywhere (a tombstone); returns the previous value."""
        return self._t.delete(key)

    def delete_many(self, keys: Iterable[BytesLike]) -> Dict[bytes, bytes]:
        """Deletes all ``keys`` atomically; returns the previous entries of those
        that existed."""
        return self._t.delete_many(_keys(keys, "delete_many"))

    def update(self, *args: Any, **kwds: BytesLike) -> None:
        """``MutableMapping.update([other], **kwds)``: sets the entries of
        ``other`` (a mapping, an object with ``keys()``, or an iterable of
        ``(key, value)`` pairs) and of the keyword arguments, as one atomic
        batch (see :meth:`put_many`).

        Before lbmkv 0.2 this name was the atomic read-modify-write
        ``update(key, fn)``; that is :meth:`update_key` now, and the old call
        raises a ``TypeError`` that says so.
        """
        if len(args) == 2 and callable(args[1]):
            raise TypeError(
                "Table.update(key, fn) is now Table.update_key(key, fn) (or lbmkv.update(table, key, fn)); "
                "Table.update(other) is MutableMapping.update"
            )
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 positional argument, got {len(args)}")
        pairs: List[Tuple[BytesLike, BytesLike]] = []
        if args:
            other = args[0]
            if isinstance(other, Mapping):
                pairs = list(other.items())
            elif hasattr(other, "keys"):
                pairs = [(k, other[k]) for k in other.keys()]
            else:
                pairs = _pairs(other, "update")
        pairs.extend(kwds.items())
        if pairs:
            self._t.put_many(pairs)

    def update_key(
        self, key: BytesLike, fn: UpdateFn, ttl: Optional[float] = None
    ) -> Tuple[Optional[bytes], Optional[bytes]]:
        """Atomic read-modify-write of ``key``; returns ``(old, new)``.

        ``fn(key, value)`` gets the current value (``None``: absent) and returns
        the new value, ``None`` to delete, or the old value to write nothing. It
        runs on the calling thread and may run more than once (the write is a
        compare-and-set at the sequencer, retried on conflict). An exception
        raised by ``fn`` aborts the update and propagates unchanged.

        Without ``ttl`` the key keeps its deadline, if it has one; with ``ttl``
        (seconds) the new value expires after it, and is written even when
        ``fn`` returns the old value (a refresh).

        lbm_kv's ``update(Table, Key, Fun)``; also ``lbmkv.update(table, key, fn)``.
        """
        return self._t.update(key, fn, ttl)

    def update_all(
        self, fn: Callable[[bytes, bytes], Optional[BytesLike]]
    ) -> Tuple[Dict[bytes, bytes], Dict[bytes, bytes]]:
        """Atomic update of the whole table: ``fn(key, value)`` for every entry,
        with the rule of :meth:`update_key`. Returns ``(old, new)``: the old entries
        that changed and the new values of those not deleted."""
        return self._t.update_all(fn)


def _pairs(entries: object, what: str) -> List[Tuple[BytesLike, BytesLike]]:
    """The ``(key, value)`` pairs of a mapping or an iterable of pairs."""
    if isinstance(entries, Mapping):
        return list(entries.items())
    if isinstance(entries, _BYTES_TYPES) or not isinstance(entries, Iterable):
        raise TypeError(
            f"{what} expects a mapping or an iterable of (key, value) pairs, not {type(entries).__name__}"
        )
    pairs = []
    for i, pair in enumerate(entries):
        if isinstance(pair, _BYTES_TYPES):
            raise TypeError(f"{what}: element {i} is not a (key, value) pair")
        try:
            k, v = pair
        except (TypeError, ValueError):
            raise TypeError(f"{what}: element {i} is not a (key, value) pair") from None
        pairs.append((k, v))
    return pairs


def _keys(keys: object, what: str) -> List[BytesLike]:
    """A list of the keys of an iterable that is not itself bytes or a string."""
    if isinstance(keys, _BYTES_TYPES) or not isinstance(keys, Iterable):
        raise TypeError(f"{what} expects an iterable of keys, not {type(keys).__name__}")
    return list(keys)


def update(
    table: Table, key: BytesLike, fn: UpdateFn, *, ttl: Optional[float] = None
) -> Tuple[Optional[bytes], Optional[bytes]]:
    """``lbmkv.update(table, key, fn)``: lbm_kv's spelling of
    :meth:`Table.update_key`, the atomic read-modify-write of one key (with
    ``ttl``, the new value expires after that many seconds)."""
    if not isinstance(table, Table):
        raise TypeError(f"update expects an lbmkv.Table, not {type(table).__name__}")
    return table.update_key(key, fn, ttl)
