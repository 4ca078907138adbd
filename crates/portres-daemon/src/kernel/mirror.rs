//! `KernelMirror`: keeps the kernel's reserved-ports list
//! (`ip_local_reserved_ports`) in line with what the daemon must reserve,
//! and knows what the list holds without reading it.
//!
//! Rules (each pinned by a test in `mirror_tests`): growth is written at
//! once, before the answer, as an adding write of just the new block (no
//! port leaves the list meanwhile, and the cost does not grow with the
//! list); a shrink waits — a released port leaves only after a whole quiet
//! window, in one replacing write of a value that fits one write
//! (`portres_kernel::sysctl::converge`), so steady churn writes nothing;
//! every `KERNEL_CHECK_INTERVAL` (the front's kernel timer) the list is compared
//! with what was last written and restored if someone else changed it.
//!
//! What the list must hold (the baseline and the reservations) is the
//! caller's: each method that writes is given it.

use std::io;
use std::time::{Duration, Instant};

use portres_core::{Block, PortSet};
use portres_kernel::sysctl::{ReservedPorts, TextReader};

/// After logging a change of the kernel's list by someone else, further
/// ones are only counted for this long.
const INCIDENT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The daemon's side of the kernel's reserved-ports list; inert (writes
/// nothing, reports nothing) when kernel sync is off.
pub struct KernelMirror {
    /// `None` when kernel sync is off.
    list: Option<Box<dyn ReservedPorts>>,
    /// What the kernel's list holds, as far as we know: the value we last
    /// wrote (or found, see `check_text`); `None` after a failed write.
    last_written: Option<PortSet>,
    /// `last_written` as text, rendered when `check_text` first needs it.
    last_written_text: Option<String>,
    /// Counts writes to the kernel's list (see `generation`).
    generation: u64,
    /// When `check_text` last logged a change by someone else, and how
    /// many it saw since without logging.
    incident_logged: Option<(Instant, u64)>,
    /// The kernel holds ports we no longer reserve; `flush` will write the
    /// smaller value.
    shrink_pending: bool,
    /// Blocks released since the last `flush`: the kernel keeps them one
    /// more window (see `flush`).
    released_recently: Vec<Block>,
    /// Called when a deferred shrink becomes pending, so the front
    /// schedules a `flush` soon.
    on_shrink_pending: Option<Box<dyn Fn() + Send>>,
}

impl std::fmt::Debug for KernelMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMirror")
            .field("on", &self.list.is_some())
            .field("last_written", &self.last_written)
            .field("generation", &self.generation)
            .field("shrink_pending", &self.shrink_pending)
            .finish()
    }
}

impl KernelMirror {
    /// A mirror of `list`; `None` for kernel sync off.
    pub fn new(list: Option<Box<dyn ReservedPorts>>) -> KernelMirror {
        KernelMirror {
            list,
            last_written: None,
            last_written_text: None,
            generation: 0,
            incident_logged: None,
            shrink_pending: false,
            released_recently: Vec::new(),
            on_shrink_pending: None,
        }
    }

    /// Whether the daemon keeps the kernel's list.
    pub fn is_on(&self) -> bool {
        self.list.is_some()
    }

    /// Reads the list (`None` without kernel sync).
    pub fn read(&self) -> Option<io::Result<PortSet>> {
        self.list.as_ref().map(|list| list.read())
    }

    /// Sets the hook called when a deferred shrink becomes pending.
    pub fn set_on_shrink_pending(&mut self, hook: Box<dyn Fn() + Send>) {
        self.on_shrink_pending = Some(hook);
    }

    /// Brings the list to `desired` now, dropping any pending shrink.
    pub fn sync(&mut self, desired: PortSet) -> io::Result<()> {
        self.shrink_pending = false;
        self.released_recently.clear();
        self.write(desired)
    }

    /// Before answering a request that reserved `block`: make sure the
    /// kernel reserves it. If it already does (typically a block released a
    /// moment ago and acquired again, whose shrink is still pending) nothing
    /// is written — that is what keeps steady-state acquire/release cycles
    /// free of sysctl writes. Otherwise the kernel gets what it had plus the
    /// block (pending shrinks stay pending: reserving more is always safe).
    /// `desired` (what the list must hold) is asked for only when the
    /// list's value is unknown after a failed write.
    pub fn cover(&mut self, block: Block, desired: impl FnOnce() -> PortSet) -> io::Result<()> {
        let Some(list) = self.list.as_mut() else {
            return Ok(());
        };
        match &mut self.last_written {
            Some(written) if written.covers_block(block) => Ok(()),
            Some(written) => {
                // An adding write: nothing leaves the list meanwhile, and
                // the cost does not grow with the list's length.
                let added: PortSet = std::iter::once(block).collect();
                self.generation += 1;
                let result = list.add(&added);
                match result {
                    Ok(()) => written.insert_block(block),
                    // Part of it may be in: we no longer know the value.
                    Err(_) => self.last_written = None,
                }
                self.last_written_text = None;
                result
            }
            // After a failed write we do not know what the kernel holds.
            None => self.write(desired()),
        }
    }

    /// After a refused request took its candidate `block` out of the
    /// table: a flush meanwhile may have written it into the kernel (the
    /// table held it while it was probed), so when the kernel may hold it,
    /// a shrink is scheduled like after a release.
    pub fn forget_candidate(&mut self, block: Block) {
        if self.list.is_some()
            && self
                .last_written
                .as_ref()
                .is_none_or(|written| written.intersects(block))
        {
            self.mark_shrink_pending();
        }
    }

    /// After `blocks` stopped being reserved: the kernel may keep them
    /// reserved a little longer (harmless: its ephemeral pool is briefly
    /// smaller), and the smaller value is written by `flush`, soon, once
    /// for every release that happened meanwhile.
    pub fn release(&mut self, blocks: impl IntoIterator<Item = Block>) {
        if self.list.is_some() {
            self.released_recently.extend(blocks);
            self.mark_shrink_pending();
        }
    }

    fn mark_shrink_pending(&mut self) {
        if !self.shrink_pending {
            self.shrink_pending = true;
            if let Some(hook) = &self.on_shrink_pending {
                hook();
            }
        }
    }

    /// Whether a shrink waits for `flush` (for tests).
    #[cfg(test)]
    pub fn shrink_pending(&self) -> bool {
        self.shrink_pending
    }

    /// Writes a pending shrink to `desired`, if any; returns whether
    /// another flush is due one window later.
    ///
    /// A port leaves the kernel's list only once it has been free for a
    /// whole window: blocks released since the last flush stay reserved
    /// until the next one. Why: under churn the same few ports are released
    /// and acquired again all the time; dropping them at every flush made
    /// the next Acquire write them back (two sysctl writes per port per
    /// window, each under the state lock). Now a steady churn writes
    /// nothing, and an idle port is gone within two windows.
    pub fn flush(&mut self, desired: impl FnOnce() -> PortSet) -> bool {
        if !self.shrink_pending {
            return false;
        }
        let recent = std::mem::take(&mut self.released_recently);
        let keep = !recent.is_empty();
        let mut desired = desired();
        if keep {
            desired.extend(&blocks_set(&recent));
        }
        self.shrink_pending = keep;
        if let Err(e) = self.write(desired) {
            log::error!("could not update ip_local_reserved_ports: {e}");
        }
        keep
    }

    /// Brings the kernel to `desired` (or a coarser superset when a shrink
    /// of a long value needs one) without a moment in which a port both
    /// values hold is missing: see `portres_kernel::sysctl::converge`.
    pub fn write(&mut self, desired: PortSet) -> io::Result<()> {
        let Some(list) = self.list.as_mut() else {
            return Ok(());
        };
        if self.last_written.as_ref() == Some(&desired) {
            return Ok(());
        }
        // Unknown after a failed write: read it, so growth can still be
        // written as an addition.
        let current = match self.last_written.take() {
            Some(written) => Some(written),
            None => list.read().ok(),
        };
        self.last_written_text = None;
        self.generation += 1;
        // `last_written` stays unknown until the write succeeds, so a failed
        // write is retried by the next change rather than skipped as
        // "unchanged".
        let held = portres_kernel::sysctl::converge(&mut **list, current.as_ref(), &desired)?;
        self.last_written = Some(held);
        Ok(())
    }

    /// How many times the kernel's list was written (or a write tried):
    /// a text read between two equal counts saw no write of ours.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Reads the kernel's list without the mirror (and the lock around
    /// it); see `check_text`.
    pub fn text_reader(&self) -> Option<TextReader> {
        self.list.as_ref()?.text_reader()
    }

    /// `check_text` with a read made now.
    pub fn check(&mut self, desired: impl FnOnce() -> PortSet) {
        let Some(list) = self.list.as_ref() else {
            return;
        };
        let text = list.read_text();
        self.check_text(self.generation, text, desired);
    }

    /// Once in a while (the front's kernel timer): whether someone else changed
    /// the kernel's list (`sysctl -w`, `sysctl --system`, another tool),
    /// given `text` read at `generation`; if so, puts back `desired` (the
    /// baseline and the reservations) and the ports whose shrink is still
    /// pending, logging the incident once (at most one line a minute when
    /// it keeps happening). Costs a text comparison when nothing changed.
    /// Why the text is read by the caller: a long list takes milliseconds
    /// to read (2 ms for 24 KB), which should not be spent under the lock.
    pub fn check_text(
        &mut self,
        generation: u64,
        text: io::Result<String>,
        desired: impl FnOnce() -> PortSet,
    ) {
        if self.list.is_none() || generation != self.generation {
            // We wrote meanwhile: the text may predate it. Next time.
            return;
        }
        let Some(written) = self.last_written.as_ref() else {
            // A write failed: the next change (or flush) writes again.
            return;
        };
        let text = match text {
            Ok(text) => text,
            Err(e) => {
                log::error!("could not read ip_local_reserved_ports to check it: {e}");
                return;
            }
        };
        let expected = self
            .last_written_text
            .get_or_insert_with(|| written.to_string());
        if text == *expected {
            return;
        }
        let found: PortSet = match text.parse() {
            Ok(found) => found,
            Err(e) => {
                log::error!("ip_local_reserved_ports reads as {text:?}: {}", e.message);
                return;
            }
        };
        let missing = written.difference(&found);
        let extra = found.difference(written);
        // One line per change; but a tool that rewrites the list all the
        // time gets one line per minute, with a count.
        let quiet = self
            .incident_logged
            .is_some_and(|(at, _)| at.elapsed() < INCIDENT_LOG_INTERVAL);
        if quiet {
            if let Some((_, unlogged)) = &mut self.incident_logged {
                *unlogged += 1;
            }
        } else {
            let more = match self.incident_logged {
                Some((_, n)) if n > 0 => {
                    format!(" ({n} more such change(s) before this one, not logged)")
                }
                _ => String::new(),
            };
            log::warn!(
                "someone else changed ip_local_reserved_ports: it held {} and now holds {} ({} port(s) missing, {} added); restoring the baseline and the reservations{more}",
                abbreviated(expected),
                abbreviated(&text),
                missing.len(),
                extra.len()
            );
            self.incident_logged = Some((Instant::now(), 0));
        }
        self.last_written = Some(found);
        self.last_written_text = None;
        let mut desired = desired();
        desired.extend(&blocks_set(&self.released_recently));
        if let Err(e) = self.write(desired) {
            log::error!("could not restore ip_local_reserved_ports: {e}");
        }
    }

    /// What the kernel's list holds now, for Status: what was last written
    /// or found there (a change by someone else shows within one check,
    /// when it is also undone), or a fresh read when a write failed; empty
    /// without kernel sync.
    pub fn value_text(&self) -> String {
        let Some(list) = self.list.as_ref() else {
            return String::new();
        };
        if let Some(text) = &self.last_written_text {
            return text.clone();
        }
        match &self.last_written {
            Some(written) => written.to_string(),
            None => list.read_text().unwrap_or_default(),
        }
    }
}

fn blocks_set(blocks: &[Block]) -> PortSet {
    PortSet::from_ranges(blocks.iter().map(|b| (b.start(), b.last())).collect())
}

/// `text` cut to a length fit for one log line.
fn abbreviated(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return format!("{text:?}");
    }
    let cut = (0..=MAX)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{:?}... ({} bytes)", &text[..cut], text.len())
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod tests;
