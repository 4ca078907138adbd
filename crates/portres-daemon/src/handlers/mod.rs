//! Request handlers, one file per family, each an `impl State` block run
//! under the state mutex (Acquire and Bind take the mutex themselves, to
//! make their slow kernel calls outside it); and `dispatch`, which routes a
//! decoded request to its handler and encodes the answer.

mod info;
mod persistent;
pub(crate) mod runtime;
mod session;
#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use portres_core::{Error, ErrorCode, SessionId};
use portres_proto::{CallError, Request, encode_error, encode_reply};

use crate::kernel::Kernel;
use crate::state::{State, lock};

pub use info::fill_in_use;

/// What to send back for one request.
#[derive(Debug)]
pub enum Outcome {
    /// An encoded reply frame.
    Reply(Vec<u8>),
    /// An encoded reply frame with a descriptor attached.
    ReplyWithFd(Vec<u8>, OwnedFd),
    /// A `List` whose `in_use` must still be filled outside the state lock
    /// (the socket-table dump is the slow part and needs no state), and
    /// the kernel to dump from.
    List(Vec<portres_proto::ReservationInfo>, Arc<dyn Kernel>),
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
    state: &Mutex<State>,
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
        Request::Acquire(p) => reply(runtime::acquire(state, session, p)),
        Request::Release(p) => reply(lock(state).release(session, p)),
        Request::Bind(p) => reply(runtime::bind(state, session, p, fd.expect("checked above"))),
        Request::Create(p) => reply(lock(state).create(session, p)),
        Request::Delete(p) => reply(lock(state).delete(session, p)),
        Request::Lookup(p) => reply(lock(state).lookup(session, p)),
        Request::List(p) => {
            let state = lock(state);
            match state.list(session, p) {
                Ok(list) => Outcome::List(list, state.kernel()),
                Err(e) => Outcome::Reply(encode_error(&e)),
            }
        }
        Request::Status => reply(lock(state).status(session)),
        Request::GetCapability => match lock(state).get_capability(session) {
            Ok(fd) => Outcome::ReplyWithFd(encode_reply(&portres_proto::Empty {}), fd),
            Err(e) => Outcome::Reply(encode_error(&e)),
        },
        Request::Attach => reply(lock(state).attach(session, fd.expect("checked above"))),
        Request::GetInfo => reply(Ok(info::varlink_info())),
        Request::GetInterfaceDescription { interface } => {
            match info::interface_description(&interface) {
                Some(description) => reply(Ok(description)),
                None => Outcome::Reply(encode_error(&CallError::interface_not_found(&interface))),
            }
        }
    }
}
