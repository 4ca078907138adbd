//! Portserver connections (portpicker's protocol) on a worker: accept
//! them (every worker watches every portserver listener with
//! `EPOLLEXCLUSIVE`, so one wakes per connection and serves it on its own
//! thread: no hand-over from the front, one wakeup fewer per request), read
//! one line `"<pid>\n"` within `READ_DEADLINE` (usually already there when
//! the connection is accepted: portpicker writes right after connecting,
//! and then the connection never enters the epoll set), have `handlers::portserver`
//! serve it, answer `"<port>\n"` in one write, close. On anything else —
//! a line that is not a decimal pid, longer than `MAX_LINE`, not finished
//! before the deadline, a refusal, a failure — the connection is closed
//! without a byte written, as Google's portserver does (the client then
//! picks a port by itself). Nothing read here is a varlink call, and a
//! portserver connection has no session: what it gets belongs to the named
//! process (`state::holders`), not to the connection.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portres_core::Caller;
use rustix::event::epoll;

use super::event_loop::{ConnId, KEY_PORTSERVER_LISTENER, Worker};
use crate::handlers::portserver;
use crate::limits::Charged;

/// How long a client has to send its line after connecting. portpicker
/// sends it at once; a slower client only holds a connection (counted
/// against its user's connection limit) this long.
pub(crate) const READ_DEADLINE: Duration = Duration::from_secs(2);

/// Longest request line accepted, newline excluded (portserver.py's
/// limit: 20 characters).
pub(crate) const MAX_LINE: usize = 20;

/// How long a worker stops accepting when the process (EMFILE) or the
/// system is out of descriptors or memory (the listener stays readable, so
/// retrying at once would spin).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections accepted per wakeup at most: the listener is level-triggered
/// and brings the worker back, so a stream of connects cannot keep it from
/// its own connections, deadlines and a stop.
const ACCEPT_BATCH: usize = 64;

/// Adds the portserver listeners to (`on`) or removes them from a worker's
/// epoll set. `EPOLLEXCLUSIVE`: a connection wakes one of the waiting
/// workers, not all (which would then race for one accept).
pub(super) fn watch_listeners(
    epoll: &OwnedFd,
    listeners: &[UnixListener],
    on: bool,
) -> io::Result<()> {
    for (i, l) in listeners.iter().enumerate() {
        if on {
            epoll::add(
                epoll,
                l,
                epoll::EventData::new_u64(KEY_PORTSERVER_LISTENER + i as u64),
                epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE,
            )?;
        } else {
            epoll::delete(epoll, l)?;
        }
    }
    Ok(())
}

/// A portserver connection a worker accepted.
pub(crate) struct PortserverConn {
    pub(crate) stream: UnixStream,
    /// The peer, per the kernel.
    pub(crate) caller: Caller,
    /// Closed unanswered at this instant.
    pub(crate) deadline: Instant,
    buf: [u8; MAX_LINE + 1],
    len: usize,
    /// Bytes of the request read with `MSG_PEEK` (`peek_line`), consumed
    /// only after the answer (`finish_portserver`).
    peeked: usize,
}

impl PortserverConn {
    pub(crate) fn new(stream: UnixStream, caller: Caller) -> PortserverConn {
        PortserverConn {
            stream,
            caller,
            deadline: Instant::now() + READ_DEADLINE,
            buf: [0; MAX_LINE + 1],
            len: 0,
            peeked: 0,
        }
    }

    /// The request line if it is already there whole, read without taking
    /// it from the socket: consuming the request (`recv`) wakes a client
    /// already blocked in its `recv` for the answer (the kernel's
    /// `unix_write_space` wakes every sleeper on the socket), a wakeup and
    /// a switch it pays only to sleep again (~6% of the daemon's time per
    /// request). Taken after the answer instead, when the client is no
    /// longer asleep on it. `None`: not whole yet (then `receive`, which
    /// consumes: a peeked line left in the socket would keep it readable,
    /// and the epoll loop spinning).
    fn peek_line(&mut self) -> Option<Result<i32, String>> {
        let flags = rustix::net::RecvFlags::DONTWAIT | rustix::net::RecvFlags::PEEK;
        match rustix::net::recv(&self.stream, &mut self.buf, flags) {
            Ok((n, _)) if n > 0 => {
                let nl = self.buf[..n].iter().position(|&b| b == b'\n')?;
                self.peeked = nl + 1;
                Some(parse_pid(&self.buf[..nl]))
            }
            _ => None,
        }
    }

    /// Reads what is there: `Ok(Some(pid))` once the line is whole,
    /// `Ok(None)` to wait for more, `Err` to close unanswered.
    fn receive(&mut self) -> Result<Option<i32>, String> {
        loop {
            let free = &mut self.buf[self.len..];
            if free.is_empty() {
                return Err(format!("no newline within {MAX_LINE} bytes"));
            }
            match rustix::net::recv(&self.stream, free, rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    // The client finished sending: a line without its
                    // newline is still a line.
                    return if self.len == 0 {
                        Err("closed before sending anything".into())
                    } else {
                        parse_pid(&self.buf[..self.len]).map(Some)
                    };
                }
                Ok((n, _)) => {
                    let at = self.len;
                    self.len += n;
                    if let Some(nl) = self.buf[at..self.len].iter().position(|&b| b == b'\n') {
                        return parse_pid(&self.buf[..at + nl]).map(Some);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
    }
}

/// A request line: a decimal pid, perhaps with blanks around it (as
/// Python's `int()` takes it in portserver.py).
pub(crate) fn parse_pid(line: &[u8]) -> Result<i32, String> {
    let text = std::str::from_utf8(line)
        .map_err(|_| "not text".to_string())?
        .trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r');
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not a pid: {:?}", text.escape_debug().to_string()));
    }
    text.parse::<i32>()
        .map_err(|_| format!("pid out of range: {text}"))
}

/// The worker's portserver connections, and their deadlines in order
/// (every deadline is its arrival plus `READ_DEADLINE`, so arrival order
/// is deadline order).
#[derive(Default)]
pub(crate) struct PortserverConns {
    pub(crate) conns: portres_core::FastMap<ConnId, PortserverConn>,
    deadlines: VecDeque<(Instant, ConnId)>,
    /// Accepting paused (out of descriptors or memory; the listeners are
    /// out of the epoll set) until then.
    pub(super) accept_resume: Option<Instant>,
}

impl PortserverConns {
    /// The next deadline of a connection still open.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(at, id)) = self.deadlines.front() {
            if self.conns.contains_key(&id) {
                return Some(at);
            }
            self.deadlines.pop_front();
        }
        None
    }
}

impl Worker {
    /// Accepts what is waiting on portserver listener `i` (at most
    /// `ACCEPT_BATCH`), and serves each connection whose line is already
    /// there at once.
    pub(super) fn accept_portserver(&mut self, i: usize) {
        let shared = self.shared.clone();
        let Some(listener) = shared.portserver.get(i) else {
            return;
        };
        for _ in 0..ACCEPT_BATCH {
            if self.portserver.accept_resume.is_some() {
                return;
            }
            let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
            match rustix::net::accept_with(listener, flags) {
                Ok(fd) => self.start_portserver(UnixStream::from(fd)),
                // Another worker took it, or the backlog is empty.
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: leave the rest in
                    // the backlog and look again shortly.
                    shared.limits.log_limited("accept", || {
                        format!(
                            "portserver accept failed: {e}; pausing this worker's portserver accepts for {} ms at a time until descriptors free up",
                            ACCEPT_PAUSE.as_millis()
                        )
                    });
                    if let Err(e) = watch_listeners(&self.epoll, &shared.portserver, false) {
                        log::warn!("portserver listeners: epoll: {e}");
                    }
                    self.portserver.accept_resume = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Watches the portserver listeners again once a pause has passed.
    pub(super) fn resume_portserver_accepts(&mut self) {
        if self
            .portserver
            .accept_resume
            .is_none_or(|at| Instant::now() < at)
        {
            return;
        }
        match watch_listeners(&self.epoll, &self.shared.portserver, true) {
            Ok(()) => self.portserver.accept_resume = None,
            Err(e) => {
                log::warn!("portserver listeners: epoll: {e}; trying again later");
                // Whatever was added stays added: start from none again.
                let _ = watch_listeners(&self.epoll, &self.shared.portserver, false);
                self.portserver.accept_resume = Some(Instant::now() + ACCEPT_PAUSE);
            }
        }
    }

    /// A connection just accepted: admitted against the limits, served now
    /// if its line is there, else watched until it is (or its deadline).
    fn start_portserver(&mut self, stream: UnixStream) {
        let Some(caller) = self.shared.admit(&stream, true) else {
            return;
        };
        // Counted as one of this worker's connections (the varlink
        // connections go to the least busy worker) until it ends.
        self.mailbox().load.fetch_add(1, Ordering::Relaxed);
        let mut conn = PortserverConn::new(stream, caller);
        // Peeked if whole, else read (consumed) as far as it goes.
        let line = conn.peek_line().or_else(|| conn.receive().transpose());
        match line {
            None => self.take_portserver(conn),
            Some(Ok(pid)) => {
                let answer = self.answer(&conn.caller, pid);
                self.finish_portserver(conn, answer);
            }
            Some(Err(why)) => self.finish_portserver(conn, Err(why)),
        }
    }

    /// Watches a portserver connection whose line is not whole yet.
    fn take_portserver(&mut self, conn: PortserverConn) {
        let id = self.new_conn_id();
        if let Err(e) = epoll::add(
            &self.epoll,
            &conn.stream,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        ) {
            self.finish_portserver(conn, Err(format!("epoll: {e}")));
            return;
        }
        self.portserver.deadlines.push_back((conn.deadline, id));
        self.portserver.conns.insert(id, conn);
    }

    /// Whether `id` is a portserver connection of this worker.
    pub(super) fn is_portserver(&self, id: ConnId) -> bool {
        self.portserver.conns.contains_key(&id)
    }

    /// Serves what epoll reported for portserver connection `id`.
    pub(super) fn serve_portserver(&mut self, id: ConnId) {
        let Some(conn) = self.portserver.conns.get_mut(&id) else {
            return;
        };
        match conn.receive() {
            Ok(None) => {}
            Ok(Some(pid)) => {
                let caller = conn.caller.clone();
                let answer = self.answer(&caller, pid);
                self.close_portserver(id, answer);
            }
            Err(why) => self.close_portserver(id, Err(why)),
        }
    }

    /// Serves the request for `pid`: the port, or why none.
    fn answer(&mut self, caller: &Caller, pid: i32) -> Result<u16, String> {
        let uid = caller.uid;
        // Charged for a new holder's pidfd up front; at the cap, only a
        // process that already has a live holder is served.
        let may_hold = self.shared.limits.hold_pidfd(uid);
        let charged = may_hold.is_ok();
        let (shared, endpoint) = (&self.shared, &mut self.endpoint);
        let mut new_holder = false;
        let run = std::panic::AssertUnwindSafe(|| {
            portserver::serve_recording(
                &shared.state,
                endpoint,
                caller,
                pid,
                charged,
                &mut new_holder,
            )
        });
        let result = std::panic::catch_unwind(run);
        // A holder made (even by a request that then panicked) keeps its
        // charge until the front reaps it, which gives it back.
        if charged && !new_holder {
            self.shared.limits.pidfd_released(uid);
        }
        let Ok(result) = result else {
            log::error!("a portserver request panicked (a bug); closing it unanswered");
            return Err("internal error".into());
        };
        match (result, may_hold) {
            (Ok(port), _) => Ok(port),
            (Err(e), Err(why)) if e.code == portres_core::ErrorCode::QuotaExceeded => {
                self.shared.limits.log_limited("pidfd-holders", || {
                    format!("{why}: closing a portserver request unanswered")
                });
                Err(why)
            }
            (Err(e), _) => Err(format!("{}: {}", e.code, e.message)),
        }
    }

    /// Ends watched portserver connection `id` (see `finish_portserver`).
    pub(super) fn close_portserver(&mut self, id: ConnId, answer: Result<u16, String>) {
        let Some(conn) = self.portserver.conns.remove(&id) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &conn.stream);
        self.finish_portserver(conn, answer);
    }

    /// Ends a portserver connection, first writing the port if there is
    /// one (one write; the reply fits any socket buffer).
    fn finish_portserver(&mut self, conn: PortserverConn, answer: Result<u16, String>) {
        let (uid, peer) = (conn.caller.uid, conn.caller.pid);
        match answer {
            Ok(port) => {
                let reply = format!("{port}\n");
                let sent = rustix::net::send(
                    &conn.stream,
                    reply.as_bytes(),
                    rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                );
                match sent {
                    Ok(n) if n == reply.len() => {}
                    // The process keeps its port (it may ask again and get
                    // another); the peer just did not hear of this one.
                    other => log::debug!(
                        "portserver: could not send port {port} to uid {uid} pid {peer}: {:?}",
                        other.map_err(io::Error::from)
                    ),
                }
            }
            Err(why) => log::debug!(
                "portserver: closing a request of uid {uid} pid {peer} unanswered: {why}"
            ),
        }
        if conn.peeked > 0 {
            // Take the peeked request now: a Unix stream socket closed with
            // bytes unread makes its peer's next read fail (ECONNRESET),
            // and a client reading to the end (clients/node) would see an
            // error after its answer.
            let mut line = [0u8; MAX_LINE + 1];
            let _ = rustix::net::recv(
                &conn.stream,
                &mut line[..conn.peeked],
                rustix::net::RecvFlags::DONTWAIT,
            );
        }
        drop(conn);
        self.mailbox().load.fetch_sub(1, Ordering::Relaxed);
        self.shared
            .limits
            .connection_closed(uid, Charged::default());
    }

    /// Closes, unanswered, the portserver connections whose deadline passed.
    pub(super) fn expire_portserver(&mut self) {
        let now = Instant::now();
        while let Some(at) = self.portserver.next_deadline() {
            if at > now {
                return;
            }
            let (_, id) = self
                .portserver
                .deadlines
                .pop_front()
                .expect("next_deadline saw it");
            self.close_portserver(id, Err(format!("no request line within {READ_DEADLINE:?}")));
        }
    }

    /// Closes every portserver connection (the daemon stops, or the worker
    /// dies).
    pub(super) fn close_all_portserver(&mut self) {
        let ids: Vec<ConnId> = self.portserver.conns.keys().copied().collect();
        for id in ids {
            self.close_portserver(id, Err("daemon stopping".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pid;

    #[test]
    fn request_lines() {
        assert_eq!(parse_pid(b"4242"), Ok(4242));
        assert_eq!(parse_pid(b" 17\r"), Ok(17));
        assert_eq!(parse_pid(b"0"), Ok(0));
        for bad in [
            &b""[..],
            b"-1",
            b"+5",
            b"12x",
            b"x",
            b"99999999999",
            b"\xff",
        ] {
            assert!(parse_pid(bad).is_err(), "{bad:?}");
        }
    }
}
