"""Watches (change feeds) and expiring keys, blocking and asyncio, on two
nodes: the scenario of the C test (write, replicated, delete, expiry, merge
after a split, lag, close) and ttls that expire everywhere unless refreshed."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple, TypeVar

import pytest

import lbmkv
import lbmkv.aio
from conftest import FAST, unique, wait_for

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Runs a test coroutine on a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def names() -> Tuple[str, str]:
    """Two node names in sorted order (the first one sorts first)."""
    base = unique("w")
    return base + "-1", base + "-2"


def sequencer(node: Any, table: str) -> Optional[str]:
    for t in node.info()["tables"]:
        if t["name"] == table:
            return t["sequencer"]  # type: ignore[no-any-return]
    return None


def settle(a: lbmkv.Node, b: lbmkv.Node, table: str) -> str:
    """Waits until both nodes follow the same sequencer for ``table``; its name.
    (Not the first one ``a`` names: when ``b`` is ready it may take over, and
    both then follow ``b``.)"""

    def same() -> Optional[str]:
        sa, sb = sequencer(a, table), sequencer(b, table)
        return sa if sa is not None and sa == sb else None

    seq = wait_for(same, what="both nodes on the same sequencer")
    assert seq is not None
    return seq


def seen(w: lbmkv.Watch, key: bytes, cause: str, limit: float = 10.0) -> lbmkv.Change:
    """Takes items of ``w`` until a change of ``key`` with ``cause``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        item = w.next(timeout=0.2)
        if item is not None and item["type"] == "change" and item["key"] == key and item["cause"] == cause:
            return item
    raise AssertionError(f"no change of {key!r} with the cause {cause!r} within {limit} s")


def change(item: Optional[lbmkv.WatchItem]) -> lbmkv.Change:
    assert item is not None and item["type"] == "change", item
    return item


def test_watch_on_two_nodes(make_node: Callable[..., lbmkv.Node]) -> None:
    na, nb = names()
    a = make_node(name=na)
    b = make_node(name=nb, seeds=[a.address])
    a.wait_for_members(2, 20)
    b.wait_for_members(2, 20)
    ta = a.create_table("w")
    tb = b.create_table("w")
    seq = settle(a, b, "w")
    wa = ta.watch()
    wb = tb.watch("k")
    assert wb.next(timeout=0.01) is None
    assert wb.next(timeout=0) is None

    # A write from b, another key outside b's prefix, a delete from a.
    tb.put("k1", "v1")
    tb.put("other", "x")
    ta.delete("k1")
    for w, node in ((wa, a), (wb, b)):
        c = change(w.next(timeout=5))
        assert c["key"] == b"k1" and c["value"] == b"v1" and c["prev"] is None
        assert c["table"] == "w" and c["node"] == seq
        assert c["cause"] == ("write" if node.name == seq else "replicated")
    assert change(wa.next(timeout=5))["key"] == b"other"
    gone = change(wb.next(timeout=5))  # "other" is not under b's prefix
    assert gone["key"] == b"k1" and gone["value"] is None and gone["prev"] == b"v1"

    # An expiring key: its ttl, then its delete on both nodes, cause expiry.
    tb.put("k-exp", "soon", ttl=0.3)
    left = ta.ttl("k-exp")
    assert left is not None and 0 < left <= 0.3
    assert ta.ttl("absent") is None and ta.ttl("other") is None
    for w in (wa, wb):
        c = seen(w, b"k-exp", "expiry")
        assert c["value"] is None and c["prev"] == b"soon"
    assert "k-exp" not in ta and "k-exp" not in tb

    # A split: a write on a's side reaches b by the merge of the heal.
    a.disconnect(b.name)
    b.disconnect(a.name)
    wait_for(lambda: a.members() == [a.name] and b.members() == [b.name], what="the split")
    ta.put("k-split", "a")
    try:
        a.connect(b.address)
    except lbmkv.Error:
        pass  # b may connect first
    b.connect(a.address)
    a.wait_for_members(2, 10)
    assert seen(wb, b"k-split", "merge")["value"] == b"a"

    # A slow consumer with a buffer of 2 learns how many changes it missed.
    with ta.watch("s", buffer=2) as slow:
        for i in range(5):
            ta.put(f"s{i}", "v")
        items: List[lbmkv.WatchItem] = []
        while (item := slow.next(timeout=0.5)) is not None:
            items.append(item)
        assert [i["type"] for i in items] == ["change", "change", "lagged"], items
        assert items[2]["type"] == "lagged" and items[2]["count"] == 3
    # The with block closed it: iteration ends at once.
    assert list(slow) == []
    with pytest.raises(StopIteration):
        slow.next(timeout=1)

    # Closing the node ends its watches after what they buffered.
    done = threading.Event()
    rest: List[lbmkv.WatchItem] = []

    def drain() -> None:
        rest.extend(wa)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    a.close()
    assert done.wait(10), "closing the node did not end the iteration of its watch"
    with pytest.raises(StopIteration):
        wa.next(timeout=0.01)
    wb.close()
    assert list(wb) == []


def test_close_ends_a_blocked_iteration_and_bad_arguments(table: lbmkv.Table) -> None:
    w = table.watch()
    got: List[Any] = []
    t = threading.Thread(target=lambda: got.extend(w), daemon=True)
    t.start()
    table.put("a", "1")
    wait_for(lambda: got, what="the change in the other thread")
    w.close()
    t.join(5)
    assert not t.is_alive()
    assert got[0]["key"] == b"a" and got[0]["cause"] == "write" and got[0]["node"] == table.node.name
    with pytest.raises(lbmkv.InvalidArgument):
        table.watch(buffer=0)
    with pytest.raises(lbmkv.InvalidArgument):
        table.put("k", "v", ttl=0)
    with pytest.raises(lbmkv.InvalidArgument):
        table.put("k", "v", ttl=-1.0)
    with pytest.raises(TypeError):
        table.put("k", "v", ttl="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.watch(1)  # type: ignore[arg-type]
    assert "k" not in table


def test_ttl_keys_expire_on_both_nodes_unless_refreshed(make_node: Callable[..., lbmkv.Node]) -> None:
    a = make_node()
    b = make_node(seeds=[a.address])
    a.wait_for_members(2, 20)
    ta = a.create_table("ttl")
    tb = b.create_table("ttl")
    settle(a, b, "ttl")
    ta.put("plain", "p")
    ta.put("gone", "g", ttl=0.4)
    assert ta.put_many({"m1": "1", "m2": "2"}, ttl=0.4) == {}
    assert lbmkv.update(ta, "u", lambda k, v: b"1", ttl=0.4) == (None, b"1")
    ta.put("kept", "k", ttl=0.6)
    ta.put("perm", "x", ttl=0.4)
    ta.put("perm", "x")  # a write without a ttl makes it permanent
    assert ta.ttl("perm") is None and ta.ttl("plain") is None
    left = tb.ttl("kept")
    assert left is not None and 0.3 < left <= 0.6
    # Refresh "kept" past the others' deadlines, twice, with update_key.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        tb.update_key("kept", lambda k, v: v, ttl=0.6)
        time.sleep(0.1)
    for t in (ta, tb):
        wait_for(lambda: not any(k in t for k in ("gone", "m1", "m2", "u")), timeout=5, what="the expiries")
        assert t.match("*") == {b"plain": b"p", b"kept": b"k", b"perm": b"x"}
    # Left alone, "kept" expires too.
    wait_for(lambda: "kept" not in ta and "kept" not in tb, timeout=5, what="the expiry of kept")
    assert ta.match("*") == {b"plain": b"p", b"perm": b"x"}
    assert wait_for(lambda: tb.match("*") == {b"plain": b"p", b"perm": b"x"}, timeout=5, what="b's entries")


def test_asyncio_watch_and_ttl() -> None:
    async def main() -> None:
        na, nb = names()
        async with lbmkv.aio.Node.start(**{**FAST, "name": na}) as a:  # type: ignore[arg-type]
            async with lbmkv.aio.Node.start(**{**FAST, "name": nb, "seeds": [a.address], "min_members": 2}) as b:  # type: ignore[arg-type]
                await a.wait_for_members(2, 20)
                ta = await a.create_table("w")
                tb = await b.create_table("w")
                seq = None
                while seq is None:
                    seq = sequencer(a, "w")
                    await asyncio.sleep(0.02)
                wa = ta.watch()
                wb = tb.watch("k", buffer=16)
                assert await wb.next(timeout=0.01) is None
                await tb.put("k1", "v1")
                await ta.delete("k1")
                await tb.put("k-exp", "soon", ttl=0.3)
                left = tb.ttl("k-exp")
                assert left is not None and 0 < left <= 0.3
                got: List[lbmkv.Change] = []
                async for item in wb:
                    assert item["type"] == "change"
                    got.append(item)
                    if item["cause"] == "expiry":
                        break
                assert [(c["key"], c["value"], c["cause"]) for c in got] == [
                    (b"k1", b"v1", "write" if b.name == seq else "replicated"),
                    (b"k1", None, "write" if b.name == seq else "replicated"),
                    (b"k-exp", b"soon", "write" if b.name == seq else "replicated"),
                    (b"k-exp", None, "expiry"),
                ]
                assert "k-exp" not in ta and "k-exp" not in tb

                # put_many and update_key with a ttl; a refreshed key stays.
                await ta.put_many([("k-m", "1")], ttl=0.3)
                await lbmkv.aio.update(ta, "k-r", lambda k, v: b"r", ttl=0.4)
                for _ in range(6):
                    await tb.update_key("k-r", lambda k, v: v, ttl=0.4)
                    await asyncio.sleep(0.1)
                assert "k-m" not in ta and tb["k-r"] == b"r"

                # A slow consumer is told how many changes it missed.
                async with ta.watch("s", buffer=2) as slow:
                    for i in range(5):
                        await ta.put(f"s{i}", "v")
                    kinds = []
                    while (item2 := await slow.next(timeout=0.5)) is not None:
                        kinds.append((item2["type"], item2["count"] if item2["type"] == "lagged" else 0))
                    assert kinds == [("change", 0), ("change", 0), ("lagged", 3)]
                assert [i async for i in slow] == []

                # close() ends an iteration that waits; so does closing the node.
                async def collect() -> int:
                    return len([i async for i in wb])

                waiting = asyncio.ensure_future(collect())
                await asyncio.sleep(0.1)
                wb.close()
                assert await asyncio.wait_for(waiting, 5) >= 0
                draining = asyncio.ensure_future(collect_all(wa))
                await asyncio.sleep(0.1)
            # b closed; now a.
        assert await asyncio.wait_for(draining, 5) > 0
        with pytest.raises(StopAsyncIteration):
            await wa.next(timeout=0.01)

    async def collect_all(w: lbmkv.aio.Watch) -> int:
        return len([i async for i in w])

    run(main())


def test_asyncio_cancelled_next_takes_no_item() -> None:
    async def main() -> None:
        async with lbmkv.aio.Node.start(**{**FAST, "name": unique("wc")}) as n:  # type: ignore[arg-type]
            t = await n.create_table("t")
            w = t.watch()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(w.next(), 0.1)
            await t.put("a", "1")
            item = await w.next(timeout=5)
            assert item is not None and item["type"] == "change" and item["key"] == b"a"
            w.close()

    run(main())
