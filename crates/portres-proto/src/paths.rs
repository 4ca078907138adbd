//! Where the daemon listens and keeps its state by default — shared by
//! `portresd` and every client so both sides agree without configuration.
//!
//! System mode (root): `/run/portres/portres.sock`, `/var/lib/portres/`.
//! User mode: `$XDG_RUNTIME_DIR/portres/portres.sock` (fallback
//! `/tmp/portres-$UID/portres.sock`) and `$XDG_STATE_HOME/portres/`
//! (fallback `$HOME/.local/state/portres/` if `$HOME` exists, then
//! `/tmp/portres-$UID/state`).
//! `PORTRES_SOCKET` and `PORTRES_STATE_DIR` override them.

use std::env;
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

/// The user-mode socket path for the current user.
pub fn user_socket() -> PathBuf {
    match nonempty_env("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("portres").join("portres.sock"),
        None => PathBuf::from(format!("/tmp/portres-{}", euid())).join("portres.sock"),
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
/// else system mode's path for root, else the user-mode path.
pub fn daemon_socket() -> PathBuf {
    nonempty_env(SOCKET_ENV).unwrap_or_else(|| {
        if euid() == 0 {
            PathBuf::from(SYSTEM_SOCKET)
        } else {
            user_socket()
        }
    })
}

/// The state directory the daemon should use when not told.
pub fn daemon_state_dir() -> PathBuf {
    nonempty_env(STATE_DIR_ENV).unwrap_or_else(|| {
        if euid() == 0 {
            PathBuf::from(SYSTEM_STATE_DIR)
        } else {
            user_state_dir()
        }
    })
}

/// The sockets a client tries, in order: `PORTRES_SOCKET` alone if set;
/// otherwise, for root the system socket; for anyone else their own user
/// daemon's socket first (they started it on purpose), then the system one.
pub fn client_sockets() -> Vec<PathBuf> {
    if let Some(p) = nonempty_env(SOCKET_ENV) {
        return vec![p];
    }
    if euid() == 0 {
        vec![PathBuf::from(SYSTEM_SOCKET)]
    } else {
        vec![user_socket(), PathBuf::from(SYSTEM_SOCKET)]
    }
}
