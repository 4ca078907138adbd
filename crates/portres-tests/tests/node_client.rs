//! The Node package (`clients/node`, issue 11 part 4) against a real
//! daemon: its own tests (`node --test test/getport.test.js`) run with
//! `PORTSERVER_ADDRESS` naming the daemon's portserver endpoint (an
//! abstract name of the test's private network namespace), `PORTRES_SOCKET`
//! its varlink socket and `PORTRES_CLI` the portres binary. Node (18 or
//! later, for `node:test`) comes from `PORTRES_NODE` or `node` on PATH
//! (`.ci/run` installs Debian's nodejs if absent); without it this test
//! prints SKIPPED, or fails when `PORTRES_REQUIRE_PRIVILEGED_TESTS=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use portres_daemon::PortserverAddress;
use portres_tests::{InProcessDaemon, bin};

const NAME: &str = "portres-test-node";

/// Node, if it is there and new enough.
fn node(test: &str) -> Option<PathBuf> {
    let node = std::env::var_os("PORTRES_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"));
    let why = match Command::new(&node)
        .args(["-p", "process.versions.node"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let major: u32 = version
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            if major >= 18 {
                return Some(node);
            }
            format!("node {version} is older than 18 (node:test)")
        }
        Ok(out) => format!(
            "{}: {}",
            node.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("{}: {e}", node.display()),
    };
    portres_tests::skip(
        test,
        format_args!("{why}; install nodejs (.ci/run does) or set PORTRES_NODE"),
    );
    None
}

nstest!(node_client_suite_passes_against_the_daemon, |test| {
    let Some(node) = node(test) else {
        return;
    };
    let d = InProcessDaemon::start(|c| {
        c.portserver = vec![PortserverAddress::Abstract(NAME.as_bytes().to_vec())];
    });
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/node");
    let out = Command::new(&node)
        .args(["--test", "test/getport.test.js"])
        .current_dir(&package)
        .env("PORTSERVER_ADDRESS", format!("@{NAME}"))
        .env("PORTRES_SOCKET", &d.socket)
        .env("PORTRES_CLI", bin("portres"))
        .env_remove("NODE_OPTIONS")
        .env_remove("PORTRES_SESSION_FD")
        .stdin(Stdio::null())
        .output()
        .expect("run node --test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test}: node --test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let count = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {what} ")))
            .and_then(|n| n.trim().parse::<usize>().ok())
    };
    let (pass, fail) = (count("pass"), count("fail"));
    assert!(
        pass.is_some_and(|n| n >= 8) && fail == Some(0),
        "{test}: pass {pass:?}, fail {fail:?}:\n{stdout}"
    );
    eprintln!("{test}: node --test: {} passed", pass.unwrap_or(0));
    // Every process the tests made is gone, and so are its ports.
    let client = d.client();
    assert!(portres_tests::eventually(|| client
        .list(None)
        .unwrap()
        .is_empty()));
});
