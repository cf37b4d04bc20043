"""lbmkv.aio: the asyncio API, mirroring the blocking one (single node, a
two-node cluster, cancellation, and the event loop while writes wait)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from typing import Any, Awaitable, Callable, List, Optional, TypeVar

import pytest

import lbmkv
import lbmkv.aio
from conftest import FAST, PyNodeProcess, unique, wait_for

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Runs a test coroutine on a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def start(**kwargs: Any) -> "lbmkv.aio._Starting":
    return lbmkv.aio.Node.start(**{**FAST, "name": unique("aio"), **kwargs})


def test_start_is_awaitable_and_an_async_context_manager() -> None:
    async def main() -> None:
        node = await start()
        try:
            assert isinstance(node, lbmkv.aio.Node)
            assert node.members() == [node.name]
            assert node.address.startswith("127.0.0.1:")
            assert not node.closed
        finally:
            await node.close()
        assert node.closed
        await node.close()  # twice is harmless
        async with start() as n2:
            assert not n2.closed
        assert n2.closed
        async with await start() as n3:
            assert not n3.closed
        assert n3.closed

    run(main())


def test_every_table_operation() -> None:
    async def main() -> None:
        async with start() as node:
            t = await node.create_table("t")
            assert t.name == "t" and t.node is node
            assert await t.put("k", "v1") is None
            assert await t.put(b"k", b"v2") == b"v1"
            assert t["k"] == b"v2" and "k" in t and len(t) == 1
            assert await t.get("k") == b"v2"
            assert await t.get("k", strong=True) == b"v2"
            assert await t.get("absent", b"dflt") == b"dflt"
            assert await t.get("absent", strong=True) is None
            with pytest.raises(KeyError):
                t["absent"]
            assert await t.put_many({"a": "1", "b": "2"}) == {}
            assert await t.put_many([("a", "3")]) == {b"a": b"1"}
            assert list(t) == [b"a", b"b", b"k"] and t.keys() == [b"a", b"b", b"k"]
            assert t.match("[ab]") == {b"a": b"3", b"b": b"2"}
            assert await t.delete("k") == b"v2"
            assert await t.delete("k") is None
            assert await t.delete_many(["a", "zz"]) == {b"a": b"3"}
            assert await t.update_key("n", lambda k, v: str(int(v or 0) + 1)) == (None, b"1")
            assert await lbmkv.aio.update(t, "n", lambda k, v: str(int(v or 0) + 1)) == (b"1", b"2")
            old, new = await t.update_all(lambda k, v: v + b"!")
            assert old == {b"b": b"2", b"n": b"2"} and new == {b"b": b"2!", b"n": b"2!"}
            assert t.conflicts() == []
            assert node.tables() == ["t"]
            # The same table through the sync API's name lookup.
            assert node.table("t")["n"] == b"2!"

    run(main())


def test_operations_complete_through_one_watched_queue_per_loop() -> None:
    """Finished operations reach the loop through its completion queue (a
    socket the loop watches), not by taking the GIL on lbmkv's threads: many at
    once all arrive, each with its own outcome."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with start() as node:
            t = await node.create_table("t")
            channel = lbmkv.aio._channel(loop)
            assert channel is not None and lbmkv.aio._channel(loop) is channel
            puts = [t.put(f"k{i}", f"v{i}") for i in range(500)]
            assert await asyncio.gather(*puts) == [None] * 500
            gets = [t.get(f"k{i}", strong=True) for i in range(500)]
            assert await asyncio.gather(*gets) == [f"v{i}".encode() for i in range(500)]
            with pytest.raises(lbmkv.InvalidArgument):
                await t.put("k" * (1 << 20), "a key over the size limit")
            assert channel.take() == []

    run(main())
    # Another loop gets a queue of its own.
    run(main())


def test_update_function_runs_on_the_event_loop_thread_and_may_be_async() -> None:
    async def main() -> None:
        async with start() as node:
            t = await node.create_table("t")
            threads: List[int] = []

            def sync_fn(k: bytes, v: Optional[bytes]) -> bytes:
                threads.append(threading.get_ident())
                return b"1"

            async def async_fn(k: bytes, v: Optional[bytes]) -> bytes:
                threads.append(threading.get_ident())
                await asyncio.sleep(0.01)
                return (v or b"") + b"2"

            assert await t.update_key("k", sync_fn) == (None, b"1")
            assert await t.update_key("k", async_fn) == (b"1", b"12")
            assert threads == [threading.get_ident()] * 2
            # Returning the old value writes nothing; None deletes.
            assert await t.update_key("k", lambda k, v: v) == (b"12", b"12")
            assert await t.update_key("k", lambda k, v: None) == (b"12", None)
            assert "k" not in t

    run(main())


def test_exceptions_are_the_same_classes_and_update_errors_propagate_unchanged() -> None:
    async def main() -> None:
        async with start() as node:
            t = await node.create_table("t")
            with pytest.raises(lbmkv.InvalidArgument):
                await node.create_table("")
            with pytest.raises(TypeError):
                await t.put(5, "v")  # type: ignore[arg-type]
            with pytest.raises(lbmkv.InvalidArgument):
                await t.put("k" * 70_000, "v")
            with pytest.raises(lbmkv.NoSuchTable):
                node.table("missing")
            with pytest.raises(TypeError):
                await t.update_key("k", 5)  # type: ignore[arg-type]

            mine = ValueError("mine")

            def fails(k: bytes, v: Optional[bytes]) -> bytes:
                raise mine

            async def fails_later(k: bytes, v: Optional[bytes]) -> bytes:
                await asyncio.sleep(0)
                raise mine

            for fn in (fails, fails_later):
                with pytest.raises(ValueError) as info:
                    await t.update_key("k", fn)
                assert info.value is mine
            with pytest.raises(TypeError):
                await t.update_key("k", lambda k, v: 5)  # type: ignore[arg-type,return-value]
            assert "k" not in t
        with pytest.raises(lbmkv.Closed):
            await t.put("k", "v")
        with pytest.raises(lbmkv.Closed):
            await node.wait_for_members(1, 1.0)
        with pytest.raises(TypeError):
            lbmkv.aio.Node.start(seeds="127.0.0.1:1")
        with pytest.raises(TypeError):
            await lbmkv.aio.Node.start(nonsense=1)  # type: ignore[call-arg]

    run(main())


def test_events_are_an_async_iterator() -> None:
    async def main() -> None:
        node = await start()
        await node.create_table("t1")
        seen = [ev async for ev in node.events(timeout=0.5)]
        assert {"type": "table_created", "table": "t1"} in seen
        assert await node.next_event(0.05) is None

        # With timeout=None the iteration ends once the node is closed.
        async def collect() -> List[lbmkv.Event]:
            return [ev async for ev in node.events()]

        task = asyncio.ensure_future(collect())
        await node.create_table("t2")
        await asyncio.sleep(0.2)
        await node.close()
        events = await asyncio.wait_for(task, 10)
        assert {"type": "table_created", "table": "t2"} in events

    run(main())


def test_two_nodes_wait_for_members_replicate_and_see_each_other() -> None:
    async def main() -> None:
        async with start() as a:
            # Nobody else yet: Unavailable after the timeout, not before.
            t0 = time.monotonic()
            with pytest.raises(lbmkv.Unavailable, match="1 of 2 members"):
                await a.wait_for_members(2, 0.3)
            assert time.monotonic() - t0 >= 0.3
            waiting = asyncio.ensure_future(a.wait_for_members(2, 20))
            async with start(seeds=[a.address], min_members=2) as b:
                await asyncio.wait_for(waiting, 20)
                await b.wait_for_members(2, 5)
                assert a.members() == sorted([a.name, b.name])
                ta = await a.create_table("t")
                tb = await b.create_table("t")
                await ta.put("k", "from a")
                assert tb["k"] == b"from a"
                assert await tb.get("k", strong=True) == b"from a"
                counters = [tb.update_key("n", lambda k, v: str(int(v or 0) + 1)) for _ in range(10)]
                counters += [ta.update_key("n", lambda k, v: str(int(v or 0) + 1)) for _ in range(10)]
                news = sorted(int(new or b"0") for _old, new in await asyncio.gather(*counters))
                assert news == list(range(1, 21))
                info = a.info()
                assert info["name"] == a.name and info["tables"][0]["name"] == "t"
                assert info["tables"][0]["entries"] == 2
            # b said goodbye: a sees it.
            downs = [ev async for ev in a.events(timeout=1.0) if ev["type"] == "node_down"]
            assert downs and downs[0]["node"] == b.name

    run(main())


def test_a_cancelled_wait_ends_and_releases_its_future() -> None:
    async def main() -> None:
        async with start() as node:
            task = asyncio.ensure_future(node.wait_for_members(5, 30))
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - t0 < 1.0

            # At the native level: the runtime task drops the future it holds.
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            ref = weakref.ref(fut)
            pending = node._n.wait_for_members_async(loop, fut, 5, 30)
            fut.cancel()
            pending.cancel()
            del fut
            for _ in range(100):
                gc.collect()
                if ref() is None:
                    break
                await asyncio.sleep(0.02)
            assert ref() is None, "the cancelled operation still holds its future"

            # A cancelled write is not torn: it completes on the cluster.
            t = await node.create_table("t")
            put = asyncio.ensure_future(t.put("k", "v"))
            await asyncio.sleep(0)
            put.cancel()
            with pytest.raises(asyncio.CancelledError):
                await put
            await asyncio.sleep(0.2)
            assert await t.put("k2", "v2") is None
            # The node is still healthy and closes promptly.
        assert node.closed

    run(main())


def test_the_event_loop_keeps_running_while_a_write_waits_on_a_silent_peer(
    spawn: Callable[..., PyNodeProcess],
) -> None:
    async def main() -> None:
        async with start(failure_timeout=1.5) as main_node:
            peer = spawn(unique("peer"), [main_node.address])
            t = await main_node.create_table("t")
            peer.call("create", "t")
            await main_node.wait_for_members(2, 10)
            await t.put("warm", "up")
            assert peer.call("get", "t", "warm") == "up"
            peer.stop()
            try:
                ticks = 0
                done = False

                async def tick() -> None:
                    nonlocal ticks
                    while not done:
                        ticks += 1
                        await asyncio.sleep(0.01)

                ticker = asyncio.ensure_future(tick())
                t0 = time.monotonic()
                error: Optional[BaseException] = None
                try:
                    await t.put("k", "v")
                except lbmkv.Error as e:  # Unavailable or Timeout are honest answers
                    error = e
                waited = time.monotonic() - t0
                done = True
                await ticker
            finally:
                peer.cont()
            assert waited >= 0.5, waited
            # A blocked loop would not have ticked while the write waited.
            assert ticks >= waited / 0.01 * 0.3, (ticks, waited)
            if error is not None:
                assert isinstance(error, (lbmkv.Unavailable, lbmkv.Timeout)), error
            else:
                assert t["k"] == b"v"

    run(main())


def test_info_and_events_are_typed(tmp_path: Any) -> None:
    """The TypedDicts narrow on an event's type under mypy --strict."""
    import subprocess
    import sys

    code = '''
import asyncio
import lbmkv, lbmkv.aio

def sync(node: lbmkv.Node) -> int:
    info: lbmkv.NodeInfo = node.info()
    total = sum(t["entries"] for t in info["tables"])
    for ev in node.events(timeout=0.1):
        if ev["type"] == "node_down":
            print(ev["reason"])
        elif ev["type"] == "merged":
            total += ev["keys_changed"]
    return total + len(info["members"])

async def aio(node: lbmkv.aio.Node) -> str:
    async for ev in node.events(timeout=0.1):
        if ev["type"] == "conflict":
            return ev["resolution"]
    t = await node.create_table("t")
    await t.update_key("k", lambda k, v: v)
    return node.info()["address"]
'''
    bad = code + '''
def wrong(node: lbmkv.Node) -> str:
    return node.info()["no_such_key"]
'''
    good_file, bad_file = tmp_path / "good.py", tmp_path / "bad.py"
    good_file.write_text(code)
    bad_file.write_text(bad)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c")]
    ok = subprocess.run([*mypy, str(good_file)], capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ko = subprocess.run([*mypy, str(bad_file)], capture_output=True, text=True, timeout=180)
    assert ko.returncode != 0 and "no_such_key" in ko.stdout, ko.stdout
    # At run time they are plain dicts.
    with lbmkv.Node(**{**FAST, "name": unique("typed")}) as node:  # type: ignore[arg-type]
        node.create_table("t")
        info = node.info()
        assert type(info) is dict and set(lbmkv.NodeInfo.__annotations__) == set(info)
        assert set(lbmkv.TableInfo.__annotations__) == set(info["tables"][0])
        ev = node.next_event(1.0)
        assert ev is not None and type(ev) is dict


def test_sync_wait_for_members(make_node: Callable[..., lbmkv.Node]) -> None:
    a = make_node()
    a.wait_for_members(1, 0.1)
    with pytest.raises(lbmkv.Unavailable):
        a.wait_for_members(2, 0.2)
    with pytest.raises(TypeError):
        a.wait_for_members("2", 1.0)  # type: ignore[arg-type]
    with pytest.raises(lbmkv.InvalidArgument):
        a.wait_for_members(2, -1.0)
    result: List[BaseException] = []

    def wait() -> None:
        try:
            a.wait_for_members(2, 20)
        except BaseException as e:  # noqa: BLE001
            result.append(e)

    waiter = threading.Thread(target=wait)
    waiter.start()
    b = make_node(seeds=[a.address])
    waiter.join(timeout=20)
    assert not waiter.is_alive() and result == []
    assert sorted(a.members()) == sorted([a.name, b.name])
    wait_for(lambda: len(b.members()) == 2, what="b to see a")
