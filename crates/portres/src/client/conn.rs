//! One connection to the daemon (`Conn`): a call and its reply, with
//! descriptors passed either way, and the placement hint sent with each call.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use portres_core::Error;
use portres_proto::fdpass::{send_with_fds, try_recv_with_fds};
use portres_proto::paths::SocketKind;
use portres_proto::{Empty, FrameBuffer, Request, decode_reply};
use serde::de::DeserializeOwned;

use crate::trust::{DaemonIdentity, unavailable};

pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) frames: FrameBuffer,
    pub(super) fds: VecDeque<OwnedFd>,
    pub(super) path: PathBuf,
    pub(super) kind: SocketKind,
    pub(super) daemon: DaemonIdentity,
    /// Default sockets tried before this one, each with why it was not used.
    pub(super) passed_over: Vec<String>,
}

impl Conn {
    /// An error reply already sent by a daemon that then closed the
    /// connection, if there is one.
    pub(super) fn parting_words(&mut self) -> Option<Error> {
        loop {
            if let Ok(Some(frame)) = self.frames.next_frame() {
                return decode_reply::<Empty>(frame).err();
            }
            let spare = self.frames.spare(4096);
            match try_recv_with_fds(&self.stream, spare, &mut self.fds) {
                Ok(got) if got.bytes > 0 => self.frames.commit(got.bytes, 4096),
                _ => {
                    self.frames.commit(0, 4096);
                    return None;
                }
            }
        }
    }

    /// Sends `req` as a oneway call: the daemon answers nothing, not even
    /// an error, so nothing is waited for. The connection's order still
    /// holds: the daemon handles it before any call sent after it.
    pub(super) fn send_oneway(&mut self, req: &Request) -> Result<(), Error> {
        let bytes = req.encode_call(current_cpu(), true);
        send_with_fds(self.stream.as_fd(), &bytes, &[]).map_err(|e| unavailable(&self.path, e))
    }

    pub(super) fn call<T: DeserializeOwned>(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(T, Option<OwnedFd>), Error> {
        let bytes = req.encode_with_cpu(current_cpu());
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        if let Err(e) = send_with_fds(self.stream.as_fd(), &bytes, &fds) {
            // The daemon may have refused the connection (e.g. a connection
            // limit) and closed it; its reason is waiting to be read.
            return Err(self
                .parting_words()
                .unwrap_or_else(|| unavailable(&self.path, e)));
        }
        self.fds.clear();
        loop {
            match self.frames.next_frame() {
                Ok(Some(frame)) => {
                    let v = decode_reply::<T>(frame)?;
                    return Ok((v, self.fds.pop_front()));
                }
                Ok(None) => {}
                Err(e) => return Err(unavailable(&self.path, e)),
            }
            let spare_len = 16 * 1024;
            let spare = self.frames.spare(spare_len);
            let got = recv_when_readable(&self.stream, spare, &mut self.fds);
            let got = match got {
                Ok(g) => {
                    self.frames.commit(g.bytes, spare_len);
                    g
                }
                Err(e) => {
                    self.frames.commit(0, spare_len);
                    return Err(unavailable(&self.path, e));
                }
            };
            if got.bytes == 0 {
                return Err(unavailable(&self.path, "the daemon closed the connection"));
            }
        }
    }
}

/// Waits for the reply with poll(POLLIN), then reads without blocking.
///
/// Why not a blocking recv: a reader blocked in recvmsg() sleeps on the
/// socket's one wait queue and is woken by *every* wakeup on it — including
/// the "write space" wakeup the kernel sends when the daemon consumes our
/// request. poll()'s waiter is filtered by event mask, so only the reply
/// wakes us. On a 2-vCPU VM each spurious wakeup is an inter-processor
/// interrupt; avoiding it measurably raised throughput (bench/README.md).
fn recv_when_readable(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<portres_proto::fdpass::Received> {
    use rustix::event::{PollFd, PollFlags, poll};
    loop {
        let mut pfd = [PollFd::new(stream, PollFlags::IN)];
        match poll(&mut pfd, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        match try_recv_with_fds(stream, buf, fds) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// The CPU the calling thread runs on, sent with each call as a placement
/// hint: the daemon serves the connection from a worker pinned to that CPU,
/// so the request and its reply wake threads on one CPU instead of crossing
/// to the other (bench/README.md: 2.2x more CPU per operation when every
/// round trip crosses).
fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and has no preconditions; it
    // returns -1 on failure. glibc reads it from the thread's rseq area, so
    // it costs no system call (rustix's version makes one).
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}
