//! The wakeup primitives the transport's loops wait on: `EventFd` (one
//! thread tells another's epoll loop "look"), epoll sets watching a few
//! descriptors, and epoll timeouts from deadlines.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, epoll};

/// A non-blocking eventfd: `signal` makes it readable (for every epoll set
/// watching it) until someone calls `clear`.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        Ok(EventFd(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?))
    }

    /// Makes it readable. Never blocks, never fails in a way that matters:
    /// the counter would have to reach 2^64-1 first.
    pub(crate) fn signal(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Makes it unreadable again (reads the counter).
    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut buf);
    }

    /// Whether it is readable now (signalled and not cleared).
    pub(crate) fn is_signalled(&self) -> bool {
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))).is_ok_and(|n| n > 0)
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A new epoll instance watching each descriptor for input, tagged with its
/// key (level-triggered).
pub(crate) fn epoll_watching(fds: &[(BorrowedFd<'_>, u64)]) -> io::Result<OwnedFd> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for &(fd, key) in fds {
        epoll::add(
            &epoll,
            fd,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN,
        )?;
    }
    Ok(epoll)
}

/// The epoll timeout until `deadline` (zero if it passed).
pub(crate) fn timeout_until(deadline: Instant) -> Timespec {
    timespec(deadline.saturating_duration_since(Instant::now()))
}

pub(crate) fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos() as i64,
    }
}

/// `epoll_wait` into `events` (cleared first); `Ok(false)` when interrupted
/// by a signal (wait again).
pub(crate) fn wait(
    epoll: &OwnedFd,
    events: &mut Vec<epoll::Event>,
    timeout: Option<&Timespec>,
) -> io::Result<bool> {
    events.clear();
    match epoll::wait(epoll, rustix::buffer::spare_capacity(events), timeout) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
