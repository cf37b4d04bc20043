"""Every table operation on a single node."""

from __future__ import annotations

import socket
from collections.abc import MutableMapping
from typing import Optional

import pytest

import lbmkv

from conftest import wait_for


def test_table_is_a_mutable_mapping(table: lbmkv.Table) -> None:
    assert isinstance(table, MutableMapping)
    assert table.name == "t"
    assert len(table) == 0
    table["a"] = "1"
    table[b"b"] = b"2"
    assert table["a"] == b"1"
    assert table[b"b"] == b"2"
    assert "a" in table and b"b" in table and "c" not in table
    assert len(table) == 2
    assert list(table) == [b"a", b"b"]
    assert list(table.keys()) == [b"a", b"b"]
    assert list(table.values()) == [b"1", b"2"]
    assert dict(table.items()) == {b"a": b"1", b"b": b"2"}
    assert dict(table) == {b"a": b"1", b"b": b"2"}
    del table["a"]
    assert "a" not in table
    assert len(table) == 1


def test_getitem_and_delitem_of_absent_key_raise_keyerror(table: lbmkv.Table) -> None:
    with pytest.raises(KeyError):
        table["missing"]
    with pytest.raises(KeyError):
        del table["missing"]


def test_keys_and_values_accept_every_bytes_like_and_come_back_as_bytes(table: lbmkv.Table) -> None:
    table.put("s", "str")
    table.put(b"b", b"bytes")
    table.put(bytearray(b"ba"), bytearray(b"bytearray"))
    table.put(memoryview(b"mv"), memoryview(b"memoryview"))
    table.put("é", "ü")
    assert table.get(b"s") == b"str"
    assert table.get("b") == b"bytes"
    assert table.get(memoryview(b"ba")) == b"bytearray"
    assert table.get(bytearray(b"mv")) == b"memoryview"
    assert table.get("é".encode()) == "ü".encode()
    assert all(type(k) is bytes for k in table)
    assert all(type(v) is bytes for v in table.values())


def test_put_returns_previous_value(table: lbmkv.Table) -> None:
    assert table.put("k", "v1") is None
    assert table.put("k", "v2") == b"v1"
    assert table["k"] == b"v2"


def test_get_default_and_strong(table: lbmkv.Table) -> None:
    assert table.get("k") is None
    assert table.get("k", b"dflt") == b"dflt"
    assert table.get("k", default=7) == 7
    table.put("k", "v")
    assert table.get("k", b"dflt") == b"v"
    assert table.get("k", strong=True) == b"v"
    assert table.get("nope", b"d", strong=True) == b"d"


def test_put_many_takes_a_mapping_or_pairs(table: lbmkv.Table) -> None:
    assert table.put_many({"a": "1", b"b": b"2"}) == {}
    assert table.put_many([("a", "10"), (b"c", bytearray(b"3"))]) == {b"a": b"1"}
    assert table.put_many(iter([["b", "20"]])) == {b"b": b"2"}
    assert table.put_many([]) == {}
    assert dict(table) == {b"a": b"10", b"b": b"20", b"c": b"3"}


def test_delete_and_delete_many_return_previous(table: lbmkv.Table) -> None:
    table.put_many({"a": "1", "b": "2", "c": "3"})
    assert table.delete("a") == b"1"
    assert table.delete("a") is None
    assert table.delete_many(["b", "c", "zz"]) == {b"b": b"2", b"c": b"3"}
    assert table.delete_many([]) == {}
    assert len(table) == 0


def test_match_globs_on_keys_and_values_sorted(table: lbmkv.Table) -> None:
    table.put_many({"user:2": "bob", "user:1": "alice", "group:1": "admins", "user:10": "carol"})
    assert list(table.match("user:*")) == [b"user:1", b"user:10", b"user:2"]
    assert table.match("user:?") == {b"user:1": b"alice", b"user:2": b"bob"}
    assert table.match("*", "a*") == {b"user:1": b"alice", b"group:1": b"admins"}
    assert table.match("user:[12]") == {b"user:1": b"alice", b"user:2": b"bob"}
    assert len(table.match()) == 4
    table.put("star*", "x")
    assert table.match("star\\*") == {b"star*": b"x"}


def test_update_key_is_read_modify_write(table: lbmkv.Table) -> None:
    seen = []

    def incr(key: bytes, value: Optional[bytes]) -> str:
        seen.append((key, value))
        return str(int(value or 0) + 1)

    assert table.update_key("n", incr) == (None, b"1")
    assert table.update_key(b"n", incr) == (b"1", b"2")
    assert seen == [(b"n", None), (b"n", b"1")]
    # Returning the old value writes nothing; returning None deletes.
    assert table.update_key("n", lambda k, v: v) == (b"2", b"2")
    assert table.update_key("n", lambda k, v: None) == (b"2", None)
    assert "n" not in table
    assert table.update_key("absent", lambda k, v: None) == (None, None)


def test_update_all_returns_changed_entries(table: lbmkv.Table) -> None:
    table.put_many({"a": "1", "b": "2", "c": "3"})

    def f(key: bytes, value: bytes) -> Optional[bytes]:
        if key == b"a":
            return value  # unchanged
        if key == b"b":
            return None  # deleted
        return value + b"0"

    old, new = table.update_all(f)
    assert old == {b"b": b"2", b"c": b"3"}
    assert new == {b"c": b"30"}
    assert dict(table) == {b"a": b"1", b"c": b"30"}


def test_mapping_helpers(table: lbmkv.Table) -> None:
    assert table.setdefault("k", "v") == b"v"
    assert table.setdefault("k", "other") == b"v"
    assert table.pop("k") == b"v"
    assert table.pop("k", None) is None
    with pytest.raises(KeyError):
        table.pop("k")
    table.put_many({"a": "1", "b": "2"})
    table.clear()
    assert len(table) == 0
    table.put_many({"x": "1"})
    assert table.popitem() == (b"x", b"1")


def test_conflicts_of_a_fresh_table_are_empty(table: lbmkv.Table) -> None:
    assert table.conflicts() == []
    table.on_conflict(lambda k, a, b: a)
    table.on_conflict(None)


def test_node_operations(node: lbmkv.Node) -> None:
    assert node.name.startswith("py-")
    host, port = node.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert node.members() == [node.name]
    assert node.tables() == []
    t1 = node.create_table("one")
    t2 = node.create_table("one")  # idempotent
    t1.put("k", "v")
    assert t2["k"] == b"v"
    node.create_table("two")
    assert node.tables() == ["one", "two"]
    assert node.table("one")["k"] == b"v"
    assert node.table("one").node is node
    info = node.info()
    assert info["name"] == node.name
    assert info["address"] == node.address
    assert info["members"] == [node.name]
    assert [t["name"] for t in info["tables"]] == ["one", "two"]
    assert info["tables"][0]["entries"] == 1
    assert repr(node).startswith("<lbmkv.Node")
    assert "one" in repr(t1)


def test_events_are_queued_from_start(node: lbmkv.Node) -> None:
    node.create_table("e1")
    node.create_table("e2")
    events = list(node.events(timeout=0.2))
    assert {"type": "table_created", "table": "e1"} in events
    assert {"type": "table_created", "table": "e2"} in events
    assert node.next_event(0.05) is None


def test_events_without_timeout_end_when_the_node_closes(node: lbmkv.Node) -> None:
    node.create_table("e")
    node.close()
    assert list(node.events()) == [{"type": "table_created", "table": "e"}]


def test_context_manager_closes() -> None:
    with lbmkv.Node(cookie="c") as n:
        t = n.create_table("t")
        t.put("k", "v")
        assert not n.closed
    assert n.closed
    with pytest.raises(lbmkv.Closed):
        t.get("k")
    n.close()  # a second close does nothing


def test_two_nodes_in_one_process_replicate(make_node) -> None:  # type: ignore[no-untyped-def]
    a = make_node()
    b = make_node(seeds=[a.address])
    ta = a.create_table("shared")
    tb = b.create_table("shared")
    assert sorted(a.members()) == sorted([a.name, b.name])
    # If b sorts first it takes the ordering over once it holds the data; a
    # write already on its way to the old sequencer then fails. Let the turn
    # settle first.
    wait_for(lambda: a.info()["sequencer"] == b.info()["sequencer"], what="one sequencer")
    ta.put("k", "from a")
    assert tb["k"] == b"from a"
    tb.update_key("n", lambda k, v: b"1")
    assert ta["n"] == b"1"
    b.disconnect(a.name)
    a.disconnect(b.name)
    wait_for(lambda: a.members() == [a.name] and b.members() == [b.name], what="the split")
    # Each side refuses the other until it lifts its own disconnect, so the
    # first connect fails.
    with pytest.raises(lbmkv.Unavailable):
        a.connect(b.address)
    b.connect(a.address)
    wait_for(lambda: len(a.members()) == 2 and len(b.members()) == 2, what="the heal")


def test_advertise_and_min_members(make_node) -> None:  # type: ignore[no-untyped-def]
    # The advertised address is the one the node gives, whatever it listens on.
    elsewhere = make_node(advertise="127.0.0.1:1")
    assert elsewhere.address == "127.0.0.1:1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    a = make_node(listen=addr, advertise=addr)
    assert a.address == addr
    # A node that needs two members starts once it joined the first.
    b = make_node(seeds=[addr], min_members=2)
    assert sorted(b.members()) == sorted([a.name, b.name])


def test_version() -> None:
    assert isinstance(lbmkv.__version__, str) and lbmkv.__version__


def test_update_is_mutable_mapping_update_in_one_atomic_batch(table: lbmkv.Table) -> None:
    table.update({"a": "1"}, b="2")
    table.update([(b"c", b"3")])

    class KeysOnly:
        def keys(self) -> list:  # type: ignore[type-arg]
            return ["d"]

        def __getitem__(self, k: str) -> str:
            return "4"

    table.update(KeysOnly())
    table.update()
    assert dict(table) == {b"a": b"1", b"b": b"2", b"c": b"3", b"d": b"4"}
    # Generic mapping code works on a table.
    def merge_into(target: "MutableMapping[bytes, bytes]", extra: "dict[bytes, bytes]") -> None:
        target.update(extra)

    merge_into(table, {b"e": b"5"})
    assert table["e"] == b"5"


def test_old_update_key_fn_call_says_where_it_went(table: lbmkv.Table) -> None:
    with pytest.raises(TypeError, match=r"update_key\(key, fn\)"):
        table.update("n", lambda k, v: b"1")  # type: ignore[call-arg]
    assert "n" not in table
    with pytest.raises(TypeError, match="at most 1 positional"):
        table.update({}, {})  # type: ignore[call-arg]


def test_module_level_update_is_lbm_kv_spelling(table: lbmkv.Table) -> None:
    assert lbmkv.update(table, "n", lambda k, v: b"1") == (None, b"1")
    assert lbmkv.update(table, "n", lambda k, v: (v or b"") + b"!") == (b"1", b"1!")
    with pytest.raises(TypeError):
        lbmkv.update({}, "n", lambda k, v: v)  # type: ignore[arg-type]
