//! The daemon's configuration: paths, kernel sync mode, strict mode, admin
//! group, quota and connection limits, the portserver endpoint's addresses,
//! with the defaults of system and user mode.

use std::path::PathBuf;

/// Whether to keep `net.ipv4.ip_local_reserved_ports` in sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSync {
    /// On if the sysctl is writable and no other portres daemon keeps it
    /// in this network namespace, else off with a logged warning.
    Auto,
    /// On; refuse to start if the sysctl is not writable or another portres
    /// daemon keeps it in this network namespace.
    On,
    /// Off: reservations arbitrate between portres users only.
    Off,
}

/// Whether to enforce reservations on explicit binds (strict mode,
/// `--enforce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforce {
    /// Strict when the bind hooks can be attached, else off with one
    /// logged warning saying why.
    Auto,
    /// Strict; refuse to start, with the reason, when the hooks cannot be
    /// attached.
    Strict,
    /// Never: reservations keep only the kernel's automatic choice off
    /// their ports.
    Off,
}

/// System mode (root of the machine) or user mode (anyone else, uid 0 of
/// a user namespace of one's own included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Run as root: serves every user of the machine.
    System,
    /// Run as an ordinary user: that user is its administrator.
    User,
}

impl Mode {
    /// "system" or "user".
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::System => "system",
            Mode::User => "user",
        }
    }
}

/// An address the portserver endpoint (portpicker's protocol) listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortserverAddress {
    /// A socket file (its directory must exist and be safe, as for
    /// `--socket`).
    Path(PathBuf),
    /// A Linux abstract socket name (given as `@name`; stored without the
    /// `@`). Abstract names belong to the network namespace.
    Abstract(Vec<u8>),
}

impl PortserverAddress {
    /// `@name` (abstract; portpicker's `PORTSERVER_ADDRESS` form) or a
    /// path.
    pub fn parse(s: &str) -> Result<PortserverAddress, String> {
        // sun_path holds 108 bytes; an abstract name takes one for its NUL,
        // a path one for its terminator.
        const MAX: usize = 107;
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() || name.len() > MAX - 1 {
                return Err(format!(
                    "an abstract name (@name) needs 1 to {} bytes",
                    MAX - 1
                ));
            }
            return Ok(PortserverAddress::Abstract(name.as_bytes().to_vec()));
        }
        if s.is_empty() || s.len() > MAX - 1 {
            return Err(format!("a socket path needs 1 to {} bytes", MAX - 1));
        }
        Ok(PortserverAddress::Path(PathBuf::from(s)))
    }
}

impl std::fmt::Display for PortserverAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortserverAddress::Path(p) => write!(f, "{}", p.display()),
            PortserverAddress::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// Everything the daemon needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// Where the database lives.
    pub state_dir: PathBuf,
    /// Kernel sync mode.
    pub kernel_sync: KernelSync,
    /// Members of this group (gid) are administrators besides root.
    pub admin_gid: Option<u32>,
    /// Per-user cap on runtime ports held at once (root exempt).
    pub quota: u32,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most client connections one non-root uid may hold at once.
    pub max_connections_per_uid: usize,
    /// Threads serving connections; `None` (the default): one per CPU
    /// portresd may use. Measured on 2 vCPUs with connections following their clients' CPUs: 2 workers
    /// 65-66k ops/s, 4 workers 64-65k, 16 workers 60-61k (8 clients): one
    /// worker serving several clients on a CPU answers whoever is ready when
    /// it wakes, with fewer switches.
    pub workers: Option<usize>,
    /// Pin worker threads round-robin to the CPUs the daemon may use.
    pub pin_workers: bool,
    /// System or user mode (decides who is admin and socket permissions).
    pub mode: Mode,
    /// The uid the daemon runs as.
    pub daemon_uid: u32,
    /// Strict mode.
    pub enforce: Enforce,
    /// The cgroup v2 directory the bind hooks attach to (they judge the
    /// sockets made in it and below); `None`: the cgroup v2 root.
    pub enforce_cgroup: Option<PathBuf>,
    /// The portres.d directories declared reservations are read from,
    /// lowest precedence first (a file in a later one replaces the same
    /// name in an earlier one). System mode: `/usr/lib/portres.d`,
    /// `/run/portres.d`, `/etc/portres.d`; user mode:
    /// `$XDG_CONFIG_HOME/portres.d` (`~/.config/portres.d`). Empty: none.
    pub config_dirs: Vec<PathBuf>,
    /// Where to serve portpicker's portserver protocol besides the varlink
    /// socket (none by default).
    pub portserver: Vec<PortserverAddress>,
}

impl Config {
    /// Default per-user runtime quota, in ports.
    pub const DEFAULT_QUOTA: u32 = 4096;
    /// Default connection limit.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 16384;
    /// Default per-uid connection limit.
    pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 4096;
    /// Most worker threads accepted.
    pub const MAX_WORKERS: usize = 1024;
    /// The system daemon's portres.d directories, lowest precedence first.
    pub const SYSTEM_CONFIG_DIRS: [&'static str; 3] =
        ["/usr/lib/portres.d", "/run/portres.d", "/etc/portres.d"];

    /// The default portres.d directories of a mode (see `config_dirs`).
    pub fn default_config_dirs(mode: Mode) -> Vec<PathBuf> {
        match mode {
            Mode::System => Self::SYSTEM_CONFIG_DIRS.iter().map(PathBuf::from).collect(),
            Mode::User => {
                let base = std::env::var_os("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .map(PathBuf::from)
                            .filter(|p| p.is_absolute())
                            .map(|h| h.join(".config"))
                    });
                base.map(|b| vec![b.join("portres.d")]).unwrap_or_default()
            }
        }
    }

    /// The defaults for whoever runs this process: system mode for root of
    /// the machine (`portres_proto::paths::is_system_root`: uid 0 of a user
    /// namespace of one's own, `unshare -rn`, is user mode, with user
    /// paths instead of /run and /var/lib it cannot write), user mode
    /// otherwise; paths from `portres_proto::paths`.
    pub fn for_current_user() -> Config {
        let uid = rustix::process::geteuid().as_raw();
        let mode = if portres_proto::paths::is_system_root() {
            Mode::System
        } else {
            Mode::User
        };
        Config {
            socket: portres_proto::paths::daemon_socket(),
            state_dir: portres_proto::paths::daemon_state_dir(),
            kernel_sync: KernelSync::Auto,
            admin_gid: None,
            quota: Config::DEFAULT_QUOTA,
            max_connections: Config::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: Config::DEFAULT_MAX_CONNECTIONS_PER_UID,
            workers: None,
            pin_workers: true,
            mode,
            daemon_uid: uid,
            enforce: Enforce::Auto,
            enforce_cgroup: None,
            config_dirs: Config::default_config_dirs(mode),
            portserver: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PortserverAddress;

    #[test]
    fn portserver_addresses() {
        assert_eq!(
            PortserverAddress::parse("@unittest-portserver"),
            Ok(PortserverAddress::Abstract(b"unittest-portserver".to_vec()))
        );
        assert_eq!(
            PortserverAddress::parse("/run/portres/ps.sock"),
            Ok(PortserverAddress::Path("/run/portres/ps.sock".into()))
        );
        for bad in ["", "@", &format!("@{}", "x".repeat(107)), &"/".repeat(108)] {
            assert!(PortserverAddress::parse(bad).is_err(), "{bad:?}");
        }
        let shown = PortserverAddress::parse("@name").unwrap().to_string();
        assert_eq!(shown, "@name");
    }
}
