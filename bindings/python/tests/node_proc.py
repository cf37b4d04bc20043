"""A Python lbmkv node in its own process, driven by one JSON command per line
on stdin; it answers one JSON line per command on stdout.

Start: ``node_proc.py NAME COOKIE [SEED...]``; the first line printed is
``{"ready": [name, address]}``. Commands are JSON arrays ``[op, args...]``;
answers are ``{"ok": result}`` or ``{"err": [exception class name, message]}``.
Keys and values travel as latin-1 strings.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Dict, List, Optional

import lbmkv

_Handler = Callable[[bytes, Optional[bytes], Optional[bytes]], Optional[bytes]]


def concat(_key: bytes, local: Optional[bytes], remote: Optional[bytes]) -> bytes:
    """A result that differs from both sides, so a test can tell the handler ran."""
    return b"|".join(sorted([local or b"-", remote or b"-"]))


def keep_max(_key: bytes, local: Optional[bytes], remote: Optional[bytes]) -> bytes:
    return max(local or b"", remote or b"")


def fail(_key: bytes, _local: Optional[bytes], _remote: Optional[bytes]) -> bytes:
    raise RuntimeError("this handler always fails")


HANDLERS: Dict[str, Optional[_Handler]] = {"none": None, "concat": concat, "max": keep_max, "fail": fail}


def text(b: Optional[bytes]) -> Optional[str]:
    return None if b is None else b.decode("latin-1")


def run(node: lbmkv.Node, cmd: List[Any]) -> Any:
    op, args = cmd[0], cmd[1:]
    if op == "create":
        node.create_table(args[0], on_conflict=HANDLERS[args[1] if len(args) > 1 else "none"])
        return None
    if op == "put":
        return text(node.table(args[0]).put(args[1], args[2]))
    if op == "get":
        return text(node.table(args[0]).get(args[1]))
    if op == "delete":
        return text(node.table(args[0]).delete(args[1]))
    if op == "incr":
        _, new = node.table(args[0]).update_key(args[1], lambda _k, v: str(int(v or 0) + 1))
        return text(new)
    if op == "members":
        return node.members()
    if op == "tables":
        return node.tables()
    if op == "connect":
        node.connect(args[0])
        return None
    if op == "disconnect":
        node.disconnect(args[0])
        return None
    if op == "info":
        return node.info()
    if op == "conflicts":
        return [[text(r.key), text(r.kept), text(r.lost), r.peer] for r in node.table(args[0]).conflicts()]
    if op == "events":
        return list(node.events(timeout=0.0))
    if op == "quit":
        return None
    raise ValueError(f"unknown command {op!r}")


def main() -> None:
    name, cookie, seeds = sys.argv[1], sys.argv[2], sys.argv[3:]
    with lbmkv.Node(
        name=name, cookie=cookie, seeds=seeds, failure_timeout=1.0, heartbeat_interval=0.1
    ) as node:
        print(json.dumps({"ready": [node.name, node.address]}), flush=True)
        for line in sys.stdin:
            cmd: List[Any] = []
            try:
                cmd = json.loads(line)
                reply: Dict[str, Any] = {"ok": run(node, cmd)}
            except Exception as e:  # every failure goes back to the driving test
                reply = {"err": [type(e).__name__, str(e)]}
            print(json.dumps(reply), flush=True)
            if cmd and cmd[0] == "quit":
                break


if __name__ == "__main__":
    main()
