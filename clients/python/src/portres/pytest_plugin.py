"""The pytest plugin (entry point ``pytest11``: ``portres``): reserved ports as fixtures.

Owns the fixtures and their lifetimes. Each pytest process (each
pytest-xdist worker is one) opens one ``portres.Client`` session on first
use; the daemon guarantees that no two sessions hold the same port, so
workers never collide, and the kernel's own port picker stays off them.

- ``portres_tcp_port`` / ``portres_udp_port``: one port reserved for the
  test (an ``int``), released after it.
- ``portres_ports``: a factory, ``portres_ports("tcp", 3)`` -> a held
  ``portres.Reservation`` (``.ports``, ``.bind()``, ``.listen()``),
  released after the test.
- ``portres_session``: one TCP reservation per worker for the whole session
  (``--portres-session-count N`` ports, default 1).
- ``portres_client``: the worker's ``portres.Client``.
- ``portres_exec_reservation``: under ``portres exec``, the exec's
  reservation, shared by every worker (``bind()`` into it); skipped otherwise.

Under ``portres exec`` every worker attaches the exec's session capability.
pytest-xdist starts workers without the controller's descriptors (execnet's
``Popen`` closes them), so the controller hands each worker the path
``/proc/<controller pid>/fd/<N>`` of its inherited capability, and the
worker reopens it — the same file, which is what the daemon recognises —
and puts the new descriptor in its own ``PORTRES_SESSION_FD`` before any
client is made (a worker with none drops the stale variable).

With no daemon reachable the fixtures fail the test with the client's error
(every socket tried and why) and what to do. ``--portres-fallback`` (or the
ini option ``portres_fallback = true``) makes them fall back instead to
ports the kernel picks with ``bind(("127.0.0.1", 0))``, closed again — the
advisory scheme portres exists to replace — with a ``PortresFallbackWarning``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import unicodedata
import warnings
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, List, Optional, Type, Union

import pytest

from ._client import Client, Reservation
from ._discovery import SESSION_FD_ENV, client_env
from ._errors import BlockExhaustedError, Error, InvalidParameterError

STATE_PLUGIN = "portres-state"
_WORKERINPUT_KEY = "portres_capability"
_MAX_LABEL = 200


class PortresWarning(UserWarning):
    """Something the portres plugin could not do as asked."""


class PortresFallbackWarning(PortresWarning):
    """Fixtures handed out unreserved ports: no daemon, ``--portres-fallback``."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("portres", "reserved ports from the portres daemon")
    group.addoption(
        "--portres-fallback",
        action="store_true",
        default=None,
        help="with no portres daemon reachable, hand out ports picked by bind(0) "
        "(no guarantee; a warning says so) instead of failing",
    )
    group.addoption(
        "--portres-session-count",
        type=int,
        default=None,
        metavar="N",
        help="ports in each worker's portres_session reservation (default 1)",
    )
    parser.addini(
        "portres_fallback", "like --portres-fallback", type="bool", default=False
    )
    parser.addini(
        "portres_session_count", "like --portres-session-count", default="1"
    )


def _label(text: str) -> str:
    """``text`` as a label the daemon takes: no control, format or
    separator characters, at most _MAX_LABEL bytes."""
    kept = "".join(
        c if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else "?" for c in text
    )
    data = kept.encode("utf-8")[:_MAX_LABEL]
    return data.decode("utf-8", "ignore")


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


class _State:
    """One pytest process's connection to the daemon, made on first use."""

    def __init__(self, config: pytest.Config) -> None:
        opt = config.getoption("portres_fallback")
        self.fallback = bool(config.getini("portres_fallback") if opt is None else opt)
        count = config.getoption("portres_session_count")
        self.session_count = int(config.getini("portres_session_count") if count is None else count)
        self.client: Optional[Client] = None
        self.error: Optional[Error] = None
        self.tried = False

    def client_for(self, fixture: str, warn: bool = True) -> Optional[Client]:
        """The client; ``None`` in fallback mode without a daemon (with a
        warning that ``fixture`` hands out an unreserved port, if ``warn``);
        else the test fails saying why."""
        if not self.tried:
            self.tried = True
            try:
                self.client = Client()
            except Error as e:
                self.error = e
        if self.client is not None:
            return self.client
        if self.fallback:
            if not warn:
                return None
            warnings.warn(
                PortresFallbackWarning(
                    f"portres: no daemon ({self.error}); {fixture} hands out a port "
                    "picked by bind(0), which another process may take"
                ),
                stacklevel=2,
            )
            return None
        pytest.fail(
            f"portres: the {fixture} fixture needs a portres daemon, and none can be used:\n"
            f"  {self.error}\n"
            "  Start one (`portresd` as yourself, or the system service), point "
            "PORTRES_SOCKET at one, or run pytest with --portres-fallback to use "
            "unreserved ports (bind(0), no guarantee).",
            pytrace=False,
        )

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _inherited_capability() -> Optional[int]:
    """The descriptor ``PORTRES_SESSION_FD`` names, if it is open here."""
    raw = client_env(SESSION_FD_ENV)
    if raw is None:
        return None
    try:
        fd = int(raw.strip())
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except (ValueError, OSError):
        return None
    return fd


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller, for each worker it starts: where the
    worker finds this process's session capability."""
    fd = _inherited_capability()
    if fd is not None:
        node.workerinput[_WORKERINPUT_KEY] = f"/proc/{os.getpid()}/fd/{fd}"


def _adopt_controllers_capability(workerinput: Dict[str, Any]) -> None:
    """In an xdist worker: replace the inherited, stale PORTRES_SESSION_FD
    (its descriptor was not passed on) by the controller's capability,
    reopened through /proc."""
    if client_env(SESSION_FD_ENV) is None:
        return
    path = workerinput.get(_WORKERINPUT_KEY)
    fd = None
    if isinstance(path, str):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            warnings.warn(
                PortresWarning(f"portres: cannot reopen the session capability {path}: {e}")
            )
    if fd is None:
        del os.environ[SESSION_FD_ENV]
        return
    # Inheritable, as portres exec hands it: this worker's children get it too.
    os.set_inheritable(fd, True)
    os.environ[SESSION_FD_ENV] = str(fd)


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict):
        _adopt_controllers_capability(workerinput)
    config.pluginmanager.register(_State(config), STATE_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.pluginmanager.get_plugin(STATE_PLUGIN)
    if state is not None:
        state.close()
        config.pluginmanager.unregister(state, STATE_PLUGIN)


def _state(request: pytest.FixtureRequest) -> _State:
    state = request.config.pluginmanager.get_plugin(STATE_PLUGIN)
    assert isinstance(state, _State), "the portres plugin was not configured"
    return state


def _bindable(protocol: str, port: int) -> bool:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _unreserved_block(protocol: str, count: int) -> int:
    """The first port of ``count`` consecutive ports free right now (the
    kernel picks the first with bind(0)); nothing keeps them free."""
    if count < 1:
        raise InvalidParameterError("count must be at least 1")
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            start: int = s.getsockname()[1]
        if start + count - 1 <= 65535 and all(
            _bindable(protocol, p) for p in range(start + 1, start + count)
        ):
            return start
    raise BlockExhaustedError(f"found no {count} consecutive free {protocol} ports")


class FallbackReservation:
    """What ``portres_ports`` hands out in fallback mode: the shape of a
    ``portres.Reservation`` over ports that were free when picked, with no
    guarantee. ``token`` is ``None``; ``release()`` does nothing."""

    token = None

    def __init__(self, protocol: str, count: int) -> None:
        if protocol not in ("tcp", "udp"):
            raise InvalidParameterError(f"unknown protocol {protocol!r}: tcp or udp")
        self.protocol = protocol
        self.count = count
        self.start = _unreserved_block(protocol, count)
        self.released = False
        self._next = 0

    @property
    def ports(self) -> range:
        """The ports of the block."""
        return range(self.start, self.start + self.count)

    def bind(self, host: str = "127.0.0.1") -> socket.socket:
        """A socket bound (by this process) to ``host`` and a free port of the block."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        kind = socket.SOCK_STREAM if self.protocol == "tcp" else socket.SOCK_DGRAM
        for i in range(self.count):
            port = self.start + (self._next + i) % self.count
            sock = socket.socket(family, kind)
            if self.protocol == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            self._next = (port - self.start + 1) % self.count
            return sock
        raise BlockExhaustedError(f"every port of {self.start}-{self.start + self.count - 1} is bound")

    def listen(self, host: str = "127.0.0.1", backlog: int = 128) -> socket.socket:
        """A listening TCP socket on a free port of the block."""
        if self.protocol != "tcp":
            raise InvalidParameterError("listen() is for TCP reservations: use bind()")
        sock = self.bind(host)
        sock.listen(backlog)
        return sock

    def release(self) -> None:
        """Nothing to release."""
        self.released = True

    def __enter__(self) -> FallbackReservation:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()


AnyReservation = Union[Reservation, FallbackReservation]
PortsFactory = Callable[..., AnyReservation]


def _acquire(
    request: pytest.FixtureRequest, fixture: str, protocol: str, count: int, start: int = 0
) -> AnyReservation:
    client = _state(request).client_for(fixture)
    if client is None:
        return FallbackReservation(protocol, count)
    label = _label(f"pytest {_worker()}: {request.node.nodeid}")
    return client.acquire(protocol, count=count, start=start, label=label)


@pytest.fixture(scope="session")
def portres_client(request: pytest.FixtureRequest) -> Client:
    """This worker's session with the daemon (skipped in fallback mode
    without one)."""
    client = _state(request).client_for("portres_client", warn=False)
    if client is None:
        pytest.skip("no portres daemon (--portres-fallback)")
    return client


@pytest.fixture
def portres_tcp_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """One TCP port reserved for this test, released after it."""
    with _acquire(request, "portres_tcp_port", "tcp", 1) as r:
        yield r.start


@pytest.fixture
def portres_udp_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """One UDP port reserved for this test, released after it."""
    with _acquire(request, "portres_udp_port", "udp", 1) as r:
        yield r.start


@pytest.fixture
def portres_ports(request: pytest.FixtureRequest) -> Iterator[PortsFactory]:
    """A factory: ``portres_ports("tcp", 3)`` -> a Reservation of 3 TCP
    ports (``start=`` for a given block), each released after the test."""
    held: List[AnyReservation] = []

    def make(protocol: str = "tcp", count: int = 1, start: int = 0) -> AnyReservation:
        r = _acquire(request, "portres_ports", protocol, count, start)
        held.append(r)
        return r

    yield make
    for r in reversed(held):
        r.__exit__(None, None, None)


@pytest.fixture(scope="session")
def portres_session(request: pytest.FixtureRequest) -> Iterator[AnyReservation]:
    """One TCP reservation per worker for the whole session
    (``--portres-session-count`` ports)."""
    state = _state(request)
    client = state.client_for("portres_session")
    if client is None:
        r: AnyReservation = FallbackReservation("tcp", state.session_count)
    else:
        label = _label(f"pytest {_worker()}: session")
        r = client.acquire("tcp", count=state.session_count, label=label)
    with r:
        yield r


@pytest.fixture(scope="session")
def portres_exec_reservation(request: pytest.FixtureRequest) -> Reservation:
    """The reservation of the enclosing ``portres exec``, shared with every
    worker; skipped when not run under ``portres exec``."""
    not_exec = "not run under `portres exec` (no PORTRES_SESSION_FD attached)"
    if client_env(SESSION_FD_ENV) is None:
        pytest.skip(not_exec)
    client = _state(request).client_for("portres_exec_reservation", warn=False)
    inherited = client.inherited if client is not None else None
    if inherited is None:
        pytest.skip(not_exec)
    return inherited
