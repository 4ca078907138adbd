//! Applying the portres.d files (`State::apply_declared`): declared
//! reservations are persistent reservations whose source is a file. Those
//! the files no longer declare are deleted, those whose owner, label or
//! file changed are updated, new ones are created — each change on its own
//! and whole (store first, durably, then table and kernel; a failure
//! undoes that change and is reported), never one half-done. A new one
//! that overlaps another reservation or whose port is in use is a conflict:
//! reported and retried at the next reload. Reservations made through the
//! API are never touched.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portres_core::{Block, Error, Kind, Protocol, Reservation, Token};
use portres_proto::{DeclaredProblem, ReloadReply};
use portres_store::StoredReservation;

use super::{State, lock};
use crate::declared::{Declared, Wanted, problem};

/// A declared reservation in the table now.
struct Current {
    token: Token,
    protocol: Protocol,
    block: Block,
    owner: Option<portres_core::Owner>,
    label: Option<String>,
    source: String,
}

/// How the reload reaches the state: owned (at start, nobody else holds
/// it) or through the state lock, taken in slices.
pub(crate) enum Access<'a> {
    /// The state, nobody else's yet.
    Owned(&'a mut State),
    /// The shared state: changes are applied under its lock in slices of
    /// at most `SLICE`, with a pause of `PAUSE` between them, so that a
    /// reload of thousands of lines (a durable write and a kernel write
    /// each) never keeps every other request waiting for seconds.
    Sliced {
        state: &'a Mutex<State>,
        guard: Option<(MutexGuard<'a, State>, Instant)>,
    },
}

/// Longest the reload holds the state lock at a time.
pub(crate) const SLICE: Duration = Duration::from_millis(20);

/// How long the reload leaves the state lock free between slices: long
/// enough for the requests woken by the unlock to take it (a mutex is not
/// fair; the reload taking it back at once would starve them).
const PAUSE: Duration = Duration::from_millis(1);

impl<'a> Access<'a> {
    /// Through the state lock, in slices.
    pub(crate) fn sliced(state: &'a Mutex<State>) -> Access<'a> {
        Access::Sliced { state, guard: None }
    }

    /// Runs `f` on the state (one change, whole: never split by a slice).
    fn with<R>(&mut self, f: impl FnOnce(&mut State) -> R) -> R {
        match self {
            Access::Owned(state) => f(state),
            Access::Sliced { state, guard } => {
                if guard
                    .as_ref()
                    .is_some_and(|(_, since)| since.elapsed() >= SLICE)
                {
                    *guard = None;
                    std::thread::sleep(PAUSE);
                }
                let (held, _) = guard.get_or_insert_with(|| (lock(state), Instant::now()));
                f(held)
            }
        }
    }
}

impl State {
    /// What the last reload (or the start) could not apply.
    pub(crate) fn declared_problems(&self) -> &[DeclaredProblem] {
        &self.declared_problems
    }

    /// Brings the declared reservations to what `declared` (the files, as
    /// just read) says, and remembers its problems for `Status`.
    pub(crate) fn apply_declared(&mut self, declared: Declared) -> ReloadReply {
        apply_declared(&mut Access::Owned(self), declared)
    }

    /// Deletes declared reservation `c`, the files no longer declaring it.
    fn delete_declared(
        &mut self,
        c: &Current,
        reply: &mut ReloadReply,
        problems: &mut Vec<DeclaredProblem>,
    ) {
        // Between slices nothing else changes a declared reservation
        // (`Delete` refuses them, reloads run one at a time): still, only
        // the one read is deleted.
        if self
            .table
            .get(c.token)
            .is_none_or(|r| r.source.as_ref() != Some(&c.source))
        {
            return;
        }
        match self.store.delete(c.protocol, c.block) {
            Ok(_) => {
                self.end(c.token);
                reply.deleted += 1;
                log::info!(
                    "portres.d: deleted declared {} {} (no longer in {})",
                    c.protocol,
                    c.block,
                    c.source
                );
            }
            Err(e) => problems.push(problem(
                &c.source,
                None,
                "failed",
                format!("could not delete {} {}: {e}", c.protocol, c.block),
            )),
        }
    }

    /// Gives declared reservation `c` the owner, label and file of `w`.
    fn update_declared(
        &mut self,
        c: &Current,
        w: &Wanted,
        reply: &mut ReloadReply,
        problems: &mut Vec<DeclaredProblem>,
    ) {
        // Strict mode: the new owner may bind before the change is
        // stored (a guard the map refuses changes nothing); if the
        // store then refuses, the old owner's entry is put back.
        let Some(before) = self.table.get(c.token).cloned() else {
            return;
        };
        let mut after = before.clone();
        after.owner = w.owner;
        if let Err(e) = self.guard(&after) {
            // A failed map update also deletes the entries it replaced:
            // put the old owner's back, so the block stays guarded.
            if let Err(again) = self.guard(&before) {
                log::error!(
                    "{} {} is not guarded any more (strict mode): {}",
                    before.protocol,
                    before.block,
                    again.message
                );
            }
            problems.push(problem(
                &w.file,
                Some(w.line),
                "failed",
                format!("could not update {} {}: {}", w.protocol, w.block, e.message),
            ));
            return;
        }
        match self.store.update(
            w.protocol,
            w.block,
            w.owner,
            w.label.as_deref(),
            Some(&w.file),
        ) {
            Ok(_) => {
                if let Some(r) = self.table.get_mut(c.token) {
                    r.owner = w.owner;
                    r.label = w.label.clone();
                    r.source = Some(w.file.clone());
                }
                reply.updated += 1;
                log::info!(
                    "portres.d: updated declared {} {} ({}:{})",
                    w.protocol,
                    w.block,
                    w.file,
                    w.line
                );
            }
            Err(e) => {
                // Best effort, as when a reservation ends.
                let _ = self.guard(&before);
                problems.push(problem(
                    &w.file,
                    Some(w.line),
                    "failed",
                    format!("could not update {} {}: {e}", w.protocol, w.block),
                ));
            }
        }
    }

    /// One new declared reservation, whole or not at all: (kind, why) if not.
    fn create_declared(&mut self, w: &Wanted) -> Result<(), (&'static str, String)> {
        let what = format!("{} {}", w.protocol, w.block);
        if let Some(other) = self.table.overlapping(w.protocol, w.block) {
            let whose = match (other.kind, &other.source, other.holder) {
                (Kind::Persistent, Some(file), _) => format!("declared in {file}"),
                (Kind::Persistent, None, _) => {
                    "a persistent reservation made through the API (portres create); delete it for the file to take over".to_string()
                }
                (Kind::Runtime, _, Some(h)) => {
                    format!("held by uid {} (pid {}) until it releases it", h.uid, h.pid)
                }
                (Kind::Runtime, _, None) => "a runtime reservation".to_string(),
            };
            return Err((
                "conflict",
                format!(
                    "{what} is not reserved: it overlaps {} {} ({whose}); retried at the next reload",
                    other.protocol, other.block
                ),
            ));
        }
        if let Err(e) = self.check_not_in_use(w.protocol, w.block) {
            return Err((
                "conflict",
                format!(
                    "{what} is not reserved: {}; retried at the next reload",
                    e.message
                ),
            ));
        }
        let failed = |e: Error| ("failed", format!("{what} is not reserved: {}", e.message));
        let row = StoredReservation {
            protocol: w.protocol,
            block: w.block,
            owner: w.owner,
            label: w.label.clone(),
            created_by: self.config.daemon_uid,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            source: Some(w.file.clone()),
        };
        let token = self.new_token().map_err(failed)?;
        self.store.insert(&row).map_err(|e| failed(e.into()))?;
        let mut res = Reservation::persistent(token, w.protocol, w.block, w.owner, w.label.clone());
        res.source = Some(w.file.clone());
        if let Err(e) = self.reserve(res) {
            let _ = self.store.delete(w.protocol, w.block);
            return Err(failed(e));
        }
        if let Err(e) = self.cover(w.block) {
            self.withdraw(token);
            if let Err(undo) = self.store.delete(w.protocol, w.block) {
                log::error!("could not undo declared {what} after a sysctl failure: {undo}");
            }
            return Err(failed(e));
        }
        Ok(())
    }
}

/// Brings the declared reservations to what `declared` says, one change
/// at a time through `access` (see `Access::Sliced`): deletions first (a
/// line whose block changed frees its old ports for its new block), then
/// updates, then creations, each whole.
pub(crate) fn apply_declared(access: &mut Access<'_>, declared: Declared) -> ReloadReply {
    let Declared {
        files,
        wanted,
        mut problems,
        keep_from,
        keep_all,
    } = declared;
    let mut reply = ReloadReply {
        files,
        ..ReloadReply::default()
    };
    let current: Vec<Current> = access.with(|s| {
        s.table
            .iter()
            .filter(|r| r.kind == Kind::Persistent)
            .filter_map(|r| {
                Some(Current {
                    token: r.token,
                    protocol: r.protocol,
                    block: r.block,
                    owner: r.owner,
                    label: r.label.clone(),
                    source: r.source.clone()?,
                })
            })
            .collect()
    });
    let by_key: HashMap<(Protocol, Block), &Wanted> =
        wanted.iter().map(|w| ((w.protocol, w.block), w)).collect();

    for c in current
        .iter()
        .filter(|c| !by_key.contains_key(&(c.protocol, c.block)))
    {
        if keep_all || keep_from.contains(&c.source) {
            problems.push(problem(
                &c.source,
                None,
                "kept",
                format!(
                    "{} {} stays reserved although the file no longer declares it: {}; fix that and reload",
                    c.protocol,
                    c.block,
                    if keep_all {
                        "a portres.d directory cannot be listed"
                    } else {
                        "the file has problems or cannot be read"
                    }
                ),
            ));
            continue;
        }
        access.with(|s| s.delete_declared(c, &mut reply, &mut problems));
    }

    // Updates: the same block, another owner, label or file.
    let existing: HashMap<(Protocol, Block), &Current> =
        current.iter().map(|c| ((c.protocol, c.block), c)).collect();
    for w in &wanted {
        let Some(c) = existing.get(&(w.protocol, w.block)) else {
            continue;
        };
        if c.owner == w.owner && c.label == w.label && c.source == w.file {
            continue;
        }
        access.with(|s| s.update_declared(c, w, &mut reply, &mut problems));
    }

    // Creations: checked like Create, plus what they conflict with.
    for w in wanted
        .iter()
        .filter(|w| !existing.contains_key(&(w.protocol, w.block)))
    {
        match access.with(|s| s.create_declared(w)) {
            Ok(()) => {
                reply.created += 1;
                log::info!(
                    "portres.d: created declared {} {} ({}:{})",
                    w.protocol,
                    w.block,
                    w.file,
                    w.line
                );
            }
            Err((kind, message)) => {
                problems.push(problem(&w.file, Some(w.line), kind, message));
            }
        }
    }
    access.with(|s| {
        reply.declared = s
            .table
            .iter()
            .filter(|r| r.kind == Kind::Persistent && r.source.is_some())
            .count();
        s.declared_problems = problems.clone();
    });
    reply.problems = problems;
    reply
}
