//! Speaking the wire by hand ([`RawClient`], [`frame`]) for what the
//! client library would never send.

use std::path::Path;
use std::time::Duration;

/// One connection speaking the wire by hand, for tests of what the client
/// library would never send: odd framing, descriptors with the wrong
/// request, pipelining, floods. Replies are read byte by byte (up to the
/// NUL), with a 10 s read timeout so a silent daemon fails the test.
#[derive(Debug)]
pub struct RawClient(pub std::os::unix::net::UnixStream);

impl RawClient {
    /// Connects to `socket`.
    pub fn connect(socket: &Path) -> RawClient {
        let s = std::os::unix::net::UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        RawClient(s)
    }

    /// One sendmsg() of `bytes` with `fds` attached (to the first byte).
    pub fn send(&self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
        use std::os::fd::AsFd;
        portres_proto::fdpass::send_with_fds(self.0.as_fd(), bytes, fds).expect("sendmsg");
    }

    /// Sends `bytes` with `fds` and reads one reply; `None` if sending
    /// failed or the daemon closed the connection instead.
    pub fn request(
        &mut self,
        bytes: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Option<serde_json::Value> {
        use std::os::fd::AsFd;
        portres_proto::fdpass::send_with_fds(self.0.as_fd(), bytes, fds).ok()?;
        self.reply()
    }

    /// The next reply; `None` if the daemon closed the connection (or the
    /// read timed out).
    pub fn reply(&mut self) -> Option<serde_json::Value> {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.0.read(&mut byte) {
                Ok(1) if byte[0] == 0 => break,
                Ok(1) => buf.push(byte[0]),
                _ => return None,
            }
        }
        Some(serde_json::from_slice(&buf).expect("replies are JSON"))
    }

    /// Calls `method` with `params` and returns the reply.
    #[track_caller]
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.call_with_fds(method, params, &[])
    }

    /// Calls `method` with `params` and `fds` attached; the reply.
    #[track_caller]
    pub fn call_with_fds(
        &mut self,
        method: &str,
        params: serde_json::Value,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> serde_json::Value {
        self.request(&frame(method, params, false), fds)
            .expect("the daemon answered")
    }
}

/// One call as a frame (JSON + NUL).
pub fn frame(method: &str, params: serde_json::Value, oneway: bool) -> Vec<u8> {
    let mut call = serde_json::json!({"method": method, "parameters": params});
    if oneway {
        call["oneway"] = serde_json::json!(true);
    }
    let mut v = serde_json::to_vec(&call).expect("JSON");
    v.push(0);
    v
}
