"""Which daemon socket a client uses, and whether it trusts who answers.

Owns the same rules as the Rust client (crates/portres-proto/src/paths.rs
and crates/portres/src/trust.rs), so every portres client behaves alike:

- ``PORTRES_SOCKET``, if set and non-empty, alone: an *explicit* socket, used
  whoever answers on it (``Client.daemon`` records who did). In a setuid or
  setgid process the variable is ignored (as ``PORTRES_SESSION_FD`` is):
  there the environment belongs to whoever started the program.
- Otherwise, for root, the *system* socket ``/run/portres/portres.sock``;
  for anyone else first their *user* socket
  (``$XDG_RUNTIME_DIR/portres/portres.sock``, else
  ``/tmp/portres-$EUID/portres.sock``), then the system socket.
- A user socket is used only when its directory is owned by the caller and
  writable by nobody else and the socket is the caller's. The directory is
  opened once (``O_PATH|O_NOFOLLOW``), checked with ``fstat``, and the client
  connects *through that descriptor* (``/proc/self/fd/N/portres.sock``), so
  what was checked is what is connected to.
- After connecting, ``SO_PEERCRED`` decides: a user socket must be answered
  by the caller's effective uid, the system socket by root.
- A refusal is ``DaemonUntrustedError`` (code ``daemon_untrusted``) saying
  what was wrong, and nothing was sent on that socket; a missing socket is
  ``DaemonUnavailableError``. With no usable default socket the error lists
  every socket tried and why.

"Setuid": the kernel's ``AT_SECURE`` flag, read with ``getauxval`` through
ctypes where the C library has it, and in any case a real uid or gid that
differs from the effective one (what a setuid wrapper that execs Python
leaves behind, where ``AT_SECURE`` of the Python process itself is 0).
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import stat
import struct
from typing import List, Mapping, NamedTuple, Optional, Tuple

from ._errors import DaemonUnavailableError, DaemonUntrustedError, Error

#: Environment variable naming the daemon's socket; overrides every default.
SOCKET_ENV = "PORTRES_SOCKET"
#: Environment variable carrying an inherited session capability (a descriptor number).
SESSION_FD_ENV = "PORTRES_SESSION_FD"
#: The system daemon's socket.
SYSTEM_SOCKET = "/run/portres/portres.sock"

#: How a client came to a socket: "explicit", "user" or "system".
EXPLICIT = "explicit"
USER = "user"
SYSTEM = "system"

_DESCRIBE = {
    EXPLICIT: "named by PORTRES_SOCKET or the caller",
    USER: "your own daemon",
    SYSTEM: "the system daemon",
}
_AT_SECURE = 23


def describe_kind(kind: str) -> str:
    """A few words for messages: "your own daemon", "the system daemon"."""
    return _DESCRIBE.get(kind, kind)


@functools.lru_cache(maxsize=None)
def _at_secure() -> bool:
    """AT_SECURE is fixed at exec: read once."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        getauxval = libc.getauxval
    except (ImportError, OSError, AttributeError):
        return False
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    return bool(getauxval(_AT_SECURE))


def is_secure() -> bool:
    """Whether this process runs with privileges it did not inherit (setuid,
    setgid, file capabilities): then client variables are ignored."""
    if os.getuid() != os.geteuid() or os.getgid() != os.getegid():
        return True
    return _at_secure()


def client_env(
    name: str, environ: Optional[Mapping[str, str]] = None, secure: Optional[bool] = None
) -> Optional[str]:
    """A client variable as ``secure_getenv`` reads it: ``None`` when unset,
    empty, or the process is setuid (see ``is_secure``)."""
    if secure is None:
        secure = is_secure()
    if secure:
        return None
    value = (os.environ if environ is None else environ).get(name)
    return value or None


class SocketCandidate(NamedTuple):
    """A socket for a client to try, and what it must prove (``kind``)."""

    path: str
    kind: str


def user_socket(environ: Optional[Mapping[str, str]] = None, euid: Optional[int] = None) -> str:
    """The caller's own daemon's socket path."""
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "portres", "portres.sock")
    return f"/tmp/portres-{euid}/portres.sock"


def socket_candidates(
    environ: Optional[Mapping[str, str]] = None,
    euid: Optional[int] = None,
    secure: Optional[bool] = None,
    system_socket: str = SYSTEM_SOCKET,
) -> List[SocketCandidate]:
    """The sockets ``Client()`` tries, in order (see the module doc)."""
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    explicit = client_env(SOCKET_ENV, environ, secure)
    if explicit is not None:
        return [SocketCandidate(explicit, EXPLICIT)]
    system = SocketCandidate(system_socket, SYSTEM)
    if euid == 0:
        return [system]
    return [SocketCandidate(user_socket(environ, euid), USER), system]


class DaemonIdentity(NamedTuple):
    """Who answered on a daemon socket, as the kernel recorded it when the
    daemon called ``listen()`` (``SO_PEERCRED``). ``pid`` is 0 when the daemon
    is in another pid namespace."""

    pid: int
    uid: int
    gid: int

    def describe(self, me: Optional[int] = None) -> str:
        """ "pid 812, uid 0 (root)", "... (you)", "... (not root, not you)"."""
        me = os.geteuid() if me is None else me
        if self.uid == 0:
            who = "root"
        elif self.uid == me:
            who = "you"
        else:
            who = "not root, not you"
        return f"pid {self.pid}, uid {self.uid} ({who})"


def unavailable(path: str, why: object) -> DaemonUnavailableError:
    """The error for a socket that cannot be reached."""
    return DaemonUnavailableError(f"cannot reach portresd at {path}: {why}")


def _untrusted(path: str, why: str) -> DaemonUntrustedError:
    return DaemonUntrustedError(f"refusing the socket {path}: {why}")


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def peer_identity(sock: socket.socket) -> DaemonIdentity:
    """``SO_PEERCRED`` of a connected Unix socket."""
    size = struct.calcsize("iII")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    if len(raw) != size:
        raise OSError(f"SO_PEERCRED returned {len(raw)} bytes")
    pid, uid, gid = struct.unpack("iII", raw)
    return DaemonIdentity(pid, uid, gid)


def _connect_path(path: str, target: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(target)
    except OSError as e:
        sock.close()
        raise unavailable(path, _why(e)) from None
    return sock


def _connect_user_socket(path: str, me: int) -> socket.socket:
    directory, name = os.path.split(path)
    if not name:
        raise _untrusted(path, "not a path to a socket in a directory")
    directory = directory or "."
    try:
        dir_fd = os.open(
            directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
    except FileNotFoundError:
        raise unavailable(path, f"no directory {directory}") from None
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _untrusted(
                path, f"{directory} is not a directory (a symbolic link?)"
            ) from None
        raise unavailable(path, f"cannot open {directory}: {_why(e)}") from None
    try:
        st = os.fstat(dir_fd)
        if not stat.S_ISDIR(st.st_mode):
            raise _untrusted(path, f"{directory} is not a directory")
        mode = st.st_mode & 0o7777
        if st.st_uid != me or mode & 0o022:
            raise _untrusted(
                path,
                f"its directory {directory} is owned by uid {st.st_uid} with mode "
                f"{mode:o}; a user-mode socket's directory must be owned by you "
                f"(uid {me}) and writable by nobody else",
            )
        # Only we can change what is in the directory now, so what is checked
        # here is what is connected to below.
        try:
            sst = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            raise unavailable(path, _why(e)) from None
        if not stat.S_ISSOCK(sst.st_mode):
            raise unavailable(path, "not a socket")
        if sst.st_uid != me:
            raise _untrusted(
                path, f"the socket is owned by uid {sst.st_uid}, not you (uid {me})"
            )
        # Through the descriptor when /proc is there (the directory checked is
        # the one used); otherwise by path, and SO_PEERCRED still decides.
        via_fd = f"/proc/self/fd/{dir_fd}/{name}"
        target = via_fd if os.path.isdir("/proc/self/fd") else path
        return _connect_path(path, target)
    finally:
        os.close(dir_fd)


def connect_checked(
    path: str, kind: str, me: Optional[int] = None
) -> Tuple[socket.socket, DaemonIdentity]:
    """Connects to ``path`` with the checks ``kind`` demands; returns the
    socket and who answered. Nothing has been sent on the socket."""
    me = os.geteuid() if me is None else me
    if kind == USER:
        sock = _connect_user_socket(path, me)
    elif kind in (EXPLICIT, SYSTEM):
        sock = _connect_path(path, path)
    else:
        raise ValueError(f"unknown socket kind {kind!r}")
    try:
        try:
            daemon = peer_identity(sock)
        except OSError as e:
            raise _untrusted(path, f"cannot tell who answered: {_why(e)}") from None
        if kind == USER and daemon.uid != me:
            raise _untrusted(
                path,
                f"answered by {daemon.describe(me)}, but your own daemon runs as "
                f"you (uid {me})",
            )
        if kind == SYSTEM and daemon.uid != 0:
            raise _untrusted(
                path,
                f"answered by {daemon.describe(me)}, but the system daemon runs as root",
            )
    except Error:
        sock.close()
        raise
    return sock, daemon


def connect_first(
    candidates: List[SocketCandidate], me: Optional[int] = None
) -> Tuple[socket.socket, DaemonIdentity, SocketCandidate, List[str]]:
    """The first of ``candidates`` that can be reached and passes its checks:
    (socket, who answered, which candidate, the ones passed over and why)."""
    tried: List[str] = []
    refused = False
    for cand in candidates:
        try:
            sock, daemon = connect_checked(cand.path, cand.kind, me)
        except Error as e:
            # A socket the caller named: its own error says it all.
            if cand.kind == EXPLICIT:
                raise
            refused = refused or e.code == DaemonUntrustedError.code
            tried.append(f"{cand.path} ({describe_kind(cand.kind)}): {e.code}: {e.message}")
            continue
        return sock, daemon, cand, tried
    cls = DaemonUntrustedError if refused else DaemonUnavailableError
    raise cls(
        "no portres daemon to talk to; tried: "
        + ("; ".join(tried) if tried else "nothing")
        + ". Start one: `portresd` as yourself (your own daemon), or the system "
        "service as root (`systemctl start portresd`); or name a daemon's socket "
        f"with {SOCKET_ENV}"
    )
