"""Ports held at the same time are never the same, across pytest-xdist
workers: each test takes the plugin's fixtures, binds the ports itself
(exclusively, no SO_REUSEADDR) and holds them a moment, and every worker
holds its ``portres_session`` throughout. With ``PORTRES_TEST_RECORD`` set,
each holding is written down (ports, monotonic start and end), and the Rust
test (python_client.rs) checks that no two holdings that overlap in time
share a port, and that the workers' session blocks differ. Run alone it
checks the same within one process."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Iterator, List

import pytest

from conftest import eventually, kernel_reserved, record

HOLD_SECONDS = 0.02
# The plugin's fixtures fail without a daemon (as they should); this suite
# skips instead, by the conftest's rules.
pytestmark = pytest.mark.usefixtures("daemon_socket")


@pytest.fixture(scope="module", autouse=True)
def held_session(portres_session: Any) -> Iterator[Any]:
    """This worker's session block, recorded for as long as it is held."""
    t0 = time.monotonic_ns()
    yield portres_session
    record(
        "hold", what="session", protocol="tcp", ports=list(portres_session.ports),
        t0=t0, t1=time.monotonic_ns(),
    )


def hold(protocol: str, ports: List[int]) -> None:
    t0 = time.monotonic_ns()
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    socks = [socket.socket(socket.AF_INET, kind) for _ in ports]
    try:
        for s, port in zip(socks, ports):
            s.bind(("127.0.0.1", port))  # exclusive: fails if anyone has it
        assert eventually(lambda: set(ports) <= kernel_reserved())
        time.sleep(HOLD_SECONDS)
    finally:
        for s in socks:
            s.close()
    record("hold", what="test", protocol=protocol, ports=ports, t0=t0, t1=time.monotonic_ns())


@pytest.mark.parametrize("i", range(16))
def test_tcp_port(i: int, portres_tcp_port: int) -> None:
    hold("tcp", [portres_tcp_port])


@pytest.mark.parametrize("i", range(16))
def test_udp_port(i: int, portres_udp_port: int) -> None:
    hold("udp", [portres_udp_port])


@pytest.mark.parametrize("i", range(8))
def test_blocks(i: int, portres_ports: Callable[..., Any]) -> None:
    r = portres_ports("tcp", 1 + i % 4)
    hold("tcp", list(r.ports))
