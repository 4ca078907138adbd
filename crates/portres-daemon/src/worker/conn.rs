//! One client connection's protocol engine: framing the byte stream into
//! calls, attributing received descriptors to the call they came with,
//! decoding, and queueing and sending replies in order (a descriptor riding
//! on its reply's first byte). It holds no lock and decides nothing: the
//! event loop (`event_loop.rs`) charges what it holds and hands each call
//! to `handlers::handle`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use portres_core::{Error, ErrorCode, SessionId};
use portres_proto::fdpass::{try_recv_with_fds, try_send_with_fds};
use portres_proto::{CallError, FrameBuffer, MAX_FDS_PER_MESSAGE, MAX_REQUEST_BYTES, Request};
use rustix::event::epoll;

use super::NewConn;
use crate::limits::Charged;

/// Most descriptors queued on one connection before it is dropped.
const MAX_PENDING_FDS: usize = 16;

/// Stop reading and answering a connection whose unsent replies pass this,
/// until they drain (a client that sends without reading cannot make us
/// buffer without bound). Its later requests wait in the kernel, charged
/// to the client's own send buffer.
const MAX_UNSENT_BYTES: usize = 64 * 1024;

/// Likewise for descriptors riding on unsent replies (`GetCapability`):
/// each is an open file of ours until the client reads it.
const MAX_UNSENT_FDS: usize = 4;

/// Buffer memory per connection not counted against the user's budget.
pub(super) const BUFFER_ALLOWANCE: usize = 8 * 1024;

/// Bytes read per receive call.
const READ_CHUNK: usize = 4096;

/// A reply waiting to be sent, possibly with a descriptor attached to its
/// first byte.
struct Unsent {
    bytes: Vec<u8>,
    sent: usize,
    fd: Option<OwnedFd>,
}

/// One client connection.
pub(crate) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) session: SessionId,
    pub(super) uid: u32,
    pub(super) frames: FrameBuffer,
    /// Bytes received so far (stream offset of the next byte).
    received: u64,
    /// Stream offset just past the last frame taken.
    frame_end: u64,
    /// Descriptors received, each tagged with a stream offset inside the
    /// request they belong to (see `owner_offset`): the frame containing
    /// that byte takes them.
    pub(super) pending_fds: VecDeque<(u64, OwnedFd)>,
    unsent: VecDeque<Unsent>,
    pub(super) unsent_bytes: usize,
    /// Descriptors attached to unsent replies.
    unsent_fds: usize,
    /// What is charged to this connection's (non-root) user.
    pub(super) charged: Charged,
    /// A job (`handlers::Job`) runs for it off the loop; later requests
    /// wait for it so replies stay in order.
    pub(super) job_in_flight: bool,
    /// What epoll watches for it now.
    pub(super) registered: epoll::EventFlags,
    /// Peer finished sending; close once replies are out.
    pub(super) read_closed: bool,
    /// Consecutive requests whose client said it ran on `away_cpu`, not on
    /// this worker's CPU (see `placement.rs`).
    pub(super) away: u8,
    pub(super) away_cpu: u32,
}

/// The next whole call buffered on a connection.
pub(super) struct Call {
    /// The request, or why the frame is not one.
    pub(super) request: Result<Request, CallError>,
    /// No reply wanted (also for a refused call whose object said so).
    pub(super) oneway: bool,
    /// The client's CPU hint.
    pub(super) cpu: Option<u32>,
    /// The descriptors that came with it.
    pub(super) fds: Vec<OwnedFd>,
}

impl Conn {
    pub(super) fn new(new: NewConn) -> Conn {
        Conn {
            stream: new.stream,
            session: new.session,
            uid: new.uid,
            frames: FrameBuffer::new(MAX_REQUEST_BYTES),
            received: 0,
            frame_end: 0,
            pending_fds: VecDeque::new(),
            unsent: VecDeque::new(),
            unsent_bytes: 0,
            unsent_fds: 0,
            charged: Charged::default(),
            job_in_flight: false,
            registered: epoll::EventFlags::empty(),
            read_closed: false,
            away: 0,
            away_cpu: 0,
        }
    }

    /// Descriptors it parks now: received and not yet taken, or on unsent
    /// replies.
    pub(super) fn parked_fds(&self) -> usize {
        self.pending_fds.len() + self.unsent_fds
    }

    /// Whether replies wait to be sent.
    pub(super) fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Past its own caps on unsent replies: neither read nor answered until
    /// they drain.
    pub(super) fn over_unsent_caps(&self) -> bool {
        self.unsent_bytes > MAX_UNSENT_BYTES || self.unsent_fds >= MAX_UNSENT_FDS
    }

    /// One receive. `Ok(())` also when nothing was there or the peer
    /// finished sending (`read_closed`); `Err` (why) when the connection
    /// must close: a receive error, or too many descriptors.
    pub(super) fn receive(&mut self) -> Result<(), String> {
        let mut fds = VecDeque::new();
        let spare = self.frames.spare(READ_CHUNK);
        let (got, owner) = match try_recv_with_fds(&self.stream, spare, &mut fds) {
            Ok(got) => {
                let owner = self.received + owner_offset(&spare[..got.bytes]);
                self.frames.commit(got.bytes, READ_CHUNK);
                (got, owner)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.frames.commit(0, READ_CHUNK);
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        if got.bytes == 0 {
            self.read_closed = true;
            return Ok(());
        }
        for fd in fds {
            self.pending_fds.push_back((owner, fd));
        }
        self.received += got.bytes as u64;
        if got.fds_truncated || self.pending_fds.len() > MAX_PENDING_FDS {
            return Err(format!(
                "more than {MAX_FDS_PER_MESSAGE} descriptors per message or {MAX_PENDING_FDS} pending"
            ));
        }
        Ok(())
    }

    /// Takes the next whole call buffered, with its descriptors. `Err`
    /// (why) when the stream cannot be framed (a request too long): a
    /// parting error has been sent, the connection must close.
    pub(super) fn next_call(&mut self) -> Result<Option<Call>, String> {
        let frame = match self.frames.next_frame() {
            Ok(None) => return Ok(None),
            Err(e) => {
                send_parting_error(&self.stream, ErrorCode::InvalidParameter, e.to_string());
                return Err(e.to_string());
            }
            Ok(Some(frame)) => frame,
        };
        self.frame_end += frame.len() as u64 + 1;
        let mut fds = Vec::new();
        while self
            .pending_fds
            .front()
            .is_some_and(|(off, _)| *off < self.frame_end)
        {
            fds.push(self.pending_fds.pop_front().expect("checked").1);
        }
        Ok(Some(match Request::decode_call(frame) {
            Ok(call) => Call {
                request: Ok(call.request),
                oneway: call.oneway,
                cpu: call.cpu,
                fds,
            },
            Err(e) => Call {
                oneway: asks_no_reply(frame),
                request: Err(e),
                cpu: None,
                fds,
            },
        }))
    }

    pub(super) fn queue(&mut self, bytes: Vec<u8>, fd: Option<OwnedFd>) {
        self.unsent_bytes += bytes.len();
        self.unsent_fds += usize::from(fd.is_some());
        self.unsent.push_back(Unsent { bytes, sent: 0, fd });
    }

    /// Sends what can be sent now without blocking.
    pub(super) fn send_pending(&mut self) -> io::Result<()> {
        use rustix::net::SendFlags;
        while let Some(front) = self.unsent.front_mut() {
            let rest = &front.bytes[front.sent..];
            let result = match front.fd.take() {
                Some(fd) => {
                    // The descriptor rides on the reply's first bytes.
                    match try_send_with_fds(&self.stream, rest, &[fd.as_fd()]) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            front.fd = Some(fd);
                            Err(e)
                        }
                        other => {
                            self.unsent_fds -= 1;
                            other
                        }
                    }
                }
                None => rustix::net::send(
                    &self.stream,
                    rest,
                    SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from),
            };
            match result {
                Ok(n) => {
                    front.sent += n;
                    self.unsent_bytes -= n;
                    if front.sent == front.bytes.len() {
                        self.unsent.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Best-effort error reply to a connection about to be closed (never
/// blocks: a peer that does not read just misses it).
pub(crate) fn send_parting_error(stream: &UnixStream, code: ErrorCode, message: String) {
    let _ = rustix::net::send(
        stream,
        &portres_proto::encode_error(&Error::new(code, message)),
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    );
}

/// Whether a call that could not be decoded still said `"oneway": true`
/// (an unknown method, bad parameters, `"more"`): then it gets no reply
/// either. Only what cannot be read as a JSON object is answered regardless.
fn asks_no_reply(frame: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Oneway {
        #[serde(default)]
        oneway: bool,
    }
    serde_json::from_slice::<Oneway>(frame).is_ok_and(|o| o.oneway)
}

/// Where in one receive's `bytes` the request its descriptors belong to
/// lies: the start of the last request that starts in them (the byte after
/// the last NUL but the final one), or their first byte if none starts
/// there (it continues the request in progress).
///
/// Why the last: Linux's stream receive glues queued bytes that came
/// without descriptors in front of a following message that carries some,
/// and stops right after that message (so one receive holds at most one
/// message's descriptors, at its end). A sender puts a request's
/// descriptors on the sendmsg() that starts it, so they belong to the last
/// request starting in the receive, not the first (issue 9.5).
fn owner_offset(bytes: &[u8]) -> u64 {
    let body = &bytes[..bytes.len().saturating_sub(1)];
    body.iter()
        .rposition(|&b| b == 0)
        .map_or(0, |nul| nul as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_belong_to_the_last_request_starting_in_a_receive() {
        // Nothing starts here: the request in progress.
        assert_eq!(owner_offset(b""), 0);
        assert_eq!(owner_offset(b"{\"me"), 0);
        // A NUL at the very end starts the next receive's request.
        assert_eq!(owner_offset(b"{}\0"), 0);
        assert_eq!(owner_offset(b"ab\0{}\0"), 3);
        assert_eq!(owner_offset(b"a\0b\0{\"c"), 4);
        assert_eq!(owner_offset(b"\0\0\0"), 2);
    }
}
