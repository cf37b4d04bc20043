"""The lbm_kv sequencer sample in Python.

Two nodes in this process share a counter table whose conflict handler keeps
the larger count (should a netsplit ever let both sides count on); several
threads on both nodes hand out numbers with an atomic ``update_key``. Every number
is handed out exactly once and the final count is the number of increments.
Prints the final value; exits 1 when a number was lost or handed out twice.

Run: ``python examples/python/sequencer.py`` with the ``lbmkv`` package
installed (``pip install ./bindings/python``).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import List, Optional

import lbmkv

THREADS = 4
INCREMENTS = 100
TOTAL = THREADS * INCREMENTS


def count(value: Optional[bytes]) -> int:
    return int(value or b"0")


def keep_max(key: bytes, local: Optional[bytes], remote: Optional[bytes]) -> bytes:
    """Conflict handler: after a netsplit, the larger count wins."""
    return str(max(count(local), count(remote))).encode()


def increment(key: bytes, value: Optional[bytes]) -> str:
    """Update function: runs on the calling thread, maybe more than once."""
    return str(count(value) + 1)


def main() -> int:
    cookie = "sequencer-sample"
    with lbmkv.Node(name="seq-a", cookie=cookie) as a, lbmkv.Node(
        name="seq-b", cookie=cookie, seeds=[a.address]
    ) as b:
        deadline = time.monotonic() + 10
        while len(a.members()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        tables = [n.create_table("counters", on_conflict=keep_max) for n in (a, b)]

        handed_out: List[int] = []
        lock = threading.Lock()

        def worker(table: lbmkv.Table) -> None:
            for _ in range(INCREMENTS):
                _old, new = table.update_key("seq", increment)
                with lock:
                    handed_out.append(count(new))

        threads = [threading.Thread(target=worker, args=(tables[i % 2],)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        final = [count(t.get("seq")) for t in tables]
        print(
            f"sequencer: {THREADS} threads x {INCREMENTS} increments on 2 nodes: "
            f"counter = {final[0]} on {a.name}, {final[1]} on {b.name} (expected {TOTAL})"
        )
        ok = sorted(handed_out) == list(range(1, TOTAL + 1)) and final == [TOTAL, TOTAL]
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
