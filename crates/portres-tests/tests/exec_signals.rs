//! `portres exec` and signals before its command starts: until the
//! command runs, a signal ends exec the default way (the daemon then
//! releases) instead of being held for a command that would then start.

use std::process::Stdio;
use std::time::{Duration, Instant};

use portres_tests::{ProcessDaemon, cli, open_tempdir};
use rustix::process::{Pid, Signal, kill_process};

nstest!(
    exec_ended_by_ctrl_c_while_the_daemon_is_slow_never_starts_its_command,
    |_| {
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let marker = dir.path().join("the-command-ran");
        let daemon = Pid::from_raw(d.child.id() as i32).unwrap();
        // A daemon that does not answer yet (busy, or swapped out).
        kill_process(daemon, Signal::STOP).unwrap();
        let mut exec = cli(&d.socket);
        exec.args(["exec", "tcp", "--count", "1", "--", "touch"])
            .arg(&marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut exec = exec.spawn().unwrap();
        // Give it time to connect and wait for the answer (no fixed
        // assumption: an exec still starting ends on SIGINT all the same).
        std::thread::sleep(Duration::from_millis(200));
        kill_process(Pid::from_raw(exec.id() as i32).unwrap(), Signal::INT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = exec.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        kill_process(daemon, Signal::CONT).unwrap();
        let Some(status) = status else {
            let _ = exec.wait();
            panic!(
                "exec ignored SIGINT while waiting for the daemon (the command ran: {})",
                marker.exists()
            );
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::INT.as_raw()), "{status:?}");
        // The daemon, answering now, released the dead client's reservation.
        let c = d.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.list(None).unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the reservation was never released"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!marker.exists(), "the command ran after Ctrl-C");
    }
);
