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
    pub(crate) last_written: Option<PortSet>,
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

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
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
        if self.kernel.is_none() {
            return Ok(());
        }
        let grown = match &self.last_written {
            Some(written) if written.covers_block(block) => return Ok(()),
            Some(written) => {
                let mut grown = written.clone();
                grown.insert_block(block);
                grown
            }
            // After a failed write we do not know what the kernel holds.
            None => self.desired_kernel_value(false),
        };
        self.write_kernel(grown)
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

    fn write_kernel(&mut self, desired: PortSet) -> io::Result<()> {
        let Some(kernel) = self.kernel.as_mut() else {
            return Ok(());
        };
        if self.last_written.as_ref() == Some(&desired) {
            return Ok(());
        }
        // Forget what we wrote until the write succeeds, so a failed write
        // is retried by the next change rather than skipped as "unchanged".
        self.last_written = None;
        kernel.write(&desired)?;
        self.last_written = Some(desired);
        Ok(())
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
        if l.chars().any(|c| c.is_control()) {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "label must not contain control characters",
            ));
        }
    }
    Ok(())
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use portres_proto::{AcquireParams, ReleaseParams};

    use super::*;

    /// A sysctl that remembers its value and counts writes.
    struct FakeSysctl {
        value: Arc<Mutex<PortSet>>,
        writes: Arc<AtomicUsize>,
    }

    impl ReservedPorts for FakeSysctl {
        fn read(&self) -> io::Result<PortSet> {
            Ok(self.value.lock().unwrap().clone())
        }

        fn write(&mut self, ports: &PortSet) -> io::Result<()> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            *self.value.lock().unwrap() = ports.clone();
            Ok(())
        }
    }

    #[test]
    fn a_released_port_leaves_the_kernel_after_a_whole_quiet_window_and_churn_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_current_user();
        config.state_dir = dir.path().join("state");
        let store = Store::open(&config.state_dir).unwrap();
        let value = Arc::new(Mutex::new(PortSet::new()));
        let writes = Arc::new(AtomicUsize::new(0));
        let sysctl = FakeSysctl {
            value: value.clone(),
            writes: writes.clone(),
        };
        let state = State::new(
            config,
            store,
            Some(Box::new(sysctl)),
            Arc::new(|_, _| Ok(false)),
            0,
        )
        .unwrap();
        let state = Mutex::new(state);
        let caller = Caller {
            uid: 0,
            gid: 0,
            groups: vec![],
            pid: 1,
            admin: true,
        };
        let session = lock(&state).open_session(caller);
        let cycle = || {
            let r = crate::handlers::runtime::acquire(
                &state,
                session,
                AcquireParams {
                    protocol: Protocol::Tcp,
                    start: 40000,
                    count: 2,
                    label: None,
                },
            )
            .unwrap();
            let token = r.reservation.token.unwrap();
            lock(&state)
                .release(session, ReleaseParams { token })
                .unwrap();
        };
        let held = || value.lock().unwrap().to_string();
        cycle();
        assert_eq!(held(), "40000-40001", "covered before the answer");
        let after_first = writes.load(Ordering::Relaxed);
        // Churn: acquired and released again within every window.
        for _ in 0..5 {
            cycle();
            assert!(lock(&state).flush_kernel(), "another flush is due");
            assert_eq!(held(), "40000-40001");
        }
        assert_eq!(
            writes.load(Ordering::Relaxed),
            after_first,
            "steady churn writes nothing"
        );
        // Quiet for a whole window: gone at the next flush, and nothing more
        // is due.
        assert!(!lock(&state).flush_kernel());
        assert_eq!(held(), "");
        assert!(!lock(&state).flush_kernel());
        assert_eq!(writes.load(Ordering::Relaxed), after_first + 1);
    }
}
