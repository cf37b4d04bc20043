"""lbmkv for asyncio: the same nodes, tables and exceptions as :mod:`lbmkv`,
with coroutines for everything that waits.

.. code-block:: python

    import lbmkv.aio

    async def main():
        async with lbmkv.aio.Node.start(name="a", cookie="secret") as node:
            users = await node.create_table("users")
            await users.put("alice", "admin")
            assert users["alice"] == b"admin"          # local reads need no await
            old, new = await users.update_key("hits", lambda k, v: str(int(v or 0) + 1))
            async for ev in node.events(timeout=1.0):
                print(ev["type"])

Each operation runs as a task on lbmkv's own runtime and completes an asyncio
future through a queue the event loop watches (one per loop; finished
operations wake it with a byte on a socket): the event loop never waits for the
network, no executor thread is used, and lbmkv's threads never wait for the
GIL. Cancelling the awaiting task stops the
waiting at once; an operation that only waits (a strong read, events,
``wait_for_members``, ``connect``) ends with it, while a write already handed to
the engine still completes (or fails) on the cluster, as a write whose reply was
lost would: its result is discarded.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import weakref
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
    overload,
)

from . import _lbmkv
from ._logs import sync_log_level
from ._node import ConflictHandler, _seed_list
from ._table import BytesLike, ConflictRecord, _keys, _pairs, _TableReads
from ._types import Event, NodeInfo, WatchItem

__all__ = ["Node", "Table", "Watch", "AsyncUpdateFn", "update"]

_T = TypeVar("_T")

#: ``fn(key, value)`` of :meth:`Table.update_key`: returns the new value,
#: ``None`` to delete, or the old value to write nothing; or an awaitable of it.
AsyncUpdateFn = Callable[[bytes, Optional[bytes]], Union[Optional[BytesLike], Awaitable[Optional[BytesLike]]]]

# Slice of waiting for events when no timeout is given; cancellation ends a
# slice at once, so it only bounds how long a closed node goes unnoticed.
_EVENT_SLICE = 60.0

# Tasks of update functions that returned awaitables: asyncio keeps only weak
# references to tasks.
_fn_tasks: Set["asyncio.Future[Any]"] = set()


# Each event loop's queue of finished operations (see ``_channel``).
_channels: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()


def _channel(loop: asyncio.AbstractEventLoop) -> Any:
    """The native completion queue of ``loop``, watched by the loop: finished
    operations wake it through a socket, so lbmkv's runtime threads never wait
    for the GIL. ``None`` where the loop cannot watch a socket (the native side
    then uses ``call_soon_threadsafe``), or that cannot be weakly referenced
    (its queue would outlive it)."""
    try:
        found = _channels.get(loop)
    except TypeError:
        return None
    if found is not None:
        return found
    channel = _lbmkv.Completions()
    try:
        loop.add_reader(channel.fileno(), _drain, channel)
    except NotImplementedError:
        return None
    _channels[loop] = channel
    return channel


def _drain(channel: Any) -> None:
    """Makes the calls ``channel`` holds, on the loop: the outcomes of finished
    operations, and update functions the engine runs."""
    for call in channel.take():
        try:
            call[0](*call[1:])
        except BaseException as e:  # noqa: BLE001 - one failure must not drop the rest
            asyncio.get_running_loop().call_exception_handler(
                {"message": "lbmkv: a completion failed", "exception": e}
            )


def _complete(fut: "asyncio.Future[Any]", exc: Optional[BaseException], value: Any) -> None:
    """Called on the event loop by the native side when an operation ends."""
    if fut.done():  # cancelled meanwhile: the outcome has no taker
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _run_update_fn(fn: AsyncUpdateFn, key: bytes, value: Optional[bytes], reply: Any) -> None:
    """Runs an update function on the event loop and answers the engine."""
    try:
        result = fn(key, value)
    except BaseException as e:  # noqa: BLE001 - handed back to the caller as is
        reply.fail(e)
        return
    if not inspect.isawaitable(result):
        reply.send(result)
        return
    task = asyncio.ensure_future(result)
    _fn_tasks.add(task)

    def done(t: "asyncio.Future[Any]") -> None:
        _fn_tasks.discard(t)
        if t.cancelled():
            reply.fail(asyncio.CancelledError("the update function was cancelled"))
        elif t.exception() is not None:
            reply.fail(t.exception())
        else:
            reply.send(t.result())

    task.add_done_callback(done)


async def _call(start: Callable[..., Any], *args: Any) -> Any:
    """Starts a native operation that completes a future of the running loop,
    and awaits it; a cancellation is passed on to the operation."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    pending = start(loop, fut, *args)
    try:
        return await fut
    except asyncio.CancelledError:
        pending.cancel()
        raise


class _Starting:
    """What :meth:`Node.start` returns: awaitable (gives the node) and an async
    context manager (gives the node, closes it on exit)."""

    __slots__ = ("_start", "_node")

    def __init__(self, start: Callable[[], Awaitable[Node]]) -> None:
        self._start = start
        self._node: Optional[Node] = None

    def __await__(self) -> Generator[Any, None, Node]:
        return self._start().__await__()

    async def __aenter__(self) -> Node:
        self._node = await self._start()
        return self._node

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._node is not None:
            await self._node.close()


class Node:
    """An lbmkv node driven from asyncio; get one with ``await Node.start(...)``
    (or ``async with Node.start(...) as node``).

    The options of :meth:`start` are those of :class:`lbmkv.Node`. Methods that
    wait are coroutines; ``name``, ``address``, ``members()``, ``tables()``,
    ``info()`` and ``table(name)`` are local and plain.
    """

    __slots__ = ("_n", "__weakref__")

    def __init__(self, native: _lbmkv.Node) -> None:
        """Wraps a started native node; use :meth:`start`."""
        if not isinstance(native, _lbmkv.Node):
            raise TypeError("use `await lbmkv.aio.Node.start(...)` to start a node")
        self._n = native

    @classmethod
    def start(
        cls,
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
    ) -> _Starting:
        """Starts a node without blocking the event loop (with ``min_members``,
        waits for them too). Await it, or use it with ``async with``."""
        options: Dict[str, Any] = dict(
            name=name,
            listen=listen,
            advertise=advertise,
            seeds=_seed_list(seeds),
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

        async def start() -> Node:
            sync_log_level()
            native = await _call(functools.partial(_lbmkv.Node.start_async, **options))
            return cls(native)

        return _Starting(start)

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = " closed" if self._n.closed else ""
        return f"<lbmkv.aio.Node {self._n.name!r} at {self._n.address}{state}>"

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

    async def create_table(self, name: str, on_conflict: Optional[ConflictHandler] = None) -> Table:
        """Creates the table ``name`` (or opens the existing one) once it is
        readable and writable here. ``on_conflict`` runs on an lbmkv thread, as
        with :meth:`lbmkv.Table.on_conflict`."""
        native = await _call(self._n.create_table_async, name, on_conflict)
        return Table(self, native)

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
        """The node's description, as :meth:`lbmkv.Node.info`."""
        return cast(NodeInfo, json.loads(self._n.info_json()))

    def metrics(self) -> str:
        """The node's metrics (Prometheus text), as :meth:`lbmkv.Node.metrics`."""
        return self._n.metrics()

    async def wait_for_members(self, n: int, timeout: float) -> None:
        """Waits until at least ``n`` members, this node included, are in the
        view (:class:`lbmkv.Unavailable` after ``timeout`` seconds,
        :class:`lbmkv.Closed` when the node closes meanwhile)."""
        await _call(self._n.wait_for_members_async, n, timeout)

    async def connect(self, addr: str) -> None:
        """Connects to the node at ``addr`` and waits for the handshake."""
        await _call(self._n.connect_async, addr)

    async def disconnect(self, name: str) -> None:
        """Drops the connection to ``name`` and refuses it until :meth:`connect`."""
        await _call(self._n.disconnect_async, name)

    async def next_event(self, timeout: float = 0.0) -> Optional[Event]:
        """The next event, waiting at most ``timeout`` seconds; ``None`` when none came."""
        raw = await _call(self._n.next_event_async, timeout)
        return None if raw is None else cast(Event, json.loads(raw))

    async def events(self, timeout: Optional[float] = None) -> AsyncIterator[Event]:
        """``async for ev in node.events()``: the node's events, oldest first,
        as :meth:`lbmkv.Node.events` gives them. Ends when none comes within
        ``timeout`` seconds, or, with ``None``, once the node is closed and
        its queue is empty."""
        while True:
            raw = await _call(self._n.next_event_async, _EVENT_SLICE if timeout is None else timeout)
            if raw is None:
                if timeout is not None or self._n.closed:
                    return
                continue
            yield cast(Event, json.loads(raw))

    async def close(self) -> None:
        """Leaves the cluster (peers see ``node_down`` at once); calling it
        again does nothing."""
        await _call(self._n.close_async)


class Table(_TableReads):
    """A replicated table driven from asyncio (from :meth:`Node.create_table`).

    Writes and strong reads are coroutines. Local reads need no ``await``:
    ``t[k]``, ``k in t``, ``len(t)``, iteration over a sorted snapshot of the
    keys, :meth:`keys`, :meth:`match`, :meth:`conflicts`. ``await t.get(k)``
    also reads locally, and with ``strong=True`` asks the sequencer.
    """

    __slots__ = ()

    _KIND = "lbmkv.aio.Table"

    @property
    def node(self) -> Node:
        """The node this handle belongs to."""
        return cast(Node, self._node)

    def keys(self) -> List[bytes]:
        """Live keys on this node, sorted."""
        return self._t.keys()

    @overload
    async def get(self, key: BytesLike, default: None = None, *, strong: bool = False) -> Optional[bytes]: ...

    @overload
    async def get(self, key: BytesLike, default: Union[bytes, _T], *, strong: bool = False) -> Union[bytes, _T]: ...

    async def get(self, key: BytesLike, default: object = None, *, strong: bool = False) -> object:
        """The value of ``key`` or ``default``: local, or with ``strong=True``
        answered by the table's sequencer."""
        if strong:
            value = await _call(self._t.get_strong_async, key)
        else:
            value = self._t.get(key)
        return default if value is None else value

    async def put(self, key: BytesLike, value: BytesLike, ttl: Optional[float] = None) -> Optional[bytes]:
        """Sets ``key`` on every member, expiring after ``ttl`` seconds when
        given (as :meth:`lbmkv.Table.put`); returns the previous value."""
        return cast(Optional[bytes], await _call(self._t.put_async, key, value, ttl))

    async def put_many(
        self,
        entries: Union[Mapping[BytesLike, BytesLike], Iterable[Tuple[BytesLike, BytesLike]]],
        ttl: Optional[float] = None,
    ) -> Dict[bytes, bytes]:
        """Sets all entries atomically, expiring after ``ttl`` seconds when
        given; returns the previous values."""
        pairs = _pairs(entries, "put_many")
        return cast(Dict[bytes, bytes], await _call(self._t.put_many_async, pairs, ttl))

    def watch(self, prefix: BytesLike = b"", *, buffer: Optional[int] = None) -> Watch:
        """Watches the changes of the keys under ``prefix`` on this node, from
        now on: ``async for item in table.watch(prefix)``. See :class:`Watch`."""
        return Watch(self, self._t.watch(prefix, buffer))

    async def delete(self, key: BytesLike) -> Optional[bytes]:
        """Deletes ``key`` everywhere; returns the previous value."""
        return cast(Optional[bytes], await _call(self._t.delete_async, key))

    async def delete_many(self, keys: Iterable[BytesLike]) -> Dict[bytes, bytes]:
        """Deletes all ``keys`` atomically; returns the previous entries."""
        return cast(Dict[bytes, bytes], await _call(self._t.delete_many_async, _keys(keys, "delete_many")))

    async def update_key(
        self, key: BytesLike, fn: AsyncUpdateFn, ttl: Optional[float] = None
    ) -> Tuple[Optional[bytes], Optional[bytes]]:
        """Atomic read-modify-write of ``key``; returns ``(old, new)``.

        ``fn(key, value)`` runs on this event loop's thread and may return an
        awaitable (an ``async def`` function works); it may run more than once.
        An exception it raises aborts the update and is raised here unchanged.
        ``ttl`` works as in :meth:`lbmkv.Table.update_key`.
        """
        return cast(Tuple[Optional[bytes], Optional[bytes]], await _call(self._t.update_async, key, fn, ttl))

    async def update_all(
        self,
        fn: Callable[[bytes, bytes], Union[Optional[BytesLike], Awaitable[Optional[BytesLike]]]],
    ) -> Tuple[Dict[bytes, bytes], Dict[bytes, bytes]]:
        """Atomic update of the whole table with ``fn(key, value)`` per entry,
        run as :meth:`update_key` runs it; returns the old and new entries that changed."""
        return cast(Tuple[Dict[bytes, bytes], Dict[bytes, bytes]], await _call(self._t.update_all_async, fn))


class Watch:
    """The changes of a table's keys under a prefix on this node (from
    :meth:`Table.watch`), as an async iterator: ``async for item in watch``
    yields :class:`lbmkv.Change` and :class:`lbmkv.Lagged` dicts as
    :class:`lbmkv.Watch` does, waiting on lbmkv's runtime (no thread). The
    iteration ends once the watch or its node is closed. Also a context
    manager (``with`` or ``async with``) that closes the watch.
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
        return f"<lbmkv.aio.Watch of table {self._table.name!r}>"

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchItem:
        while True:
            item = await _call(self._w.next_async, None)
            if item is False:
                raise StopAsyncIteration
            if item is not None:
                return cast(WatchItem, item)

    async def next(self, timeout: Optional[float] = None) -> Optional[WatchItem]:
        """The next item, waiting at most ``timeout`` seconds (``None``: until
        one comes); ``None`` when none came in time. Raises
        ``StopAsyncIteration`` once the watch ended."""
        item = await _call(self._w.next_async, timeout)
        if item is False:
            raise StopAsyncIteration
        return cast(Optional[WatchItem], item)

    def close(self) -> None:
        """Ends the watch: ``async for`` loops over it stop, also one waiting
        now. Calling it again does nothing."""
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

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


async def update(
    table: Table, key: BytesLike, fn: AsyncUpdateFn, *, ttl: Optional[float] = None
) -> Tuple[Optional[bytes], Optional[bytes]]:
    """``await lbmkv.aio.update(table, key, fn)``: lbm_kv's spelling of
    :meth:`Table.update_key`."""
    if not isinstance(table, Table):
        raise TypeError(f"update expects an lbmkv.aio.Table, not {type(table).__name__}")
    return await table.update_key(key, fn, ttl)
