//! Request handlers, one file per family, each an `impl State` block run
//! under the state mutex (Acquire and Bind take the mutex themselves, to
//! make their slow kernel calls outside it); `handle`, the one entry the
//! transport calls, which checks a call's descriptors against the method
//! table, routes it to its handler and encodes the answer; and the jobs a
//! handler leaves to finish outside the lock (`Job`).

mod info;
mod persistent;
pub(crate) mod portserver;
pub(crate) mod runtime;
mod session;
#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portres_core::{Error, ErrorCode, SessionId};
use portres_proto::{CallError, ListReply, Request, encode_error, encode_reply};

use crate::fault::fault;
use crate::kernel::Kernel;
use crate::state::{State, lock};

/// What to send back for one request.
pub(crate) enum Outcome {
    /// An encoded reply frame.
    Reply(Vec<u8>),
    /// An encoded reply frame with a descriptor attached.
    ReplyWithFd(Vec<u8>, OwnedFd),
    /// Work that makes the reply off the worker's loop (it takes
    /// milliseconds or more; what it needs of the state it locks itself).
    Job(Job),
}

/// Work a handler leaves to finish off the worker's loop: the transport
/// runs it (on a thread of its own when it can) with the shared state,
/// which the work locks only as it needs, and sends what it returns, in
/// the connection's order. The transport knows nothing of what it does.
pub(crate) struct Job {
    /// What it is, for messages ("the socket-table dump").
    pub(crate) what: &'static str,
    /// The name of the thread it runs on.
    pub(crate) thread: &'static str,
    work: JobWork,
}

/// A job's work: the encoded reply frame, made with the shared state.
type JobWork = Box<dyn FnOnce(&Mutex<State>) -> Vec<u8> + Send>;

impl Job {
    /// Does the work: the encoded reply frame.
    pub(crate) fn run(self, state: &Mutex<State>) -> Vec<u8> {
        (self.work)(state)
    }
}

/// `Reload`, once allowed: seconds for thousands of lines (a durable write
/// each), so off the worker, whose other connections go on being served.
fn reload_job() -> Job {
    Job {
        what: "the reload",
        thread: "reload",
        work: Box::new(|state| encode_reply(&crate::declared::reload(state, "portres reload"))),
    }
}

/// `List`'s second half: the reservations with their `in_use` ports filled
/// in from a socket-table dump (milliseconds).
fn list_job(mut list: Vec<portres_proto::ReservationInfo>, kernel: Arc<dyn Kernel>) -> Job {
    Job {
        what: "the socket-table dump",
        thread: "list-dump",
        work: Box::new(move |_| {
            if fault("slow-list") {
                std::thread::sleep(Duration::from_millis(200));
            }
            match info::fill_in_use(&*kernel, &mut list) {
                Ok(()) => encode_reply(&ListReply { reservations: list }),
                Err(e) => encode_error(&e),
            }
        }),
    }
}

fn reply<T: serde::Serialize>(r: Result<T, Error>) -> Outcome {
    match r {
        Ok(v) => Outcome::Reply(encode_reply(&v)),
        Err(e) => Outcome::Reply(encode_error(&e)),
    }
}

/// Handles one request from `session` with the descriptors `fds` that came
/// with it: refuses a wrong number of them (per the method table), and
/// turns a panic in a handler (a bug) into `internal` for that call, so the
/// worker and every other connection go on (the panic policy, see
/// `worker`).
pub(crate) fn handle(
    state: &Mutex<State>,
    session: SessionId,
    req: Request,
    mut fds: Vec<OwnedFd>,
) -> Outcome {
    if let Err(e) = req.check_fds(fds.len()) {
        return Outcome::Reply(encode_error(&e));
    }
    let method = req.method();
    let run = std::panic::AssertUnwindSafe(|| {
        if fault("handler-panic") && matches!(req, Request::Lookup(_)) {
            panic!("fault injection: a handler panics");
        }
        dispatch(state, session, req, fds.pop())
    });
    match std::panic::catch_unwind(run) {
        Ok(outcome) => outcome,
        Err(_) => {
            log::error!("{method} panicked (a bug); answering internal");
            Outcome::Reply(encode_error(&Error::new(
                ErrorCode::Internal,
                format!(
                    "{method} failed unexpectedly (the daemon hit a bug; nothing is known to have changed)"
                ),
            )))
        }
    }
}

/// Routes a request to its handler. `fd` is the descriptor that came with
/// it: present when the method takes one (`handle` checked).
fn dispatch(
    state: &Mutex<State>,
    session: SessionId,
    req: Request,
    fd: Option<OwnedFd>,
) -> Outcome {
    const CHECKED: &str = "handle checked the descriptor count";
    match req {
        Request::Acquire(p) => reply(runtime::acquire(state, session, p, fd)),
        Request::Release(p) => reply(lock(state).release(session, p)),
        Request::Bind(p) => reply(runtime::bind(state, session, p, fd.expect(CHECKED))),
        Request::Create(p) => reply(lock(state).create(session, p)),
        Request::Delete(p) => reply(lock(state).delete(session, p)),
        Request::Lookup(p) => reply(lock(state).lookup(session, p)),
        Request::List(p) => {
            let state = lock(state);
            match state.list(session, p) {
                Ok(list) => Outcome::Job(list_job(list, state.kernel())),
                Err(e) => Outcome::Reply(encode_error(&e)),
            }
        }
        Request::Status => reply(lock(state).status(session)),
        Request::GetCapability => match lock(state).get_capability(session) {
            Ok(fd) => Outcome::ReplyWithFd(encode_reply(&portres_proto::Empty {}), fd),
            Err(e) => Outcome::Reply(encode_error(&e)),
        },
        Request::Attach => reply(lock(state).attach(session, fd.expect(CHECKED))),
        Request::GetInfo => reply(Ok(info::varlink_info())),
        Request::Reload => {
            let allowed = lock(state).check_reload(session);
            match allowed {
                Ok(()) => Outcome::Job(reload_job()),
                Err(e) => Outcome::Reply(encode_error(&e)),
            }
        }
        Request::GetInterfaceDescription { interface } => {
            match info::interface_description(&interface) {
                Some(description) => reply(Ok(description)),
                None => Outcome::Reply(encode_error(&CallError::interface_not_found(&interface))),
            }
        }
        Request::EnterCgroup => reply(lock(state).enter_cgroup(session, fd.expect(CHECKED))),
    }
}
