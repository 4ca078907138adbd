//! One reservation ([`Reservation`]) and what it is made of: its kind, the
//! session holding a runtime one, and the order a bind tries its ports in
//! ([`BindOrder`]).

use crate::{Block, Caller, Owner, Protocol, Token};

/// Identifies one client connection (session) for the daemon's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Runtime reservations die with their session; persistent ones are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Lives as long as the session that acquired it.
    Runtime,
    /// Created by an administrator, stored durably, restored at start.
    Persistent,
}

impl Kind {
    /// "runtime" or "persistent".
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Runtime => "runtime",
            Kind::Persistent => "persistent",
        }
    }
}

/// The session holding a runtime reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The session it lives on.
    pub session: SessionId,
    /// The session's uid (from SO_PEERCRED).
    pub uid: u32,
    /// The session's pid at connect time (from SO_PEERCRED).
    pub pid: i32,
}

/// One reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Its token.
    pub token: Token,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its ports.
    pub block: Block,
    /// Runtime or persistent.
    pub kind: Kind,
    /// For runtime reservations, the holding session.
    pub holder: Option<Holder>,
    /// For persistent reservations, an optional delegated owner.
    pub owner: Option<Owner>,
    /// Free text chosen by whoever made it.
    pub label: Option<String>,
    /// Persistent reservations declared in a portres.d file: its path
    /// (`None`: made through the API).
    pub source: Option<String>,
    /// Offset into the block where the next bind starts looking, so a port
    /// just closed (perhaps still in TIME_WAIT) is not the first one retried.
    pub next_offset: u16,
}

/// The ports of a block from a rotation cursor on, wrapping around once
/// (see `Reservation::bind_order`).
#[derive(Clone, Copy, Debug)]
pub struct BindOrder {
    start: u32,
    count: u32,
    first: u32,
    i: u32,
}

impl Iterator for BindOrder {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        if self.i >= self.count {
            return None;
        }
        let port = self.start + (self.first + self.i) % self.count;
        self.i += 1;
        Some(port as u16)
    }
}

impl Reservation {
    /// A fresh runtime reservation held by `holder`.
    pub fn runtime(token: Token, protocol: Protocol, block: Block, holder: Holder) -> Reservation {
        Reservation {
            token,
            protocol,
            block,
            kind: Kind::Runtime,
            holder: Some(holder),
            owner: None,
            label: None,
            source: None,
            next_offset: 0,
        }
    }

    /// A persistent reservation.
    pub fn persistent(
        token: Token,
        protocol: Protocol,
        block: Block,
        owner: Option<Owner>,
        label: Option<String>,
    ) -> Reservation {
        Reservation {
            token,
            protocol,
            block,
            kind: Kind::Persistent,
            holder: None,
            owner,
            label,
            source: None,
            next_offset: 0,
        }
    }

    /// Whether `caller`, speaking for the sessions in `sessions` (its own and
    /// any whose capability it presented), may bind into this reservation,
    /// release it (runtime) or see its token.
    pub fn usable_by(&self, caller: &Caller, sessions: &[SessionId]) -> bool {
        match self.kind {
            Kind::Runtime => self.holder.is_some_and(|h| sessions.contains(&h.session)),
            Kind::Persistent => caller.admin || self.owner.is_some_and(|o| caller.is_owner(o)),
        }
    }

    /// The ports of the block in the order a bind should try them: starting
    /// at the rotation cursor, wrapping around once. Owned, so the caller
    /// can bind after letting go of the table.
    pub fn bind_order(&self) -> BindOrder {
        let count = self.block.count() as u32;
        BindOrder {
            start: self.block.start() as u32,
            count,
            first: self.next_offset as u32 % count,
            i: 0,
        }
    }

    /// The ports a bind should try, like `bind_order`, and the cursor moved
    /// past the first of them at once: a second bind that starts while
    /// this one is still binding (outside the state lock) starts one port
    /// later instead of racing for the same port. (Two TCP sockets with
    /// `SO_REUSEADDR` may both bind one port while neither listens, so the
    /// kernel alone would let both binds succeed and the second `listen`
    /// fail.) After the bind, `bound` moves the cursor further if the bind
    /// had to skip busy ports.
    pub fn claim_bind_order(&mut self) -> BindOrder {
        let order = self.bind_order();
        self.next_offset = ((order.first + 1) % order.count) as u16;
        order
    }

    /// Records that a bind claimed with `claim_bind_order` (whose first port
    /// was `first`) got `port`: when it skipped busy ports, the next bind
    /// starts after `port`; otherwise the claim already moved the cursor
    /// (and moving it back could hand a port another bind just got).
    pub fn bound(&mut self, first: u16, port: u16) {
        if port != first {
            self.advance_past(port);
        }
    }

    /// The first port `order` tries.
    pub fn first_port(order: &BindOrder) -> u16 {
        (order.start + order.first % order.count.max(1)) as u16
    }

    /// Records that `port` was just bound, so the next bind starts after it.
    pub fn advance_past(&mut self, port: u16) {
        if self.block.contains(port) {
            let off = (port - self.block.start()) as u32 + 1;
            self.next_offset = (off % self.block.count() as u32) as u16;
        }
    }
}
