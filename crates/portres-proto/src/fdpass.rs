//! Sending and receiving bytes with descriptors attached (SCM_RIGHTS) on a
//! Unix stream socket. `send_with_fds`/`recv_with_fds` block or not as the
//! socket does (a non-blocking socket yields `WouldBlock` like any read or
//! write); the `try_` twins never block (the daemon's event loops).

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::MAX_FDS_PER_MESSAGE;

/// Sends all of `bytes`, with `fds` attached to the first byte. Retries on
/// EINTR; on a non-blocking socket may return `WouldBlock` before anything
/// was sent (nothing sent, try again) — once the first chunk went out, the
/// rest is sent with the socket's own blocking behaviour.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut sent = loop {
        match sendmsg_with_fds(sock, bytes, fds, SendFlags::NOSIGNAL) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    while sent < bytes.len() {
        match rustix::net::send(sock, &bytes[sent..], SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => wait_writable(sock)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One sendmsg of `bytes` with `fds` attached to the first byte.
fn sendmsg_with_fds(
    sock: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    Ok(rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        flags,
    )?)
}

/// One non-blocking sendmsg of `bytes` with `fds` attached to the first
/// byte (never waits, even on a blocking socket): the bytes sent, maybe
/// fewer than all (the descriptors went with the first of them), or
/// `WouldBlock` (nothing sent, descriptors not passed: try again). The
/// daemon's counterpart of `try_recv_with_fds`, for replies carrying a
/// descriptor.
pub fn try_send_with_fds(
    sock: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    sendmsg_with_fds(sock, bytes, fds, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
}

fn wait_writable(sock: BorrowedFd<'_>) -> io::Result<()> {
    let mut fds = [rustix::event::PollFd::new(
        &sock,
        rustix::event::PollFlags::OUT,
    )];
    match rustix::event::poll(&mut fds, None) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What one `recv_with_fds` call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes read; 0 means the peer closed the connection.
    pub bytes: usize,
    /// The peer sent more than `MAX_FDS_PER_MESSAGE` descriptors with one
    /// message: either more arrived than that (the control buffer is
    /// rounded up to its alignment, so a few more than the limit fit), or
    /// the kernel dropped some because they did not fit (and closed them).
    /// The ones received are in `fds`, to be closed by the caller; the
    /// connection should be treated as misbehaving.
    pub fds_truncated: bool,
}

/// Receives into `buf`, appending any descriptors that came along to `fds`
/// (with close-on-exec set). Retries on EINTR.
pub fn recv_with_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<Received> {
    recv_with_fds_flags(sock, buf, fds, RecvFlags::empty())
}

/// `recv_with_fds` that never blocks: `WouldBlock` when nothing is there.
pub fn try_recv_with_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<Received> {
    recv_with_fds_flags(sock, buf, fds, RecvFlags::DONTWAIT)
}

fn recv_with_fds_flags(
    sock: impl AsFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    flags: RecvFlags,
) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            &sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | flags,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // One receive carries the descriptors of at most one sendmsg(): Linux
    // stops a stream read right after the message that brought some.
    let before = fds.len();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let too_many = fds.len() - before > MAX_FDS_PER_MESSAGE;
    Ok(Received {
        bytes: msg.bytes,
        fds_truncated: too_many || msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptor_travels_with_its_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        send_with_fds(a.as_fd(), b"hello\0", &[file.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let mut fds = VecDeque::new();
        let got = recv_with_fds(&b, &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..got.bytes], b"hello\0");
        assert_eq!(fds.len(), 1);
        assert!(!got.fds_truncated);
    }

    #[test]
    fn a_non_blocking_send_passes_its_descriptor_or_nothing() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(try_send_with_fds(&a, b"hi\0", &[file.as_fd()]).unwrap(), 3);
        let mut buf = [0u8; 8];
        let mut fds = VecDeque::new();
        let got = try_recv_with_fds(&b, &mut buf, &mut fds).unwrap();
        assert_eq!((&buf[..got.bytes], fds.len()), (&b"hi\0"[..], 1));
        // A full socket: WouldBlock, and the descriptor was not passed.
        let big = vec![0u8; 1 << 16];
        while rustix::net::send(&a, &big, SendFlags::DONTWAIT).is_ok() {}
        let err = try_send_with_fds(&a, b"x", &[file.as_fd()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn one_descriptor_past_the_limit_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<_> = (0..=MAX_FDS_PER_MESSAGE + 3)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        for n in 0..=MAX_FDS_PER_MESSAGE + 3 {
            let raw: Vec<_> = files[..n].iter().map(|f| f.as_fd()).collect();
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(n.max(1)))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if n > 0 {
                assert!(control.push(SendAncillaryMessage::ScmRights(&raw)));
            }
            rustix::net::sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::empty())
                .unwrap();
            let mut buf = [0u8; 8];
            let mut fds = VecDeque::new();
            let got = recv_with_fds(&b, &mut buf, &mut fds).unwrap();
            assert_eq!(
                got.fds_truncated,
                n > MAX_FDS_PER_MESSAGE,
                "{n} descriptors"
            );
        }
    }

    #[test]
    fn too_many_descriptors_are_truncated_not_leaked() {
        // Descriptors of a memfd no other test opens: counting the entries
        // of /proc/self/fd that point at it is exact even while the other
        // tests of this binary open and close files in parallel.
        const NAME: &str = "portres-fdpass-truncation-test";
        let open_copies = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().contains(NAME))
                .count()
        };
        let (a, b) = UnixStream::pair().unwrap();
        let memfd = rustix::fs::memfd_create(NAME, rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let files: Vec<OwnedFd> = (0..32).map(|_| memfd.try_clone().unwrap()).collect();
        drop(memfd);
        let raw: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        // Send with a raw sendmsg carrying more fds than the receiver allows.
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&raw)));
        rustix::net::sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::empty()).unwrap();
        drop(raw);
        drop(files);
        let mut buf = [0u8; 8];
        let mut fds = VecDeque::new();
        let got = recv_with_fds(&b, &mut buf, &mut fds).unwrap();
        assert!(got.fds_truncated);
        assert!(fds.len() < 32);
        // The ones past the limit were closed, not installed unseen.
        assert_eq!(
            open_copies(),
            fds.len(),
            "descriptors open after the receive"
        );
        drop(fds);
        assert_eq!(
            open_copies(),
            0,
            "descriptors open after dropping the received ones"
        );
    }
}
