//! The messages of wire interface version 1: the parameters of each
//! method and their replies. The call envelope and `Request` are in
//! `call.rs`, the method table in `method.rs`, reply framing and error
//! replies in `reply.rs`.
//!
//! Unknown parameters are ignored so that later versions may add optional
//! ones; a missing required parameter or a value of the wrong type is
//! `invalid_parameter`.

use std::net::IpAddr;

use portres_core::{Kind, Owner, Protocol, Token};
use serde::{Deserialize, Serialize};

/// `io.portres.Acquire`: a runtime reservation of `count` ports of
/// `protocol` starting at `start` (0 = any free block in the kernel's
/// dynamic range). Lives as long as the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireParams {
    /// tcp or udp.
    pub protocol: Protocol,
    /// First port, or 0 for any.
    #[serde(default)]
    pub start: u32,
    /// How many ports (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// Free text shown in `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Acquire with a socket: the call carries one descriptor (an unbound
    /// socket of `protocol`) and the daemon binds it to this address and a
    /// free port of the new block before answering (the reply's `port`).
    /// If the bind fails, no reservation is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
}

fn one() -> u32 {
    1
}

/// `io.portres.Release`: ends a runtime reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseParams {
    /// The reservation's token.
    pub token: Token,
}

/// `io.portres.Bind`: binds the socket passed with this request (exactly one
/// descriptor, SCM_RIGHTS) to `address` and a free port of the reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindParams {
    /// The reservation's token.
    pub token: Token,
    /// The local address to bind ("0.0.0.0", "::", "127.0.0.1", ...); its
    /// family must match the socket's.
    pub address: IpAddr,
}

/// `io.portres.Create`: a persistent reservation (admin only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateParams {
    /// tcp or udp.
    pub protocol: Protocol,
    /// First port (not 0).
    pub start: u32,
    /// How many ports (not 0).
    pub count: u32,
    /// A user or group that may look it up and bind into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerInfo>,
    /// Free text shown in `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `io.portres.Delete` and `io.portres.Lookup`: a persistent reservation by
/// its exact block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockParams {
    /// tcp or udp.
    pub protocol: Protocol,
    /// First port.
    pub start: u32,
    /// How many ports.
    pub count: u32,
}

/// `io.portres.List`: every reservation, optionally of one protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListParams {
    /// Only this protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// A reservation's owner on the wire: `{"kind":"user","id":1000}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerInfo {
    /// "user" or "group".
    pub kind: OwnerKind,
    /// The uid or gid.
    pub id: u32,
}

/// Whether an owner is a user or a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    /// A uid.
    User,
    /// A gid.
    Group,
}

impl From<Owner> for OwnerInfo {
    fn from(o: Owner) -> OwnerInfo {
        match o {
            Owner::User(id) => OwnerInfo {
                kind: OwnerKind::User,
                id,
            },
            Owner::Group(id) => OwnerInfo {
                kind: OwnerKind::Group,
                id,
            },
        }
    }
}

impl From<OwnerInfo> for Owner {
    fn from(o: OwnerInfo) -> Owner {
        match o.kind {
            OwnerKind::User => Owner::User(o.id),
            OwnerKind::Group => Owner::Group(o.id),
        }
    }
}

/// The session holding a runtime reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    /// Its uid.
    pub uid: u32,
    /// Its pid when it connected; for a portserver holder, the process
    /// the reservation belongs to (it ends when that process exits).
    pub pid: i32,
    /// Where the session came from, when it is not a client connection
    /// (absent: a client connection). Added in 0.1 without a version
    /// change: older clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<HolderOrigin>,
}

/// Where a holding session came from, when it is not a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HolderOrigin {
    /// The portserver endpoint (`portresd --portserver`): held for a
    /// process named by pid, until it exits.
    Portserver,
}

/// A reservation as the daemon describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationInfo {
    /// tcp or udp.
    pub protocol: Protocol,
    /// First port.
    pub start: u16,
    /// How many ports.
    pub count: u16,
    /// "runtime" or "persistent".
    pub kind: Kind,
    /// Present only when the asker may use the reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Token>,
    /// Persistent reservations: the delegated owner, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerInfo>,
    /// Runtime reservations: the holding session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderInfo>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `List` only: the ports of the block some socket holds right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use: Option<Vec<u16>>,
    /// Declared persistent reservations: the portres.d file that declares
    /// it (absent for those created through the API and from daemons
    /// before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Reply of Acquire, Create and Lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationReply {
    /// The reservation.
    pub reservation: ReservationInfo,
    /// Acquire with a socket only: the port the socket is now bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Reply of Bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindReply {
    /// The port the socket is now bound to.
    pub port: u16,
}

/// Reply of List.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListReply {
    /// Every reservation, TCP then UDP, by start port.
    pub reservations: Vec<ReservationInfo>,
}

/// Reply of Status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The daemon's version.
    pub version: String,
    /// `WIRE_VERSION` of the daemon.
    pub wire_version: u32,
    /// "system" (run as root) or "user".
    pub mode: String,
    /// Whether ip_local_reserved_ports is kept in sync.
    pub kernel_sync: bool,
    /// The admin's baseline of ip_local_reserved_ports (kernel text form).
    pub baseline: String,
    /// Where the baseline came from: how and when it was recorded (empty
    /// when kernel sync is off, and from daemons before this field existed).
    #[serde(default)]
    pub baseline_origin: String,
    /// What ip_local_reserved_ports holds now, as far as the daemon knows:
    /// the value it last wrote or found there (kernel text form).
    pub reserved_ports: String,
    /// The kernel's dynamic port range, where wildcard acquires look.
    pub dynamic_range: [u16; 2],
    /// Live runtime reservations.
    pub runtime: usize,
    /// Persistent reservations.
    pub persistent: usize,
    /// Open client connections.
    pub sessions: usize,
    /// Per-user runtime quota in ports (root exempt).
    pub quota: u32,
    /// Whether the asker counts as an administrator.
    pub you_are_admin: bool,
    /// The asker's uid as the daemon sees it.
    pub your_uid: u32,
    /// The database path.
    pub store: String,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// The database could only be opened read-only (a read-only or failed
    /// file system): persistent changes fail with `store_unavailable` until
    /// it is writable again. Absent from daemons before this field existed.
    #[serde(default)]
    pub store_read_only: bool,
    /// Strict mode: "strict" (explicit binds into reserved blocks are
    /// refused to all but their holders) or "off". Absent (empty) from
    /// daemons before this field existed.
    #[serde(default)]
    pub enforcement: String,
    /// Why enforcement is off (`--enforce off`, or why the bind hooks
    /// could not be attached); absent when strict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_reason: Option<String>,
    /// The portres.d directories read, lowest precedence first (absent
    /// from daemons before declared reservations).
    #[serde(default)]
    pub config_dirs: Vec<String>,
    /// What the last reload (or the start) could not apply: bad lines,
    /// conflicts, unreadable files; retried at the next reload.
    #[serde(default)]
    pub declared_problems: Vec<DeclaredProblem>,
}

/// Something in the portres.d files a reload could not apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredProblem {
    /// The file (or directory) it is about.
    pub file: String,
    /// The line, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// `bad_line` (the line is not a reservation), `conflict` (overlaps
    /// another declaration or reservation, or a port is in use: retried at
    /// the next reload), `kept` (a reservation the file no longer declares
    /// stays, because the file has bad lines or cannot be read),
    /// `unreadable` (the file or directory cannot be read), `failed` (the
    /// store or the kernel refused the change; nothing changed).
    pub kind: String,
    /// What is wrong, for humans.
    pub message: String,
}

/// Reply of Reload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// The files read, in reading order.
    pub files: Vec<String>,
    /// Declared reservations in force after the reload.
    pub declared: usize,
    /// Reservations created, updated (owner, label or file) and deleted.
    pub created: usize,
    /// See `created`.
    pub updated: usize,
    /// See `created`.
    pub deleted: usize,
    /// What could not be applied (also in `Status`, until the next reload).
    pub problems: Vec<DeclaredProblem>,
}

/// Reply of Attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachReply {
    /// How many runtime reservations the attached session holds now.
    pub reservations: usize,
}

/// A reply with no parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `org.varlink.service.GetInfo` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarlinkInfo {
    /// "portres".
    pub vendor: String,
    /// "portresd".
    pub product: String,
    /// Daemon version.
    pub version: String,
    /// Project URL.
    pub url: String,
    /// Interfaces served.
    pub interfaces: Vec<String>,
}
