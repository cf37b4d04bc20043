"""Bad input, closed nodes, and exceptions raised by user functions."""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Optional

import pytest

import lbmkv
from conftest import COOKIE, wait_for


def test_exception_tree() -> None:
    expected = {
        lbmkv.Unavailable: (ConnectionError, "UNAVAILABLE"),
        lbmkv.Timeout: (TimeoutError, "TIMEOUT"),
        lbmkv.InvalidArgument: (ValueError, "INVALID_ARGUMENT"),
        lbmkv.Closed: (RuntimeError, "CLOSED"),
        lbmkv.NoSuchTable: (KeyError, "NO_SUCH_TABLE"),
        lbmkv.WouldDeadlock: (RuntimeError, "WOULD_DEADLOCK"),
        lbmkv.Aborted: (RuntimeError, "ABORTED"),
        lbmkv.IoError: (OSError, "IO"),
        lbmkv.ProtocolError: (Exception, "PROTOCOL"),
        lbmkv.InternalError: (RuntimeError, "INTERNAL"),
    }
    for cls, (builtin, code) in expected.items():
        assert issubclass(cls, lbmkv.Error), cls
        assert issubclass(cls, builtin), cls
        assert cls.code == code
    assert issubclass(lbmkv.Error, Exception)


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.put(1, "v"),
        lambda t: t.put("k", None),
        lambda t: t.put("k", 3.5),
        lambda t: t.get(None),
        lambda t: t[42],
        lambda t: t.__setitem__("k", ["v"]),
        lambda t: t.get(["k"]),
        lambda t: 1 in t,
        lambda t: t.delete(object()),
        lambda t: t.put_many(5),
        lambda t: t.put_many("ab"),
        lambda t: t.put_many(["ab"]),
        lambda t: t.put_many([("k", "v", "x")]),
        lambda t: t.put_many([(1, 2)]),
        lambda t: t.put_many({"k": 2}),
        lambda t: t.delete_many("abc"),
        lambda t: t.delete_many([1]),
        lambda t: t.delete_many(7),
        lambda t: t.match(1),
        lambda t: t.match("*", 1),
        lambda t: t.update_key("k", 5),
        lambda t: t.update_key(5, lambda k, v: v),
        lambda t: t.update_all("not callable"),
        lambda t: t.on_conflict(5),
    ],
)
def test_wrong_types_raise_typeerror(table: lbmkv.Table, call: Callable[[lbmkv.Table], Any]) -> None:
    with pytest.raises(TypeError):
        call(table)
    assert len(table) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": 5},
        {"seeds": "127.0.0.1:1"},
        {"seeds": [1]},
        {"listen": 80},
        {"advertise": 80},
        {"advertise": b"127.0.0.1:7000"},
        {"min_members": "2"},
        {"min_members": 1.5},
        {"min_members": True},
        {"cookie": 5},
        {"failure_timeout": "2"},
        {"conflict_log_limit": 1.5},
        {"max_key_size": True},
    ],
)
def test_wrong_option_types_raise_typeerror(kwargs: Any) -> None:
    with pytest.raises(TypeError):
        lbmkv.Node(**{"cookie": COOKIE, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "a\0b"},
        {"name": "n" * 256},
        {"cookie": ""},
        {"failure_timeout": -1.0},
        {"failure_timeout": float("nan")},
        {"request_timeout": 0},
        {"failure_timeout": 0.1, "heartbeat_interval": 0.25},
        {"listen": "no port here"},
        {"advertise": "no port here"},
        {"advertise": ":7000"},
        {"min_members": -1},
        {"max_key_size": -1},
        {"max_value_size": 0},
    ],
)
def test_invalid_options_raise_invalidargument(kwargs: Any) -> None:
    with pytest.raises(lbmkv.InvalidArgument) as info:
        lbmkv.Node(**{"cookie": COOKIE, **kwargs})
    assert isinstance(info.value, ValueError)
    assert str(info.value)


def test_min_members_with_an_unreachable_seed_raises_unavailable_naming_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        seed = f"127.0.0.1:{s.getsockname()[1]}"
    # Nobody listens there any more: the seed is refused.
    with pytest.raises(lbmkv.Unavailable) as info:
        lbmkv.Node(cookie=COOKIE, seeds=[seed], min_members=2, request_timeout=1.0)
    assert isinstance(info.value, ConnectionError)
    assert info.value.code == "UNAVAILABLE"
    assert "1 of 2 members" in str(info.value)
    assert f"{seed}: " in str(info.value)


def test_listen_on_a_busy_port_raises_ioerror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(lbmkv.IoError) as info:
            lbmkv.Node(cookie=COOKIE, listen=f"127.0.0.1:{port}")
        assert isinstance(info.value, OSError)


@pytest.mark.parametrize("name", ["", "a\0b", "x" * 256])
def test_invalid_table_names(node: lbmkv.Node, name: str) -> None:
    with pytest.raises(lbmkv.InvalidArgument):
        node.create_table(name)
    with pytest.raises(ValueError):
        node.table(name)


def test_invalid_utf8_in_str_raises_valueerror(table: lbmkv.Table) -> None:
    with pytest.raises(ValueError):
        table.put("\ud800", "v")


def test_no_such_table_is_a_keyerror(node: lbmkv.Node) -> None:
    with pytest.raises(lbmkv.NoSuchTable) as info:
        node.table("absent")
    assert isinstance(info.value, KeyError)
    assert "absent" in str(info.value)
    with pytest.raises(KeyError):
        node.table("absent")


def test_oversize_key_and_value(make_node: Callable[..., lbmkv.Node]) -> None:
    n = make_node(max_key_size=8, max_value_size=16)
    t = n.create_table("t")
    with pytest.raises(lbmkv.InvalidArgument):
        t.put("k" * 9, "v")
    with pytest.raises(lbmkv.InvalidArgument):
        t.put("k", "v" * 17)
    with pytest.raises(lbmkv.InvalidArgument):
        t.get("k" * 9)
    with pytest.raises(lbmkv.InvalidArgument):
        t.put_many({"k": "v", "k2": "v" * 17})
    with pytest.raises(lbmkv.InvalidArgument):
        t.update_key("k", lambda k, v: "v" * 17)
    assert len(t) == 0


def test_bad_patterns_and_addresses(node: lbmkv.Node, table: lbmkv.Table) -> None:
    with pytest.raises(lbmkv.InvalidArgument):
        table.match("[")
    with pytest.raises(lbmkv.InvalidArgument):
        table.match("*", "[a")
    with pytest.raises(lbmkv.InvalidArgument):
        node.connect("no port")
    with pytest.raises(lbmkv.InvalidArgument):
        node.disconnect("")
    with pytest.raises(lbmkv.InvalidArgument):
        list(node.events(timeout=-1))


def test_connect_to_nobody_raises_unavailable(node: lbmkv.Node) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(lbmkv.Unavailable):
            node.connect(f"127.0.0.1:{port}")


def test_closed_node_raises_closed(node: lbmkv.Node, table: lbmkv.Table) -> None:
    table.put("k", "v")
    node.close()
    calls = [
        lambda: table.put("k", "v"),
        lambda: table.get("k"),
        lambda: table["k"],
        lambda: table.get("k", strong=True),
        lambda: "k" in table,
        lambda: len(table),
        lambda: list(table),
        lambda: table.delete("k"),
        lambda: table.put_many({"a": "b"}),
        lambda: table.delete_many(["a"]),
        lambda: table.match(),
        lambda: table.update_key("k", lambda k, v: v),
        lambda: table.update_all(lambda k, v: v),
        lambda: table.conflicts(),
        lambda: table.on_conflict(None),
        lambda: node.create_table("other"),
        lambda: node.table("t"),
        lambda: node.connect("127.0.0.1:1"),
        lambda: node.disconnect("x"),
    ]
    for call in calls:
        with pytest.raises(lbmkv.Closed):
            call()
    assert node.closed
    assert node.next_event(0.0) is not None  # the queue still drains


class Boom(Exception):
    pass


def test_update_fn_exception_propagates_unchanged(table: lbmkv.Table) -> None:
    table.put("k", "v")
    err = Boom("no")

    def fn(key: bytes, value: Optional[bytes]) -> bytes:
        raise err

    with pytest.raises(Boom) as info:
        table.update_key("k", fn)
    assert info.value is err
    assert table["k"] == b"v"

    with pytest.raises(Boom) as info:
        table.update_all(fn)  # type: ignore[arg-type]
    assert info.value is err
    assert table["k"] == b"v"


def test_update_fn_returning_a_wrong_type_raises_typeerror(table: lbmkv.Table) -> None:
    table.put("k", "v")
    with pytest.raises(TypeError):
        table.update_key("k", lambda k, v: 5)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError):
        table.update_all(lambda k, v: 5)  # type: ignore[arg-type,return-value]
    assert table["k"] == b"v"


def test_blocking_call_inside_update_fn_would_deadlock(table: lbmkv.Table) -> None:
    def fn(key: bytes, value: Optional[bytes]) -> bytes:
        table.put("other", "x")
        return b"never"

    with pytest.raises(lbmkv.WouldDeadlock):
        table.update_key("k", fn)
    # Local reads are fine inside the function.
    table.put("src", "1")
    assert table.update_key("k", lambda k, v: table.get("src")) == (None, b"1")


def _conflict(
    make_node: Callable[..., lbmkv.Node],
    handler: Callable[..., Any],
    handler_b: Optional[Callable[..., Any]] = None,
) -> "tuple[lbmkv.Node, lbmkv.Node]":
    """Two nodes that write `k` apart, then meet: a conflict for the handlers
    (`handler` on the first node, `handler_b` or the same on the second)."""
    a = make_node()
    b = make_node()
    a.create_table("t", on_conflict=handler).put("k", "left")
    b.create_table("t", on_conflict=handler_b or handler).put("k", "right")
    b.connect(a.address)
    return a, b


def test_conflict_handler_resolves(make_node: Callable[..., lbmkv.Node]) -> None:
    calls: "dict[str, list[tuple[bytes, Optional[bytes], Optional[bytes]]]]" = {"a": [], "b": []}

    def on(node: str) -> Callable[[bytes, Optional[bytes], Optional[bytes]], bytes]:
        def handler(key: bytes, local: Optional[bytes], remote: Optional[bytes]) -> bytes:
            calls[node].append((key, local, remote))
            return b"|".join(sorted([local or b"-", remote or b"-"]))

        return handler

    a, b = _conflict(make_node, on("a"), on("b"))
    for n in (a, b):
        wait_for(lambda: n.table("t").get("k") == b"left|right", what="the handler's value")
    assert calls["a"] or calls["b"]
    for key, local, remote in calls["a"] + calls["b"]:
        assert key == b"k" and {local, remote} == {b"left", b"right"}


def test_conflict_handler_may_delete(make_node: Callable[..., lbmkv.Node]) -> None:
    a, b = _conflict(make_node, lambda k, local, remote: None)
    for n in (a, b):
        wait_for(lambda: "k" not in n.table("t"), what="the delete")


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(lambda k, l, r: (_ for _ in ()).throw(Boom("handler failed")), id="raises"),
        pytest.param(lambda k, l, r: 12, id="returns-int"),
    ],
)
def test_failing_conflict_handler_falls_back_and_logs(
    make_node: Callable[..., lbmkv.Node], caplog: pytest.LogCaptureFixture, handler: Any
) -> None:
    caplog.set_level(logging.ERROR, logger="lbmkv")
    a, b = _conflict(make_node, handler)
    # The fallback keeps one of the two versions on both nodes.
    wait_for(
        lambda: a.table("t").get("k") == b.table("t").get("k") in (b"left", b"right"),
        what="convergence on the fallback",
    )
    records = wait_for(lambda: [r for r in caplog.records if r.name == "lbmkv"], what="a log record")
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] in (Boom, TypeError)
    events = [e for n in (a, b) for e in n.events(timeout=0.3) if e["type"] == "conflict"]
    assert events and all(e["resolution"] == "handler_failed" and e["key"] == "k" for e in events), events
    logged = [r for n in (a, b) for r in n.table("t").conflicts()]
    assert logged
    for rec in logged:
        assert isinstance(rec, lbmkv.ConflictRecord)
        assert rec.key == b"k"
        assert {rec.kept, rec.lost} == {b"left", b"right"}
        assert rec.kept == a.table("t")["k"]
        assert rec.peer in (a.name, b.name)
        assert rec.at_ms > 1_600_000_000_000


def test_blocking_call_inside_conflict_handler_would_deadlock(
    make_node: Callable[..., lbmkv.Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="lbmkv")
    holder: "dict[str, lbmkv.Table]" = {}

    def handler(key: bytes, local: Optional[bytes], remote: Optional[bytes]) -> bytes:
        holder["t"].put("other", "x")
        return b"never"

    a = make_node()
    b = make_node()
    holder["t"] = a.create_table("t", on_conflict=handler)
    holder["t"].put("k", "left")
    b.create_table("t", on_conflict=handler).put("k", "right")
    b.connect(a.address)
    records = wait_for(lambda: [r for r in caplog.records if r.name == "lbmkv"], what="a log record")
    assert records[0].exc_info is not None and records[0].exc_info[0] is lbmkv.WouldDeadlock
