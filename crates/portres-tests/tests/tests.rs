//! portres' integration tests, one binary (each test binary links the
//! daemon, the client library and the CLI's dependencies; one link instead
//! of twenty). Each module is one area; `support` holds what several of
//! them share beyond the fixtures of `portres_tests` (src/lib.rs).
//!
//! Run one area with `cargo test -p portres-tests --test tests daemon::`,
//! one test by its name, the long runs with `-- --ignored long_run_`.

/// A test in a private network namespace of its own, named once:
/// `nstest!(name, |test| { … })`. The thread enters the namespace first;
/// where it cannot, the skip rule applies ([`portres_tests::skip`]: fail
/// under `PORTRES_REQUIRE_PRIVILEGED_TESTS=1`, else print `SKIPPED`). The
/// closure gets the test's name (for messages and further skips).
/// Attributes (`#[ignore = "…"]`, doc comments) go before the name.
macro_rules! nstest {
    ($(#[$attr:meta])* $name:ident, $body:expr) => {
        $(#[$attr])*
        #[test]
        fn $name() {
            let Some(_netns) = portres_tests::netns(stringify!($name)) else {
                return;
            };
            let body: fn(&'static str) = $body;
            body(stringify!($name));
        }
    };
}

/// A test that needs no namespace but its own name (to apply the skip
/// rule to something else it needs): `named_test!(name, |test| { … })`.
macro_rules! named_test {
    ($(#[$attr:meta])* $name:ident, $body:expr) => {
        $(#[$attr])*
        #[test]
        fn $name() {
            let body: fn(&'static str) = $body;
            body(stringify!($name));
        }
    };
}

mod support;

mod acquire_socket;
mod bench_smoke;
mod bind_reuse;
mod c_api;
mod cli;
mod client_death;
mod concurrency;
mod crash;
mod daemon;
mod declared;
mod exec_listen;
mod exec_signals;
mod fuzz_smoke;
mod generated_docs;
mod hardening_clients;
mod hardening_conn;
mod hardening_daemonid;
mod hardening_kernel;
mod hardening_proto;
mod hostile;
mod hostile_input;
mod install;
mod lifecycle;
mod node_client;
mod permissions;
mod portpicker;
mod portserver;
mod privilege;
mod python_client;
mod store_faults;
mod strict;
mod systemd;
