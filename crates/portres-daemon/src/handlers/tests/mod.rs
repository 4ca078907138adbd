//! Handler unit tests: every request against a real `State` (a real SQLite
//! store in a temporary directory) on `FakeKernel`, so they run in
//! milliseconds without root or a network namespace (firecracker's
//! `preboot_request` tests in spirit). The namespace integration tests in
//! `portres-tests` are the second tier: the same behaviour on the real
//! kernel.
//!
//! `Harness` builds the daemon's state and callers in the roles the
//! permission matrix needs; `Snapshot` is everything a refusal must leave
//! unchanged (table, kernel list and its writes, store).

mod acquire;
mod acquire_socket;
mod capability;
mod declared;
mod enforce;
mod kernel_sync;
mod matrix;
mod persistent;
mod portserver;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use portres_core::{Caller, Error, ErrorCode, Owner, PortSet, Protocol, SessionId, Token};
use portres_proto::{
    AcquireParams, BindParams, BlockParams, CreateParams, ListParams, ReleaseParams,
    ReservationInfo,
};
use portres_store::Store;

use super::runtime;
use crate::config::{Config, Mode};
use crate::kernel::fake::FakeKernel;
use crate::state::{State, lock};

/// The admin group of the harness's configuration.
const ADMIN_GID: u32 = 500;
/// The group that owns group-owned persistent reservations.
const OWNER_GID: u32 = 1500;
/// The user that owns user-owned persistent reservations.
const OWNER_UID: u32 = 1000;

/// A daemon's state on the fake kernel.
struct Harness {
    kernel: FakeKernel,
    state: Arc<Mutex<State>>,
    /// Holds the store (`dir/state`); removed when the harness goes.
    dir: tempfile::TempDir,
}

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    table: Vec<ReservationInfo>,
    kernel: PortSet,
    kernel_writes: usize,
    store: Vec<portres_store::StoredReservation>,
}

impl Harness {
    /// System mode, admin group `ADMIN_GID`, kernel sync on, no baseline.
    fn new() -> Harness {
        Harness::with("", |_| {})
    }

    /// With a baseline and a configuration change.
    fn with(baseline: &str, configure: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_current_user();
        config.state_dir = dir.path().join("state");
        config.socket = dir.path().join("socket");
        // Whoever runs the tests: the roles are the harness's callers.
        config.mode = Mode::System;
        config.daemon_uid = 0;
        config.admin_gid = Some(ADMIN_GID);
        // Never the machine's own /etc/portres.d.
        config.config_dirs = vec![dir.path().join("lib.d"), dir.path().join("etc.d")];
        configure(&mut config);
        let mut store = Store::open(&config.state_dir).unwrap();
        store.set_baseline(&baseline.parse().unwrap()).unwrap();
        let kernel = FakeKernel::default();
        let list = kernel.reserved_ports();
        let state = State::new(config, store, Arc::new(kernel.clone()), Some(list)).unwrap();
        Harness {
            kernel,
            state: Arc::new(Mutex::new(state)),
            dir,
        }
    }

    /// A session of `uid` (primary group `gid`, supplementary `groups`).
    fn session(&self, uid: u32, gid: u32, groups: &[u32]) -> SessionId {
        let mut state = lock(&self.state);
        let admin = State::is_admin(state.config(), uid, gid, groups);
        state.open_session(Caller {
            uid,
            gid,
            groups: groups.to_vec(),
            pid: 4242,
            admin,
        })
    }

    /// root.
    fn root(&self) -> SessionId {
        self.session(0, 0, &[])
    }

    /// A non-root member of the admin group.
    fn admin_member(&self) -> SessionId {
        self.session(2000, 2000, &[ADMIN_GID])
    }

    /// The user that owns user-owned reservations.
    fn owner_user(&self) -> SessionId {
        self.session(OWNER_UID, OWNER_UID, &[])
    }

    /// A member (supplementary) of the owning group.
    fn owner_group_member(&self) -> SessionId {
        self.session(1001, 1001, &[OWNER_GID])
    }

    /// Nobody in particular.
    fn stranger(&self) -> SessionId {
        self.session(1002, 1002, &[])
    }

    fn acquire(
        &self,
        session: SessionId,
        start: u32,
        count: u32,
    ) -> Result<ReservationInfo, Error> {
        runtime::acquire(&self.state, session, tcp(start, count), None).map(|r| r.reservation)
    }

    fn acquire_token(&self, session: SessionId, start: u32, count: u32) -> Token {
        self.acquire(session, start, count)
            .unwrap()
            .token
            .expect("the holder sees its token")
    }

    fn release(&self, session: SessionId, token: Token) -> Result<(), Error> {
        lock(&self.state)
            .release(session, ReleaseParams { token })
            .map(drop)
    }

    fn create(
        &self,
        session: SessionId,
        start: u32,
        count: u32,
        owner: Option<Owner>,
    ) -> Result<ReservationInfo, Error> {
        let p = CreateParams {
            protocol: Protocol::Tcp,
            start,
            count,
            owner: owner.map(Into::into),
            label: None,
        };
        lock(&self.state).create(session, p).map(|r| r.reservation)
    }

    /// A persistent reservation made by root; its token.
    fn persistent(&self, start: u32, count: u32, owner: Option<Owner>) -> Token {
        let root = self.root();
        self.create(root, start, count, owner)
            .unwrap()
            .token
            .unwrap()
    }

    fn delete(&self, session: SessionId, start: u32, count: u32) -> Result<(), Error> {
        lock(&self.state)
            .delete(session, block(start, count))
            .map(drop)
    }

    fn lookup(&self, session: SessionId, start: u32, count: u32) -> Result<ReservationInfo, Error> {
        lock(&self.state)
            .lookup(session, block(start, count))
            .map(|r| r.reservation)
    }

    fn list(&self, session: SessionId) -> Vec<ReservationInfo> {
        let (mut list, kernel) = {
            let state = lock(&self.state);
            let list = state.list(session, ListParams { protocol: None }).unwrap();
            (list, state.kernel())
        };
        super::info::fill_in_use(&*kernel, &mut list).unwrap();
        list
    }

    /// A fresh unbound TCP "socket" in the daemon's namespace.
    fn socket(&self) -> OwnedFd {
        let cookie = self.kernel.state().netns_cookie;
        self.kernel.add_socket(Protocol::Tcp, cookie)
    }

    fn bind(&self, session: SessionId, token: Token, fd: OwnedFd) -> Result<u16, Error> {
        let p = BindParams {
            token,
            address: "127.0.0.1".parse().unwrap(),
        };
        runtime::bind(&self.state, session, p, fd).map(|r| r.port)
    }

    fn snapshot(&self) -> Snapshot {
        let state = lock(&self.state);
        let mut table: Vec<ReservationInfo> = state
            .table()
            .iter()
            .map(|r| {
                let mut info = state.describe(r, SessionId(0));
                info.token = Some(r.token);
                info
            })
            .collect();
        table.sort_by_key(|r| (r.start, r.token.map(|t| t.get())));
        Snapshot {
            table,
            kernel: self.kernel.reserved(),
            kernel_writes: self.kernel.reserved_writes(),
            store: state.store().load().unwrap(),
        }
    }

    /// Runs `refused`, checks it fails with `code`, and that it changed
    /// nothing, then or later: shrinks pending from earlier requests are
    /// flushed first, and after the refusal a flush changes nothing either.
    fn refused(&self, code: ErrorCode, refused: impl FnOnce() -> Result<(), Error>) -> Error {
        self.settle();
        let before = self.snapshot();
        let err = refused().expect_err("refused");
        assert_eq!(err.code, code, "{err}");
        assert_eq!(
            self.snapshot(),
            before,
            "the refusal ({err}) changed something"
        );
        self.settle();
        assert_eq!(
            self.snapshot(),
            before,
            "the refusal ({err}) left a change pending"
        );
        err
    }

    /// Flushes every pending shrink (two windows).
    fn settle(&self) {
        lock(&self.state).flush_kernel();
        lock(&self.state).flush_kernel();
    }
}

fn tcp(start: u32, count: u32) -> AcquireParams {
    AcquireParams {
        protocol: Protocol::Tcp,
        start,
        count,
        label: None,
        address: None,
    }
}

fn block(start: u32, count: u32) -> BlockParams {
    BlockParams {
        protocol: Protocol::Tcp,
        start,
        count,
    }
}

/// `Result<T, Error>` to `Result<(), Error>`, for `Harness::refused`.
fn unit<T>(r: Result<T, Error>) -> Result<(), Error> {
    r.map(drop)
}
