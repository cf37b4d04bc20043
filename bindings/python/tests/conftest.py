"""Shared fixtures: in-process nodes, Python nodes in subprocesses, bounded waits."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, TypeVar

import pytest

import lbmkv

COOKIE = "lbmkv-python-tests"
HERE = Path(__file__).resolve().parent
# Fast failure detection keeps the cluster tests short.
FAST = {"cookie": COOKIE, "failure_timeout": 1.0, "heartbeat_interval": 0.1}

T = TypeVar("T")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(pred: Callable[[], T], timeout: float = 10.0, what: str = "a condition") -> T:
    """Polls ``pred`` until it returns something true; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(0.02)


class LineProcess:
    """A child process that answers lines on stdout; every read is bounded."""

    def __init__(self, argv: List[str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "LBMKV_LOG": os.environ.get("LBMKV_LOG", "warn")},
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def readline(self, timeout: float = 15.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer from {self.argv[:3]} within {timeout} s") from None
        if line is None:
            raise AssertionError(f"{self.argv[:3]} exited with {self.proc.wait(5)}")
        return line

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Ends the process whatever its state (also when stopped)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass


class PyNodeProcess(LineProcess):
    """A Python lbmkv node in a subprocess (tests/node_proc.py)."""

    def __init__(self, name: str, seeds: List[str]) -> None:
        super().__init__([sys.executable, str(HERE / "node_proc.py"), name, COOKIE, *seeds])
        self.name = name
        self.address = ""

    def wait_ready(self) -> None:
        ready = json.loads(self.readline(timeout=30))["ready"]
        self.name, self.address = ready[0], ready[1]

    def reply(self, *cmd: Any, timeout: float = 15.0) -> Any:
        """Runs a command; returns ``{"ok": result}`` or ``{"err": [class, message]}``."""
        self.send(json.dumps(list(cmd)))
        return json.loads(self.readline(timeout))

    def call(self, *cmd: Any, timeout: float = 15.0) -> Any:
        """Runs a command; its error (if any) becomes an AssertionError."""
        reply = self.reply(*cmd, timeout=timeout)
        if "err" in reply:
            raise AssertionError(f"{self.name}: {cmd!r} failed: {reply['err']}")
        return reply["ok"]


REPO = HERE.parents[2]


def cli_binary() -> Path:
    """The `lbmkv` command (crate lbmkv-cli): $LBMKV_CLI, else target/debug/lbmkv."""
    path = Path(os.environ.get("LBMKV_CLI") or REPO / "target" / "debug" / "lbmkv")
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo build -p lbmkv-cli` (make test-python does)")
    return path


class CliNode(LineProcess):
    """An `lbmkv node` process, driven by its line protocol."""

    def __init__(self, name: str, seeds: List[str]) -> None:
        argv = [str(cli_binary()), "node", "--name", name, "--cookie", COOKIE, "--failure-timeout-ms", "1000"]
        for s in seeds:
            argv += ["--seed", s]
        super().__init__(argv)
        self.name = name
        self.address = ""

    def wait_ready(self) -> None:
        word, self.name, self.address = self.readline(timeout=30).split(" ")
        assert word == "READY"

    def cmd(self, line: str) -> str:
        """One command with a one-line reply."""
        self.send(line)
        return self.readline()

    def items(self, line: str) -> List[str]:
        """One command answered by `ITEM <x>` lines and `END`."""
        self.send(line)
        out = []
        while True:
            reply = self.readline()
            if reply == "END":
                return out
            word, _, item = reply.partition(" ")
            assert word == "ITEM", reply
            out.append(item)


@pytest.fixture
def spawn_cli() -> Iterator[Callable[..., CliNode]]:
    """Starts `lbmkv node` processes; all are killed at the end."""
    procs: List[CliNode] = []

    def start(name: str, seeds: Optional[List[str]] = None) -> CliNode:
        p = CliNode(name, seeds or [])
        procs.append(p)
        p.wait_ready()
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.kill()


@pytest.fixture
def node() -> Iterator[lbmkv.Node]:
    """A node in this process, closed at the end."""
    n = lbmkv.Node(name=unique("py"), **FAST)  # type: ignore[arg-type]
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def table(node: lbmkv.Node) -> lbmkv.Table:
    return node.create_table("t")


@pytest.fixture
def make_node() -> Iterator[Callable[..., lbmkv.Node]]:
    """Starts more nodes in this process; all are closed at the end."""
    nodes: List[lbmkv.Node] = []

    def make(**kwargs: Any) -> lbmkv.Node:
        opts = {**FAST, "name": unique("py"), **kwargs}
        n = lbmkv.Node(**opts)
        nodes.append(n)
        return n

    try:
        yield make
    finally:
        for n in nodes:
            n.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., PyNodeProcess]]:
    """Starts Python nodes in subprocesses; all are killed at the end."""
    procs: List[LineProcess] = []

    def start(name: str, seeds: Optional[List[str]] = None) -> PyNodeProcess:
        p = PyNodeProcess(name, seeds or [])
        procs.append(p)
        p.wait_ready()
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.kill()
