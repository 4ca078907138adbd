"""The errors of the portres client: one ``Error`` subclass per stable code.

Owns the mapping between the wire's error codes (docs/wire.md, "Codes") and
Python exception classes, and decoding an error reply into one, the way the
Rust client does (``decode_reply`` in crates/portres-proto): the reply's
``parameters.code`` decides; else the varlink error name; a varlink service
error without portres' parameters is ``invalid_parameter``. A code this
version does not know (a newer daemon's) becomes ``UnknownError`` carrying
the daemon's code string, so nothing is lost.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Type


class Error(Exception):
    """A refusal by the daemon, or a failure to reach or trust one.

    ``code`` is the stable snake_case code scripts match on
    (``"sharing_violation"``); ``message`` is for humans; ``error`` is the
    varlink error name the daemon sent (``"io.portres.SharingViolation"``),
    ``None`` for errors the client made itself.
    """

    code: str = "internal"

    def __init__(
        self, message: str, *, code: Optional[str] = None, error: Optional[str] = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.error = error

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidParameterError(Error):
    """A malformed or out-of-range parameter; an unknown method or interface."""

    code = "invalid_parameter"


class SharingViolationError(Error):
    """Overlaps a reservation of the same protocol, or a port is in use now."""

    code = "sharing_violation"


class AccessDeniedError(Error):
    """Not an administrator, not the holder, not the owner."""

    code = "access_denied"


class NotFoundError(Error):
    """No reservation with that token or exact block."""

    code = "not_found"


class NoFreeBlockError(Error):
    """No free block of that size in the dynamic range."""

    code = "no_free_block"


class QuotaExceededError(Error):
    """The per-user runtime quota would be exceeded."""

    code = "quota_exceeded"


class BlockExhaustedError(Error):
    """Every port of the block is bound."""

    code = "block_exhausted"


class NotASocketError(Error):
    """The descriptor is not a socket, or none was passed."""

    code = "not_a_socket"


class NotSupportedError(Error):
    """The socket is not TCP or UDP over IPv4 or IPv6."""

    code = "not_supported"


class AlreadyBoundError(Error):
    """The socket is already bound (or listening, or connected)."""

    code = "already_bound"


class WrongNamespaceError(Error):
    """The socket comes from another network namespace than the daemon's."""

    code = "wrong_namespace"


class DaemonUnavailableError(Error):
    """The daemon cannot be reached (client side), or its connection limit."""

    code = "daemon_unavailable"


class DaemonUntrustedError(Error):
    """Client side only: a socket or the daemon on it failed the trust checks.

    Nothing was sent on that socket.
    """

    code = "daemon_untrusted"


class StoreUnavailableError(Error):
    """The daemon's database could not record a persistent change."""

    code = "store_unavailable"


class InternalError(Error):
    """An unexpected failure; nothing changed."""

    code = "internal"


class UnknownError(Error):
    """An error code this version of the package does not know.

    ``code`` is what the daemon sent (or ``"internal"`` if it sent none).
    """


_CLASSES: Dict[str, Type[Error]] = {
    cls.code: cls
    for cls in (
        InvalidParameterError,
        SharingViolationError,
        AccessDeniedError,
        NotFoundError,
        NoFreeBlockError,
        QuotaExceededError,
        BlockExhaustedError,
        NotASocketError,
        NotSupportedError,
        AlreadyBoundError,
        WrongNamespaceError,
        DaemonUnavailableError,
        DaemonUntrustedError,
        StoreUnavailableError,
        InternalError,
    )
}

#: Every stable code this package knows, in docs/wire.md's order.
CODES = tuple(_CLASSES)


def _camel(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_"))


# "io.portres.SharingViolation" -> "sharing_violation" (NotASocket: "not_a_socket").
_BY_VARLINK_NAME = {f"io.portres.{_camel(code)}": code for code in CODES}
_BY_VARLINK_NAME["io.portres.NotASocket"] = "not_a_socket"


def error_class(code: str) -> Type[Error]:
    """The exception class of a stable code (``UnknownError`` for others)."""
    return _CLASSES.get(code, UnknownError)


def make_error(code: str, message: str, error: Optional[str] = None) -> Error:
    """An instance of the class for ``code``, carrying ``code`` as given."""
    return error_class(code)(message, code=code, error=error)


def decode_error(name: Any, params: Any) -> Error:
    """The exception for an error reply ``{"error": name, "parameters": params}``."""
    name = name if isinstance(name, str) else repr(name)
    if (
        isinstance(params, dict)
        and isinstance(params.get("code"), str)
        and isinstance(params.get("message"), str)
    ):
        code: str = params["code"]
        if code not in _CLASSES and name in _BY_VARLINK_NAME:
            code = _BY_VARLINK_NAME[name]
        return make_error(code, params["message"], name)
    text = json.dumps(params) if params is not None else "{}"
    if name.startswith("org.varlink.service."):
        # A varlink service error without portres' parameters (a bridge, or
        # another service on the socket): the call was not one it takes.
        return InvalidParameterError(f"daemon error {name} {text}", error=name)
    code = _BY_VARLINK_NAME.get(name, "internal")
    return make_error(code, f"daemon error {name}", name)
