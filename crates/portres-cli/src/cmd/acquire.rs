//! `portres acquire`: acquire, print, hold until SIGINT/SIGTERM or until
//! standard input closes, release.

use std::io::Read;
use std::sync::mpsc;

use portres::{Block, Client, Error, ErrorCode, Reservation};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::AcquireArgs;
use crate::cmd::{number, protocol};
use crate::output::errln;
use crate::{Outcome, output};

/// Acquires what `a` describes. Values too large for a port are refused here
/// with the daemon's own wording; everything else is judged by the daemon.
pub fn acquire(client: &Client, a: &AcquireArgs) -> Result<Reservation, Error> {
    let proto = protocol(&a.protocol)?;
    let start = number("start", a.start)?;
    let count = number("count", a.count)?;
    if start != 0 {
        Block::new(start, count)?;
    } else if count > 65535 {
        return Err(Error::new(
            ErrorCode::InvalidParameter,
            format!("count must be between 1 and 65535, not {count}"),
        ));
    }
    client.acquire_labeled(proto, start as u16, count as u16, a.label.clone())
}

pub fn run(client: &Client, a: &AcquireArgs, json: bool) -> Result<Outcome, Error> {
    // Catch the signals before acquiring so none slips between the two.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::new(ErrorCode::Internal, format!("signal setup: {e}")))?;
    let res = acquire(client, a)?;
    output::reservation(res.info(), json, "acquired");
    if !json {
        errln!("holding it until Ctrl-C, SIGTERM or end of input");
    }
    let (tx, rx) = mpsc::channel::<()>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.send(());
        }
    });
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx2.send(());
    });
    let _ = rx.recv();
    res.release()?;
    Ok(Outcome::Exit(0))
}
