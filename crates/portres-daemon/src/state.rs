//! The state owner: the one place that decides. It holds the reservation
//! table, the sessions, the durable store and the kernel's reserved-ports
//! sysctl, and keeps them consistent: a request either changes all of them
//! (store first for persistent changes, sysctl before the answer) or none.
//!
//! The transport (`server`, `worker`) decodes requests and calls in here
//! under one mutex (`lock`); handlers live in `handlers/`, one file per
//! request family. Slow kernel calls that need no state (the in-use probe,
//! binding a client's socket) run outside the mutex: see
//! `handlers::runtime`.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use portres_core::{
    Caller, Error, ErrorCode, Kind, PortSet, Protocol, Reservation, SessionId, Table, Token,
};
use portres_kernel::capability::FileId;
use portres_kernel::sysctl::ReservedPorts;
use portres_proto::{HolderInfo, OwnerInfo, ReservationInfo};
use portres_store::Store;

use crate::config::{Config, Mode};

/// Answers "is this port held by some socket right now?". Shared, so a
/// handler can probe without holding the state mutex.
pub type InUseProbe = Arc<dyn Fn(Protocol, u16) -> io::Result<bool> + Send + Sync>;

/// Locks the state. A handler that panicked while holding the lock leaves
/// the mutex poisoned; the daemon keeps serving (its invariants are
/// restored by the table's own checks, and one bad request must not stop
/// everyone), so poison is ignored.
pub fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// After logging a change of the kernel's list by someone else, further
/// ones are only counted for this long.
const KERNEL_INCIDENT_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// One client connection.
#[derive(Debug)]
pub struct Session {
    /// Who is on the other end, per the kernel.
    pub caller: Caller,
    /// The capability handed out for this session, if asked for.
    pub capability: Option<(OwnedFd, FileId)>,
    /// This session's id followed by every session whose capability this
    /// connection presented (their runtime reservations are usable here).
    pub speaks_for: Vec<SessionId>,
}

/// The daemon's whole state. Not thread-safe by itself: the server keeps it
/// behind one mutex, locked with `lock`.
pub struct State {
    pub(crate) config: Config,
    pub(crate) table: Table,
    pub(crate) store: Store,
    /// `None` when kernel sync is off.
    pub(crate) kernel: Option<Box<dyn ReservedPorts>>,
    pub(crate) baseline: PortSet,
    /// Where the baseline came from (empty when kernel sync is off).
    pub(crate) baseline_origin: String,
    /// What the kernel's list holds, as far as we know: the value we last
    /// wrote (or found, see `check_kernel`); `None` after a failed write.
    pub(crate) last_written: Option<PortSet>,
    /// `last_written` as text, rendered when `check_kernel` first needs it.
    last_written_text: Option<String>,
    /// Counts writes to the kernel's list (see `kernel_generation`).
    kernel_generation: u64,
    /// When `check_kernel` last logged a change by someone else, and how
    /// many it saw since without logging.
    kernel_incident_logged: Option<(Instant, u64)>,
    pub(crate) sessions: HashMap<SessionId, Session>,
    pub(crate) capabilities: HashMap<FileId, SessionId>,
    next_session: u64,
    pub(crate) netns_cookie: u64,
    pub(crate) in_use: InUseProbe,
    pub(crate) started: Instant,
    tokens: TokenPool,
    /// The kernel holds ports we no longer reserve; `flush_kernel` will
    /// write the smaller value (see `release_in_kernel`).
    kernel_shrink_pending: bool,
    /// Blocks released since the last `flush_kernel`: the kernel keeps them
    /// one more window (see `flush_kernel`).
    released_recently: Vec<portres_core::Block>,
    /// Called when a deferred shrink is pending, so the server schedules a
    /// `flush_kernel` soon.
    on_shrink_pending: Option<Box<dyn Fn() + Send>>,
    /// ip_local_port_range and when it was read.
    range_cache: Option<(Instant, (u16, u16))>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("reservations", &self.table.len())
            .field("sessions", &self.sessions.len())
            .field("kernel_sync", &self.kernel.is_some())
            .finish()
    }
}

/// Tokens drawn from the OS random source, 64 per getrandom() call (one
/// system call per 64 reservations instead of one each). Nothing about a
/// token is derived from another: each is eight fresh random bytes.
#[derive(Default)]
pub(crate) struct TokenPool {
    buf: Vec<u64>,
}

impl TokenPool {
    const BATCH: usize = 64;

    fn next(&mut self) -> Result<u64, Error> {
        if self.buf.is_empty() {
            let mut bytes = [0u8; Self::BATCH * 8];
            getrandom::fill(&mut bytes).map_err(|e| {
                Error::new(ErrorCode::Internal, format!("OS random source failed: {e}"))
            })?;
            self.buf = bytes
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
                .collect();
        }
        Ok(self.buf.pop().expect("refilled above"))
    }
}

impl State {
    /// Builds the state from an opened store, restoring persistent
    /// reservations with fresh tokens, and brings the kernel's value to
    /// baseline + persistent blocks (dropping any runtime blocks a crashed
    /// predecessor left behind).
    pub fn new(
        config: Config,
        store: Store,
        kernel: Option<Box<dyn ReservedPorts>>,
        in_use: InUseProbe,
        netns_cookie: u64,
    ) -> Result<State, Error> {
        let mut state = State {
            config,
            table: Table::new(),
            store,
            kernel,
            baseline: PortSet::new(),
            baseline_origin: String::new(),
            last_written: None,
            last_written_text: None,
            kernel_generation: 0,
            kernel_incident_logged: None,
            sessions: HashMap::new(),
            capabilities: HashMap::new(),
            next_session: 1,
            netns_cookie,
            in_use,
            started: Instant::now(),
            tokens: TokenPool::default(),
            kernel_shrink_pending: false,
            released_recently: Vec::new(),
            on_shrink_pending: None,
            range_cache: None,
        };
        if let Some(kernel) = state.kernel.as_ref() {
            let record = match state.store.baseline_record().map_err(Error::from)? {
                Some(record) => record,
                None => {
                    // First start on this store: what the admin had is the
                    // baseline we must preserve forever after.
                    let current = kernel.read().map_err(|e| {
                        Error::new(
                            ErrorCode::Internal,
                            format!("reading ip_local_reserved_ports: {e}"),
                        )
                    })?;
                    let origin = crate::baseline::first_start_origin();
                    let at = crate::baseline::now_unix();
                    state
                        .store
                        .record_baseline(&current, &origin, at)
                        .map_err(Error::from)?;
                    if !current.is_empty() {
                        // Could be the admin's, or blocks another portres
                        // daemon left (a crash, another state directory).
                        log::warn!(
                            "recorded the kernel's current ip_local_reserved_ports {current} as the admin's baseline (kept reserved for good); if it holds blocks another portres daemon left behind, stop portresd and run `portresd --reset-baseline=VALUE` with this --state-dir",
                        );
                    }
                    portres_store::BaselineRecord {
                        ports: current,
                        recorded_at: Some(at),
                        origin: Some(origin),
                    }
                }
            };
            state.baseline_origin = crate::baseline::describe(&record);
            log::info!(
                "kernel baseline {}: {}",
                crate::baseline::shown(&record.ports),
                state.baseline_origin
            );
            state.baseline = record.ports;
        }
        for row in state.store.load().map_err(Error::from)? {
            let res = Reservation::persistent(
                state.new_token()?,
                row.protocol,
                row.block,
                row.owner,
                row.label,
            );
            state.table.insert(res).map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("the store holds overlapping reservations: {}", e.message),
                )
            })?;
        }
        state.sync_kernel().map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("writing ip_local_reserved_ports: {e}"),
            )
        })?;
        Ok(state)
    }

    /// A fresh random token no live reservation has.
    pub(crate) fn new_token(&mut self) -> Result<Token, Error> {
        loop {
            if let Some(t) = Token::new(self.tokens.next()?)
                && !self.table.contains_token(t)
            {
                return Ok(t);
            }
        }
    }

    /// Registers a new connection.
    pub fn open_session(&mut self, caller: Caller) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                caller,
                capability: None,
                speaks_for: vec![id],
            },
        );
        id
    }

    /// Ends a connection: its runtime reservations go, and the kernel is
    /// told before this returns.
    pub fn close_session(&mut self, id: SessionId) {
        if let Some(session) = self.sessions.remove(&id)
            && let Some((_, file_id)) = session.capability
        {
            self.capabilities.remove(&file_id);
        }
        let gone = self.table.remove_session(id);
        if !gone.is_empty() {
            log::debug!(
                "session {} closed, released {} reservation(s)",
                id.0,
                gone.len()
            );
            self.release_in_kernel(gone.iter().map(|r| r.block));
        }
    }

    /// Whether `caller` is an administrator under this configuration.
    pub fn is_admin(config: &Config, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0
            || (config.mode == Mode::User && uid == config.daemon_uid)
            || config
                .admin_gid
                .is_some_and(|g| gid == g || groups.contains(&g))
    }

    pub(crate) fn session(&self, id: SessionId) -> Result<&Session, Error> {
        self.sessions
            .get(&id)
            .ok_or_else(|| Error::new(ErrorCode::Internal, "unknown session"))
    }

    /// What the kernel's reserved-ports value must be now.
    pub(crate) fn desired_kernel_value(&self, persistent_only: bool) -> PortSet {
        self.baseline
            .union(&self.table.reserved_ports(persistent_only))
    }

    /// Sets the hook called when a deferred shrink of the kernel's value
    /// becomes pending; the server uses it to schedule `flush_kernel`.
    pub fn set_on_shrink_pending(&mut self, hook: Box<dyn Fn() + Send>) {
        self.on_shrink_pending = Some(hook);
    }

    /// Writes the sysctl if its value differs from what it must be.
    pub(crate) fn sync_kernel(&mut self) -> io::Result<()> {
        let desired = self.desired_kernel_value(false);
        self.kernel_shrink_pending = false;
        self.released_recently.clear();
        self.write_kernel(desired)
    }

    /// Before answering a request that reserved `block`: make sure the
    /// kernel reserves it. If it already does (typically a block released a
    /// moment ago and acquired again, whose shrink is still pending) nothing
    /// is written — that is what keeps steady-state acquire/release cycles
    /// free of sysctl writes. Otherwise the kernel gets what it had plus the
    /// block (pending shrinks stay pending: reserving more is always safe),
    /// so the cost does not grow with the number of reservations.
    pub(crate) fn cover_in_kernel(&mut self, block: portres_core::Block) -> io::Result<()> {
        let Some(kernel) = self.kernel.as_mut() else {
            return Ok(());
        };
        match &mut self.last_written {
            Some(written) if written.covers_block(block) => Ok(()),
            Some(written) => {
                // An adding write: nothing leaves the list meanwhile, and
                // the cost does not grow with the list's length.
                let added: PortSet = std::iter::once(block).collect();
                self.kernel_generation += 1;
                let result = kernel.add(&added);
                match result {
                    Ok(()) => written.insert_block(block),
                    // Part of it may be in: we no longer know the value.
                    Err(_) => self.last_written = None,
                }
                self.last_written_text = None;
                result
            }
            // After a failed write we do not know what the kernel holds.
            None => self.write_kernel(self.desired_kernel_value(false)),
        }
    }

    /// After a refused Acquire took its candidate `block` out of the table:
    /// a flush meanwhile may have written it into the kernel (the table
    /// held it while it was probed), so when the kernel may hold it, a
    /// shrink is scheduled like after a release.
    pub(crate) fn forget_candidate(&mut self, block: portres_core::Block) {
        if self.kernel.is_some()
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
    /// smaller), and the smaller value is written by `flush_kernel`, soon,
    /// once for every release that happened meanwhile.
    pub(crate) fn release_in_kernel(
        &mut self,
        blocks: impl IntoIterator<Item = portres_core::Block>,
    ) {
        if self.kernel.is_some() {
            self.released_recently.extend(blocks);
            self.mark_shrink_pending();
        }
    }

    fn mark_shrink_pending(&mut self) {
        if !self.kernel_shrink_pending {
            self.kernel_shrink_pending = true;
            if let Some(hook) = &self.on_shrink_pending {
                hook();
            }
        }
    }

    /// Writes a pending shrink, if any; returns whether another flush is
    /// due one window later.
    ///
    /// A port leaves the kernel's list only once it has been free for a
    /// whole window: blocks released since the last flush stay reserved
    /// until the next one. Why: under churn the same few ports are released
    /// and acquired again all the time; dropping them at every flush made
    /// the next Acquire write them back (two sysctl writes per port per
    /// window, each under the state lock). Now a steady churn writes
    /// nothing, and an idle port is gone within two windows.
    pub fn flush_kernel(&mut self) -> bool {
        if !self.kernel_shrink_pending {
            return false;
        }
        let recent = std::mem::take(&mut self.released_recently);
        let keep = !recent.is_empty();
        let mut desired = self.desired_kernel_value(false);
        if keep {
            let ranges = recent.iter().map(|b| (b.start(), b.last())).collect();
            desired.extend(&PortSet::from_ranges(ranges));
        }
        self.kernel_shrink_pending = keep;
        if let Err(e) = self.write_kernel(desired) {
            log::error!("could not update ip_local_reserved_ports: {e}");
        }
        keep
    }

    /// Brings the kernel to `desired` (or a coarser superset when a shrink
    /// of a long value needs one) without a moment in which a port both
    /// values hold is missing: see `portres_kernel::sysctl::converge`.
    fn write_kernel(&mut self, desired: PortSet) -> io::Result<()> {
        let Some(kernel) = self.kernel.as_mut() else {
            return Ok(());
        };
        if self.last_written.as_ref() == Some(&desired) {
            return Ok(());
        }
        // Unknown after a failed write: read it, so growth can still be
        // written as an addition.
        let current = match self.last_written.take() {
            Some(written) => Some(written),
            None => kernel.read().ok(),
        };
        self.last_written_text = None;
        self.kernel_generation += 1;
        // `last_written` stays unknown until the write succeeds, so a failed
        // write is retried by the next change rather than skipped as
        // "unchanged".
        let held = portres_kernel::sysctl::converge(&mut **kernel, current.as_ref(), &desired)?;
        self.last_written = Some(held);
        Ok(())
    }

    /// Whether the daemon keeps the kernel's list.
    pub fn kernel_sync(&self) -> bool {
        self.kernel.is_some()
    }

    /// How many times the kernel's list was written (or a write tried):
    /// a text read between two equal counts saw no write of ours.
    pub fn kernel_generation(&self) -> u64 {
        self.kernel_generation
    }

    /// Reads the kernel's list without the state (and its lock); see
    /// `check_kernel_text`.
    pub fn kernel_text_reader(&self) -> Option<portres_kernel::sysctl::TextReader> {
        self.kernel.as_ref()?.text_reader()
    }

    /// `check_kernel_text` with a read made now, under the lock.
    pub fn check_kernel(&mut self) {
        let Some(kernel) = self.kernel.as_ref() else {
            return;
        };
        let text = kernel.read_text();
        self.check_kernel_text(self.kernel_generation, text);
    }

    /// Once in a while (the server's timer): whether someone else changed
    /// the kernel's list (`sysctl -w`, `sysctl --system`, another tool),
    /// given `text` read at `generation` (see `kernel_generation`); if so,
    /// puts back the baseline, the reservations and the ports whose shrink
    /// is still pending, logging the incident once (at most one line a
    /// minute when it keeps happening). Costs a text comparison
    /// when nothing changed. Why the text is read by the caller: a long
    /// list takes milliseconds to read (2 ms for 24 KB), which should not
    /// be spent under the state lock.
    pub fn check_kernel_text(&mut self, generation: u64, text: io::Result<String>) {
        if self.kernel.is_none() || generation != self.kernel_generation {
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
            .kernel_incident_logged
            .is_some_and(|(at, _)| at.elapsed() < KERNEL_INCIDENT_LOG_INTERVAL);
        if quiet {
            if let Some((_, unlogged)) = &mut self.kernel_incident_logged {
                *unlogged += 1;
            }
        } else {
            let more = match self.kernel_incident_logged {
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
            self.kernel_incident_logged = Some((Instant::now(), 0));
        }
        self.last_written = Some(found);
        self.last_written_text = None;
        let mut desired = self.desired_kernel_value(false);
        let pending = self.released_recently.iter().map(|b| (b.start(), b.last()));
        desired.extend(&PortSet::from_ranges(pending.collect()));
        if let Err(e) = self.write_kernel(desired) {
            log::error!("could not restore ip_local_reserved_ports: {e}");
        }
    }

    /// What the kernel's list holds now, for Status: what portresd last
    /// wrote or found there (a change by someone else shows within
    /// `KERNEL_CHECK_INTERVAL`, when it is also undone), or a fresh read
    /// when a write failed; empty without kernel sync.
    pub(crate) fn kernel_value(&self) -> String {
        let Some(kernel) = self.kernel.as_ref() else {
            return String::new();
        };
        if let Some(text) = &self.last_written_text {
            return text.clone();
        }
        match &self.last_written {
            Some(written) => written.to_string(),
            None => kernel.read_text().unwrap_or_default(),
        }
    }

    /// The kernel's dynamic port range, re-read at most once a second (it
    /// costs a file read; admins change it rarely).
    pub(crate) fn dynamic_range(&mut self) -> io::Result<(u16, u16)> {
        if let Some((at, range)) = self.range_cache
            && at.elapsed() < std::time::Duration::from_secs(1)
        {
            return Ok(range);
        }
        let range = portres_kernel::sysctl::local_port_range()?;
        self.range_cache = Some((Instant::now(), range));
        Ok(range)
    }

    /// At clean shutdown: the kernel keeps the baseline plus persistent
    /// blocks (runtime reservations end with the daemon).
    pub fn shutdown(&mut self) {
        let ids: Vec<_> = self.sessions.keys().copied().collect();
        for id in ids {
            self.table.remove_session(id);
        }
        self.sessions.clear();
        let desired = self.desired_kernel_value(true);
        if let Err(e) = self.write_kernel(desired) {
            log::error!("could not restore ip_local_reserved_ports at shutdown: {e}");
        }
    }

    /// The wire form of a reservation, with the token only if `viewer` may
    /// use it.
    pub(crate) fn describe(&self, res: &Reservation, viewer: SessionId) -> ReservationInfo {
        let show_token = self
            .sessions
            .get(&viewer)
            .is_some_and(|s| res.usable_by(&s.caller, &s.speaks_for));
        ReservationInfo {
            protocol: res.protocol,
            start: res.block.start(),
            count: res.block.count(),
            kind: res.kind,
            token: show_token.then_some(res.token),
            owner: res.owner.map(OwnerInfo::from),
            holder: res.holder.map(|h| HolderInfo {
                uid: h.uid,
                pid: h.pid,
            }),
            label: res.label.clone(),
            in_use: None,
        }
    }

    /// Checks that no port of the block is in use right now.
    pub(crate) fn check_not_in_use(
        &self,
        protocol: Protocol,
        block: portres_core::Block,
    ) -> Result<(), Error> {
        check_not_in_use(&*self.in_use, protocol, block)
    }

    /// Number of reservations of each kind.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let persistent = self
            .table
            .iter()
            .filter(|r| r.kind == Kind::Persistent)
            .count();
        (self.table.len() - persistent, persistent)
    }
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

/// Validates a label.
pub(crate) fn check_label(label: &Option<String>) -> Result<(), Error> {
    if let Some(l) = label {
        if l.len() > MAX_LABEL_BYTES {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "label is {} bytes; at most {MAX_LABEL_BYTES} allowed",
                    l.len()
                ),
            ));
        }
        // Why: `list` shows labels to everyone; a control, format (bidi
        // override, zero-width) or separator character would let one
        // reservation's label hide or rewrite what is shown beside it.
        if let Some(c) = portres_core::first_refused_in_label(l) {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "label must not contain control, invisible format or separator characters \
                     (found U+{:04X}; Unicode categories Cc, Cf, Zl, Zp are refused)",
                    c as u32
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod check_label_tests {
    use super::*;

    #[test]
    fn labels_refuse_bidi_overrides_zero_width_and_separators() {
        for bad in [
            "a\u{202e}b",
            "\u{2066}x\u{2069}",
            "x\u{200b}",
            "\u{feff}",
            "a\u{2028}b",
            "a\u{2029}",
            "a\nb",
        ] {
            let err = check_label(&Some(bad.to_string())).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidParameter, "{bad:?}");
            assert!(err.message.contains("U+"), "{err}");
        }
        for good in ["web tests", "café ☕", "中文", "🦀 e\u{301}"] {
            check_label(&Some(good.to_string())).unwrap();
        }
        check_label(&None).unwrap();
    }
}

/// The lowest port of `block` some socket holds right now, if any.
pub(crate) fn first_port_in_use(
    probe: &(dyn Fn(Protocol, u16) -> io::Result<bool> + Send + Sync),
    protocol: Protocol,
    block: portres_core::Block,
) -> Result<Option<u16>, Error> {
    for port in block.ports() {
        match probe(protocol, port) {
            Ok(false) => {}
            Ok(true) => return Ok(Some(port)),
            Err(e) => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("could not check whether {protocol} port {port} is in use: {e}"),
                ));
            }
        }
    }
    Ok(None)
}

/// Checks that no port of the block is in use right now.
pub(crate) fn check_not_in_use(
    probe: &(dyn Fn(Protocol, u16) -> io::Result<bool> + Send + Sync),
    protocol: Protocol,
    block: portres_core::Block,
) -> Result<(), Error> {
    match first_port_in_use(probe, protocol, block)? {
        None => Ok(()),
        Some(port) => Err(Error::new(
            ErrorCode::SharingViolation,
            format!("{protocol} port {port} is in use"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use portres_kernel::sysctl::FakeReservedPorts;
    use portres_proto::{AcquireParams, ReleaseParams};

    use super::*;
    use crate::handlers::runtime::{EXTRA_PROBES_PER_ACQUIRE, acquire};

    /// The kernel's rules (see `FakeReservedPorts`), shared with the test.
    #[derive(Clone, Default)]
    struct FakeSysctl(Arc<Mutex<FakeReservedPorts>>);

    impl FakeSysctl {
        fn value(&self) -> PortSet {
            self.0.lock().unwrap().value.clone()
        }

        fn writes(&self) -> usize {
            self.0.lock().unwrap().writes
        }

        /// Someone else's `sysctl -w`.
        fn set_by_someone_else(&self, text: &str) {
            let mut fake = self.0.lock().unwrap();
            fake.value = text.parse().unwrap();
            let value = fake.value.clone();
            fake.history.push(value);
        }

        /// Every value the list held since the last call.
        fn take_history(&self) -> Vec<PortSet> {
            std::mem::take(&mut self.0.lock().unwrap().history)
        }
    }

    impl ReservedPorts for FakeSysctl {
        fn read(&self) -> io::Result<PortSet> {
            self.0.lock().unwrap().read()
        }

        fn add(&mut self, ports: &PortSet) -> io::Result<()> {
            self.0.lock().unwrap().add(ports)
        }

        fn replace(&mut self, ports: &PortSet) -> io::Result<()> {
            self.0.lock().unwrap().replace(ports)
        }
    }

    type Probe = Arc<dyn Fn(Protocol, u16) -> io::Result<bool> + Send + Sync>;

    fn state_with(sysctl: &FakeSysctl, baseline: &str, probe: Probe) -> (Mutex<State>, SessionId) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_current_user();
        config.state_dir = dir.path().join("state");
        let mut store = Store::open(&config.state_dir).unwrap();
        store.set_baseline(&baseline.parse().unwrap()).unwrap();
        let mut state =
            State::new(config, store, Some(Box::new(sysctl.clone())), probe, 0).unwrap();
        // The dynamic range, as if just read from the kernel.
        state.range_cache = Some((Instant::now() + Duration::from_secs(3600), (32768, 60999)));
        let session = state.open_session(Caller {
            uid: 0,
            gid: 0,
            groups: vec![],
            pid: 1,
            admin: true,
        });
        // The store's directory may go: the database stays open.
        drop(dir);
        (Mutex::new(state), session)
    }

    fn params(start: u32, count: u32) -> AcquireParams {
        AcquireParams {
            protocol: Protocol::Tcp,
            start,
            count,
            label: None,
        }
    }

    fn no_port_in_use() -> Probe {
        Arc::new(|_, _| Ok(false))
    }

    /// A probe that answers `busy(port)` and counts its calls.
    fn counting_probe(
        busy: impl Fn(u16) -> bool + Send + Sync + 'static,
    ) -> (Probe, Arc<AtomicUsize>) {
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        let probe: Probe = Arc::new(move |_, port| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok(busy(port))
        });
        (probe, probes)
    }

    #[test]
    fn a_released_port_leaves_the_kernel_after_a_whole_quiet_window_and_churn_writes_nothing() {
        let sysctl = FakeSysctl::default();
        let (state, session) = state_with(&sysctl, "", no_port_in_use());
        let cycle = || {
            let r = acquire(&state, session, params(40000, 2)).unwrap();
            let token = r.reservation.token.unwrap();
            lock(&state)
                .release(session, ReleaseParams { token })
                .unwrap();
        };
        let held = || sysctl.value().to_string();
        cycle();
        assert_eq!(held(), "40000-40001", "covered before the answer");
        let after_first = sysctl.writes();
        // Churn: acquired and released again within every window.
        for _ in 0..5 {
            cycle();
            assert!(lock(&state).flush_kernel(), "another flush is due");
            assert_eq!(held(), "40000-40001");
        }
        assert_eq!(sysctl.writes(), after_first, "steady churn writes nothing");
        // Quiet for a whole window: gone at the next flush, and nothing more
        // is due.
        assert!(!lock(&state).flush_kernel());
        assert_eq!(held(), "");
        assert!(!lock(&state).flush_kernel());
        assert_eq!(sysctl.writes(), after_first + 1);
    }

    #[test]
    fn a_long_list_never_lacks_a_reserved_port_while_it_grows_and_shrinks() {
        let sysctl = FakeSysctl::default();
        let (state, session) = state_with(&sysctl, "1000-1009", no_port_in_use());
        // 4000 scattered one-port reservations: ~24 KB of text, six write
        // pieces.
        let mut tokens = Vec::new();
        for i in 0..4000u32 {
            let r = acquire(&state, session, params(20000 + 3 * i, 1)).unwrap();
            tokens.push(r.reservation.token.unwrap());
        }
        assert!(sysctl.value().to_string().len() > 5 * 4092);
        let must_hold = |state: &Mutex<State>| lock(state).desired_kernel_value(false);
        sysctl.take_history();
        // Release every other one and acquire others, flushing meanwhile:
        // every value the kernel ever holds covers what is reserved.
        for (round, token) in tokens.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            lock(&state)
                .release(session, ReleaseParams { token: *token })
                .unwrap();
            let reserved = must_hold(&state);
            if round % 100 == 0 {
                let start = 33000 + round as u32;
                acquire(&state, session, params(start, 1)).unwrap();
                lock(&state).flush_kernel();
                lock(&state).flush_kernel();
            }
            for value in sysctl.take_history() {
                assert!(value.covers(&reserved), "a reserved port left the kernel");
            }
        }
        lock(&state).flush_kernel();
        lock(&state).flush_kernel();
        let reserved = must_hold(&state);
        let held = sysctl.value();
        assert!(held.covers(&reserved));
        // 2000 scattered ports are too long for one write: the kernel holds
        // a coarser superset that fits one, no coarser than needed.
        let len = held.to_string().len();
        let max = portres_kernel::sysctl::MAX_WRITE;
        assert!(max - 12 < len && len <= max, "{len} bytes");
    }

    #[test]
    fn a_refused_acquire_whose_block_a_flush_wrote_meanwhile_leaves_the_kernel() {
        // The candidate is in the table while it is probed; a flush then
        // (another session's release) writes it into the kernel. The probe
        // finds a port in use: the block must still leave the kernel.
        let shared: Arc<OnceLock<Arc<Mutex<State>>>> = Arc::new(OnceLock::new());
        let inside = shared.clone();
        let probe: Probe = Arc::new(move |_, port| {
            if port == 45000
                && let Some(state) = inside.get()
            {
                lock(state).flush_kernel();
            }
            Ok(port == 45099)
        });
        let sysctl = FakeSysctl::default();
        let (state, session) = state_with(&sysctl, "", probe);
        let state = Arc::new(state);
        shared.set(state.clone()).ok().unwrap();
        // A release leaves a shrink pending.
        let other = acquire(&state, session, params(50000, 1)).unwrap();
        let token = other.reservation.token.unwrap();
        lock(&state)
            .release(session, ReleaseParams { token })
            .unwrap();
        lock(&state).flush_kernel();
        let err = acquire(&state, session, params(45000, 100)).unwrap_err();
        assert_eq!(err.code, ErrorCode::SharingViolation);
        assert!(
            sysctl.value().contains(45000),
            "the flush wrote the candidate"
        );
        lock(&state).flush_kernel();
        lock(&state).flush_kernel();
        assert_eq!(sysctl.value().to_string(), "", "converged to the baseline");
        assert_eq!(lock(&state).kernel_value(), "", "and Status says so");
    }

    #[test]
    fn a_list_someone_else_rewrote_is_restored_at_the_next_check() {
        let sysctl = FakeSysctl::default();
        let (state, session) = state_with(&sysctl, "1000", no_port_in_use());
        acquire(&state, session, params(40000, 10)).unwrap();
        let r = acquire(&state, session, params(41000, 1)).unwrap();
        let token = r.reservation.token.unwrap();
        lock(&state)
            .release(session, ReleaseParams { token })
            .unwrap();
        let writes = sysctl.writes();
        lock(&state).check_kernel();
        assert_eq!(sysctl.writes(), writes, "nothing changed: nothing written");
        // `sysctl --system` puts the admin's value back.
        sysctl.set_by_someone_else("1000,2000");
        lock(&state).check_kernel();
        assert_eq!(
            sysctl.value().to_string(),
            "1000,40000-40009,41000",
            "baseline, reservations and the port whose shrink is pending"
        );
        let writes = sysctl.writes();
        lock(&state).check_kernel();
        assert_eq!(sysctl.writes(), writes, "restored once");
    }

    #[test]
    fn a_wildcard_search_past_8000_busy_ports_probes_each_port_once() {
        // 8000 ordinary sockets at the bottom of the dynamic range.
        let (probe, probes) = counting_probe(|port| (32768..40768).contains(&port));
        let sysctl = FakeSysctl::default();
        let (state, session) = state_with(&sysctl, "", probe);
        let r = acquire(&state, session, params(0, 1)).unwrap();
        assert_eq!(r.reservation.start, 40768);
        assert_eq!(probes.swap(0, Ordering::Relaxed), 8001);
        // The next search skips the reserved 40768 without probing ports
        // whose blocks would hold it (40753..40767).
        let r = acquire(&state, session, params(0, 16)).unwrap();
        assert_eq!(r.reservation.start, 40769);
        assert_eq!(probes.swap(0, Ordering::Relaxed), 7985 + 16);
    }

    #[test]
    fn a_wildcard_block_search_past_scattered_busy_ports_probes_each_port_at_most_once() {
        // Every 10th port busy up to 36760: no block of 16 fits below.
        let (probe, probes) = counting_probe(|port| port <= 36760 && port % 10 == 0);
        let sysctl = FakeSysctl::default();
        let (state, session) = state_with(&sysctl, "", probe);
        let r = acquire(&state, session, params(0, 16)).unwrap();
        assert_eq!(r.reservation.start, 36761);
        assert_eq!(probes.load(Ordering::Relaxed), 36776 - 32768 + 1);
    }

    #[test]
    fn a_wildcard_search_through_a_range_full_of_sockets_gives_up_within_its_probe_budget() {
        let (probe, probes) = counting_probe(|_| true);
        let sysctl = FakeSysctl::default();
        let (state, session) = state_with(&sysctl, "", probe);
        let err = acquire(&state, session, params(0, 4)).unwrap_err();
        assert_eq!(err.code, ErrorCode::NoFreeBlock);
        assert!(err.message.contains("gave up"), "{}", err.message);
        assert_eq!(probes.load(Ordering::Relaxed), EXTRA_PROBES_PER_ACQUIRE + 4);
        let state = lock(&state);
        assert!(state.table.is_empty(), "the refusal changed nothing");
    }

    #[test]
    fn the_baselines_ports_are_refused_to_an_explicit_start() {
        let sysctl = FakeSysctl::default();
        let (state, session) = state_with(&sysctl, "33000-33009", no_port_in_use());
        let err = acquire(&state, session, params(32995, 10)).unwrap_err();
        assert_eq!(err.code, ErrorCode::SharingViolation);
        assert!(err.message.contains("33000-33004"), "{}", err.message);
        assert!(lock(&state).table.is_empty());
        // Next to it is fine; a wildcard search goes around it.
        acquire(&state, session, params(33010, 1)).unwrap();
        let r = acquire(&state, session, params(32999, 1)).unwrap();
        assert_eq!(r.reservation.start, 32999);
        let r = acquire(&state, session, params(0, 300)).unwrap();
        assert_eq!(r.reservation.start, 33011);
    }
}
