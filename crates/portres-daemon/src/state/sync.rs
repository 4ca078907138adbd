//! The front's side of the kernel mirror (`KernelMirror`): the deferred
//! shrink (`flush_kernel`), the external-change check (`check_kernel*`),
//! and the final value at shutdown. Each passes the mirror what the list
//! must hold now: the baseline and the reservations.

use std::io;

use super::State;

impl State {
    /// Brings the kernel's list to what it must be now, dropping any
    /// pending shrink.
    pub(crate) fn sync_kernel(&mut self) -> io::Result<()> {
        let desired = self.desired_kernel_value(false);
        self.mirror.sync(desired)
    }

    /// Sets the hook called when a deferred shrink of the kernel's value
    /// becomes pending; the front's kernel timer uses it to schedule `flush_kernel`.
    pub fn set_on_shrink_pending(&mut self, hook: Box<dyn Fn() + Send>) {
        self.mirror.set_on_shrink_pending(hook);
    }

    /// Writes a pending shrink, if any; returns whether another flush is
    /// due one window later (see `KernelMirror::flush`).
    pub fn flush_kernel(&mut self) -> bool {
        let (table, baseline) = (&self.table, &self.baseline);
        self.mirror
            .flush(|| baseline.union(&table.reserved_ports(false)))
    }

    /// Whether the daemon keeps the kernel's list.
    pub fn kernel_sync(&self) -> bool {
        self.mirror.is_on()
    }

    /// How many times the kernel's list was written (or a write tried):
    /// a text read between two equal counts saw no write of ours.
    pub fn kernel_generation(&self) -> u64 {
        self.mirror.generation()
    }

    /// Reads the kernel's list without the state (and its lock); see
    /// `check_kernel_text`.
    pub fn kernel_text_reader(&self) -> Option<portres_kernel::sysctl::TextReader> {
        self.mirror.text_reader()
    }

    /// `check_kernel_text` with a read made now, under the lock.
    pub fn check_kernel(&mut self) {
        let (table, baseline) = (&self.table, &self.baseline);
        self.mirror
            .check(|| baseline.union(&table.reserved_ports(false)));
    }

    /// Once in a while (the front's kernel timer): whether someone else changed
    /// the kernel's list, given `text` read at `generation` (see
    /// `kernel_generation`); if so, restores it (see
    /// `KernelMirror::check_text`).
    pub fn check_kernel_text(&mut self, generation: u64, text: io::Result<String>) {
        let (table, baseline) = (&self.table, &self.baseline);
        self.mirror.check_text(generation, text, || {
            baseline.union(&table.reserved_ports(false))
        });
    }

    /// What the kernel's list holds now, for Status (see
    /// `KernelMirror::value_text`).
    pub(crate) fn kernel_value(&self) -> String {
        self.mirror.value_text()
    }

    /// At clean shutdown: the kernel keeps the baseline plus persistent
    /// blocks (runtime reservations end with the daemon).
    pub fn shutdown(&mut self) {
        self.remove_session_cgroups();
        let ids: Vec<_> = self.sessions.keys().copied().collect();
        for id in ids {
            let gone = self.table.remove_session(id);
            self.unguard_all(&gone);
        }
        self.sessions.clear();
        let desired = self.desired_kernel_value(true);
        if let Err(e) = self.mirror.write(desired) {
            log::error!("could not restore ip_local_reserved_ports at shutdown: {e}");
        }
    }
}
