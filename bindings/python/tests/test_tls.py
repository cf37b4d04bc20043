"""Mutual TLS: two nodes with certificates written by `lbmkv certs` at test time
replicate a put; the TLS options go together and a missing file is named."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

import lbmkv

from conftest import cli_binary, wait_for


def certs(tmp_path: Path, *names: str) -> Path:
    out = tmp_path / "certs"
    subprocess.run(
        [str(cli_binary()), "certs", "--out", str(out), "--names", ",".join(names)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def tls(dir: Path, name: str) -> Dict[str, Any]:
    return {
        "name": name,
        "tls_cert": str(dir / f"{name}.pem"),
        "tls_key": str(dir / f"{name}.key"),
        "tls_ca": str(dir / "ca.pem"),
    }


def test_two_tls_nodes_replicate_a_put(tmp_path: Path, make_node: Callable[..., lbmkv.Node]) -> None:
    d = certs(tmp_path, "py-tls-a", "py-tls-b")
    a = make_node(**tls(d, "py-tls-a"))
    b = make_node(seeds=[a.address], min_members=2, **tls(d, "py-tls-b"))
    wait_for(lambda: len(a.members()) == 2, what="a sees b")
    tb = b.create_table("tls")
    tb.put("k", "over tls")
    assert a.create_table("tls").get("k") == b"over tls"


def test_tls_options_go_together_and_a_missing_file_is_named(
    tmp_path: Path, make_node: Callable[..., lbmkv.Node]
) -> None:
    d = certs(tmp_path, "py-tls-c")
    opts = tls(d, "py-tls-c")
    with pytest.raises(ValueError, match="go together"):
        make_node(name="py-tls-c", tls_cert=opts["tls_cert"])
    with pytest.raises(lbmkv.InvalidArgument, match="nope.pem"):
        make_node(**{**opts, "tls_ca": str(d / "nope.pem")})
