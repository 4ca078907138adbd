"""The values the daemon answers with, as typed Python objects.

Owns decoding the wire's Reservation object and Status reply
(docs/io.portres.varlink) into frozen dataclasses. Unknown reply fields
(a newer daemon's additions) are kept in ``raw``, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ._errors import InternalError

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Owner:
    """A persistent reservation's delegated owner: ``kind`` "user" or "group"."""

    kind: str
    id: int


@dataclass(frozen=True)
class Holder:
    """Who holds a runtime reservation: the session's uid and pid, and
    ``origin`` "portserver" for a port the portserver endpoint handed out
    (the pid is then the process it is reserved for), else None."""

    uid: int
    pid: int
    origin: Optional[str] = None


def _int(d: Dict[str, Any], key: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InternalError(f"unexpected reply: {key} is {v!r}, not an integer")
    return v


def parse_token(value: Any) -> int:
    """A token from the wire (a decimal string; a JSON number is accepted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        token = value
    elif isinstance(value, str) and value.isdigit():
        token = int(value)
    else:
        raise InternalError(f"unexpected reply: token {value!r}")
    if not 0 < token < 2**64:
        raise InternalError(f"unexpected reply: token {value!r} out of range")
    return token


@dataclass(frozen=True)
class ReservationInfo:
    """What the daemon says about a reservation (``list``, ``lookup``, ...).

    ``token`` is there only when the asker may use the reservation.
    """

    protocol: str
    start: int
    count: int
    kind: str
    token: Optional[int] = None
    owner: Optional[Owner] = None
    holder: Optional[Holder] = None
    label: Optional[str] = None
    in_use: Optional[Tuple[int, ...]] = None
    #: Declared reservations: the portres.d file that declares it.
    source: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ports(self) -> range:
        """The ports of the block."""
        return range(self.start, self.start + self.count)

    @classmethod
    def from_wire(cls, d: Any) -> ReservationInfo:
        """Decodes a wire Reservation object."""
        if not isinstance(d, dict):
            raise InternalError(f"unexpected reply: reservation {d!r}")
        owner = d.get("owner")
        holder = d.get("holder")
        in_use = d.get("in_use")
        label = d.get("label")
        source = d.get("source")
        return cls(
            protocol=str(d.get("protocol")),
            start=_int(d, "start"),
            count=_int(d, "count"),
            kind=str(d.get("kind")),
            token=parse_token(d["token"]) if d.get("token") is not None else None,
            owner=Owner(str(owner.get("kind")), _int(owner, "id")) if isinstance(owner, dict) else None,
            holder=Holder(
                _int(holder, "uid"),
                _int(holder, "pid"),
                holder.get("origin") if isinstance(holder.get("origin"), str) else None,
            )
            if isinstance(holder, dict)
            else None,
            label=label if isinstance(label, str) else None,
            in_use=tuple(p for p in in_use if isinstance(p, int)) if isinstance(in_use, list) else None,
            source=source if isinstance(source, str) else None,
            raw=d,
        )


@dataclass(frozen=True)
class Status:
    """The daemon's ``Status`` reply (fields as in io.portres.varlink)."""

    version: str
    wire_version: int
    mode: str
    kernel_sync: bool
    baseline: str
    reserved_ports: str
    dynamic_range: Tuple[int, int]
    runtime: int
    persistent: int
    sessions: int
    quota: int
    you_are_admin: bool
    your_uid: int
    store: str
    uptime_seconds: int
    store_read_only: bool
    raw: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, d: Dict[str, Any]) -> Status:
        """Decodes a Status reply; a missing field is an ``InternalError``."""
        try:
            lo, hi = d["dynamic_range"]
            return cls(
                version=str(d["version"]),
                wire_version=int(d["wire_version"]),
                mode=str(d["mode"]),
                kernel_sync=bool(d["kernel_sync"]),
                baseline=str(d["baseline"]),
                reserved_ports=str(d["reserved_ports"]),
                dynamic_range=(int(lo), int(hi)),
                runtime=int(d["runtime"]),
                persistent=int(d["persistent"]),
                sessions=int(d["sessions"]),
                quota=int(d["quota"]),
                you_are_admin=bool(d["you_are_admin"]),
                your_uid=int(d["your_uid"]),
                store=str(d["store"]),
                uptime_seconds=int(d["uptime_seconds"]),
                store_read_only=bool(d.get("store_read_only", False)),
                raw=d,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InternalError(f"unexpected Status reply: {e!r}") from None


def reservations_from_wire(value: Any) -> List[ReservationInfo]:
    """Decodes a list of wire Reservation objects."""
    if not isinstance(value, list):
        raise InternalError(f"unexpected reply: reservations {value!r}")
    return [ReservationInfo.from_wire(r) for r in value]
