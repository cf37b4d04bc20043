"""A process forked after the parent used lbmkv starts and uses its own nodes."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
import warnings
from typing import Callable, Iterator

import pytest

import lbmkv
from conftest import COOKIE, unique

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# A hang in a child (the runtime's workers did not survive the fork) ends it
# by SIGALRM after this many seconds; the parent waits a little longer.
CHILD_ALARM = 10
PARENT_WAIT = 30.0


def use_a_new_node() -> None:
    """A new node, a table, a put and a get, then close; bounded by an alarm."""
    signal.alarm(CHILD_ALARM)
    node = lbmkv.Node(name=unique("child"), listen="127.0.0.1:0", cookie=COOKIE)
    table = node.create_table("forked")
    assert table.put("k", "child") is None
    assert table.get("k") == b"child"
    node.close()
    signal.alarm(0)


def run_in_fork(body: Callable[[], None]) -> None:
    """Runs `body` in a forked child and fails unless it exits with 0 in time."""
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process is risky.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    deadline = time.monotonic() + PARENT_WAIT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {PARENT_WAIT} s")
        time.sleep(0.02)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        pytest.fail(f"the forked child was killed by {sig} (SIGALRM: it hung)")
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0, "the forked child failed (traceback above)"


@pytest.fixture
def used_parent_table() -> Iterator[lbmkv.Table]:
    """A table of a node of this process that has already been written to."""
    node = lbmkv.Node(name=unique("parent"), cookie=COOKIE)
    try:
        table = node.create_table("before-fork")
        table.put("k", "parent")
        yield table
    finally:
        node.close()


def test_child_of_a_fork_starts_its_own_node(used_parent_table: lbmkv.Table) -> None:
    run_in_fork(use_a_new_node)
    # The parent's node is untouched by the fork.
    assert used_parent_table.put("k", "after") == b"parent"
    assert used_parent_table.get("k") == b"after"


def test_grandchild_of_a_fork_starts_its_own_node(used_parent_table: lbmkv.Table) -> None:
    def child() -> None:
        use_a_new_node()
        run_in_fork(use_a_new_node)

    run_in_fork(child)
