"""Local `get` calls per second from Python: 1,000,000 calls, 16-byte key,
100-byte value, one thread (target: >= 2M/s). Also shows `t[key]` and, for
scale, `dict.get` on the same key.

Run: ``python bindings/python/bench/get.py [--calls N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Dict

import lbmkv

KEY = b"k" * 16
VALUE = b"v" * 100
TARGET = 2_000_000


def rate(call: Callable[[bytes], object], calls: int) -> float:
    best = 0.0
    for _ in range(3):  # best of three: the machine is shared
        start = time.perf_counter()
        for _ in range(calls):
            call(KEY)
        best = max(best, calls / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with lbmkv.Node(cookie="bench") as node:
        table = node.create_table("bench")
        table.put(KEY, VALUE)
        assert table.get(KEY) == VALUE
        results: Dict[str, float] = {
            "table_get": rate(table.get, args.calls),
            "table_getitem": rate(table.__getitem__, args.calls),
            "dict_get": rate({KEY: VALUE}.get, args.calls),
        }
    if args.json:
        print(json.dumps({"calls": args.calls, "ops_per_s": results, "target": TARGET}))
        return
    for name, ops in results.items():
        print(f"python {name:14} {ops / 1e6:6.2f}M ops/s  {1e9 / ops:6.0f} ns/call")
    verdict = "met" if results["table_get"] >= TARGET else "NOT met"
    print(f"python local get target {TARGET / 1e6:.0f}M ops/s: {verdict}")


if __name__ == "__main__":
    main()
