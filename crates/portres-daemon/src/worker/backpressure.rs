//! Backpressure on one worker's connections: charging what each holds to
//! its user (`Limits`), pausing a connection (neither read nor answered)
//! while its unsent replies are past its own caps or its user's budget,
//! and keeping its epoll interest to what it may do now (EPOLLOUT only
//! while a reply is stuck).

use rustix::event::epoll;

use portres_core::ErrorCode;

use super::conn::{BUFFER_ALLOWANCE, Conn};
use super::event_loop::{ConnId, Worker};
use super::send_parting_error;
use crate::limits::Held;

impl Worker {
    /// Brings what connection `id` has charged of `held` to what it holds
    /// now; a refusal (past its user's cap) gets a parting error, and the
    /// caller closes the connection.
    pub(super) fn settle(&mut self, id: ConnId, held: Held) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let now = match held {
            Held::RequestBytes => conn.frames.memory().saturating_sub(BUFFER_ALLOWANCE),
            Held::ReplyBytes => conn.unsent_bytes,
            Held::ParkedFds => conn.parked_fds(),
        };
        let settled = conn
            .charged
            .settle(&self.shared.limits, conn.uid, held, now);
        if let Err(why) = &settled {
            send_parting_error(&conn.stream, ErrorCode::DaemonUnavailable, why.clone());
        }
        settled
    }

    /// Lets paused connections go on whose user's replies drained
    /// meanwhile (perhaps on another worker). One look at the budget for
    /// all of them: thousands may wait, and most for a user still over it.
    pub(super) fn recheck_paused(&mut self) {
        let over = self.shared.limits.users_over_unsent();
        let ready: Vec<u32> = self
            .waiting
            .keys()
            .copied()
            .filter(|uid| !over.contains(uid))
            .collect();
        for uid in ready {
            for id in self.waiting.remove(&uid).unwrap_or_default() {
                self.serve(id, epoll::EventFlags::IN);
            }
        }
    }

    /// Registers EPOLLOUT only while replies are stuck, EPOLLIN only while
    /// the connection may be read; closes a connection whose peer is gone
    /// once nothing is left to say.
    pub(super) fn after_io(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let stuck = conn.has_unsent();
        if conn.read_closed && !stuck && !conn.job_in_flight {
            return self.close(id, "peer closed");
        }
        let paused = self.paused(conn);
        let conn = self.conns.get_mut(&id).expect("present above");
        let mut flags = epoll::EventFlags::empty();
        if !conn.read_closed && !paused {
            flags |= epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        }
        if stuck {
            flags |= epoll::EventFlags::OUT;
        }
        if flags != conn.registered {
            conn.registered = flags;
            let _ = epoll::modify(
                &self.epoll,
                &conn.stream,
                epoll::EventData::new_u64(id),
                flags,
            );
        }
        // Paused with nothing to send: no event will come; look again soon.
        let uid = conn.uid;
        if paused && !stuck {
            self.waiting.entry(uid).or_default().insert(id);
        } else {
            self.unpause(uid, id);
        }
    }

    pub(super) fn unpause(&mut self, uid: u32, id: ConnId) {
        if let Some(ids) = self.waiting.get_mut(&uid) {
            ids.remove(&id);
            if ids.is_empty() {
                self.waiting.remove(&uid);
            }
        }
    }

    /// Whether a connection must wait (neither read nor answered) until its
    /// unsent replies drain: past its own caps, or its non-root user past
    /// the per-user budget. Cheap unless some user is over the budget.
    pub(super) fn paused(&self, conn: &Conn) -> bool {
        conn.over_unsent_caps() || self.shared.limits.unsent_over_budget(conn.uid)
    }
}
