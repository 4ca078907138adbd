//! The method table: every method the daemon serves, once — its varlink
//! name, how its parameters decode, and the descriptors a call must carry.
//! `Request::method`, `Request::decode_call` and the descriptor checks
//! (`Request::check_fds`: too many, too few) all read it, so a method is
//! spelled in one place.

use portres_core::{Error, ErrorCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::call::{CallError, Request, params};

/// Decodes a call's parameters into its request: (method name,
/// parameters, oneway).
type Decode = fn(&'static str, Option<&RawValue>, bool) -> Result<Request, CallError>;

/// One method of the table.
#[derive(Debug)]
pub struct Method {
    /// The fully qualified varlink name (`io.portres.Acquire`).
    pub name: &'static str,
    /// Descriptors a call must carry (SCM_RIGHTS on its bytes).
    pub fds: usize,
    /// The error a call gets that came without them.
    pub missing_fds: ErrorCode,
    pub(crate) decode: Decode,
}

impl Method {
    /// Whether `received` descriptors are what a call must carry; the
    /// refusal names the method and the count (nothing is done for it).
    pub fn check_fds(&self, received: usize) -> Result<(), Error> {
        let (name, expected) = (self.name, self.fds);
        if received > expected {
            let extra = received - expected;
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("{name} takes {expected} descriptor(s); {extra} more were sent"),
            ));
        }
        if received < expected {
            let how_many = match expected {
                1 => "one descriptor".to_string(),
                n => format!("{n} descriptors"),
            };
            return Err(Error::new(
                self.missing_fds,
                format!("{name} needs {how_many} passed with the request (SCM_RIGHTS)"),
            ));
        }
        Ok(())
    }
}

const fn method(name: &'static str, decode: Decode) -> Method {
    Method {
        name,
        fds: 0,
        missing_fds: ErrorCode::InvalidParameter,
        decode,
    }
}

/// io.portres.Acquire
pub static ACQUIRE: Method = method("io.portres.Acquire", |m, p, ow| {
    Ok(Request::Acquire(params(m, p, ow)?))
});
/// io.portres.Acquire with an `address`: then it carries one descriptor,
/// the socket to bind (none is `not_a_socket`). Not in `METHODS` (the same
/// method); `Request::spec` picks it for such a call.
pub static ACQUIRE_WITH_SOCKET: Method = Method {
    fds: 1,
    missing_fds: ErrorCode::NotASocket,
    ..method("io.portres.Acquire", |m, p, ow| {
        Ok(Request::Acquire(params(m, p, ow)?))
    })
};
/// io.portres.Release
pub static RELEASE: Method = method("io.portres.Release", |m, p, ow| {
    Ok(Request::Release(params(m, p, ow)?))
});
/// io.portres.Bind: one descriptor, the socket to bind (none is
/// `not_a_socket`).
pub static BIND: Method = Method {
    fds: 1,
    missing_fds: ErrorCode::NotASocket,
    ..method("io.portres.Bind", |m, p, ow| {
        Ok(Request::Bind(params(m, p, ow)?))
    })
};
/// io.portres.Create
pub static CREATE: Method = method("io.portres.Create", |m, p, ow| {
    Ok(Request::Create(params(m, p, ow)?))
});
/// io.portres.Delete
pub static DELETE: Method = method("io.portres.Delete", |m, p, ow| {
    Ok(Request::Delete(params(m, p, ow)?))
});
/// io.portres.Lookup
pub static LOOKUP: Method = method("io.portres.Lookup", |m, p, ow| {
    Ok(Request::Lookup(params(m, p, ow)?))
});
/// io.portres.List
pub static LIST: Method = method("io.portres.List", |m, p, ow| {
    Ok(Request::List(params(m, p, ow)?))
});
/// io.portres.Status
pub static STATUS: Method = method("io.portres.Status", |_, _, _| Ok(Request::Status));
/// io.portres.GetCapability (its reply carries a descriptor)
pub static GET_CAPABILITY: Method = method("io.portres.GetCapability", |_, _, _| {
    Ok(Request::GetCapability)
});
/// io.portres.Attach: one descriptor, a session capability.
pub static ATTACH: Method = Method {
    fds: 1,
    ..method("io.portres.Attach", |_, _, _| Ok(Request::Attach))
};
/// org.varlink.service.GetInfo
pub static GET_INFO: Method = method("org.varlink.service.GetInfo", |_, _, _| {
    Ok(Request::GetInfo)
});
/// org.varlink.service.GetInterfaceDescription
pub static GET_INTERFACE_DESCRIPTION: Method =
    method("org.varlink.service.GetInterfaceDescription", |m, p, ow| {
        #[derive(Deserialize)]
        struct P {
            interface: String,
        }
        let p: P = params(m, p, ow)?;
        Ok(Request::GetInterfaceDescription {
            interface: p.interface,
        })
    });

/// io.portres.EnterCgroup: one descriptor, a pidfd of the caller itself.
pub static ENTER_CGROUP: Method = Method {
    fds: 1,
    ..method("io.portres.EnterCgroup", |_, _, _| Ok(Request::EnterCgroup))
};
/// io.portres.Reload (admin): re-read the portres.d files.
pub static RELOAD: Method = method("io.portres.Reload", |_, _, _| Ok(Request::Reload));

/// Every method served, `io.portres` and `org.varlink.service` alike.
pub static METHODS: [&Method; 14] = [
    &ACQUIRE,
    &RELEASE,
    &BIND,
    &CREATE,
    &DELETE,
    &LOOKUP,
    &LIST,
    &STATUS,
    &GET_CAPABILITY,
    &ATTACH,
    &GET_INFO,
    &GET_INTERFACE_DESCRIPTION,
    &ENTER_CGROUP,
    &RELOAD,
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::StatusReply;
    use crate::errors::{error_name, sent_by_daemons};

    /// The interface description clients and `varlinkctl` read.
    const IDL: &str = include_str!("../../../docs/io.portres.varlink");

    /// The names the IDL declares with `keyword` (`method`, `error`).
    fn declared(keyword: &str) -> BTreeSet<String> {
        IDL.lines()
            .filter_map(|l| l.strip_prefix(keyword)?.strip_prefix(' '))
            .map(|rest| {
                let end = rest
                    .find(|c: char| !c.is_alphanumeric())
                    .unwrap_or(rest.len());
                format!("io.portres.{}", &rest[..end])
            })
            .collect()
    }

    #[test]
    fn method_names_are_unique_and_each_request_finds_its_own() {
        let names: BTreeSet<_> = METHODS.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), METHODS.len());
        for m in METHODS {
            let frame = format!(r#"{{"method":"{}","parameters":{{}}}}"#, m.name);
            if let Ok(call) = Request::decode_call(frame.as_bytes()) {
                assert_eq!(call.request.method(), m.name);
            }
        }
    }

    #[test]
    fn descriptor_counts_are_checked_both_ways() {
        assert!(BIND.check_fds(1).is_ok());
        assert_eq!(BIND.check_fds(0).unwrap_err().code, ErrorCode::NotASocket);
        assert_eq!(
            ATTACH.check_fds(0).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        let e = STATUS.check_fds(2).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameter);
        assert_eq!(
            e.message,
            "io.portres.Status takes 0 descriptor(s); 2 more were sent"
        );
        assert_eq!(
            BIND.check_fds(0).unwrap_err().message,
            "io.portres.Bind needs one descriptor passed with the request (SCM_RIGHTS)"
        );
    }

    #[test]
    fn an_acquire_with_an_address_carries_one_socket_and_one_without_none() {
        let call = |params: &str| {
            let frame = format!(r#"{{"method":"io.portres.Acquire","parameters":{params}}}"#);
            Request::decode_call(frame.as_bytes()).unwrap().request
        };
        let with = call(r#"{"protocol":"tcp","address":"127.0.0.1"}"#);
        assert!(with.check_fds(1).is_ok());
        let e = with.check_fds(0).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotASocket);
        assert_eq!(
            e.message,
            "io.portres.Acquire needs one descriptor passed with the request (SCM_RIGHTS)"
        );
        let without = call(r#"{"protocol":"tcp"}"#);
        assert!(without.check_fds(0).is_ok());
        assert_eq!(
            without.check_fds(1).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        assert_eq!(with.method(), "io.portres.Acquire");
    }

    #[test]
    fn the_interface_description_declares_every_method() {
        let served: BTreeSet<String> = METHODS
            .iter()
            .map(|m| m.name)
            .filter(|n| n.starts_with("io.portres."))
            .map(str::to_string)
            .collect();
        assert_eq!(declared("method"), served);
    }

    #[test]
    fn the_interface_description_declares_every_error() {
        let sent: BTreeSet<String> = portres_core::ErrorCode::ALL
            .into_iter()
            .filter(|&c| sent_by_daemons(c))
            .map(|c| error_name(c).to_string())
            .collect();
        assert_eq!(declared("error"), sent);
    }

    #[test]
    fn the_interface_description_declares_every_status_field() {
        let status = StatusReply {
            version: String::new(),
            wire_version: 1,
            mode: String::new(),
            kernel_sync: false,
            baseline: String::new(),
            baseline_origin: String::new(),
            reserved_ports: String::new(),
            dynamic_range: [0, 0],
            runtime: 0,
            persistent: 0,
            sessions: 0,
            quota: 0,
            you_are_admin: false,
            your_uid: 0,
            store: String::new(),
            uptime_seconds: 0,
            store_read_only: false,
            enforcement: String::new(),
            enforcement_reason: Some(String::new()),
            config_dirs: Vec::new(),
            declared_problems: Vec::new(),
        };
        let value = serde_json::to_value(&status).unwrap();
        let fields: BTreeSet<String> = value.as_object().unwrap().keys().cloned().collect();
        let start = IDL
            .find("method Status() -> (")
            .expect("Status is declared");
        let text = &IDL[start + "method Status() -> (".len()..];
        let text = &text[..text.find(')').expect("its reply closes")];
        let declared: BTreeSet<String> = text
            .split(',')
            .filter_map(|f| Some(f.split(':').next()?.trim().to_string()))
            .filter(|f| !f.is_empty())
            .collect();
        assert_eq!(declared, fields);
    }
}
