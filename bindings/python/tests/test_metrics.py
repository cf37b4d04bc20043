"""metrics() and the operational fields of info(), sync and asyncio."""

from __future__ import annotations

import asyncio
from typing import Callable, Dict

import pytest

import lbmkv
import lbmkv.aio
from conftest import FAST, unique, wait_for


def parse(text: str) -> Dict[str, float]:
    """The samples of a Prometheus text exposition; fails on a malformed line."""
    samples: Dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        series, value = line.rsplit(" ", 1)
        samples[series] = float(value)
    return samples


def test_metrics_count_writes_strong_reads_and_tables(make_node: Callable[..., lbmkv.Node]) -> None:
    a = make_node()
    b = make_node(seeds=[a.address], min_members=2)
    t = a.create_table("m")
    t.put("k1", "v")
    t.put("k2", "v")
    del t["k2"]
    assert t.get("k1", strong=True) == b"v"
    text = a.metrics()
    assert isinstance(text, str)
    m = parse(text)
    assert m["lbmkv_members"] == 2
    assert m["lbmkv_writes_total"] == 3
    assert m["lbmkv_write_duration_seconds_count"] == 3
    assert m['lbmkv_write_duration_seconds_bucket{le="+Inf"}'] == 3
    assert m["lbmkv_strong_reads_total"] == 1
    assert m['lbmkv_table_entries{table="m"}'] == 1
    assert m['lbmkv_table_tombstones{table="m"}'] == 1
    assert "# TYPE lbmkv_write_duration_seconds histogram" in text
    seq = a.info()["sequencer"]
    assert seq is not None
    assert m[f'lbmkv_table_sequencer{{table="m",sequencer="{seq}"}}'] == 1
    wait_for(lambda: parse(b.metrics()).get('lbmkv_table_entries{table="m"}') == 1, what="replica")


def test_info_has_version_uptime_peers_and_table_sequencers(
    make_node: Callable[..., lbmkv.Node],
) -> None:
    a = make_node()
    b = make_node(seeds=[a.address], min_members=2)
    a.create_table("t")
    info = a.info()
    assert info["version"] == lbmkv.__version__
    assert isinstance(info["uptime_ms"], int) and info["uptime_ms"] >= 0
    assert [p["name"] for p in info["peers"]] == [b.name]
    assert info["peers"][0]["address"] == b.address
    assert info["tables"][0]["sequencer"] == info["sequencer"] is not None
    assert set(lbmkv.PeerInfo.__annotations__) == set(info["peers"][0])


def test_aio_metrics() -> None:
    async def main() -> None:
        async with lbmkv.aio.Node.start(**{**FAST, "name": unique("aio-m")}) as n:
            t = await n.create_table("t")
            await t.put("k", "v")
            m = parse(n.metrics())
            assert m["lbmkv_writes_total"] == 1
            assert m["lbmkv_members"] == 1

    asyncio.run(asyncio.wait_for(main(), 60))


def test_metrics_of_a_closed_node_raise_closed(make_node: Callable[..., lbmkv.Node]) -> None:
    n = make_node()
    n.close()
    with pytest.raises(lbmkv.Closed):
        n.metrics()
