//! The front's kernel timers: the deferred shrink of the kernel's
//! reserved-ports list (released ports leave it once free for a whole
//! `KERNEL_SHRINK_DELAY`, one write covering every release meanwhile) and
//! the periodic check that nobody else changed it. The state decides what
//! to write (`State::flush_kernel`, `State::check_kernel_text`); this only
//! says when.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::EventFd;
use crate::state::{State, lock};

/// The kernel shrink window: released ports leave the kernel's list at the
/// first flush after they have been free for a whole window, so within one
/// to two windows (one write covers every release meanwhile; see
/// `State::flush_kernel`).
pub(crate) const KERNEL_SHRINK_DELAY: Duration = Duration::from_millis(5);

/// How often the front thread checks that nobody else changed the kernel's
/// list (`State::check_kernel`: one read of the sysctl and a text
/// comparison). Half a second, so a change is undone within a second.
pub(crate) const KERNEL_CHECK_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) struct KernelTimer {
    /// Signalled by the state when a release left a shrink to do.
    shrink_asked: Arc<EventFd>,
    shrink_at: Option<Instant>,
    /// When to check the kernel's list next; `None` without kernel sync.
    check_at: Option<Instant>,
}

impl KernelTimer {
    pub(crate) fn new(shrink_asked: Arc<EventFd>, kernel_sync: bool) -> KernelTimer {
        KernelTimer {
            shrink_asked,
            shrink_at: None,
            check_at: kernel_sync.then(|| Instant::now() + KERNEL_CHECK_INTERVAL),
        }
    }

    /// A release asked for a shrink: do it within a window.
    pub(crate) fn shrink_asked(&mut self) {
        self.shrink_asked.clear();
        if self.shrink_at.is_none() {
            self.shrink_at = Some(Instant::now() + KERNEL_SHRINK_DELAY);
        }
    }

    /// The next time `run_due` has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [self.shrink_at, self.check_at].into_iter().flatten().min()
    }

    /// Shrinks and checks the kernel's list if their time has come.
    pub(crate) fn run_due(&mut self, state: &Mutex<State>) {
        if self.shrink_at.is_some_and(|d| Instant::now() >= d) {
            let again = lock(state).flush_kernel();
            self.shrink_at = again.then(|| Instant::now() + KERNEL_SHRINK_DELAY);
        }
        if let Some(d) = self.check_at
            && Instant::now() >= d
        {
            check_kernel(state);
            self.check_at = Some(Instant::now() + KERNEL_CHECK_INTERVAL);
        }
    }
}

/// Checks that nobody else changed the kernel's list, reading it without
/// the state lock (see `State::check_kernel_text`).
fn check_kernel(state: &Mutex<State>) {
    let (generation, reader) = {
        let state = lock(state);
        (state.kernel_generation(), state.kernel_text_reader())
    };
    match reader {
        Some(read) => {
            let text = read();
            lock(state).check_kernel_text(generation, text);
        }
        None => lock(state).check_kernel(),
    }
}
