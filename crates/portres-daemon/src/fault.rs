//! Test-only fault injection: `PORTRES_TEST_FAULT` (read once at the first
//! use), a comma-separated list of `list-thread` (the OS refuses every job
//! thread, such as the `List` dump's), `slow-list` (every `List` dump takes
//! 200 ms more), `handler-panic` (a handler panics on `Lookup`),
//! `worker-panic` (the worker panics outside a handler on `Lookup`). It
//! lets the tests prove the panic policy; unset in production.

/// Whether the fault `name` is switched on.
pub(crate) fn fault(name: &str) -> bool {
    static FAULTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var("PORTRES_TEST_FAULT")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|f| f == name)
}
