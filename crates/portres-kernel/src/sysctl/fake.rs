//! [`FakeReservedPorts`]: the in-memory reserved-ports list that keeps the
//! kernel's write rules, for the tests of `converge` and the daemon's
//! in-memory kernel.

use std::io;

use portres_core::PortSet;

use super::{MAX_WRITE, ReservedPorts, invalid, replacing_text};

/// In-memory fake of the list (the tests of `converge`, the daemon's fake
/// kernel). It models the kernel's
/// rules — a replacing write of at most [`MAX_WRITE`] bytes, adding writes
/// of any number — and keeps every value the list ever held, so a test can
/// check that no port went missing in between.
#[derive(Clone, Debug, Default)]
pub struct FakeReservedPorts {
    /// The current list.
    pub value: PortSet,
    /// How many write() calls succeeded (an add of a long list counts one
    /// per piece, as on the kernel).
    pub writes: usize,
    /// Every value the list held after each write() call, oldest first.
    pub history: Vec<PortSet>,
    /// When true, every write fails (with `ErrorKind::PermissionDenied`) and
    /// changes nothing.
    pub fail_writes: bool,
}

impl FakeReservedPorts {
    fn check(&self) -> io::Result<()> {
        if self.fail_writes {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "FakeReservedPorts: writes are set to fail",
            ));
        }
        Ok(())
    }

    fn record(&mut self) {
        self.writes += 1;
        self.history.push(self.value.clone());
    }
}

impl ReservedPorts for FakeReservedPorts {
    fn read(&self) -> io::Result<PortSet> {
        Ok(self.value.clone())
    }

    fn add(&mut self, ports: &PortSet) -> io::Result<()> {
        self.check()?;
        if ports.is_empty() {
            return Ok(());
        }
        for piece in ports.render_chunks(MAX_WRITE) {
            let piece: PortSet = piece.parse().map_err(invalid)?;
            self.value.extend(&piece);
            self.record();
        }
        Ok(())
    }

    fn replace(&mut self, ports: &PortSet) -> io::Result<()> {
        self.check()?;
        replacing_text(ports)?;
        self.value = ports.clone();
        self.record();
        Ok(())
    }
}
