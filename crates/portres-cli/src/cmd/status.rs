//! `portres status`.

use portres::{Client, Error};

use crate::Outcome;

pub fn run(client: &Client, json: bool) -> Result<Outcome, Error> {
    let s = client.status()?;
    if json {
        println!("{}", serde_json::to_string(&s).expect("serializable"));
    } else {
        println!(
            "portresd {} (wire v{}), {} mode",
            s.version, s.wire_version, s.mode
        );
        println!(
            "kernel sync:     {}",
            if s.kernel_sync { "on" } else { "off" }
        );
        if s.kernel_sync {
            println!(
                "baseline:        {}",
                if s.baseline.is_empty() {
                    "(empty)"
                } else {
                    &s.baseline
                }
            );
            if !s.baseline_origin.is_empty() {
                println!("baseline from:   {}", s.baseline_origin);
            }
            println!(
                "reserved ports:  {}",
                if s.reserved_ports.is_empty() {
                    "(empty)"
                } else {
                    &s.reserved_ports
                }
            );
        }
        println!(
            "dynamic range:   {}-{}",
            s.dynamic_range[0], s.dynamic_range[1]
        );
        println!(
            "reservations:    {} runtime, {} persistent",
            s.runtime, s.persistent
        );
        println!("sessions:        {}", s.sessions);
        println!("quota:           {} runtime ports per user", s.quota);
        println!(
            "store:           {}{}",
            s.store,
            if s.store_read_only {
                " (read-only: persistent changes fail)"
            } else {
                ""
            }
        );
        println!(
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
