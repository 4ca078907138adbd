//! [`DaemonWatch`]: telling when the daemon hangs up a session.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Tells when the daemon hangs up a session (see [`Client::daemon_watch`](crate::Client::daemon_watch)).
/// Dropping it closes only its duplicate descriptor; the session lives on
/// in its `Client`.
#[derive(Debug)]
pub struct DaemonWatch {
    pub(super) fd: OwnedFd,
}

impl DaemonWatch {
    /// The poll events that mean the daemon has gone.
    pub const EVENTS: rustix::event::PollFlags = rustix::event::PollFlags::RDHUP;

    /// Whether `revents` (from a poll of this watch's descriptor with
    /// [`DaemonWatch::EVENTS`]) says the daemon has gone.
    pub fn gone_in(revents: rustix::event::PollFlags) -> bool {
        use rustix::event::PollFlags;
        revents.intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
    }

    /// Whether the daemon has gone already (does not wait).
    pub fn is_gone(&self) -> bool {
        self.poll(Some(std::time::Duration::ZERO))
    }

    /// Waits until the daemon has gone (`true`) or `timeout` passed
    /// (`false`; `None` waits for ever).
    pub fn wait(&self, timeout: Option<std::time::Duration>) -> bool {
        self.poll(timeout)
    }

    fn poll(&self, timeout: Option<std::time::Duration>) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let left = deadline.map(|d| {
                let left = d.saturating_duration_since(std::time::Instant::now());
                Timespec {
                    tv_sec: left.as_secs() as _,
                    tv_nsec: left.subsec_nanos() as _,
                }
            });
            let mut pfd = [PollFd::new(&self.fd, Self::EVENTS)];
            match poll(&mut pfd, left.as_ref()) {
                Ok(0) => return false,
                Ok(_) => {
                    let revents = pfd[0].revents();
                    if Self::gone_in(revents) {
                        return true;
                    }
                    // Woken without a hang-up (cannot happen for RDHUP alone,
                    // but never spin): treat as not gone yet.
                    if revents == PollFlags::empty() {
                        continue;
                    }
                    return false;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return true,
            }
        }
    }
}

impl AsFd for DaemonWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
