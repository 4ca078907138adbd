"""One varlink connection to portresd: framing, descriptors, replies.

Owns the byte level of docs/wire.md: every message is one JSON object and
one NUL byte; a descriptor (``Bind``, ``Attach``) travels as ``SCM_RIGHTS``
with the first byte of its request, and one may come back with a reply
(``GetCapability``). Calls on a connection are serialised by a lock (one
connection is one session; replies come in order). Mirrors the Rust client's
``Conn`` (crates/portres/src/client/conn.rs): an error the daemon wrote
before closing is reported rather than a bare "connection closed".
"""

from __future__ import annotations

import array
import json
import os
import socket
import threading
from typing import Any, Dict, List, Optional, Tuple

from ._discovery import DaemonIdentity, unavailable
from ._errors import DaemonUnavailableError, InternalError, InvalidParameterError, decode_error

#: The daemon closes a connection whose request is longer (docs/wire.md).
MAX_REQUEST_BYTES = 64 * 1024
#: A reply longer than this is not a portres reply (the Rust client's bound).
MAX_REPLY_BYTES = 256 * 1024 * 1024
_MAX_FDS = 4
_CMSG_SPACE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def encode_call(method: str, parameters: Dict[str, Any]) -> bytes:
    """The bytes of one call."""
    body = json.dumps(
        {"method": method, "parameters": parameters},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    return body + b"\0"


def decode_reply(frame: bytes) -> Dict[str, Any]:
    """A reply's parameters; raises the ``portres.Error`` an error reply names."""
    try:
        reply = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InternalError(f"malformed reply: {e}") from None
    if not isinstance(reply, dict):
        raise InternalError("malformed reply: not a JSON object")
    params = reply.get("parameters")
    if reply.get("error") is not None:
        raise decode_error(reply["error"], params)
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InternalError("unexpected reply: parameters is not an object")
    return params


class Connection:
    """A connected, trusted socket to one daemon (one session)."""

    def __init__(self, sock: socket.socket, path: str, daemon: DaemonIdentity) -> None:
        self.sock = sock
        self.path = path
        self.daemon = daemon
        self.pid = os.getpid()
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        """Ends the session: the daemon releases its runtime reservations."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self.sock.close()

    def call(
        self, method: str, parameters: Dict[str, Any], fd: Optional[int] = None
    ) -> Tuple[Dict[str, Any], List[int]]:
        """Sends one call (with ``fd`` as SCM_RIGHTS if given) and returns the
        reply's parameters and any descriptors that came with it (the caller
        owns them)."""
        data = encode_call(method, parameters)
        if len(data) > MAX_REQUEST_BYTES:
            # The daemon would close the connection, ending the session.
            raise InvalidParameterError(
                f"the request is {len(data)} bytes; the daemon takes at most {MAX_REQUEST_BYTES}"
            )
        with self._lock:
            if self.closed:
                raise DaemonUnavailableError(f"the connection to {self.path} is closed")
            if os.getpid() != self.pid:
                # Two processes writing one byte stream would interleave calls.
                raise DaemonUnavailableError(
                    f"this connection to {self.path} belongs to process {self.pid}; a forked "
                    "child makes its own portres.Client (and attaches the parent's "
                    "capability to use its reservations)"
                )
            try:
                self._send(data, fd)
            except OSError as e:
                # The daemon may have refused the connection (e.g. a
                # connection limit) and closed it; its reason may be waiting.
                raise self._parting_words() or unavailable(self.path, e.strerror or e) from None
            return self._receive()

    def _send(self, data: bytes, fd: Optional[int]) -> None:
        if fd is None:
            self.sock.sendall(data, _NOSIGNAL)
            return
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        sent = self.sock.sendmsg([data], rights, _NOSIGNAL)
        if sent < len(data):
            self.sock.sendall(data[sent:], _NOSIGNAL)

    def _next_frame(self) -> Optional[bytes]:
        end = self._buf.find(b"\0")
        if end < 0:
            return None
        frame = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return frame

    def _recv_some(self, fds: List[int], flags: int = 0) -> int:
        data, ancdata, _msg_flags, _addr = self.sock.recvmsg(
            65536, _CMSG_SPACE, _RECV_FLAGS | flags
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
        self._buf += data
        return len(data)

    def _receive(self) -> Tuple[Dict[str, Any], List[int]]:
        fds: List[int] = []
        try:
            while True:
                frame = self._next_frame()
                if frame is not None:
                    params = decode_reply(frame)
                    taken, fds = fds, []
                    return params, taken
                if len(self._buf) > MAX_REPLY_BYTES:
                    raise unavailable(self.path, "a reply longer than any portres reply")
                try:
                    n = self._recv_some(fds)
                except InterruptedError:
                    continue
                except OSError as e:
                    raise unavailable(self.path, e.strerror or e) from None
                if n == 0:
                    raise unavailable(self.path, "the daemon closed the connection")
        finally:
            for fd in fds:
                os.close(fd)

    def _parting_words(self) -> Optional[Exception]:
        fds: List[int] = []
        try:
            while True:
                frame = self._next_frame()
                if frame is not None:
                    try:
                        decode_reply(frame)
                    except Exception as e:  # noqa: BLE001 - any decoded refusal
                        return e
                    return None
                try:
                    if self._recv_some(fds, socket.MSG_DONTWAIT) == 0:
                        return None
                except OSError:
                    return None
        finally:
            for fd in fds:
                os.close(fd)
