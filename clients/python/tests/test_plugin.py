"""The pytest plugin, run by pytester in a subprocess (so the ``pytest11``
entry point loads it as it would for a user): the fixtures against the real
daemon, lifetimes, the clear failure without a daemon, and
``--portres-fallback``."""

from __future__ import annotations

import os

import pytest

import portres

FIXTURE_TESTS = '''
import socket
import portres
from pathlib import Path

def kernel_reserved():
    text = Path("/proc/sys/net/ipv4/ip_local_reserved_ports").read_text().strip()
    out = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out

SEEN = {}

def listed(client):
    return {(i.protocol, i.start, i.count, i.label) for i in client.list()}

def test_tcp(portres_tcp_port, portres_client):
    assert isinstance(portres_tcp_port, int)
    assert ("tcp", portres_tcp_port, 1, "pytest main: test_fixtures.py::test_tcp") in listed(portres_client)
    with socket.socket() as s:
        s.bind(("127.0.0.1", portres_tcp_port))   # the test binds it itself
    SEEN["tcp"] = portres_tcp_port

def test_udp(portres_udp_port, portres_client):
    assert ("udp", portres_udp_port, 1, "pytest main: test_fixtures.py::test_udp") in listed(portres_client)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", portres_udp_port))
    SEEN["udp"] = portres_udp_port

def test_released_after_the_test(portres_client):
    blocks = {(p, s) for p, s, _, _ in listed(portres_client)}
    assert ("tcp", SEEN["tcp"]) not in blocks and ("udp", SEEN["udp"]) not in blocks

def test_factory(portres_ports, portres_client):
    r = portres_ports("tcp", 3)
    u = portres_ports("udp", count=2)
    assert isinstance(r, portres.Reservation) and r.count == 3 and u.protocol == "udp"
    with r.listen() as server:
        assert server.getsockname()[1] in r.ports
    SEEN["factory"] = r.start

def test_factory_released(portres_client):
    assert ("tcp", SEEN["factory"]) not in {(p, s) for p, s, _, _ in listed(portres_client)}

def test_session_one(portres_session):
    SEEN["session"] = portres_session.token
    assert portres_session.count == 2 and portres_session.protocol == "tcp"

def test_session_two(portres_session, portres_client):
    assert portres_session.token == SEEN["session"]
    assert ("tcp", portres_session.start, 2, "pytest main: session") in listed(portres_client)

def test_exec_reservation_skipped_outside_exec(portres_exec_reservation):
    raise AssertionError("not reached")
'''


def test_fixtures_reserve_and_release(pytester: pytest.Pytester, daemon_socket: str) -> None:
    pytester.makepyfile(test_fixtures=FIXTURE_TESTS)
    env_fd = os.environ.pop(portres.SESSION_FD_ENV, None)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--portres-session-count", "2")
    finally:
        if env_fd is not None:
            os.environ[portres.SESSION_FD_ENV] = env_fd
    result.assert_outcomes(passed=7, skipped=1)


NO_DAEMON = '''
def test_needs_a_port(portres_tcp_port):
    pass

def test_needs_a_block(portres_ports):
    portres_ports("udp", 2)
'''


def test_without_a_daemon_the_fixtures_fail_saying_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTRES_SOCKET", str(pytester.path / "no-daemon.sock"))
    pytester.makepyfile(test_nodaemon=NO_DAEMON)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1, failed=1)
    out = result.stdout.str()
    assert "portres: the portres_tcp_port fixture needs a portres daemon, and none can be used" in out
    assert "daemon_unavailable: cannot reach portresd at" in out
    assert "--portres-fallback" in out


FALLBACK = '''
import socket
import pytest

def test_port(portres_tcp_port, portres_udp_port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", portres_tcp_port))

def test_block(portres_ports, portres_session):
    r = portres_ports("tcp", 3)
    assert r.token is None and len(r.ports) == 3
    with r.listen() as a, r.listen() as b:
        assert a.getsockname()[1] != b.getsockname()[1]
    assert portres_session.count == 1

def test_client_skipped(portres_client):
    pass
'''


def test_fallback_hands_out_unreserved_ports_with_a_warning(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTRES_SOCKET", str(pytester.path / "no-daemon.sock"))
    pytester.makepyfile(test_fallback=FALLBACK)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--portres-fallback")
    result.assert_outcomes(passed=2, skipped=1, warnings=4)
    assert "PortresFallbackWarning" in result.stdout.str()
    # The ini option does the same.
    pytester.makeini("[pytest]\nportres_fallback = true\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2, skipped=1)


def test_labels_the_daemon_would_refuse_are_cleaned() -> None:
    from portres.pytest_plugin import _label

    assert _label("pytest gw0: t.py::test[\u202e\x00\n]") == "pytest gw0: t.py::test[???]"
    assert len(_label("\u00e9" * 300).encode()) <= 200
