//! Runtime reservations: Acquire (SIO_ACQUIRE_PORT_RESERVATION), Release
//! (SIO_RELEASE_PORT_RESERVATION) and Bind (SIO_ASSOCIATE_PORT_RESERVATION
//! followed by bind to port 0) — Bind also serves persistent reservations.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use portres_core::{
    BindOrder, Block, Error, ErrorCode, Holder, Kind, PortSet, Protocol, Reservation, SessionId,
    Token,
};
use portres_proto::{AcquireParams, BindParams, BindReply, Empty, ReleaseParams, ReservationReply};

use crate::kernel::Kernel;
use crate::state::{State, check_label, first_port_in_use, lock};

/// How many in-use probes one Acquire may make beyond its block's own
/// ports. Why a bound: a wildcard search walks past every port some socket
/// holds, one probe (a bind, ~2 µs) each, on the worker that serves the
/// request; a user who binds many ports at the bottom of the range must
/// not make every Acquire take long. With the search resuming past each
/// busy port (below), a search probes each port at most once, so this only
/// stops searches through a range mostly bound by ordinary sockets.
pub(crate) const EXTRA_PROBES_PER_ACQUIRE: usize = 16384;

/// Acquire: a block at `start`, or the first free block of `count` in the
/// dynamic range when `start` is 0; held by this session.
///
/// The in-use probe (a socket and a bind per port) is the slow part and
/// needs no state, so it runs outside the state mutex: the block is first
/// reserved in the table (no other request can take it meanwhile), then
/// probed, then either covered in the kernel and answered or given back
/// and — for a wildcard request — the search goes on *after* the busy port:
/// every block that starts at or below a busy port `p` and above the
/// candidate's start holds `p`, and those below were refused before.
///
/// With a socket (`fd`, and `p.address`; `handle` checked they come
/// together) the socket is checked once the first candidate is in the
/// table, and bound into the block found before it is covered and
/// answered: a refused socket or a failed bind withdraws the candidate, so
/// nothing is left (no reservation, no quota used, no kernel write).
pub(crate) fn acquire(
    shared: &Mutex<State>,
    session: SessionId,
    p: AcquireParams,
    fd: Option<OwnedFd>,
) -> Result<ReservationReply, Error> {
    let mut probes_left = EXTRA_PROBES_PER_ACQUIRE + p.count as usize;
    let (mut token, mut block, kernel) = lock(shared).reserve_for_acquire(session, &p, 0)?;
    let socket = match (fd, p.address) {
        (Some(fd), Some(address)) => match AcquireSocket::check(&*kernel, &p, fd, address) {
            Ok(socket) => Some(socket),
            Err(e) => {
                lock(shared).withdraw(token);
                return Err(e);
            }
        },
        _ => None,
    };
    loop {
        let found = probe_block(&*kernel, p.protocol, block, &mut probes_left);
        let mut state = lock(shared);
        let port = match found {
            Ok(None) => {
                let Some(socket) = socket else {
                    return state.finish_acquire(session, token, block);
                };
                let order = state.acquired_bind_plan(token, socket.cookie)?;
                drop(state);
                return socket.bind_acquired(shared, &*kernel, session, token, block, order);
            }
            Ok(Some(port)) => port,
            Err(e) => {
                state.withdraw(token);
                return Err(e);
            }
        };
        state.withdraw(token);
        if p.start != 0 {
            return Err(Error::new(
                ErrorCode::SharingViolation,
                format!("{} port {port} is in use", p.protocol),
            ));
        }
        let Some(resume) = port.checked_add(1) else {
            return Err(no_free_block(&p, "the last port of the range is in use"));
        };
        (token, block, _) = state.reserve_for_acquire(session, &p, resume)?;
    }
}

/// The socket an Acquire carries, checked (an unbound socket of the
/// request's protocol; its namespace is compared under the lock).
struct AcquireSocket {
    fd: OwnedFd,
    info: portres_kernel::sock::SocketInfo,
    cookie: u64,
    address: std::net::IpAddr,
}

impl AcquireSocket {
    fn check(
        kernel: &dyn Kernel,
        p: &AcquireParams,
        fd: OwnedFd,
        address: std::net::IpAddr,
    ) -> Result<AcquireSocket, Error> {
        let info = kernel.inspect_socket(fd.as_fd())?;
        let cookie = socket_cookie(kernel, &fd)?;
        if info.protocol != p.protocol {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "the socket is {} but the request is for {} ports",
                    info.protocol, p.protocol
                ),
            ));
        }
        Ok(AcquireSocket {
            fd,
            info,
            cookie,
            address,
        })
    }

    /// Binds the socket into the probed candidate `block` (outside the
    /// lock), then covers and answers it with the port; a failed bind
    /// withdraws the candidate.
    fn bind_acquired(
        self,
        shared: &Mutex<State>,
        kernel: &dyn Kernel,
        session: SessionId,
        token: Token,
        block: Block,
        order: BindOrder,
    ) -> Result<ReservationReply, Error> {
        let first = Reservation::first_port(&order);
        match kernel.bind_socket(self.fd.as_fd(), &self.info, self.address, order) {
            Ok(port) => {
                let mut state = lock(shared);
                state.bound(token, first, port);
                let mut reply = state.finish_acquire(session, token, block)?;
                reply.port = Some(port);
                Ok(reply)
            }
            Err(e) => {
                lock(shared).withdraw(token);
                Err(e)
            }
        }
    }
}

fn socket_cookie(kernel: &dyn Kernel, fd: &OwnedFd) -> Result<u64, Error> {
    kernel
        .socket_netns_cookie(fd.as_fd())
        .map_err(|e| Error::new(ErrorCode::Internal, format!("reading SO_NETNS_COOKIE: {e}")))
}

fn wrong_namespace() -> Error {
    Error::new(
        ErrorCode::WrongNamespace,
        "the socket belongs to another network namespace than the daemon's",
    )
}

/// The lowest port of `block` some socket holds right now, if any, using
/// up one of `probes_left` per port probed; when none are left, the
/// request is refused with `no_free_block`.
pub(crate) fn probe_block(
    kernel: &dyn Kernel,
    protocol: Protocol,
    block: Block,
    probes_left: &mut usize,
) -> Result<Option<u16>, Error> {
    let allowed = (*probes_left).min(block.count() as usize);
    if allowed == 0 {
        return Err(gave_up());
    }
    // The part of the block the budget still allows.
    let head = Block::new(block.start() as u32, allowed as u32)?;
    *probes_left -= allowed;
    match first_port_in_use(kernel, protocol, head)? {
        Some(port) => {
            // Give back what was not used.
            *probes_left += (head.last() - port) as usize;
            Ok(Some(port))
        }
        None if allowed < block.count() as usize => Err(gave_up()),
        None => Ok(None),
    }
}

fn gave_up() -> Error {
    Error::new(
        ErrorCode::NoFreeBlock,
        format!(
            "gave up the search after probing {EXTRA_PROBES_PER_ACQUIRE} ports in use or more: most of the range is bound by sockets; try again later or ask for a start port"
        ),
    )
}

fn no_free_block(p: &AcquireParams, why: &str) -> Error {
    Error::new(
        ErrorCode::NoFreeBlock,
        format!("no free block of {} {} port(s): {why}", p.count, p.protocol),
    )
}

impl State {
    /// Acquire's first step, under the lock: checks the request and puts a
    /// candidate block in the table (for a wildcard request, none starting
    /// below `from`).
    fn reserve_for_acquire(
        &mut self,
        session: SessionId,
        p: &AcquireParams,
        from: u16,
    ) -> Result<(Token, Block, std::sync::Arc<dyn Kernel>), Error> {
        check_label(&p.label)?;
        let caller = &self.session(session)?.caller;
        // Copied out (not the whole caller: its groups are a Vec).
        let (uid, pid, admin, quota_applies) =
            (caller.uid, caller.pid, caller.admin, caller.quota_applies());
        if p.count == 0 || p.count > 65535 {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("count must be between 1 and 65535, not {}", p.count),
            ));
        }
        if quota_applies {
            let held = self.table().runtime_ports_of(uid);
            let quota = self.config().quota;
            if held as u64 + p.count as u64 > quota as u64 {
                return Err(Error::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "uid {} holds {held} runtime port(s); {} more would pass the quota of {}",
                        uid, p.count, quota
                    ),
                ));
            }
        }
        let block = if p.start == 0 {
            let range = self.dynamic_range().map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("reading ip_local_port_range: {e}"),
                )
            })?;
            self.find_free_block(p.protocol, p.count as u16, range, from)
                .ok_or_else(|| {
                    Error::new(
                        ErrorCode::NoFreeBlock,
                        format!(
                            "no free block of {} {} port(s) in the dynamic range {}-{}",
                            p.count, p.protocol, range.0, range.1
                        ),
                    )
                })?
        } else {
            let block = Block::new(p.start, p.count)?;
            if !admin {
                let unprivileged = self.kernel().unprivileged_port_start().unwrap_or(1024);
                if (block.start() as u32) < unprivileged {
                    return Err(Error::new(
                        ErrorCode::AccessDenied,
                        format!(
                            "ports below {unprivileged} are privileged: only an administrator may reserve them at runtime (an administrator can create a persistent reservation owned by you)"
                        ),
                    ));
                }
            }
            self.table().check_free(p.protocol, block)?;
            if self.baseline().intersects(block) {
                let baseline = PortSet::from_ranges(vec![(block.start(), block.last())]);
                let taken = baseline.difference(&baseline.difference(self.baseline()));
                return Err(Error::new(
                    ErrorCode::SharingViolation,
                    format!(
                        "{} {block} overlaps the administrator's own reserved ports {taken} (the baseline of ip_local_reserved_ports, recorded at the first start); they are not handed out",
                        p.protocol
                    ),
                ));
            }
            block
        };
        let token = self.new_token()?;
        let mut res = Reservation::runtime(token, p.protocol, block, Holder { session, uid, pid });
        res.label = p.label.clone();
        self.reserve(res)?;
        Ok((token, block, self.kernel()))
    }

    /// Acquire's last step, under the lock: the probed block goes into the
    /// kernel before the answer.
    fn finish_acquire(
        &mut self,
        session: SessionId,
        token: Token,
        block: Block,
    ) -> Result<ReservationReply, Error> {
        if !self.table().contains_token(token) {
            // The session ended while its block was probed.
            return Err(Error::new(
                ErrorCode::Internal,
                "the session ended during the request",
            ));
        }
        if let Err(e) = self.cover(block) {
            self.withdraw(token);
            return Err(e);
        }
        let res = self.table().get(token).expect("checked above");
        Ok(ReservationReply {
            reservation: self.describe(res, session),
            port: None,
        })
    }

    /// Acquire with a socket, under the lock once the candidate is probed:
    /// the socket's namespace must be the daemon's; the ports to try, in
    /// order (the rotation cursor moved past the first). A refusal
    /// withdraws the candidate.
    fn acquired_bind_plan(&mut self, token: Token, cookie: u64) -> Result<BindOrder, Error> {
        if cookie != self.netns_cookie() {
            self.withdraw(token);
            return Err(wrong_namespace());
        }
        self.claim_bind_order(token).ok_or_else(|| {
            // The session ended while its block was probed.
            Error::new(ErrorCode::Internal, "the session ended during the request")
        })
    }

    /// Release: ends a runtime reservation this session (or one whose
    /// capability it presented) holds.
    pub fn release(&mut self, session: SessionId, p: ReleaseParams) -> Result<Empty, Error> {
        let s = self.session(session)?;
        let res = self
            .table()
            .get(p.token)
            .ok_or_else(|| Error::new(ErrorCode::NotFound, "no reservation has this token"))?;
        if res.kind == Kind::Persistent {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "this is a persistent reservation: delete it by its block (admin only)",
            ));
        }
        if !res.usable_by(&s.caller, &s.speaks_for) {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                "this runtime reservation belongs to another session",
            ));
        }
        self.end(p.token);
        Ok(Empty {})
    }

    /// Bind's checks, under the lock: may this session bind into the
    /// reservation, with a socket of its protocol? Returns the ports to try,
    /// in order, with the rotation cursor already moved past the first, so
    /// concurrent binds into one block start at different ports.
    fn bind_plan(
        &mut self,
        session: SessionId,
        p: &BindParams,
        info: &portres_kernel::sock::SocketInfo,
        cookie: u64,
    ) -> Result<BindOrder, Error> {
        if cookie != self.netns_cookie() {
            return Err(wrong_namespace());
        }
        let s = self.session(session)?;
        let res = self
            .table()
            .get(p.token)
            .ok_or_else(|| Error::new(ErrorCode::NotFound, "no reservation has this token"))?;
        if !res.usable_by(&s.caller, &s.speaks_for) {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                match res.kind {
                    Kind::Runtime => "this runtime reservation belongs to another session",
                    Kind::Persistent => {
                        "only an administrator or the reservation's owner may bind into it"
                    }
                },
            ));
        }
        if info.protocol != res.protocol {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "the socket is {} but the reservation is {}",
                    info.protocol, res.protocol
                ),
            ));
        }
        Ok(self
            .claim_bind_order(p.token)
            .expect("the reservation was found above, under the same lock"))
    }
}

/// Bind: binds the passed socket to `address` and a free port of the
/// reservation, trying ports from the rotation cursor on. The socket calls
/// run outside the state mutex; only the checks and the cursor update take
/// it. (A Release racing with this Bind may end the reservation while the
/// socket is being bound: the outcome is the one of Bind-then-Release.)
pub(crate) fn bind(
    shared: &Mutex<State>,
    session: SessionId,
    p: BindParams,
    fd: OwnedFd,
) -> Result<BindReply, Error> {
    let kernel = lock(shared).kernel();
    let info = kernel.inspect_socket(fd.as_fd())?;
    let cookie = socket_cookie(&*kernel, &fd)?;
    let order = lock(shared).bind_plan(session, &p, &info, cookie)?;
    let first = Reservation::first_port(&order);
    let port = kernel.bind_socket(fd.as_fd(), &info, p.address, order)?;
    if port != first {
        // Only then does the cursor move again (`Reservation::bound`).
        lock(shared).bound(p.token, first, port);
    }
    Ok(BindReply { port })
}
