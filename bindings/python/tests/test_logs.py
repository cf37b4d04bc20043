"""Engine logs reach Python's logging."""

from __future__ import annotations

import logging
from typing import Callable

import pytest

import lbmkv
from conftest import wait_for


def test_a_peer_with_a_wrong_cookie_is_a_warning_of_the_lbmkv_logger(
    make_node: Callable[..., lbmkv.Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lbmkv")
    good = make_node(cookie="the-cookie")
    make_node(cookie="not-the-cookie", seeds=[good.address])

    def refused() -> bool:
        return any(
            r.name == "lbmkv.cluster.membership"
            and r.levelno == logging.WARNING
            and "failed authentication (different cookie)" in r.getMessage()
            for r in caplog.records
        )

    wait_for(refused, what="the refused peer's warning")
    assert not any(r.levelno < logging.WARNING for r in caplog.records if r.name.startswith("lbmkv"))


def test_python_levels_map_to_the_engine_levels() -> None:
    from lbmkv._logs import _engine_level

    assert _engine_level(logging.ERROR) == 1
    assert _engine_level(logging.WARNING) == 2
    assert _engine_level(logging.INFO) == 3
    assert _engine_level(logging.DEBUG) == 4
    assert _engine_level(lbmkv.TRACE) == 5
    assert _engine_level(logging.CRITICAL) == 0
