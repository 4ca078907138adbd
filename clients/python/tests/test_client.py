"""The client against a real daemon: acquire/release, binding through the
daemon (TCP, UDP, IPv4, IPv6), the kernel's view, persistent reservations,
capabilities, refusals with their codes, and ``python -m portres``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import portres

from conftest import eventually, kernel_reserved


def held(client: portres.Client, r: portres.Reservation) -> bool:
    """Whether the daemon lists the block (another session's comes without token)."""
    return any(
        (i.protocol, i.start, i.count, i.kind) == (r.protocol, r.start, r.count, "runtime")
        for i in client.list()
    )


def test_acquire_returns_a_held_block(client: portres.Client) -> None:
    r = client.acquire("tcp", count=3)
    assert (r.protocol, r.count) == ("tcp", 3)
    assert list(r.ports) == [r.start, r.start + 1, r.start + 2]
    assert isinstance(r.token, int) and r.token > 0
    lo, hi = client.status().dynamic_range
    assert lo <= r.start and r.start + 2 <= hi
    info = next(i for i in client.list() if i.token == r.token)
    assert (info.kind, info.holder and info.holder.pid) == ("runtime", os.getpid())
    # The kernel's own port picker keeps off it.
    assert eventually(lambda: set(r.ports) <= kernel_reserved())
    r.release()
    assert r.released and not held(client, r)
    r.release()  # a second release does nothing


def test_the_context_manager_releases(client: portres.Client) -> None:
    with client.acquire("udp", count=2, label="ctx") as r:
        assert held(client, r)
        assert next(i for i in client.list() if i.token == r.token).label == "ctx"
    assert r.released and not held(client, r)


def test_a_given_start_and_sharing_violation(client: portres.Client, daemon_socket: str) -> None:
    with client.acquire("tcp", count=2) as first:
        with portres.Client(daemon_socket) as other:
            with pytest.raises(portres.SharingViolationError) as e:
                other.acquire("tcp", count=1, start=first.start + 1)
            assert e.value.code == "sharing_violation"
            # The other protocol's same ports are free.
            with other.acquire("udp", start=first.start) as u:
                assert u.start == first.start


@pytest.mark.parametrize(
    "protocol,host",
    [("tcp", "127.0.0.1"), ("tcp", "::1"), ("udp", "127.0.0.1"), ("udp", "::1")],
)
def test_bind_returns_a_socket_the_daemon_bound(
    client: portres.Client, protocol: str, host: str
) -> None:
    with client.acquire(protocol, count=2) as r:
        # TCP: listening, as a bound-only socket with SO_REUSEADDR (which
        # bind() sets, as socket.create_server does) does not hold the port
        # against another such socket.
        take = r.listen if protocol == "tcp" else r.bind
        with take(host) as s:
            assert s.type == (socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM)
            assert s.getsockname()[0] == host and s.getsockname()[1] in r.ports
            with take(host) as s2:  # the rotating cursor: the other port
                assert {s.getsockname()[1], s2.getsockname()[1]} == set(r.ports)
                with pytest.raises(portres.BlockExhaustedError):
                    take(host)


def test_listen_accepts_connections(client: portres.Client) -> None:
    with client.acquire("tcp") as r, r.listen(backlog=4) as server:
        port = server.getsockname()[1]
        assert port == r.start
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            conn, _ = server.accept()
            with conn:
                c.sendall(b"hi")
                assert conn.recv(2) == b"hi"
        in_use = next(i for i in client.list() if i.token == r.token).in_use
        assert in_use == (port,)


def test_bind_socket_takes_a_socket_made_by_the_caller(client: portres.Client) -> None:
    with client.acquire("udp") as r, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        assert r.bind_socket(s, "::ffff:127.0.0.1") == r.start
        assert s.getsockname()[1] == r.start


def test_bind_refusals_have_their_codes(client: portres.Client) -> None:
    with client.acquire("tcp") as r:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(portres.InvalidParameterError, match="udp"):
                r.bind_socket(udp)
        with socket.socket() as bound:
            bound.bind(("127.0.0.1", 0))
            with pytest.raises(portres.AlreadyBoundError):
                r.bind_socket(bound)
        rd, wr = os.pipe()
        try:
            with pytest.raises(portres.NotASocketError):
                r.bind_socket(rd)
        finally:
            os.close(rd)
            os.close(wr)
        with pytest.raises(portres.InvalidParameterError, match="not an IP address"):
            r.bind("localhost")
        with socket.socket(socket.AF_INET6) as v6only:
            v6only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with pytest.raises(portres.InvalidParameterError, match="IPV6_V6ONLY"):
                r.bind_socket(v6only, "::ffff:127.0.0.1")
    with pytest.raises(portres.NotFoundError):
        r.bind()
    udp_r = client.acquire("udp")
    with pytest.raises(portres.InvalidParameterError, match="TCP"):
        udp_r.listen()


@pytest.mark.parametrize(
    "protocol,host",
    [("tcp", "127.0.0.1"), ("tcp", "::1"), ("udp", "127.0.0.1"), ("udp", "::1")],
)
def test_client_bind_gives_a_bound_socket_and_its_reservation_in_one_call(
    client: portres.Client, protocol: str, host: str
) -> None:
    s, r = client.bind(protocol, host)
    with s, r:
        assert (r.protocol, r.count) == (protocol, 1)
        assert s.getsockname()[0] == host and s.getsockname()[1] == r.start
        assert held(client, r)
    assert not held(client, r)


def test_client_listen_accepts_connections(client: portres.Client) -> None:
    server, r = client.listen(backlog=4)
    with server, r:
        port = server.getsockname()[1]
        assert port == r.start
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            conn, _ = server.accept()
            conn.close()


def test_acquire_socket_refusals_leave_no_reservation(client: portres.Client) -> None:
    before = client.list()
    with socket.socket() as s:
        # The bind fails (not an address of this host): the block is given back.
        with pytest.raises(portres.InvalidParameterError):
            client.acquire_socket("tcp", s, "192.0.2.1")
        with pytest.raises(portres.InvalidParameterError, match="udp"):
            client.acquire_socket("udp", s)
        with socket.socket() as bound:
            bound.bind(("127.0.0.1", 0))
            with pytest.raises(portres.AlreadyBoundError):
                client.acquire_socket("tcp", bound)
        assert client.list() == before
        # The socket is still unbound: it can be used again.
        r, port = client.acquire_socket("tcp", s, count=2)
        with r:
            assert port == r.start and s.getsockname()[1] == port


def test_other_sessions_reservations_are_not_yours(
    client: portres.Client, daemon_socket: str
) -> None:
    r = client.acquire("tcp")
    with portres.Client(daemon_socket) as other:
        with pytest.raises(portres.AccessDeniedError):
            other.release(r.token)
        with pytest.raises(portres.AccessDeniedError), socket.socket() as s:
            other.bind_socket(r.token, s)
        # Listed without its token.
        assert all(i.token is None for i in other.list() if i.start == r.start and i.kind == "runtime")


def test_a_capability_lets_another_connection_share_the_session(
    client: portres.Client, daemon_socket: str
) -> None:
    r = client.acquire("tcp", count=2)
    cap = client.capability()
    try:
        with portres.Client(daemon_socket) as worker:
            assert worker.attach(cap) == 1
            with socket.socket() as s:
                assert worker.bind_socket(r.token, s) in r.ports
            worker.release(r.token)
    finally:
        os.close(cap)
    assert not held(client, r)


def test_closing_the_session_ends_its_reservations(
    client: portres.Client, daemon_socket: str
) -> None:
    c = portres.Client(daemon_socket)
    r = c.acquire("tcp", count=5)
    assert held(client, r)
    c.close()
    assert eventually(lambda: not held(client, r))
    with pytest.raises(portres.DaemonUnavailableError):
        c.acquire("tcp")


def test_invalid_parameters(client: portres.Client) -> None:
    with pytest.raises(portres.InvalidParameterError):
        client.acquire("tcp", count=0)
    with pytest.raises(portres.InvalidParameterError):
        client.acquire("sctp")
    with pytest.raises(portres.InvalidParameterError):
        client.acquire("tcp", start=65535, count=2)
    with pytest.raises(portres.InvalidParameterError):
        client.acquire("tcp", label="bidi\u202eoverride")
    with pytest.raises(portres.NotFoundError):
        client.release(12345)
    with pytest.raises(portres.InvalidParameterError):
        client.call("io.portres.Nope")
    # Over the daemon's request limit: refused here, the session survives.
    with pytest.raises(portres.InvalidParameterError, match="at most 65536"):
        client.acquire("tcp", label="x" * 70000)
    assert client.status().sessions >= 1


def test_persistent_reservations(client: portres.Client) -> None:
    need_admin = client.status().you_are_admin
    if not need_admin:
        pytest.skip("needs to be the daemon's administrator")
    info = client.create("udp", 20500, 2, owner=portres.Owner("user", 65534), label="py")
    try:
        assert (info.kind, info.start, info.count, info.label) == ("persistent", 20500, 2, "py")
        assert info.owner == portres.Owner("user", 65534) and info.token
        assert client.lookup("udp", 20500, 2).token == info.token
        with pytest.raises(portres.SharingViolationError):
            client.create("udp", 20501, 1)
        with pytest.raises(portres.NotFoundError):
            client.lookup("udp", 20500, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            assert client.bind_socket(info.token, s) in (20500, 20501)
        assert any(i.token == info.token for i in client.list("udp"))
    finally:
        client.delete("udp", 20500, 2)
    with pytest.raises(portres.NotFoundError):
        client.delete("udp", 20500, 2)


def test_status(client: portres.Client) -> None:
    s = client.status()
    assert s.wire_version == 1 and s.version and s.mode in ("system", "user")
    assert s.kernel_sync and s.your_uid == os.geteuid()
    assert s.raw["quota"] == s.quota


def test_a_forked_child_may_not_use_the_parents_connection(client: portres.Client) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            client.status()
            os._exit(1)
        except portres.DaemonUnavailableError as e:
            os._exit(0 if "forked child" in e.message else 2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.status().wire_version == 1  # the parent's session is intact


def test_python_m_portres_prints_status(daemon_socket: str) -> None:
    env = dict(os.environ, PORTRES_SOCKET=daemon_socket)
    out = subprocess.run(
        [sys.executable, "-m", "portres"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("portresd ") and "(wire v1)" in out
    assert f"socket:          {daemon_socket} (named by PORTRES_SOCKET" in out
    assert "daemon:          pid " in out
    js = subprocess.run(
        [sys.executable, "-m", "portres", "--json"], env=env, capture_output=True, text=True,
        check=True,
    ).stdout
    j = json.loads(js)
    assert j["wire_version"] == 1 and j["socket"] == {"path": daemon_socket, "kind": "explicit"}
    bad = subprocess.run(
        [sys.executable, "-m", "portres"], env=dict(env, PORTRES_SOCKET="/nonexistent/p.sock"),
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "daemon_unavailable" in bad.stderr


def test_a_bad_session_fd_is_refused_by_name(
    daemon_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTRES_SOCKET", daemon_socket)
    monkeypatch.setenv("PORTRES_SESSION_FD", "three")
    with pytest.raises(portres.InvalidParameterError, match="not a descriptor number"):
        portres.Client()
    monkeypatch.setenv("PORTRES_SESSION_FD", "999")
    with pytest.raises(portres.InvalidParameterError, match="not an open descriptor"):
        portres.Client()
    rd, wr = os.pipe()
    try:
        monkeypatch.setenv("PORTRES_SESSION_FD", str(rd))
        with pytest.raises(portres.AccessDeniedError, match="not the capability"):
            portres.Client()  # the daemon's word
    finally:
        os.close(rd)
        os.close(wr)
    # Connecting by path does not look at the variable.
    with portres.Client(daemon_socket) as c:
        assert c.attached is None and c.inherited is None
