//! The benchmark's output: a row per scenario (rate, p50, p99, a note with
//! the ratio and the verdict against its target) and the table they make.

use std::time::Duration;

use crate::stats::{Samples, fmt_dur, fmt_rate};

pub(crate) struct Row {
    pub(crate) name: String,
    rate: Option<f64>,
    p50: Option<Duration>,
    p99: Option<Duration>,
    pub(crate) note: String,
}

pub(crate) fn row(name: &str, s: &Samples, note: String) -> Row {
    Row {
        name: name.into(),
        rate: Some(s.rate()),
        p50: Some(s.q(0.5)),
        p99: Some(s.q(0.99)),
        note,
    }
}

pub(crate) fn text_row(name: &str, note: String) -> Row {
    Row {
        name: name.into(),
        rate: None,
        p50: None,
        p99: None,
        note,
    }
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

pub(crate) fn print_table(rows: &[Row], quick: bool) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "portres benchmark: kernel {}, {cpus} CPUs{}",
        kernel.trim(),
        if quick {
            ", QUICK run (smaller, shorter)"
        } else {
            ""
        }
    );
    let w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(10);
    println!(
        "{:<w$}  {:>10}  {:>10}  {:>10}  notes",
        "scenario", "ops/s", "p50", "p99"
    );
    for r in rows {
        println!(
            "{:<w$}  {:>10}  {:>10}  {:>10}  {}",
            r.name,
            r.rate.map_or("-".into(), fmt_rate),
            r.p50.map_or("-".into(), fmt_dur),
            r.p99.map_or("-".into(), fmt_dur),
            r.note
        );
    }
}
