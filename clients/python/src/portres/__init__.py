"""portres: kernel-guaranteed ports from Python, through the portres daemon.

The package's public face: ``Client`` (a session with portresd),
``Reservation`` (a held block of ports), the value types, and one
``Error`` subclass per stable error code. The wire interface it speaks is
docs/wire.md of the portres repository; the pytest plugin is
``portres.pytest_plugin``. Standard library only.

    import portres
    with portres.Client().acquire("tcp", count=3) as r:
        server = r.listen()          # the daemon bound it to a port of r.ports
"""

from ._client import Client, Reservation
from ._discovery import SESSION_FD_ENV, SOCKET_ENV, SYSTEM_SOCKET, DaemonIdentity
from ._errors import (
    CODES,
    AccessDeniedError,
    AlreadyBoundError,
    BlockExhaustedError,
    DaemonUnavailableError,
    DaemonUntrustedError,
    Error,
    InternalError,
    InvalidParameterError,
    NoFreeBlockError,
    NotASocketError,
    NotFoundError,
    NotSupportedError,
    QuotaExceededError,
    SharingViolationError,
    StoreUnavailableError,
    UnknownError,
    WrongNamespaceError,
    error_class,
)
from ._types import Holder, Owner, ReservationInfo, Status

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "SESSION_FD_ENV",
    "SOCKET_ENV",
    "SYSTEM_SOCKET",
    "AccessDeniedError",
    "AlreadyBoundError",
    "BlockExhaustedError",
    "Client",
    "DaemonIdentity",
    "DaemonUnavailableError",
    "DaemonUntrustedError",
    "Error",
    "Holder",
    "InternalError",
    "InvalidParameterError",
    "NoFreeBlockError",
    "NotASocketError",
    "NotFoundError",
    "NotSupportedError",
    "Owner",
    "QuotaExceededError",
    "Reservation",
    "ReservationInfo",
    "SharingViolationError",
    "Status",
    "StoreUnavailableError",
    "UnknownError",
    "WrongNamespaceError",
    "error_class",
]
