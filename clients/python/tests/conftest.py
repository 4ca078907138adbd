"""Shared fixtures of the portres package's own tests.

Owns how the suite finds its daemon (``PORTRES_SOCKET``, a real portresd:
the repository's crates/portres-tests/tests/python_client.rs starts one as
root in a private network namespace) and the rules for tests that need one
or need root: without them they skip, unless
``PORTRES_REQUIRE_PRIVILEGED_TESTS=1``, which makes that a failure (CI never
passes a test that did not run). ``PORTRES_TEST_RECORD``, when set, is a
directory where the parallel tests write what they held, for the Rust test
to check across workers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import portres

pytest_plugins = ["pytester"]


def _required() -> bool:
    return os.environ.get("PORTRES_REQUIRE_PRIVILEGED_TESTS") == "1"


def need(condition: bool, why: str) -> None:
    """Skips (or, when privileged tests are required, fails) unless ``condition``."""
    if condition:
        return
    if _required():
        pytest.fail(f"{why} and PORTRES_REQUIRE_PRIVILEGED_TESTS=1", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def daemon_socket() -> str:
    """The socket of the real daemon the suite runs against."""
    path = os.environ.get(portres.SOCKET_ENV, "")
    need(bool(path) and os.path.exists(path), "no daemon: PORTRES_SOCKET names no socket")
    return path


@pytest.fixture
def client(daemon_socket: str) -> Iterator[portres.Client]:
    """A fresh session with the test daemon."""
    with portres.Client(daemon_socket) as c:
        yield c


@pytest.fixture
def root() -> None:
    """The test needs root (it changes users)."""
    need(os.geteuid() == 0, "needs root")


def kernel_reserved() -> set:
    """The kernel's ip_local_reserved_ports in this network namespace."""
    text = Path("/proc/sys/net/ipv4/ip_local_reserved_ports").read_text().strip()
    ports = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        ports.update(range(int(lo), int(hi or lo) + 1))
    return ports


def eventually(cond: Any, timeout: float = 10.0) -> bool:
    """Polls ``cond`` until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


def record(kind: str, **fields: Any) -> None:
    """Appends one JSON line to $PORTRES_TEST_RECORD/<worker>.jsonl."""
    directory = os.environ.get("PORTRES_TEST_RECORD")
    if not directory:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    line = json.dumps({"kind": kind, "worker": worker, "pid": os.getpid(), **fields})
    with open(os.path.join(directory, f"{worker}-{os.getpid()}.jsonl"), "a") as f:
        f.write(line + "\n")
