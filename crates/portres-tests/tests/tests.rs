//! portres' integration tests, one binary (each test binary links the
//! daemon, the client library and the CLI's dependencies; one link instead
//! of twenty). Each module is one area; `support` holds what several of
//! them share beyond the fixtures of `portres_tests` (src/lib.rs).
//!
//! Run one area with `cargo test -p portres-tests --test tests daemon::`,
//! one test by its name, the long runs with `-- --ignored long_run_`.

mod support;

mod bench_smoke;
mod c_api;
mod cli;
mod client_death;
mod concurrency;
mod crash;
mod daemon;
mod fuzz_smoke;
mod hardening_clients;
mod hardening_conn;
mod hardening_daemonid;
mod hardening_kernel;
mod hardening_proto;
mod hostile;
mod hostile_input;
mod lifecycle;
mod permissions;
mod privilege;
mod python_client;
mod store_faults;
