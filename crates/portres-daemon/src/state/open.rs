//! Building the state: the baseline (recorded at the first start, kept
//! forever after), the persistent reservations restored from the store
//! with fresh tokens, and the kernel's list brought to baseline +
//! persistent blocks (dropping runtime blocks a crashed predecessor left).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use portres_core::{Error, ErrorCode, PortSet, Reservation, Table};
use portres_kernel::sysctl::ReservedPorts;
use portres_store::Store;

use super::{State, TokenPool};
use crate::config::Config;
use crate::kernel::{Kernel, KernelMirror, NoEnforcer};

impl State {
    /// Builds the state from an opened store and the kernel; `reserved`
    /// is the kernel's reserved-ports list, `None` when kernel sync is off.
    pub fn new(
        config: Config,
        store: Store,
        kernel: Arc<dyn Kernel>,
        reserved: Option<Box<dyn ReservedPorts>>,
    ) -> Result<State, Error> {
        let netns_cookie = kernel.current_netns_cookie().map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot read our network namespace cookie: {e}"),
            )
        })?;
        let mut state = State {
            config,
            table: Table::new(),
            store,
            kernel,
            mirror: KernelMirror::new(reserved),
            enforcer: Box::new(NoEnforcer::new("not configured")),
            baseline: PortSet::new(),
            baseline_origin: String::new(),
            sessions: Default::default(),
            capabilities: HashMap::new(),
            next_session: 1,
            netns_cookie,
            started: Instant::now(),
            tokens: TokenPool::default(),
            range_cache: None,
            declared_problems: Vec::new(),
            holders: super::holders::Holders::new().map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot make the pidfd watch (epoll): {e}"),
                )
            })?,
        };
        if state.mirror.is_on() {
            state.load_baseline()?;
        }
        for row in state.store.load().map_err(Error::from)? {
            let mut res = Reservation::persistent(
                state.new_token()?,
                row.protocol,
                row.block,
                row.owner,
                row.label,
            );
            res.source = row.source;
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

    /// The baseline from the store, or — first start on this store — what
    /// the kernel's list holds now, recorded.
    fn load_baseline(&mut self) -> Result<(), Error> {
        let record = match self.store.baseline_record().map_err(Error::from)? {
            Some(record) => record,
            None => {
                // First start on this store: what the admin had is the
                // baseline we must preserve forever after.
                let current = self.mirror.read().unwrap_or_else(|| Ok(PortSet::new()));
                let current = current.map_err(|e| {
                    Error::new(
                        ErrorCode::Internal,
                        format!("reading ip_local_reserved_ports: {e}"),
                    )
                })?;
                let origin = crate::baseline::first_start_origin();
                let at = crate::baseline::now_unix();
                self.store
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
        self.baseline_origin = crate::baseline::describe(&record);
        log::info!(
            "kernel baseline {}: {}",
            crate::baseline::shown(&record.ports),
            self.baseline_origin
        );
        self.baseline = record.ports;
        Ok(())
    }
}
