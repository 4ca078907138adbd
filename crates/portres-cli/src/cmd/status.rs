//! `portres status`.

use portres::{Client, Error};

use crate::Outcome;
use crate::output::outln;

pub fn run(client: &Client, json: bool) -> Result<Outcome, Error> {
    let s = client.status()?;
    if json {
        outln!("{}", serde_json::to_string(&s).expect("serializable"));
    } else {
        outln!(
            "portresd {} (wire v{}), {} mode",
            s.version,
            s.wire_version,
            s.mode
        );
        outln!(
            "kernel sync:     {}",
            if s.kernel_sync { "on" } else { "off" }
        );
        if s.kernel_sync {
            outln!(
                "baseline:        {}",
                if s.baseline.is_empty() {
                    "(empty)"
                } else {
                    &s.baseline
                }
            );
            outln!(
                "reserved ports:  {}",
                if s.reserved_ports.is_empty() {
                    "(empty)"
                } else {
                    &s.reserved_ports
                }
            );
        }
        outln!(
            "dynamic range:   {}-{}",
            s.dynamic_range[0],
            s.dynamic_range[1]
        );
        outln!(
            "reservations:    {} runtime, {} persistent",
            s.runtime,
            s.persistent
        );
        outln!("sessions:        {}", s.sessions);
        outln!("quota:           {} runtime ports per user", s.quota);
        outln!(
            "store:           {}{}",
            s.store,
            if s.store_read_only {
                " (read-only: persistent changes fail)"
            } else {
                ""
            }
        );
        outln!(
            "you:             uid {}{}",
            s.your_uid,
            if s.you_are_admin {
                " (administrator)"
            } else {
                ""
            }
        );
    }
    Ok(Outcome::Exit(0))
}
