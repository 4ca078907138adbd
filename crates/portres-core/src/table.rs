//! The reservation table: every live reservation, indexed by token, by
//! block and by session, with the one invariant everything else leans on —
//! no two reservations of one protocol overlap — and the first-fit
//! allocator for wildcard requests.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{Block, Error, ErrorCode, PortSet, Protocol, Token};

mod reservation;

pub use reservation::{BindOrder, Holder, Kind, Reservation, SessionId};

/// The table's hash maps. Their keys are made by the daemon (random
/// tokens, sequential session ids) or by the kernel (uids), never chosen
/// by a client, so a fast keyed hash will do (foldhash, seeded per
/// process) where SipHash cost a few percent of the daemon's user time on
/// the one-round-trip path, several lookups per call.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Every live reservation.
#[derive(Debug, Default)]
pub struct Table {
    by_token: FastMap<Token, Reservation>,
    /// Per protocol: start port -> (last port, token). The last port is kept
    /// here so the allocator can walk blocks in order without hash lookups.
    by_start: [BTreeMap<u16, (u16, Token)>; 2],
    by_session: FastMap<SessionId, BTreeSet<Token>>,
    runtime_ports_by_uid: FastMap<u32, u32>,
    /// Per protocol: (range start, port) such that every port from the range
    /// start up to (not including) `port` is reserved — where first-fit
    /// searches may begin. Reservations packed from the bottom of the
    /// dynamic range would otherwise make every search walk all of them.
    scan_hint: [(u32, u32); 2],
    /// Per protocol: every reserved port, kept up to date by `insert` and
    /// `remove` (within a protocol blocks never overlap, so removing a
    /// block's ports is exact). `reserved_ports` is then a merge of two
    /// short range lists instead of a sort of every block: the daemon asks
    /// for it at every deferred kernel write (each quiet window under load),
    /// under the state lock, and with 100k reservations the sort took
    /// milliseconds.
    ports: [PortSet; 2],
}

fn idx(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

impl Table {
    /// An empty table.
    pub fn new() -> Table {
        Table::default()
    }

    /// How many reservations there are.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// The reservation of `protocol` that overlaps `block`, if any.
    pub fn overlapping(&self, protocol: Protocol, block: Block) -> Option<&Reservation> {
        let map = &self.by_start[idx(protocol)];
        // Only the reservation starting at or before block.last() with the
        // greatest start can overlap from the left; any starting inside the
        // block overlaps too, and the greatest such start is found the same way.
        let (_, &(last, token)) = map.range(..=block.last()).next_back()?;
        (last >= block.start()).then(|| &self.by_token[&token])
    }

    /// Refuses with `sharing_violation` if `block` overlaps a reservation.
    pub fn check_free(&self, protocol: Protocol, block: Block) -> Result<(), Error> {
        match self.overlapping(protocol, block) {
            None => Ok(()),
            Some(other) => Err(Error::new(
                ErrorCode::SharingViolation,
                format!(
                    "{protocol} {block} overlaps the {} reservation {protocol} {}",
                    other.kind.as_str(),
                    other.block
                ),
            )),
        }
    }

    /// Whether `token` is taken.
    pub fn contains_token(&self, token: Token) -> bool {
        self.by_token.contains_key(&token)
    }

    /// Adds a reservation. Refuses overlaps (`sharing_violation`) and
    /// duplicate tokens (`internal`: the caller draws tokens at random and
    /// must draw again).
    pub fn insert(&mut self, res: Reservation) -> Result<(), Error> {
        self.check_free(res.protocol, res.block)?;
        if self.by_token.contains_key(&res.token) {
            return Err(Error::new(ErrorCode::Internal, "token collision"));
        }
        self.by_start[idx(res.protocol)].insert(res.block.start(), (res.block.last(), res.token));
        self.ports[idx(res.protocol)].insert_block(res.block);
        if let Some(h) = res.holder {
            self.by_session
                .entry(h.session)
                .or_default()
                .insert(res.token);
            *self.runtime_ports_by_uid.entry(h.uid).or_default() += res.block.count() as u32;
        }
        self.by_token.insert(res.token, res);
        Ok(())
    }

    /// Removes and returns the reservation with `token`.
    pub fn remove(&mut self, token: Token) -> Option<Reservation> {
        let res = self.by_token.remove(&token)?;
        self.by_start[idx(res.protocol)].remove(&res.block.start());
        self.ports[idx(res.protocol)].remove_range(res.block.start(), res.block.last());
        if let Some(h) = res.holder {
            if let Some(set) = self.by_session.get_mut(&h.session) {
                set.remove(&token);
                if set.is_empty() {
                    self.by_session.remove(&h.session);
                }
            }
            if let Some(n) = self.runtime_ports_by_uid.get_mut(&h.uid) {
                *n -= res.block.count() as u32;
                if *n == 0 {
                    self.runtime_ports_by_uid.remove(&h.uid);
                }
            }
        }
        let hint = &mut self.scan_hint[idx(res.protocol)];
        hint.1 = hint.1.min(res.block.start() as u32);
        Some(res)
    }

    /// Removes every reservation held by `session`; returns them.
    pub fn remove_session(&mut self, session: SessionId) -> Vec<Reservation> {
        let tokens = self.by_session.remove(&session).unwrap_or_default();
        tokens.into_iter().filter_map(|t| self.remove(t)).collect()
    }

    /// The reservation with `token`.
    pub fn get(&self, token: Token) -> Option<&Reservation> {
        self.by_token.get(&token)
    }

    /// The reservation with `token`, mutably (for the bind cursor).
    pub fn get_mut(&mut self, token: Token) -> Option<&mut Reservation> {
        self.by_token.get_mut(&token)
    }

    /// The reservation of exactly `block`, if any.
    pub fn by_block(&self, protocol: Protocol, block: Block) -> Option<&Reservation> {
        let &(last, token) = self.by_start[idx(protocol)].get(&block.start())?;
        (last == block.last()).then(|| &self.by_token[&token])
    }

    /// Every reservation, TCP then UDP, by start port.
    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.by_start
            .iter()
            .flat_map(|m| m.values())
            .map(|(_, t)| &self.by_token[t])
    }

    /// Whether `session` holds any reservation (one lookup, where
    /// `iter` would walk the whole table).
    pub fn session_holds_any(&self, session: SessionId) -> bool {
        self.by_session.contains_key(&session)
    }

    /// How many runtime ports `uid` holds, across all its sessions.
    pub fn runtime_ports_of(&self, uid: u32) -> u32 {
        self.runtime_ports_by_uid.get(&uid).copied().unwrap_or(0)
    }

    /// Every reserved port, both protocols, optionally only persistent ones.
    /// The kernel's reserved-ports sysctl is shared by TCP and UDP, so this
    /// is what it must contain (plus the admin's baseline).
    pub fn reserved_ports(&self, persistent_only: bool) -> PortSet {
        if !persistent_only {
            return self.ports[0].union(&self.ports[1]);
        }
        let mut ranges = Vec::with_capacity(self.by_token.len());
        for map in &self.by_start {
            for (&start, &(last, token)) in map {
                if !persistent_only || self.by_token[&token].kind == Kind::Persistent {
                    ranges.push((start, last));
                }
            }
        }
        PortSet::from_ranges(ranges)
    }

    /// First fit: the lowest block of `count` ports inside `range` (inclusive
    /// bounds, e.g. the kernel's ip_local_port_range), starting at `from` or
    /// above, that overlaps no reservation of `protocol`, no port of
    /// `avoid`, and no port for which `in_use` answers true. `in_use` is
    /// asked only about ports that pass the other checks, lowest first.
    ///
    /// `from` lets a caller that probes candidates itself resume a search
    /// after a busy port instead of starting over (which made a search past
    /// k busy ports cost k² steps).
    pub fn find_free_block(
        &mut self,
        protocol: Protocol,
        count: u16,
        range: (u16, u16),
        avoid: &PortSet,
        from: u16,
        mut in_use: impl FnMut(u16) -> bool,
    ) -> Option<Block> {
        if count == 0 {
            return None;
        }
        let (lo, hi) = (range.0.max(1) as u32, range.1 as u32);
        let map = &self.by_start[idx(protocol)];
        let hint = &mut self.scan_hint[idx(protocol)];
        if hint.0 != lo {
            *hint = (lo, lo);
        }
        // Every port in lo..hint.1 is reserved: no candidate can start there.
        let mut start = hint.1.max(lo).max(from as u32);
        // Whether every port from lo to `start` is reserved so far (then the
        // hint may move up).
        let mut packed = start == hint.1.max(lo);
        // Walk the reservations in port order alongside the candidate: each
        // is looked at once, so a search past k reservations costs O(k)
        // cheap steps, not k tree lookups.
        let first = map
            .range(..=start.min(65535) as u16)
            .next_back()
            .map_or(start as u16, |(&s, _)| s);
        let mut reserved = map
            .range(first..)
            .map(|(&s, &(l, _))| (s as u32, l as u32))
            .peekable();
        'candidates: while start + count as u32 - 1 <= hi {
            let end = start + count as u32 - 1;
            while reserved.next_if(|&(_, l)| l < start).is_some() {}
            if let Some(&(s, l)) = reserved.peek()
                && s <= end
            {
                if s > start {
                    packed = false;
                }
                start = l + 1;
                if packed {
                    hint.1 = start;
                }
                continue;
            }
            packed = false;
            let block = Block::from_range(start as u16, end as u16);
            if avoid.intersects(block) {
                // Jump past the last avoided port inside the candidate.
                let last_avoided = block.ports().rev().find(|&p| avoid.contains(p));
                start = last_avoided.map_or(start + 1, |p| p as u32 + 1);
                continue;
            }
            for port in block.ports() {
                if in_use(port) {
                    start = port as u32 + 1;
                    continue 'candidates;
                }
            }
            return Some(block);
        }
        None
    }
}

#[cfg(test)]
mod tests;
