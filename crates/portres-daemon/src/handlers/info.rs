//! Read-only requests: List (with live socket usage), Status, and the
//! varlink service interface (GetInfo, GetInterfaceDescription).

use std::collections::HashMap;

use portres_core::{Error, ErrorCode, Protocol, SessionId};
use portres_proto::{DeclaredProblem, ListParams, ReservationInfo, StatusReply, VarlinkInfo};

use crate::kernel::Kernel;
use crate::state::State;

/// The varlink IDL of io.portres, served by GetInterfaceDescription.
pub const INTERFACE_DESCRIPTION: &str = include_str!("../../../../docs/io.portres.varlink");

/// The varlink IDL of org.varlink.service, the interface every varlink
/// service implements (the varlink specification's text, verbatim), served
/// by GetInterfaceDescription too: generic tools (`varlink help`) ask for it.
pub const SERVICE_INTERFACE_DESCRIPTION: &str =
    include_str!("../../../../docs/org.varlink.service.varlink");

impl State {
    /// List, without `in_use` (filled later, outside the lock).
    pub fn list(&self, session: SessionId, p: ListParams) -> Result<Vec<ReservationInfo>, Error> {
        Ok(self
            .table()
            .iter()
            .filter(|r| p.protocol.is_none_or(|proto| r.protocol == proto))
            .map(|r| self.describe(r, session))
            .collect())
    }

    /// Status: configuration and counts.
    pub fn status(&self, session: SessionId) -> Result<StatusReply, Error> {
        let caller = &self.session(session)?.caller;
        let (runtime, persistent) = self.counts();
        let range = self.kernel().local_port_range().unwrap_or((0, 0));
        Ok(StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            wire_version: portres_proto::WIRE_VERSION,
            mode: self.config().mode.as_str().to_string(),
            kernel_sync: self.kernel_sync(),
            baseline: self.baseline().to_string(),
            baseline_origin: self.baseline_origin().to_string(),
            reserved_ports: self.kernel_value(),
            dynamic_range: [range.0, range.1],
            runtime,
            persistent,
            sessions: self.session_count(),
            quota: self.config().quota,
            you_are_admin: caller.admin,
            your_uid: caller.uid,
            store: self.store().path().display().to_string(),
            uptime_seconds: self.started().elapsed().as_secs(),
            store_read_only: self.store().is_read_only(),
            enforcement: self.enforcement().as_str().to_string(),
            enforcement_reason: match self.enforcement() {
                crate::kernel::Enforcement::Off { reason } => Some(reason.clone()),
                crate::kernel::Enforcement::Strict { .. } => None,
            },
            config_dirs: self
                .config()
                .config_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            declared_problems: self
                .declared_problems()
                .iter()
                .map(|p| shown_to(p, caller.admin))
                .collect(),
        })
    }
}

/// A portres.d problem as `Status` shows it to a caller: whole to an
/// administrator; to anyone else without its message, which quotes the
/// file's text (a file reached through a symlink may be one only root may
/// read, e.g. /etc/shadow behind a link in a directory someone else could
/// write, and a bad line's message would quote its first word).
fn shown_to(p: &DeclaredProblem, admin: bool) -> DeclaredProblem {
    if admin {
        return p.clone();
    }
    DeclaredProblem {
        message:
            "details for administrators (portres status or reload as one, or the daemon's log)"
                .into(),
        ..p.clone()
    }
}

/// Fills `in_use` of each reservation from one socket-table dump per
/// protocol present. Runs without the state lock.
pub(super) fn fill_in_use(kernel: &dyn Kernel, list: &mut [ReservationInfo]) -> Result<(), Error> {
    for protocol in Protocol::ALL {
        if !list.iter().any(|r| r.protocol == protocol) {
            continue;
        }
        let mut ports = kernel.bound_ports(protocol).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("reading the {protocol} socket table: {e}"),
            )
        })?;
        ports.sort_unstable();
        ports.dedup();
        let mut cache: HashMap<(u16, u16), Vec<u16>> = HashMap::new();
        for r in list.iter_mut().filter(|r| r.protocol == protocol) {
            let last = r.start as u32 + r.count as u32 - 1;
            let used = cache.entry((r.start, r.count)).or_insert_with(|| {
                let lo = ports.partition_point(|&p| p < r.start);
                ports[lo..]
                    .iter()
                    .take_while(|&&p| (p as u32) <= last)
                    .copied()
                    .collect()
            });
            r.in_use = Some(used.clone());
        }
    }
    for r in list.iter_mut() {
        r.in_use.get_or_insert_with(Vec::new);
    }
    Ok(())
}

pub(crate) fn varlink_info() -> VarlinkInfo {
    VarlinkInfo {
        vendor: "portres".into(),
        product: "portresd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        // portres has no public home page; varlink's `url` is a required
        // string, so it is empty rather than a made-up address.
        url: String::new(),
        interfaces: vec!["org.varlink.service".into(), "io.portres".into()],
    }
}

/// GetInterfaceDescription: the IDL text of a served interface; `None` for
/// any other (answered `org.varlink.service.InterfaceNotFound`).
pub(crate) fn interface_description(interface: &str) -> Option<serde_json::Value> {
    let text = match interface {
        "io.portres" => INTERFACE_DESCRIPTION,
        "org.varlink.service" => SERVICE_INTERFACE_DESCRIPTION,
        _ => return None,
    };
    Some(serde_json::json!({ "description": text }))
}
