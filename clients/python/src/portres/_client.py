"""``Client`` (a session with portresd) and ``Reservation`` (a held block).

Owns every call of the wire interface as a Python method, mirroring the
Rust client (crates/portres/src/client.rs, reservation.rs): ``Client()``
finds and checks the daemon (see ``_discovery``), and, when it found it
through the environment, presents an inherited session capability
(``PORTRES_SESSION_FD``, set by ``portres exec``) so the processes of one
``exec`` share its reservation. A ``Reservation`` is a context manager that
releases its block on exit; the session's end (``close()``, process exit)
releases everything it holds.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
from types import TracebackType
from typing import Any, Dict, List, Optional, Tuple, Type, Union

from ._discovery import (
    EXPLICIT,
    SESSION_FD_ENV,
    DaemonIdentity,
    client_env,
    connect_checked,
    connect_first,
    socket_candidates,
)
from ._errors import (
    DaemonUnavailableError,
    Error,
    InternalError,
    InvalidParameterError,
    NotFoundError,
)
from ._types import PROTOCOLS, Owner, ReservationInfo, Status, parse_token, reservations_from_wire
from ._wire import Connection

SocketLike = Union[socket.socket, int]


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise InvalidParameterError(f"unknown protocol {protocol!r}: tcp or udp")
    return protocol


def _family(host: str) -> socket.AddressFamily:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidParameterError(
            f"{host!r} is not an IP address (the daemon binds to addresses, not names)"
        ) from None
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _fileno(sock: SocketLike) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


class Client:
    """A connection (one session) to portresd.

    ``Client()`` uses ``PORTRES_SOCKET``, else your own daemon's socket, else
    the system daemon's, each only if it passes the trust checks (see the
    package README), and attaches ``PORTRES_SESSION_FD`` if set.
    ``Client(path)`` connects to ``path`` whoever answers (``daemon`` says
    who); ``kind="user"`` or ``"system"`` applies those checks to it instead.
    Calls from several threads are serialised on the connection. A forked
    child must make its own ``Client``.
    """

    def __init__(
        self,
        socket_path: Optional[str] = None,
        *,
        kind: str = EXPLICIT,
        attach: Optional[bool] = None,
    ) -> None:
        passed_over: List[str] = []
        if socket_path is None:
            sock, daemon, cand, passed_over = connect_first(socket_candidates())
            path, kind = cand.path, cand.kind
        else:
            path = os.fspath(socket_path)
            sock, daemon = connect_checked(path, kind)
        self._conn = Connection(sock, path, daemon)
        #: How the socket was found: "explicit", "user" or "system".
        self.socket_kind = kind
        #: The default sockets tried and not used before this one, and why.
        self.passed_over = passed_over
        #: How many reservations the inherited session held when attached;
        #: ``None`` when no capability was attached.
        self.attached: Optional[int] = None
        if attach if attach is not None else socket_path is None:
            try:
                self.attach_inherited()
            except BaseException:
                self.close()
                raise

    # -- the connection ---------------------------------------------------

    @property
    def socket_path(self) -> str:
        """The socket this client is connected to."""
        return self._conn.path

    @property
    def daemon(self) -> DaemonIdentity:
        """Who answered on the socket (``SO_PEERCRED``): pid, uid, gid."""
        return self._conn.daemon

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._conn.closed

    def close(self) -> None:
        """Ends the session: the daemon releases its runtime reservations."""
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<portres.Client {self.socket_path!r} ({self.socket_kind}), "
            f"daemon {self.daemon.describe()}{', closed' if self.closed else ''}>"
        )

    def call(
        self, method: str, parameters: Optional[Dict[str, Any]] = None, fd: Optional[int] = None
    ) -> Dict[str, Any]:
        """Sends a raw call (``"io.portres.Status"``) and returns the reply's
        parameters; for tools that speak the wire interface directly."""
        params, fds = self._conn.call(method, parameters or {}, fd)
        for extra in fds:
            os.close(extra)
        return params

    # -- session capabilities --------------------------------------------

    def capability(self) -> int:
        """A descriptor standing for this session (close-on-exec; clear that
        to hand it to a child). Whoever holds it may ``attach``. The caller
        owns (and closes) it."""
        _, fds = self._conn.call("io.portres.GetCapability", {})
        if not fds:
            raise InternalError("the daemon sent no capability")
        for extra in fds[1:]:
            os.close(extra)
        return fds[0]

    def attach(self, capability: int) -> int:
        """Presents a session capability: this connection may then bind into
        and release that session's runtime reservations. Returns how many it
        holds."""
        params, _ = self._conn.call("io.portres.Attach", {}, capability)
        n = params.get("reservations")
        return n if isinstance(n, int) else 0

    def attach_inherited(self) -> bool:
        """Presents the capability named by ``PORTRES_SESSION_FD``, if set
        (ignored in a setuid process). Returns whether one was presented."""
        raw = client_env(SESSION_FD_ENV)
        if raw is None:
            return False
        try:
            fd = int(raw.strip())
        except ValueError:
            raise InvalidParameterError(
                f"{SESSION_FD_ENV} is not a descriptor number: {raw!r}"
            ) from None
        try:
            if fd < 0:
                raise OSError
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            raise InvalidParameterError(
                f"{SESSION_FD_ENV}={fd} is not an open descriptor in this process"
            ) from None
        self.attached = self.attach(fd)
        return True

    @property
    def inherited(self) -> Optional[Reservation]:
        """The reservation of the enclosing ``portres exec`` (from
        ``PORTRES_PROTOCOL``/``START``/``COUNT``/``TOKEN``) when its capability
        was attached, else ``None``. Shared with every process of that exec:
        ``bind()`` into it gets a port no other of them holds. Its context
        manager releases it for all of them, so usually just bind."""
        if self.attached is None:
            return None
        env = os.environ
        try:
            info = ReservationInfo(
                protocol=_check_protocol(env["PORTRES_PROTOCOL"]),
                start=int(env["PORTRES_START"]),
                count=int(env["PORTRES_COUNT"]),
                kind="runtime",
                token=parse_token(env["PORTRES_TOKEN"]),
            )
        except (KeyError, ValueError, Error):
            return None
        return Reservation(self, info)

    # -- runtime reservations ---------------------------------------------

    def acquire(
        self, protocol: str = "tcp", count: int = 1, start: int = 0, label: Optional[str] = None
    ) -> Reservation:
        """A runtime reservation of ``count`` ports from ``start`` (0: any free
        block in the kernel's dynamic range), held until ``release()``, the
        end of a ``with`` block, or the end of this session."""
        params: Dict[str, Any] = {
            "protocol": _check_protocol(protocol),
            "start": start,
            "count": count,
        }
        if label is not None:
            params["label"] = label
        reply = self.call("io.portres.Acquire", params)
        info = ReservationInfo.from_wire(reply.get("reservation"))
        if info.token is None:
            raise InternalError("the daemon did not return the token")
        return Reservation(self, info)

    def acquire_socket(
        self,
        protocol: str,
        sock: SocketLike,
        host: str = "127.0.0.1",
        count: int = 1,
        start: int = 0,
        label: Optional[str] = None,
    ) -> Tuple[Reservation, int]:
        """A runtime reservation (as ``acquire``) with ``sock`` (an unbound
        socket of ``protocol``, or its descriptor) bound by the daemon to
        ``host`` and a free port of it, in one round trip; returns the
        reservation and the port. If the socket is refused or the bind
        fails, no reservation is left."""
        params: Dict[str, Any] = {
            "protocol": _check_protocol(protocol),
            "start": start,
            "count": count,
            "address": host,
        }
        if label is not None:
            params["label"] = label
        reply = self.call("io.portres.Acquire", params, fd=_fileno(sock))
        info = ReservationInfo.from_wire(reply.get("reservation"))
        port = reply.get("port")
        if info.token is None or not isinstance(port, int):
            raise InternalError(
                f"unexpected Acquire reply (a daemon without Acquire with a socket?): {reply!r}"
            )
        return Reservation(self, info), port

    def bind(
        self, protocol: str = "tcp", host: str = "127.0.0.1"
    ) -> Tuple[socket.socket, Reservation]:
        """A new socket of ``protocol`` (TCP: with ``SO_REUSEADDR``, as
        ``socket.create_server`` sets it) bound to ``host`` and the port of a
        new one-port reservation, in one round trip: ``(sock, reservation)``.
        The port is ``sock.getsockname()[1]`` (and ``reservation.start``)."""
        _check_protocol(protocol)
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(_family(host), kind)
        try:
            if protocol == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            reservation, _ = self.acquire_socket(protocol, sock, host)
        except BaseException:
            sock.close()
            raise
        return sock, reservation

    def listen(
        self, host: str = "127.0.0.1", backlog: int = 128
    ) -> Tuple[socket.socket, Reservation]:
        """A listening TCP socket on ``host`` and the port of a new one-port
        reservation, in one round trip: ``(sock, reservation)``."""
        sock, reservation = self.bind("tcp", host)
        try:
            sock.listen(backlog)
        except BaseException:
            sock.close()
            reservation.release()
            raise
        return sock, reservation

    def release(self, token: int) -> None:
        """Releases a runtime reservation by token (held by this session or
        one whose capability this connection attached)."""
        self.call("io.portres.Release", {"token": str(token)})

    def bind_socket(self, token: int, sock: SocketLike, host: str = "127.0.0.1") -> int:
        """Has the daemon bind ``sock`` (an unbound TCP or UDP socket, or its
        descriptor) to ``host`` and a free port of reservation ``token``;
        returns the port. Set socket options (``SO_REUSEADDR``) before."""
        reply = self.call(
            "io.portres.Bind", {"token": str(token), "address": host}, fd=_fileno(sock)
        )
        port = reply.get("port")
        if not isinstance(port, int):
            raise InternalError(f"unexpected Bind reply: {reply!r}")
        return port

    # -- persistent reservations (administrators; lookup also the owner) ----

    def create(
        self,
        protocol: str,
        start: int,
        count: int = 1,
        owner: Optional[Owner] = None,
        label: Optional[str] = None,
    ) -> ReservationInfo:
        """Creates a persistent reservation (administrators only)."""
        params: Dict[str, Any] = {
            "protocol": _check_protocol(protocol),
            "start": start,
            "count": count,
        }
        if owner is not None:
            params["owner"] = {"kind": owner.kind, "id": owner.id}
        if label is not None:
            params["label"] = label
        return ReservationInfo.from_wire(self.call("io.portres.Create", params).get("reservation"))

    def delete(self, protocol: str, start: int, count: int = 1) -> None:
        """Deletes the persistent reservation of exactly this block."""
        self.call(
            "io.portres.Delete",
            {"protocol": _check_protocol(protocol), "start": start, "count": count},
        )

    def lookup(self, protocol: str, start: int, count: int = 1) -> ReservationInfo:
        """The persistent reservation of exactly this block, token included
        (administrators and its owner)."""
        reply = self.call(
            "io.portres.Lookup",
            {"protocol": _check_protocol(protocol), "start": start, "count": count},
        )
        return ReservationInfo.from_wire(reply.get("reservation"))

    # -- everyone ---------------------------------------------------------

    def list(self, protocol: Optional[str] = None) -> List[ReservationInfo]:
        """Every reservation (optionally of one protocol), TCP then UDP by
        start, with the ports some socket holds now (``in_use``)."""
        params = {} if protocol is None else {"protocol": _check_protocol(protocol)}
        return reservations_from_wire(self.call("io.portres.List", params).get("reservations"))

    def status(self) -> Status:
        """The daemon's configuration and counts."""
        return Status.from_wire(self.call("io.portres.Status"))


class Reservation:
    """A runtime reservation held by a ``Client``'s session.

    ``with client.acquire("tcp", count=3) as r:`` releases it on exit. Its
    ports are the daemon's to give out: ``bind()``/``listen()`` have the
    daemon bind a socket to a free one, which no other process can take.
    """

    def __init__(self, client: Client, info: ReservationInfo) -> None:
        self.client = client
        #: Everything the daemon said about it.
        self.info = info
        self._released = False

    @property
    def protocol(self) -> str:
        """"tcp" or "udp"."""
        return self.info.protocol

    @property
    def start(self) -> int:
        """The first port."""
        return self.info.start

    @property
    def count(self) -> int:
        """How many ports."""
        return self.info.count

    @property
    def ports(self) -> range:
        """The ports of the block."""
        return self.info.ports

    @property
    def token(self) -> int:
        """The token (``Client.bind_socket``, ``Client.release``, or for a
        process holding this session's capability)."""
        assert self.info.token is not None
        return self.info.token

    @property
    def released(self) -> bool:
        """Whether ``release()`` was called."""
        return self._released

    def bind_socket(self, sock: SocketLike, host: str = "127.0.0.1") -> int:
        """Has the daemon bind an unbound socket (TCP or UDP, matching the
        protocol; IPv4 or IPv6, matching ``host``) to ``host`` and a free port
        of the block; returns the port."""
        return self.client.bind_socket(self.token, sock, host)

    def bind(self, host: str = "127.0.0.1") -> socket.socket:
        """A new socket of the reservation's protocol (TCP: with
        ``SO_REUSEADDR``, as ``socket.create_server`` sets it), bound by the
        daemon to ``host`` and a free port of the block."""
        kind = socket.SOCK_STREAM if self.protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(_family(host), kind)
        try:
            if self.protocol == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.bind_socket(sock, host)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(self, host: str = "127.0.0.1", backlog: int = 128) -> socket.socket:
        """A listening TCP socket on ``host`` and a free port of the block."""
        if self.protocol != "tcp":
            raise InvalidParameterError(
                f"listen() is for TCP reservations; this one is {self.protocol}: use bind()"
            )
        sock = self.bind(host)
        try:
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def release(self) -> None:
        """Releases it now (a second call does nothing)."""
        if not self._released:
            self.client.release(self.token)
            self._released = True

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._released or self.client.closed:
            return
        try:
            self.release()
        except (NotFoundError, DaemonUnavailableError):
            # Already gone: released by a capability holder, or the session
            # (and every reservation of it) ended with the daemon.
            self._released = True

    def __repr__(self) -> str:
        end = self.start + self.count - 1
        ports = f"{self.start}" if self.count == 1 else f"{self.start}-{end}"
        state = ", released" if self._released else ""
        return f"<portres.Reservation {self.protocol} {ports} token {self.token}{state}>"
