"""A mixed cluster: a Python node and an `lbmkv node` process (the Rust
command) see each other's writes; both speak the same wire protocol."""

from __future__ import annotations

from typing import Callable, Optional

import lbmkv
from conftest import CliNode, unique, wait_for


def test_python_node_and_lbmkv_node_process_share_tables(
    make_node: Callable[..., lbmkv.Node], spawn_cli: Callable[..., CliNode]
) -> None:
    py = make_node()
    cli = spawn_cli(unique("cli"), [py.address])
    wait_for(lambda: sorted(py.members()) == sorted([py.name, cli.name]), what="the cli node to join")
    assert sorted(cli.items("members")) == sorted([py.name, cli.name])

    table = py.create_table("mixed")
    assert cli.cmd("create mixed") == "OK"
    assert "mixed" in cli.items("tables")

    # A write acknowledged on one side is readable on the other at once.
    assert table.put("from-py", "hello") is None
    assert cli.cmd("get mixed from-py") == "VALUE hello"
    assert cli.cmd("put mixed from-cli hello world") == "OK"
    assert table["from-cli"] == b"hello world"
    assert cli.cmd("put mixed from-py bye") == "PREV hello"
    assert table["from-py"] == b"bye"
    assert table.delete("from-cli") == b"hello world"
    assert cli.cmd("get mixed from-cli") == "NIL"

    # One counter, incremented atomically from both sides.
    def incr(key: bytes, value: Optional[bytes]) -> str:
        return str(int(value or 0) + 1)

    assert cli.cmd("incr mixed n") == "VALUE 1"
    assert table.update_key("n", incr) == (b"1", b"2")
    assert cli.cmd("incr mixed n") == "VALUE 3"
    assert table.get("n", strong=True) == b"3"

    # A table created by the cli node appears on the Python node.
    assert cli.cmd("create from_cli") == "OK"
    wait_for(lambda: "from_cli" in py.tables(), what="the table to replicate")
    assert py.table("from_cli").put("k", "v") is None
    assert cli.cmd("get from_cli k") == "VALUE v"

    cli.send("quit")
    assert cli.proc.wait(timeout=10) == 0
    wait_for(lambda: py.members() == [py.name], timeout=5, what="the cli node to leave")
