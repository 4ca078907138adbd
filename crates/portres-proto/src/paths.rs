//! Where the daemon listens and keeps its state by default — shared by
//! `portresd` and every client so both sides agree without configuration.
//!
//! System mode (root): `/run/portres/portres.sock`, `/var/lib/portres/`.
//! User mode: `$XDG_RUNTIME_DIR/portres/portres.sock` (fallback
//! `/tmp/portres-$UID/portres.sock`) and `$XDG_STATE_HOME/portres/`
//! (fallback `$HOME/.local/state/portres/` if `$HOME` exists, then
//! `/tmp/portres-$UID/state`).
//! `PORTRES_SOCKET` and `PORTRES_STATE_DIR` override them.
//! "Root" means root of the machine (`is_system_root`): uid 0 in a user
//! namespace of one's own (`unshare -rn`) is an ordinary user here, with
//! user mode's paths.
//!
//! Also which sockets a client tries, and what each must prove
//! (`SocketKind`; the client library does the checking). In a setuid or
//! setcap process (AT_SECURE) clients ignore `PORTRES_SOCKET` and
//! `PORTRES_SESSION_FD`, as `secure_getenv` would: there the environment
//! belongs to whoever started the program, not to the program.

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;

/// Env var naming the socket path; overrides every default.
pub const SOCKET_ENV: &str = "PORTRES_SOCKET";
/// Env var naming the state directory; overrides every default.
pub const STATE_DIR_ENV: &str = "PORTRES_STATE_DIR";
/// Env var carrying an inherited session capability descriptor number.
pub const SESSION_FD_ENV: &str = "PORTRES_SESSION_FD";

/// The system daemon's socket.
pub const SYSTEM_SOCKET: &str = "/run/portres/portres.sock";
/// The system daemon's state directory.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/portres";

fn nonempty_env(name: &str) -> Option<PathBuf> {
    env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether this process is root of the machine: effective uid 0 in the
/// initial user namespace. In a user namespace someone made (`unshare -r`,
/// rootless containers) uid 0 is only that someone, without power over
/// /run or /var/lib: they get user mode's paths, daemon and client alike.
pub fn is_system_root() -> bool {
    euid() == 0 && in_initial_user_namespace()
}

/// Whether this process's user namespace is the initial one: its uid map
/// is the identity over every uid (`0 0 4294967295`), which no other
/// namespace can have (a child's map is a subset of its parent's range
/// and the initial one holds all of it). Without a readable
/// /proc/self/uid_map (no /proc): assumed initial, as before namespaces.
fn in_initial_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => is_identity_uid_map(&map),
        Err(_) => true,
    }
}

fn is_identity_uid_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| !f.is_empty())
        .collect();
    lines.len() == 1 && lines[0] == ["0", "0", "4294967295"]
}

/// The user-mode socket path for the current user.
pub fn user_socket() -> PathBuf {
    user_socket_of(nonempty_env("XDG_RUNTIME_DIR"), euid())
}

fn user_socket_of(runtime_dir: Option<PathBuf>, euid: u32) -> PathBuf {
    match runtime_dir {
        Some(dir) => dir.join("portres").join("portres.sock"),
        None => PathBuf::from(format!("/tmp/portres-{euid}")).join("portres.sock"),
    }
}

/// The user-mode state directory for the current user.
pub fn user_state_dir() -> PathBuf {
    if let Some(dir) = nonempty_env("XDG_STATE_HOME") {
        return dir.join("portres");
    }
    // Service accounts often have a HOME that does not exist
    // (/nonexistent): fall through to /tmp then.
    if let Some(home) = nonempty_env("HOME").filter(|h| h.is_dir()) {
        return home.join(".local").join("state").join("portres");
    }
    PathBuf::from(format!("/tmp/portres-{}", euid())).join("state")
}

/// The socket the daemon should listen on when not told: `PORTRES_SOCKET`,
/// else system mode's path for root (`is_system_root`), else the
/// user-mode path.
pub fn daemon_socket() -> PathBuf {
    nonempty_env(SOCKET_ENV).unwrap_or_else(|| {
        if is_system_root() {
            PathBuf::from(SYSTEM_SOCKET)
        } else {
            user_socket()
        }
    })
}

/// The state directory the daemon should use when not told.
pub fn daemon_state_dir() -> PathBuf {
    nonempty_env(STATE_DIR_ENV).unwrap_or_else(|| {
        if is_system_root() {
            PathBuf::from(SYSTEM_STATE_DIR)
        } else {
            user_state_dir()
        }
    })
}

/// How a client came to a socket, which decides what the socket and the
/// daemon answering on it must prove before the client sends anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// Named by the caller (`PORTRES_SOCKET`, `--socket`, a path given to
    /// the library): used whoever answers; the client records who did
    /// (`portres status` shows it).
    Explicit,
    /// The caller's own user-mode daemon at its default path: the
    /// directory must be the caller's and writable by nobody else, the
    /// socket the caller's, and the daemon must run as the caller.
    User,
    /// The system daemon's default path: the daemon must run as root.
    System,
}

impl SocketKind {
    /// A few words for messages: "your own daemon", "the system daemon".
    pub fn describe(self) -> &'static str {
        match self {
            SocketKind::Explicit => "named by PORTRES_SOCKET or --socket",
            SocketKind::User => "your own daemon",
            SocketKind::System => "the system daemon",
        }
    }
}

/// A socket for a client to try, and what it must prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketCandidate {
    /// Where.
    pub path: PathBuf,
    /// How it was found.
    pub kind: SocketKind,
}

/// Whether this process runs with elevated privileges it did not inherit
/// (setuid, setgid, file capabilities, an LSM transition): the kernel's
/// `AT_SECURE`, which glibc's `secure_getenv` consults.
pub fn is_secure() -> bool {
    // SAFETY: getauxval has no preconditions; it reads the auxiliary
    // vector the kernel gave this process and returns 0 for absent keys.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// An environment variable meant for clients, as `secure_getenv` reads
/// it: `None` when `secure` (see `is_secure`) or when unset or empty.
pub fn client_env_for(name: &str, secure: bool) -> Option<OsString> {
    if secure {
        return None;
    }
    env::var_os(name).filter(|v| !v.is_empty())
}

/// `client_env_for` with this process's `is_secure()`.
pub fn client_env(name: &str) -> Option<OsString> {
    client_env_for(name, is_secure())
}

/// The sockets a client tries, in order: `PORTRES_SOCKET` alone if set
/// (and the process is not setuid/setcap); otherwise, for root (of the
/// machine, `is_system_root`) the system socket; for anyone else their own
/// user daemon's socket first (they started it on purpose), then the
/// system one.
pub fn client_sockets() -> Vec<SocketCandidate> {
    client_sockets_as(
        |name| env::var_os(name),
        euid(),
        is_system_root(),
        is_secure(),
    )
}

/// `client_sockets` for a given environment, effective uid and AT_SECURE
/// flag (testable without touching the process's own), uid 0 taken as
/// root of the machine.
pub fn client_sockets_for(
    env: impl Fn(&str) -> Option<OsString>,
    euid: u32,
    secure: bool,
) -> Vec<SocketCandidate> {
    client_sockets_as(env, euid, euid == 0, secure)
}

/// `client_sockets_for`, saying whether the caller is root of the machine
/// (`is_system_root`) rather than deriving it from `euid`.
pub fn client_sockets_as(
    env: impl Fn(&str) -> Option<OsString>,
    euid: u32,
    system_root: bool,
    secure: bool,
) -> Vec<SocketCandidate> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if !secure && let Some(path) = get(SOCKET_ENV) {
        return vec![SocketCandidate {
            path,
            kind: SocketKind::Explicit,
        }];
    }
    let system = SocketCandidate {
        path: PathBuf::from(SYSTEM_SOCKET),
        kind: SocketKind::System,
    };
    if system_root {
        return vec![system];
    }
    vec![
        SocketCandidate {
            path: user_socket_of(get("XDG_RUNTIME_DIR"), euid),
            kind: SocketKind::User,
        },
        system,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn paths(c: &[SocketCandidate]) -> Vec<(String, SocketKind)> {
        c.iter()
            .map(|c| (c.path.display().to_string(), c.kind))
            .collect()
    }

    #[test]
    fn explicit_socket_alone_unless_secure() {
        let env = env_of(&[("PORTRES_SOCKET", "/elsewhere/x.sock")]);
        assert_eq!(
            paths(&client_sockets_for(&env, 1000, false)),
            [("/elsewhere/x.sock".to_string(), SocketKind::Explicit)]
        );
        // setuid/setcap: the variable belongs to whoever started us.
        assert_eq!(
            paths(&client_sockets_for(&env, 1000, true)),
            [
                (
                    "/tmp/portres-1000/portres.sock".to_string(),
                    SocketKind::User
                ),
                (SYSTEM_SOCKET.to_string(), SocketKind::System)
            ]
        );
        assert_eq!(
            paths(&client_sockets_for(&env, 0, true)),
            [(SYSTEM_SOCKET.to_string(), SocketKind::System)]
        );
    }

    #[test]
    fn only_the_identity_uid_map_is_the_initial_namespace() {
        assert!(is_identity_uid_map("         0          0 4294967295\n"));
        // unshare -r as uid 1000; a rootless container; nothing mapped.
        assert!(!is_identity_uid_map("         0       1000          1\n"));
        assert!(!is_identity_uid_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_identity_uid_map(""));
        assert!(!is_identity_uid_map("0 0 65536\n"));
    }

    #[test]
    fn root_of_a_user_namespace_tries_the_user_socket_first() {
        let env = env_of(&[("XDG_RUNTIME_DIR", "/run/user/1000")]);
        let c = client_sockets_as(&env, 0, false, false);
        assert_eq!(
            paths(&c),
            [
                (
                    "/run/user/1000/portres/portres.sock".to_string(),
                    SocketKind::User
                ),
                (SYSTEM_SOCKET.to_string(), SocketKind::System),
            ]
        );
        assert_eq!(
            paths(&client_sockets_as(&env, 0, true, false)),
            [(SYSTEM_SOCKET.to_string(), SocketKind::System)]
        );
    }

    #[test]
    fn user_socket_under_xdg_runtime_dir_else_tmp() {
        let env = env_of(&[
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("PORTRES_SOCKET", ""),
        ]);
        assert_eq!(
            paths(&client_sockets_for(&env, 1000, false))[0],
            (
                "/run/user/1000/portres/portres.sock".to_string(),
                SocketKind::User
            )
        );
        let env = env_of(&[]);
        assert_eq!(
            paths(&client_sockets_for(&env, 65533, false))[0],
            (
                "/tmp/portres-65533/portres.sock".to_string(),
                SocketKind::User
            )
        );
    }

    #[test]
    fn secure_mode_hides_client_variables() {
        // PATH is set in any test environment.
        assert!(client_env_for("PATH", false).is_some());
        assert_eq!(client_env_for("PATH", true), None);
        assert_eq!(client_env_for("PORTRES_NO_SUCH_VARIABLE_SET", false), None);
        // Tests do not run setuid.
        assert!(!is_secure());
    }
}
