//! Request handlers, one file per family, each an `impl State` block; and
//! `dispatch`, which routes a decoded request to its handler and encodes the
//! answer.

mod info;
mod persistent;
mod runtime;
mod session;

use std::os::fd::OwnedFd;

use portres_core::{Error, ErrorCode, SessionId};
use portres_proto::{Request, encode_error, encode_reply};

use crate::state::State;

pub use info::fill_in_use;

/// What to send back for one request.
#[derive(Debug)]
pub enum Outcome {
    /// An encoded reply frame.
    Reply(Vec<u8>),
    /// An encoded reply frame with a descriptor attached.
    ReplyWithFd(Vec<u8>, OwnedFd),
    /// A `List` whose `in_use` must still be filled outside the state lock
    /// (the socket-table dump is the slow part and needs no state).
    List(Vec<portres_proto::ReservationInfo>),
}

fn reply<T: serde::Serialize>(r: Result<T, Error>) -> Outcome {
    match r {
        Ok(v) => Outcome::Reply(encode_reply(&v)),
        Err(e) => Outcome::Reply(encode_error(&e)),
    }
}

/// Handles one request from `session`. `fd` is the descriptor that came
/// with it, if the method takes one.
pub fn dispatch(
    state: &mut State,
    session: SessionId,
    req: Request,
    fd: Option<OwnedFd>,
) -> Outcome {
    let need_fd = req.fds_expected() > 0;
    if need_fd && fd.is_none() {
        let code = if matches!(req, Request::Bind(_)) {
            ErrorCode::NotASocket
        } else {
            ErrorCode::InvalidParameter
        };
        return Outcome::Reply(encode_error(&Error::new(
            code,
            format!(
                "{} needs one descriptor passed with the request (SCM_RIGHTS)",
                req.method()
            ),
        )));
    }
    match req {
        Request::Acquire(p) => reply(state.acquire(session, p)),
        Request::Release(p) => reply(state.release(session, p)),
        Request::Bind(p) => reply(state.bind(session, p, fd.expect("checked above"))),
        Request::Create(p) => reply(state.create(session, p)),
        Request::Delete(p) => reply(state.delete(session, p)),
        Request::Lookup(p) => reply(state.lookup(session, p)),
        Request::List(p) => match state.list(session, p) {
            Ok(list) => Outcome::List(list),
            Err(e) => Outcome::Reply(encode_error(&e)),
        },
        Request::Status => reply(state.status(session)),
        Request::GetCapability => match state.get_capability(session) {
            Ok(fd) => Outcome::ReplyWithFd(encode_reply(&portres_proto::Empty {}), fd),
            Err(e) => Outcome::Reply(encode_error(&e)),
        },
        Request::Attach => reply(state.attach(session, fd.expect("checked above"))),
        Request::GetInfo => reply(Ok(info::varlink_info())),
        Request::GetInterfaceDescription { interface } => {
            reply(info::interface_description(&interface))
        }
    }
}
