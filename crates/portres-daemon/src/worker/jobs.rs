//! Running the jobs handlers return (`handlers::Job`: work to finish
//! outside the state lock, like `List`'s socket-table dump): on a thread of
//! its own while the user has fewer than `MAX_JOBS_PER_UID` running, else
//! on the worker; the connection's later requests wait for it, so replies
//! stay in order. The worker knows nothing of what a job does.

use std::io;

use portres_core::{Error, ErrorCode};
use portres_proto::encode_error;

use super::event_loop::{ConnId, Worker};
use crate::fault::fault;
use crate::handlers::Job;
use crate::limits::Held;

/// A finished job's reply: (connection, encoded frame).
pub(super) type JobResult = (ConnId, Vec<u8>);

/// Runs `job`, turning a panic (a bug) into `internal` for its call.
fn run_guarded(job: Job, state: &std::sync::Mutex<crate::state::State>) -> Vec<u8> {
    let what = job.what;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(state))).unwrap_or_else(|_| {
        encode_error(&Error::new(
            ErrorCode::Internal,
            format!("{what} failed unexpectedly (a bug)"),
        ))
    })
}

impl Worker {
    /// Starts connection `id`'s job. `true`: it runs off the loop (its
    /// reply comes back through the mailbox); `false`: its reply (or the
    /// error of a thread the OS refused) is queued already.
    pub(super) fn start_job(&mut self, id: ConnId, uid: u32, job: Job) -> bool {
        let limits = &self.shared.limits;
        let conn = self.conns.get_mut(&id).expect("the caller has it");
        if !limits.start_job(uid) {
            // The user already has its share of job threads: this one runs
            // here, holding up this worker only.
            conn.queue(run_guarded(job, &self.shared.state), None);
            return false;
        }
        let what = job.what;
        let tx = self.job_results.0.clone();
        let mailboxes = self.mailboxes.clone();
        let shared = self.shared.clone();
        let index = self.index;
        let spawned = if fault("list-thread") {
            Err(io::Error::other("fault injection: thread refused"))
        } else {
            std::thread::Builder::new()
                .name(job.thread.into())
                .spawn(move || {
                    let bytes = run_guarded(job, &shared.state);
                    shared.limits.end_job(uid);
                    let _ = tx.send((id, bytes));
                    mailboxes[index].wake.signal();
                })
        };
        match spawned {
            Ok(_) => {
                conn.job_in_flight = true;
                true
            }
            Err(e) => {
                // Under a pids limit, say: this call fails, the worker goes on.
                limits.end_job(uid);
                limits.log_limited("thread", || {
                    format!("cannot start a thread for {what}: {e}")
                });
                conn.queue(
                    encode_error(&Error::new(
                        ErrorCode::Internal,
                        format!("cannot start a thread for {what}: {e}"),
                    )),
                    None,
                );
                false
            }
        }
    }

    /// Queues the replies of finished jobs and goes on with their
    /// connections' waiting requests.
    pub(super) fn finish_jobs(&mut self) {
        while let Ok((id, bytes)) = self.job_results.1.try_recv() {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            conn.job_in_flight = false;
            conn.queue(bytes, None);
            if !self.flush(id) {
                continue;
            }
            let _ = self.settle(id, Held::ReplyBytes);
            if let Err(why) = self.process(id) {
                self.close(id, &why);
                continue;
            }
            self.after_io(id);
        }
    }
}
