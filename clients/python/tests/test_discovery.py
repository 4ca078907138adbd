"""Socket discovery and trust, the Rust client's rules: which sockets are
tried, what a user socket and the daemon behind it must prove, what an
explicit socket records, and that a setuid process ignores the variables.
Real Unix listeners; the wrong-uid daemons and the setuid process need root."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

import portres
from portres import _discovery as d


def test_explicit_socket_alone_unless_secure() -> None:
    env = {"PORTRES_SOCKET": "/elsewhere/x.sock"}
    assert d.socket_candidates(env, 1000, False) == [("/elsewhere/x.sock", "explicit")]
    # setuid: the variable belongs to whoever started the program.
    assert d.socket_candidates(env, 1000, True) == [
        ("/tmp/portres-1000/portres.sock", "user"),
        (d.SYSTEM_SOCKET, "system"),
    ]
    assert d.socket_candidates(env, 0, True) == [(d.SYSTEM_SOCKET, "system")]


def test_user_socket_under_xdg_runtime_dir_else_tmp() -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "PORTRES_SOCKET": ""}
    assert d.socket_candidates(env, 1000, False)[0] == (
        "/run/user/1000/portres/portres.sock",
        "user",
    )
    assert d.socket_candidates({}, 65533, False)[0] == ("/tmp/portres-65533/portres.sock", "user")
    assert d.socket_candidates({}, 0, False) == [(d.SYSTEM_SOCKET, "system")]


def test_secure_mode_hides_client_variables() -> None:
    assert d.client_env("PATH", {"PATH": "/bin"}, False) == "/bin"
    assert d.client_env("PATH", {"PATH": "/bin"}, True) is None
    assert d.client_env("X", {"X": ""}, False) is None
    assert not d.is_secure()  # tests do not run setuid


@pytest.fixture
def private_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="portres-py-trust") as t:
        os.chmod(t, 0o700)
        yield Path(t)


def listen_at(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(8)
    return s


def test_own_socket_in_own_private_directory_is_used(private_dir: Path) -> None:
    path = private_dir / "portres.sock"
    with listen_at(path):
        sock, who = d.connect_checked(str(path), d.USER)
        sock.close()
    assert who.uid == os.geteuid() and who.pid == os.getpid()


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o1777])
def test_directory_writable_by_others_is_refused_unless_explicit(
    private_dir: Path, mode: int
) -> None:
    path = private_dir / "portres.sock"
    with listen_at(path):
        os.chmod(private_dir, mode)
        with pytest.raises(portres.DaemonUntrustedError) as e:
            d.connect_checked(str(path), d.USER)
        assert e.value.code == "daemon_untrusted"
        assert "writable by nobody else" in e.value.message
        # Named explicitly: used, and who answered is recorded.
        with portres.Client(str(path)) as c:
            assert c.socket_kind == "explicit" and c.daemon.pid == os.getpid()


def test_symlinked_directory_is_refused(private_dir: Path) -> None:
    real = private_dir / "real"
    real.mkdir(mode=0o700)
    (private_dir / "link").symlink_to(real)
    with listen_at(real / "portres.sock"):
        with pytest.raises(portres.DaemonUntrustedError):
            d.connect_checked(str(private_dir / "link" / "portres.sock"), d.USER)


def test_missing_socket_or_directory_is_unavailable_not_untrusted(private_dir: Path) -> None:
    for path in [private_dir / "portres.sock", private_dir / "nodir" / "portres.sock"]:
        with pytest.raises(portres.DaemonUnavailableError):
            d.connect_checked(str(path), d.USER)
    (private_dir / "portres.sock").write_text("")
    with pytest.raises(portres.DaemonUnavailableError, match="not a socket"):
        d.connect_checked(str(private_dir / "portres.sock"), d.USER)


def test_no_daemon_lists_every_socket_tried(private_dir: Path) -> None:
    loose = private_dir / "loose"
    loose.mkdir()
    with listen_at(loose / "portres.sock"):
        os.chmod(loose, 0o777)
        cands = [
            d.SocketCandidate(str(loose / "portres.sock"), d.USER),
            d.SocketCandidate(str(private_dir / "none.sock"), d.SYSTEM),
        ]
        with pytest.raises(portres.DaemonUntrustedError) as e:
            d.connect_first(cands)
    msg = e.value.message
    assert msg.startswith("no portres daemon to talk to; tried: ")
    assert f"{loose}/portres.sock (your own daemon): daemon_untrusted" in msg
    assert f"{private_dir}/none.sock (the system daemon): daemon_unavailable" in msg
    assert "PORTRES_SOCKET" in msg
    with pytest.raises(portres.DaemonUnavailableError):
        d.connect_first([d.SocketCandidate(str(private_dir / "none.sock"), d.SYSTEM)])


def test_a_refused_user_socket_falls_through_to_the_next(private_dir: Path) -> None:
    """Root's system socket is answered by root: used after a refused one."""
    if os.geteuid() != 0:
        pytest.skip("the second listener must run as root to pass as the system daemon")
    loose = private_dir / "loose"
    loose.mkdir()
    with listen_at(loose / "portres.sock"), listen_at(private_dir / "system.sock"):
        os.chmod(loose, 0o777)
        sock, who, cand, passed = d.connect_first(
            [
                d.SocketCandidate(str(loose / "portres.sock"), d.USER),
                d.SocketCandidate(str(private_dir / "system.sock"), d.SYSTEM),
            ]
        )
        sock.close()
    assert cand.kind == "system" and who.uid == 0
    assert len(passed) == 1 and "daemon_untrusted" in passed[0]


def listen_as(uid: int, path: Path) -> int:
    """A forked child that listens at ``path`` as ``uid`` (so SO_PEERCRED
    says ``uid``) until killed; returns its pid once it listens."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so nothing to load as the other user
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(path))
            s.listen(8)
            os.write(w, b"ready")
            while True:
                time.sleep(60)
        finally:
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as ready:
        assert ready.read(5) == b"ready"
    return pid


def test_a_daemon_of_another_uid_is_refused_on_default_sockets(
    root: None, private_dir: Path
) -> None:
    os.chmod(private_dir, 0o777)  # the other user binds in it
    path = private_dir / "other.sock"
    other = listen_as(65534, path)
    try:
        os.chmod(private_dir, 0o700)
        # The system socket must be root's daemon.
        with pytest.raises(portres.DaemonUntrustedError, match="the system daemon runs as root"):
            d.connect_checked(str(path), d.SYSTEM)
        # A user socket: the socket is not ours (refused before connecting)...
        with pytest.raises(portres.DaemonUntrustedError, match="owned by uid 65534"):
            d.connect_checked(str(path), d.USER)
        # ... and a daemon that is not us is refused by SO_PEERCRED even when
        # the socket file is ours.
        os.chown(path, 0, 0)
        with pytest.raises(portres.DaemonUntrustedError, match="your own daemon runs as you"):
            d.connect_checked(str(path), d.USER)
        # Explicit: used, and who answered is on record.
        with portres.Client(str(path)) as c:
            assert c.daemon.uid == 65534 and c.daemon.pid == other
            assert c.daemon.describe(0).endswith("(not root, not you)")
    finally:
        os.kill(other, signal.SIGKILL)
        os.waitpid(other, 0)


SETUID = textwrap.dedent(
    """
    import os, sys
    os.setresgid(65534, 0, 0)
    os.setresuid(65534, 0, 0)   # real uid nobody, effective root: a setuid-root program
    from portres import _discovery as d
    from portres import Client
    print(d.is_secure(), d.socket_candidates(), d.client_env("PORTRES_SESSION_FD"))
    """
)


def test_a_setuid_process_ignores_portres_socket_and_session_fd(root: None) -> None:
    env = dict(os.environ, PORTRES_SOCKET="/planted/portres.sock", PORTRES_SESSION_FD="7")
    out = subprocess.run(
        [sys.executable, "-c", SETUID], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == f"True [SocketCandidate(path='{d.SYSTEM_SOCKET}', kind='system')] None", out


def in_child_as(uid: int, body: Callable[[], str]) -> str:
    """Runs ``body`` in a forked child whose every uid and gid is ``uid``;
    returns what it returned (or its exception, as text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                out = body()
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out = f"{type(e).__name__}: {e}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode()
    os.waitpid(pid, 0)
    return got


def test_client_finds_a_users_own_daemon_by_default(
    root: None, private_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.chmod(private_dir, 0o755)
    runtime = private_dir / "run-65534"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, 65534, 65534)
    monkeypatch.delenv("PORTRES_SOCKET", raising=False)
    monkeypatch.delenv("PORTRES_SESSION_FD", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))

    def own_daemon() -> str:
        (runtime / "portres").mkdir(mode=0o700)
        with listen_at(runtime / "portres" / "portres.sock"):
            with portres.Client() as c:
                return f"{c.socket_path} {c.socket_kind} {c.daemon.pid == os.getpid()} {c.passed_over}"

    assert in_child_as(65534, own_daemon) == f"{runtime}/portres/portres.sock user True []"

    if os.path.exists(d.SYSTEM_SOCKET):
        return  # a system daemon here would answer the next part

    def loose_directory() -> str:
        os.chmod(runtime / "portres", 0o777)
        (runtime / "portres" / "portres.sock").unlink()
        with listen_at(runtime / "portres" / "portres.sock"):
            try:
                portres.Client()
            except portres.Error as e:
                return f"{e.code} | {e.message}"
        return "connected"

    code, message = in_child_as(65534, loose_directory).split(" | ", 1)
    assert code == "daemon_untrusted", message
    assert f"{runtime}/portres/portres.sock (your own daemon): daemon_untrusted" in message
    assert f"{d.SYSTEM_SOCKET} (the system daemon): daemon_unavailable" in message
