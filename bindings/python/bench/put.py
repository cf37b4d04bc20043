"""Replicated put throughput from Python, next to `lbmkv bench`'s Rust rows.

The cluster has the shape of `lbmkv bench`'s "3 nodes" rows: this process's
node `bench-z` and two `lbmkv node` processes, `bench-a` and `bench-b`, on
loopback with cookie `lbmkv-bench`; 16-byte keys, 100-byte values, each caller
writing 1,000 distinct keys round-robin. Puts go through the sync API from 1
and 16 threads, then through `lbmkv.aio` from 1 and 16 tasks.

Run: ``python bindings/python/bench/put.py [--ops N] [--json] [--rust-json FILE]
[--lbmkv PATH]``; ``FILE`` is what ``lbmkv bench --json`` printed, and each row
then gives its ratio to Rust's ops/s with as many callers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import lbmkv
import lbmkv.aio

COOKIE = "lbmkv-bench"
VALUE_SIZE = 100
CALLERS = (1, 16)
WITHIN = 1.5
# Bounds every wait outside the measured puts (those have lbmkv's request timeout).
STEP_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[3]


def key(i: int) -> bytes:
    return b"key-%012d" % i


def value(i: int) -> bytes:
    return (b"%016d" % i).ljust(VALUE_SIZE, b"v")


class Latencies(NamedTuple):
    p50_us: float
    p99_us: float
    ops_per_s: float


def summarize(samples_ns: List[int], wall_s: float) -> Latencies:
    # The same picks as lbmkv bench, so that the percentiles compare.
    samples_ns.sort()
    n = len(samples_ns)

    def pick(q: float) -> float:
        return samples_ns[min(int(n * q), n - 1)] / 1e3 if n else 0.0

    return Latencies(pick(0.50), pick(0.99), n / wall_s)


class Cluster:
    """`bench-a` and `bench-b` as `lbmkv node` processes. Their stdin stays an
    open pipe: a node ends at the end of its stdin, so they go even when this
    process dies without running `close`."""

    def __init__(self, exe: str) -> None:
        self.children: List["subprocess.Popen[bytes]"] = []
        self.addresses: List[str] = []
        try:
            for name in ("bench-a", "bench-b"):
                cmd = [exe, "node", "--name", name, "--listen", "127.0.0.1:0", "--cookie", COOKIE]
                for a in self.addresses:
                    cmd += ["--seed", a]
                child = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                )
                self.children.append(child)
                line = first_line(child, name)
                parts = line.split()
                if len(parts) != 3 or parts[0] != "READY":
                    raise RuntimeError(f"unexpected first line from {name}: {line!r}")
                self.addresses.append(parts[2])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for child in self.children:
            child.kill()
        for child in self.children:
            child.wait(timeout=STEP_TIMEOUT)
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()
        self.children = []


def first_line(child: "subprocess.Popen[bytes]", name: str) -> str:
    """The child's first stdout line, read without buffering past it."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    deadline = time.monotonic() + STEP_TIMEOUT
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"{name} printed no READY line within {STEP_TIMEOUT:.0f} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"{name} exited (status {child.wait()}) before READY: {data!r}")
        data += chunk
    return data.decode(errors="replace").strip()


def settle(put: Any) -> None:
    """The first write may meet a sequencer that is still settling."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            put(b"warm-up", b"x")
            return
        except lbmkv.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def settle_async(table: lbmkv.aio.Table) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            await table.put(b"warm-up", b"x")
            return
        except lbmkv.Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


class Runs:
    """Values differ from one run to the next, as in lbmkv bench, so that no
    put repeats the value already stored."""

    def __init__(self) -> None:
        self.n = 0

    def salt(self) -> int:
        self.n += 1
        return self.n * 1_000_000_007


def drive_threads(table: lbmkv.Table, callers: int, ops: int, salt: int) -> Latencies:
    per_caller = max(ops // callers, 1)
    samples: List[List[int]] = [[] for _ in range(callers)]
    errors: List[BaseException] = []
    go = threading.Barrier(callers + 1, timeout=STEP_TIMEOUT)

    def caller(c: int) -> None:
        keys = [key(c * 1_000_000 + i) for i in range(1000)]
        out = samples[c]
        put = table.put
        clock = time.perf_counter_ns
        try:
            go.wait()
            for i in range(per_caller):
                v = value(salt + i)
                begun = clock()
                put(keys[i % 1000], v)
                out.append(clock() - begun)
        except BaseException as e:  # noqa: BLE001 - raised again by the main thread
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(c,), daemon=True) for c in range(callers)]
    for t in threads:
        t.start()
    go.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return summarize([s for part in samples for s in part], wall)


async def drive_tasks(table: lbmkv.aio.Table, callers: int, ops: int, salt: int) -> Latencies:
    per_caller = max(ops // callers, 1)
    samples: List[int] = []

    async def caller(c: int) -> None:
        keys = [key(c * 1_000_000 + i) for i in range(1000)]
        put = table.put
        clock = time.perf_counter_ns
        for i in range(per_caller):
            v = value(salt + i)
            begun = clock()
            await put(keys[i % 1000], v)
            samples.append(clock() - begun)

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    return summarize(samples, time.perf_counter() - started)


def warm_up(put: Any) -> None:
    for i in range(200):
        put(key(900_000_000 + i % 10), value(i))


async def warm_up_async(table: lbmkv.aio.Table) -> None:
    for i in range(200):
        await table.put(key(900_000_000 + i % 10), value(i))


def bench_threads(cluster: Cluster, ops: int, runs: Runs) -> Dict[int, Latencies]:
    with lbmkv.Node(name="bench-z", seeds=cluster.addresses, cookie=COOKIE) as node:
        node.wait_for_members(3, STEP_TIMEOUT)
        table = node.create_table("bench")
        settle(table.put)
        warm_up(table.put)
        return {c: drive_threads(table, c, ops, runs.salt()) for c in CALLERS}


async def bench_tasks(cluster: Cluster, ops: int, runs: Runs) -> Dict[int, Latencies]:
    async with lbmkv.aio.Node.start(name="bench-z", seeds=cluster.addresses, cookie=COOKIE) as node:
        await node.wait_for_members(3, STEP_TIMEOUT)
        table = await node.create_table("bench")
        await settle_async(table)
        await warm_up_async(table)
        return {c: await drive_tasks(table, c, ops, runs.salt()) for c in CALLERS}


def rust_rates(path: str) -> Dict[int, float]:
    """ops/s of the Rust rows "3 nodes: put, N client(s)", by N."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    rates: Dict[int, float] = {}
    for row in doc.get("results", []):
        data = row.get("data") or {}
        if row.get("id") == "write" and data.get("nodes") == "3 nodes" and data.get("op") == "put":
            rates[int(data["clients"])] = float(data["ops_per_s"])
    return rates


def si(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def verdict(ratio: float) -> str:
    if ratio >= 1 / WITHIN:
        return f"within {WITHIN}x"
    return f"NOT within {WITHIN}x ({1 / ratio:.1f}x slower)"


def on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    # SystemExit unwinds through the `finally` that kills the children.
    raise SystemExit(128 + signum)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ops", type=int, default=int(os.environ.get("LBMKV_BENCH_OPS", "20000")),
        help="puts per row (default $LBMKV_BENCH_OPS, else 20000, as lbmkv bench)",
    )
    parser.add_argument("--json", action="store_true", help="one line of JSON on stdout")
    parser.add_argument("--rust-json", metavar="FILE", help="the output of `lbmkv bench --json`")
    parser.add_argument(
        "--lbmkv", metavar="PATH",
        default=os.environ.get("LBMKV_BIN", str(REPO / "target" / "release" / "lbmkv")),
        help="the lbmkv command (default $LBMKV_BIN, else target/release/lbmkv)",
    )
    args = parser.parse_args(argv)
    if args.ops < 1:
        parser.error("--ops needs at least 1")
    rust = rust_rates(args.rust_json) if args.rust_json else {}
    signal.signal(signal.SIGTERM, on_sigterm)

    runs = Runs()
    print("python put: starting bench-a and bench-b", file=sys.stderr)
    cluster = Cluster(args.lbmkv)
    try:
        print("python put: threads", file=sys.stderr)
        by_mode = {"threads": bench_threads(cluster, args.ops, runs)}
        print("python put: asyncio", file=sys.stderr)
        by_mode["asyncio"] = asyncio.run(bench_tasks(cluster, args.ops, runs))
    finally:
        cluster.close()

    rows: List[Dict[str, Any]] = []
    for mode, results in by_mode.items():
        for callers, lat in results.items():
            r = rust.get(callers)
            ratio = lat.ops_per_s / r if r else None
            rows.append({
                "mode": mode, "callers": callers, "p50_us": lat.p50_us, "p99_us": lat.p99_us,
                "ops_per_s": lat.ops_per_s, "rust_ops_per_s": r, "ratio": ratio,
                "within_1_5x": None if ratio is None else ratio >= 1 / WITHIN,
            })
    if args.json:
        print(json.dumps({
            "bench": "python put", "nodes": "3 nodes", "op": "put", "value_bytes": VALUE_SIZE,
            "ops": args.ops, "rust_json": args.rust_json, "results": rows,
        }))
        return
    print(f"python put, 3 nodes, {VALUE_SIZE}-byte values, {args.ops} puts per row")
    for row in rows:
        line = (f"  {row['mode']:7} {row['callers']:2} caller(s): p50 {row['p50_us']:5.0f} µs, "
                f"p99 {row['p99_us']:6.0f} µs, {si(row['ops_per_s']):>6} ops/s")
        if row["ratio"] is not None:
            line += (f"  {row['ratio']:.2f}x Rust ({si(row['rust_ops_per_s'])} ops/s): "
                     f"{verdict(row['ratio'])}")
        elif args.rust_json:
            line += f"  (no Rust row with {row['callers']} client(s))"
        print(line)


if __name__ == "__main__":
    main()
