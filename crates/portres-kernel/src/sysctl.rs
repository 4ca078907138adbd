//! The kernel's port sysctls: the reserved-ports list
//! `net.ipv4.ip_local_reserved_ports`, which keeps the kernel's automatic
//! port choice (bind to port 0, connect() autobind) off reserved ports, and
//! the dynamic port range `net.ipv4.ip_local_port_range`.
//!
//! This module owns reading and writing those files correctly — the
//! reserved-ports file has unusual read and write rules, handled and
//! explained below — and an in-memory fake of the reserved-ports list for
//! tests of upper layers. Deciding *what* to reserve is the daemon's job.
//!
//! Both sysctls are per network namespace: the files under `/proc/sys/net`
//! belong to the namespace of the thread that opens them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use portres_core::PortSet;

/// The kernel's reserved-ports list (net.ipv4.ip_local_reserved_ports), per
/// network namespace, shared by TCP and UDP.
pub trait ReservedPorts: Send {
    /// Reads the current list.
    fn read(&self) -> io::Result<PortSet>;

    /// Replaces the whole list with `ports`. A failure part-way may leave a
    /// prefix of the new list in place: callers re-read or re-write.
    fn write(&mut self, ports: &PortSet) -> io::Result<()>;
}

/// The most bytes the kernel keeps from one write() to the reserved-ports
/// file.
///
/// Why: the sysctl handler (`proc_do_large_bitmap`) copies at most one page
/// minus a few bytes per write and silently drops the rest, cut at the last
/// whole entry (measured: a 60005-byte write returns 4092). So a long value
/// is written as several pieces on one descriptor.
pub const MAX_WRITE: usize = 4092;

/// The first read buffer size for the reserved-ports file. The longest
/// possible value (every other port) is about 190 KB; typical values are a
/// few bytes.
const FIRST_READ_BUFFER: usize = 64 * 1024;

/// Beyond this the value cannot be the reserved-ports list.
const MAX_READ_BUFFER: usize = 4 * 1024 * 1024;

/// The reserved-ports list as the `/proc/sys` file of the calling thread's
/// network namespace.
#[derive(Clone, Debug)]
pub struct ProcReservedPorts {
    path: PathBuf,
}

impl ProcReservedPorts {
    /// Where the kernel exposes the list.
    pub const DEFAULT_PATH: &'static str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

    /// The list at [`ProcReservedPorts::DEFAULT_PATH`].
    pub fn new() -> Self {
        Self::with_path(Self::DEFAULT_PATH)
    }

    /// The list at another path (tests, or a bind-mounted namespace's file).
    pub fn with_path(path: impl Into<PathBuf>) -> Self {
        ProcReservedPorts { path: path.into() }
    }

    /// The file this reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file for writing without writing: tells whether we may
    /// change it (EACCES/EROFS/EPERM => Err).
    pub fn check_writable(&self) -> io::Result<()> {
        self.open_for_write(false).map(drop)
    }

    fn open_for_write(&self, truncate: bool) -> io::Result<File> {
        // O_TRUNC changes nothing for the sysctl (its first write replaces
        // the value anyway) but makes a regular file given to `with_path`
        // behave the same way.
        OpenOptions::new()
            .write(true)
            .truncate(truncate)
            .open(&self.path)
            .map_err(|e| annotate(e, "opening", &self.path))
    }
}

impl Default for ProcReservedPorts {
    fn default() -> Self {
        Self::new()
    }
}

impl ReservedPorts for ProcReservedPorts {
    fn read(&self) -> io::Result<PortSet> {
        let text = read_whole(&self.path)?;
        text.parse::<PortSet>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: unexpected content: {e}", self.path.display()),
            )
        })
    }

    fn write(&mut self, ports: &PortSet) -> io::Result<()> {
        let mut file = self.open_for_write(true)?;
        for piece in pieces(ports) {
            write_piece(&mut file, piece.as_bytes())
                .map_err(|e| annotate(e, "writing", &self.path))?;
        }
        Ok(())
    }
}

/// What to write for `ports`, one write() per piece, in order.
///
/// Why the empty set is special: a zero-length write() to this file is a
/// no-op that leaves the old value in place (measured on kernel 6.18), while
/// writing "\n" clears it. Later pieces carry no leading comma: the kernel
/// parses each write on its own and adds its entries (a leading comma is
/// EINVAL).
fn pieces(ports: &PortSet) -> Vec<String> {
    if ports.is_empty() {
        return vec!["\n".to_owned()];
    }
    ports.render_chunks(MAX_WRITE)
}

/// Writes one piece with exactly one write() call.
///
/// Why one call: the first write() on the descriptor replaces the value and
/// each later one adds to it, so `write_all`'s retry of a short write would
/// be parsed as a separate list (and a piece cut mid-entry would be wrong).
/// A short write means the kernel dropped entries: report it.
fn write_piece(file: &mut File, piece: &[u8]) -> io::Result<()> {
    loop {
        match file.write(piece) {
            Ok(n) if n == piece.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("the kernel kept only {n} of {} bytes", piece.len()),
                ));
            }
            // EINTR means nothing was written: the same piece again is right.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads a sysctl file whole, with one read() per open.
///
/// Why: sysctl files like the reserved-ports list format their whole value
/// for a read at offset 0 and return nothing for reads at an offset > 0, so
/// a short first buffer loses the rest (measured: read(5) then read(100)
/// gives "1000," then ""). When the buffer comes back full the value may
/// have been cut: open again and read with a buffer twice as big.
fn read_whole(path: &Path) -> io::Result<String> {
    let mut size = FIRST_READ_BUFFER;
    loop {
        let mut file = File::open(path).map_err(|e| annotate(e, "opening", path))?;
        let mut buf = vec![0u8; size];
        let n = loop {
            match file.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(|e| annotate(e, "reading", path))?,
            }
        };
        if n < size {
            buf.truncate(n);
            return String::from_utf8(buf).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: content is not UTF-8", path.display()),
                )
            });
        }
        if size >= MAX_READ_BUFFER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: value larger than {size} bytes", path.display()),
            ));
        }
        size *= 2;
    }
}

fn annotate(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// In-memory fake for unit tests of upper layers.
#[derive(Clone, Debug, Default)]
pub struct FakeReservedPorts {
    /// The current list.
    pub value: PortSet,
    /// How many writes succeeded.
    pub writes: usize,
    /// When true, every write fails (with `ErrorKind::PermissionDenied`) and
    /// changes nothing.
    pub fail_writes: bool,
}

impl ReservedPorts for FakeReservedPorts {
    fn read(&self) -> io::Result<PortSet> {
        Ok(self.value.clone())
    }

    fn write(&mut self, ports: &PortSet) -> io::Result<()> {
        if self.fail_writes {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "FakeReservedPorts: writes are set to fail",
            ));
        }
        self.value = ports.clone();
        self.writes += 1;
        Ok(())
    }
}

/// Where the kernel exposes the dynamic port range.
pub const LOCAL_PORT_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The dynamic (ephemeral) port range, net.ipv4.ip_local_port_range,
/// inclusive.
pub fn local_port_range() -> io::Result<(u16, u16)> {
    let text = read_whole(Path::new(LOCAL_PORT_RANGE_PATH))?;
    parse_port_range(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{LOCAL_PORT_RANGE_PATH}: unexpected content {text:?}"),
        )
    })
}

/// Where the kernel exposes the first port an unprivileged process may bind.
pub const UNPRIVILEGED_PORT_START_PATH: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// net.ipv4.ip_unprivileged_port_start: ports below it need
/// CAP_NET_BIND_SERVICE to bind (1024 unless the admin changed it).
pub fn unprivileged_port_start() -> io::Result<u32> {
    let text = read_whole(Path::new(UNPRIVILEGED_PORT_START_PATH))?;
    text.trim().parse::<u32>().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{UNPRIVILEGED_PORT_START_PATH}: unexpected content {text:?}"),
        )
    })
}

/// Parses the kernel's form of the port range: two ports separated by
/// whitespace (the kernel prints a tab), first <= last.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut words = text.split_whitespace();
    let first = words.next()?.parse::<u16>().ok()?;
    let last = words.next()?.parse::<u16>().ok()?;
    if words.next().is_some() || first > last {
        return None;
    }
    Some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parses_the_kernel_form() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range(" 1024 1024 "), Some((1024, 1024)));
    }

    #[test]
    fn port_range_rejects_malformed_text() {
        for bad in ["", "32768", "60999\t32768", "1 2 3", "a\tb", "1\t70000"] {
            assert_eq!(parse_port_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn empty_set_is_written_as_a_newline() {
        assert_eq!(pieces(&PortSet::new()), vec!["\n".to_owned()]);
    }

    #[test]
    fn long_sets_are_written_in_kernel_sized_pieces() {
        let mut set = PortSet::new();
        for p in (20000..=40000).step_by(2) {
            set.insert_range(p, p);
        }
        let pieces = pieces(&set);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= MAX_WRITE));
        assert!(
            pieces
                .iter()
                .all(|p| !p.starts_with(',') && !p.ends_with(','))
        );
        assert_eq!(pieces.join(","), set.to_string());
    }

    #[test]
    fn fake_records_writes_and_can_fail() {
        let mut fake = FakeReservedPorts::default();
        let set: PortSet = "100-200".parse().expect("valid set");
        fake.write(&set).expect("fake write");
        assert_eq!(fake.read().expect("fake read"), set);
        assert_eq!(fake.writes, 1);

        fake.fail_writes = true;
        assert!(fake.write(&PortSet::new()).is_err());
        assert_eq!(fake.value, set);
        assert_eq!(fake.writes, 1);
    }

    #[test]
    fn proc_reads_and_writes_a_plain_file() {
        // A regular file stands in for the sysctl: the code paths are the
        // same, only the kernel's merging is missing.
        let dir = std::env::temp_dir().join(format!("portres-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("reserved");
        std::fs::write(&path, "").expect("create file");
        let mut file = ProcReservedPorts::with_path(&path);
        file.check_writable().expect("writable");
        let set: PortSet = "5,7-9".parse().expect("valid set");
        file.write(&set).expect("write");
        assert_eq!(file.read().expect("read"), set);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn missing_file_is_an_error_naming_the_path() {
        let file = ProcReservedPorts::with_path("/nonexistent/portres/reserved");
        let err = file.check_writable().expect_err("no such file");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/portres/reserved"));
        assert!(file.read().is_err());
    }
}
