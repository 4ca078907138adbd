//! Decoding calls: round trips, and refusals in varlink's terms.

use super::*;
use crate::encode_error;
use portres_core::{Protocol, Token};

#[test]
fn requests_round_trip() {
    let reqs = vec![
        Request::Acquire(AcquireParams {
            protocol: Protocol::Udp,
            start: 0,
            count: 3,
            label: Some("x".into()),
            address: None,
        }),
        Request::Bind(BindParams {
            token: Token::new(u64::MAX).unwrap(),
            address: "::1".parse().unwrap(),
        }),
        Request::Create(CreateParams {
            protocol: Protocol::Tcp,
            start: 80,
            count: 1,
            owner: Some(OwnerInfo {
                kind: OwnerKind::Group,
                id: 5,
            }),
            label: None,
        }),
        Request::List(ListParams::default()),
        Request::Status,
        Request::Attach,
        Request::Reload,
    ];
    for r in reqs {
        let frame = r.encode();
        assert_eq!(frame.last(), Some(&0));
        let (back, oneway) = Request::decode(&frame[..frame.len() - 1]).unwrap();
        assert_eq!(back, r);
        assert!(!oneway);
    }
}

#[test]
fn bad_requests_are_invalid_parameter() {
    for bad in [
        &b"not json"[..],
        b"{}",
        b"{\"method\":\"io.portres.Nope\"}",
        b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"sctp\"}}",
        b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"count\":-1}}",
        b"{\"method\":\"io.portres.Release\",\"parameters\":{\"token\":\"0\"}}",
    ] {
        let err = Request::decode(bad).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::InvalidParameter,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// The varlink error a frame is refused with: (name, its own parameter).
fn refusal(frame: &str) -> (String, Value) {
    let err = Request::decode_call(frame.as_bytes()).unwrap_err();
    assert_eq!(err.error.code, ErrorCode::InvalidParameter, "{frame}");
    let reply = encode_error(&err);
    let v: Value = serde_json::from_slice(&reply[..reply.len() - 1]).unwrap();
    assert_eq!(v["parameters"]["code"], "invalid_parameter", "{v}");
    assert!(v["parameters"]["message"].is_string(), "{v}");
    (
        v["error"].as_str().unwrap().to_string(),
        v["parameters"].clone(),
    )
}

use serde_json::Value;

#[test]
fn unknown_methods_and_interfaces_are_varlink_service_errors() {
    let (name, p) = refusal(r#"{"method":"io.portres.Nope"}"#);
    assert_eq!(name, "org.varlink.service.MethodNotFound");
    assert_eq!(p["method"], "io.portres.Nope");
    let (name, p) = refusal(r#"{"method":"org.varlink.service.Nope"}"#);
    assert_eq!(name, "org.varlink.service.MethodNotFound");
    assert_eq!(p["method"], "org.varlink.service.Nope");
    let (name, p) = refusal(r#"{"method":"org.example.Acquire","parameters":{}}"#);
    assert_eq!(name, "org.varlink.service.InterfaceNotFound");
    assert_eq!(p["interface"], "org.example");
    // Not interface.Method at all: the "method" key is what is wrong.
    for bad in [
        r#"{"method":"Status"}"#,
        r#"{"method":".Status"}"#,
        r#"{"method":"io.portres."}"#,
    ] {
        let (name, p) = refusal(bad);
        assert_eq!(name, "org.varlink.service.InvalidParameter", "{bad}");
        assert_eq!(p["parameter"], "method", "{bad}");
    }
}

#[test]
fn bad_parameters_are_invalid_parameter_naming_the_key() {
    for (frame, key) in [
        (
            r#"{"method":"io.portres.Acquire","parameters":{}}"#,
            "protocol",
        ),
        (
            r#"{"method":"io.portres.Acquire","parameters":{"protocol":"sctp"}}"#,
            "protocol",
        ),
        (
            r#"{"method":"io.portres.Acquire","parameters":{"protocol":"tcp","count":-1}}"#,
            "count",
        ),
        (
            r#"{"method":"io.portres.Acquire","parameters":{"protocol":"tcp","label":7}}"#,
            "label",
        ),
        (
            r#"{"method":"io.portres.Release","parameters":{"token":"0"}}"#,
            "token",
        ),
        (
            r#"{"method":"io.portres.Bind","parameters":{"token":"5","address":"nowhere"}}"#,
            "address",
        ),
        (
            r#"{"method":"io.portres.Create","parameters":{"protocol":"tcp","start":1,"count":1,"owner":{"kind":"x","id":1}}}"#,
            "owner",
        ),
        (
            r#"{"method":"io.portres.Release","parameters":{"token":"5","token":"6"}}"#,
            "token",
        ),
        (
            r#"{"method":"io.portres.Acquire","parameters":7}"#,
            "parameters",
        ),
        (
            r#"{"method":"org.varlink.service.GetInterfaceDescription","parameters":{}}"#,
            "interface",
        ),
        (r#"{"parameters":{}}"#, "method"),
        (r#"{"method":42}"#, "method"),
        (
            r#"{"method":"io.portres.Status","method":"io.portres.List"}"#,
            "method",
        ),
        (r#"{"method":"io.portres.Status","oneway":"yes"}"#, "oneway"),
        (r#"{"method":"io.portres.Status","cpu":-1}"#, "cpu"),
    ] {
        let (name, p) = refusal(frame);
        assert_eq!(name, "org.varlink.service.InvalidParameter", "{frame}");
        assert_eq!(p["parameter"], key, "{frame}: {p}");
    }
    // Not a call object at all: nothing to name, portres' own error.
    for frame in [
        "",
        "garbage",
        "[1,2]",
        "\"io.portres.List\"",
        "{\"method\":",
    ] {
        let (name, p) = refusal(frame);
        assert_eq!(name, "io.portres.InvalidParameter", "{frame}");
        assert!(p.get("parameter").is_none(), "{frame}");
    }
}

#[test]
fn a_refused_call_keeps_its_oneway_flag() {
    let err = Request::decode_call(br#"{"method":"io.portres.Nope","oneway":true}"#).unwrap_err();
    assert!(err.oneway);
    let err =
        Request::decode_call(br#"{"method":"io.portres.Acquire","oneway":true,"parameters":{}}"#)
            .unwrap_err();
    assert!(err.oneway);
    let err = Request::decode_call(br#"{"method":"io.portres.Nope"}"#).unwrap_err();
    assert!(!err.oneway);
}

#[test]
fn more_on_a_method_that_does_not_stream_is_a_plain_call() {
    let call = Request::decode_call(br#"{"method":"io.portres.List","more":true}"#).unwrap();
    assert_eq!(call.request, Request::List(ListParams::default()));
    assert!(!call.oneway);
    let call =
        Request::decode_call(br#"{"method":"io.portres.Status","more":true,"cpu":1}"#).unwrap();
    assert_eq!(call.request, Request::Status);
    assert_eq!(call.cpu, Some(1));
}

#[test]
fn the_cpu_hint_is_optional_and_round_trips() {
    let req = Request::Status;
    let plain = req.encode();
    assert!(!String::from_utf8_lossy(&plain).contains("cpu"));
    let call = Request::decode_call(&plain[..plain.len() - 1]).unwrap();
    assert_eq!(call.cpu, None);
    let hinted = req.encode_with_cpu(Some(3));
    let call = Request::decode_call(&hinted[..hinted.len() - 1]).unwrap();
    assert_eq!(call.cpu, Some(3));
    assert!(matches!(call.request, Request::Status));
    // A bad hint is a bad call, like any other malformed key.
    assert!(Request::decode_call(br#"{"method":"io.portres.Status","cpu":-1}"#).is_err());
}
