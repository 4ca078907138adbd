"""Error decoding: every code of docs/wire.md has its class, and replies map
to them as the Rust client maps them (no daemon needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import portres
from portres._errors import decode_error
from portres._wire import decode_reply, encode_call

WIRE_MD = Path(__file__).resolve().parents[3] / "docs" / "wire.md"


def test_every_documented_code_has_its_own_class() -> None:
    if not WIRE_MD.exists():
        pytest.skip("not in a portres checkout (no docs/wire.md)")
    section = WIRE_MD.read_text().split("### Codes", 1)[1].split("\n## ", 1)[0]
    codes = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert "sharing_violation" in codes and len(codes) >= 14
    for code in codes:
        cls = portres.error_class(code)
        assert cls is not portres.UnknownError, code
        assert cls.code == code and issubclass(cls, portres.Error)
    # The client-side code, named in the Rust client and here.
    assert portres.error_class("daemon_untrusted") is portres.DaemonUntrustedError
    assert len(set(map(portres.error_class, portres.CODES))) == len(portres.CODES)


def test_an_error_reply_raises_its_class_with_code_and_message() -> None:
    frame = (
        b'{"error":"io.portres.SharingViolation","parameters":'
        b'{"code":"sharing_violation","message":"tcp port 40000 is in use"}}'
    )
    with pytest.raises(portres.SharingViolationError) as e:
        decode_reply(frame)
    assert e.value.code == "sharing_violation"
    assert e.value.message == "tcp port 40000 is in use"
    assert e.value.error == "io.portres.SharingViolation"
    assert str(e.value) == "sharing_violation: tcp port 40000 is in use"


def test_varlink_service_errors_and_unknown_codes() -> None:
    e = decode_error("org.varlink.service.MethodNotFound", {"method": "io.portres.Nope"})
    assert isinstance(e, portres.InvalidParameterError)
    assert "MethodNotFound" in e.message
    # Carrying portres' parameters: its code decides.
    e = decode_error(
        "org.varlink.service.InvalidParameter",
        {"parameter": "count", "code": "invalid_parameter", "message": "bad count"},
    )
    assert type(e) is portres.InvalidParameterError and e.message == "bad count"
    # A newer daemon's code: kept, in the fallback class.
    e = decode_error("io.portres.Tomorrow", {"code": "tomorrow", "message": "new"})
    assert type(e) is portres.UnknownError and e.code == "tomorrow"
    assert isinstance(e, portres.Error)
    # No parameters: the name decides; an unknown name is internal.
    assert type(decode_error("io.portres.NotASocket", None)) is portres.NotASocketError
    assert type(decode_error("io.portres.NoFreeBlock", {})) is portres.NoFreeBlockError
    assert type(decode_error("x.Y", None)) is portres.InternalError


def test_malformed_replies_are_internal_errors() -> None:
    for frame in [b"garbage", b"[1]", b"\xff", b'{"parameters":[]}']:
        with pytest.raises(portres.InternalError):
            decode_reply(frame)
    assert decode_reply(b"{}") == {}
    assert decode_reply(b'{"parameters":{"port":1}}') == {"port": 1}


def test_calls_are_nul_framed_json() -> None:
    assert encode_call("io.portres.List", {}) == b'{"method":"io.portres.List","parameters":{}}\0'


def test_a_reservation_object_decodes_its_holder_and_source() -> None:
    """Fields added in later wire versions decode when present and are None
    when absent (older daemons)."""
    from portres._types import ReservationInfo

    base = {"protocol": "tcp", "start": 32768, "count": 1, "kind": "runtime"}
    pserver = ReservationInfo.from_wire(
        dict(base, holder={"uid": 1000, "pid": 4242, "origin": "portserver"}, label="portserver")
    )
    assert pserver.holder is not None
    assert (pserver.holder.uid, pserver.holder.pid, pserver.holder.origin) == (1000, 4242, "portserver")
    plain = ReservationInfo.from_wire(dict(base, holder={"uid": 1000, "pid": 1}))
    assert plain.holder is not None and plain.holder.origin is None
    declared = ReservationInfo.from_wire(
        dict(base, kind="persistent", source="/etc/portres.d/50-web.conf")
    )
    assert declared.source == "/etc/portres.d/50-web.conf" and declared.holder is None
