//! Where connections are served: the CPUs the process may use, pinning a
//! worker to one, and moving a connection to a worker on its client's CPU
//! when the client keeps saying it runs there (the `"cpu"` hint). Why: a
//! reply wakes the client's thread, and a wakeup on another CPU costs an
//! inter-processor interrupt (several µs in a VM); with client and worker
//! on one CPU a round trip costs less than half (bench/README.md).

use std::sync::atomic::Ordering;

use rustix::event::epoll;

use super::Arrival;
use super::conn::Conn;
use super::event_loop::{ConnId, Worker};

/// Consecutive requests hinting another CPU after which a connection moves
/// to a worker pinned there (a client the scheduler moved for a moment
/// does not drag its connection along).
const MOVE_AFTER: u8 = 4;

/// The CPUs this process may run on (by its affinity mask; empty if that
/// cannot be read).
pub(crate) fn usable_cpus() -> Vec<usize> {
    let Ok(set) = rustix::thread::sched_getaffinity(None) else {
        return Vec::new();
    };
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect()
}

/// Pins the calling thread to `cpu`. Why: a worker that stays on one CPU
/// draws its clients there (the kernel wakes a thread near its waker), so
/// most request/reply wakeups stay on one CPU instead of costing an
/// inter-processor interrupt each.
pub(super) fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        log::warn!("could not pin a worker to CPU {cpu}: {e}");
    }
}

impl Conn {
    /// Notes the CPU a request came from (the client's hint); `mine` is the
    /// serving worker's CPU.
    pub(super) fn note_cpu(&mut self, hint: Option<u32>, mine: Option<usize>) {
        let (Some(hint), Some(mine)) = (hint, mine) else {
            return;
        };
        if hint as usize == mine {
            self.away = 0;
        } else if self.away > 0 && hint == self.away_cpu {
            self.away = self.away.saturating_add(1);
        } else {
            self.away = 1;
            self.away_cpu = hint;
        }
    }
}

impl Worker {
    /// Hands a connection whose client keeps running on another CPU to the
    /// least busy worker pinned there. Only between requests: nothing
    /// buffered, unsent or in flight, so replies stay in order.
    pub(super) fn follow_client(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.away < MOVE_AFTER
            || conn.job_in_flight
            || conn.read_closed
            || conn.has_unsent()
            || !conn.pending_fds.is_empty()
            || conn.frames.has_partial()
        {
            return;
        }
        let target = conn.away_cpu as usize;
        let Some((to, _)) = self
            .mailboxes
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != self.index && m.cpu == Some(target))
            .min_by_key(|(_, m)| m.load.load(Ordering::Relaxed))
        else {
            return;
        };
        let conn = self.conns.remove(&id).expect("present above");
        self.unpause(conn.uid, id);
        log::debug!(
            "session {} follows its client to CPU {target} (worker {} -> {to})",
            conn.session.0,
            self.index
        );
        let _ = epoll::delete(&self.epoll, &conn.stream);
        self.mailbox().load.fetch_sub(1, Ordering::Relaxed);
        if let Err(Arrival::Moved(conn)) =
            self.mailboxes[to].deliver(Arrival::Moved(Box::new(conn)))
        {
            // That worker is gone; keep serving it here.
            self.mailbox().load.fetch_add(1, Ordering::Relaxed);
            self.take(*conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use portres_core::SessionId;

    use super::*;
    use crate::worker::NewConn;

    #[test]
    fn only_a_steady_other_cpu_counts_toward_a_move() {
        let (stream, _peer) = UnixStream::pair().unwrap();
        let mut c = Conn::new(NewConn {
            stream,
            session: SessionId(1),
            uid: 0,
        });
        // Unpinned worker or no hint: nothing counts.
        c.note_cpu(Some(1), None);
        c.note_cpu(None, Some(0));
        assert_eq!(c.away, 0);
        // Another CPU, again and again.
        for n in 1..=3 {
            c.note_cpu(Some(1), Some(0));
            assert_eq!((c.away, c.away_cpu), (n, 1));
        }
        // Back home resets; a different other CPU starts over.
        c.note_cpu(Some(0), Some(0));
        assert_eq!(c.away, 0);
        c.note_cpu(Some(2), Some(0));
        c.note_cpu(Some(3), Some(0));
        assert_eq!((c.away, c.away_cpu), (1, 3));
        // The count saturates instead of wrapping.
        for _ in 0..300 {
            c.note_cpu(Some(3), Some(0));
        }
        assert_eq!(c.away, u8::MAX);
    }
}
