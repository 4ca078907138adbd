//! A held runtime reservation: a handle whose drop releases it.

use std::net::{IpAddr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;
use std::os::fd::BorrowedFd;

use portres_core::{Error, ErrorCode, Protocol, Token};
use portres_proto::ReservationInfo;
use socket2::Socket;

use crate::Client;

/// A runtime reservation held by a `Client`'s session. Dropping it releases
/// it (a oneway Release: drop does not wait for the daemon; later calls on
/// the same `Client` see it released, another connection may see it a
/// moment later — use [`Reservation::release`] to wait); so does the end
/// of the session (process exit included).
#[derive(Debug)]
pub struct Reservation {
    client: Client,
    info: ReservationInfo,
    token: Token,
    held: bool,
}

impl Reservation {
    pub(crate) fn new(client: Client, info: ReservationInfo) -> Result<Reservation, Error> {
        let token = info.token.ok_or_else(|| {
            Error::new(ErrorCode::Internal, "the daemon did not return the token")
        })?;
        Ok(Reservation {
            client,
            info,
            token,
            held: true,
        })
    }

    /// The token (for `bind_fd`, `release`, or to pass to a process that
    /// holds this session's capability).
    pub fn token(&self) -> Token {
        self.token
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.info.protocol
    }

    /// The first port.
    pub fn start(&self) -> u16 {
        self.info.start
    }

    /// How many ports.
    pub fn count(&self) -> u16 {
        self.info.count
    }

    /// The ports of the block.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.info.start..=self.info.start + (self.info.count - 1)
    }

    /// Everything the daemon said about it.
    pub fn info(&self) -> &ReservationInfo {
        &self.info
    }

    /// A TCP listener on `address` and a free port of the block.
    pub fn bind_tcp(&self, address: IpAddr) -> Result<TcpListener, Error> {
        self.client.bind_tcp(self.token, address)
    }

    /// A UDP socket on `address` and a free port of the block.
    pub fn bind_udp(&self, address: IpAddr) -> Result<UdpSocket, Error> {
        self.client.bind_udp(self.token, address)
    }

    /// Binds an unbound `socket2::Socket` to `address` and a free port of the
    /// block; returns the port.
    pub fn bind_socket(&self, socket: &Socket, address: IpAddr) -> Result<u16, Error> {
        self.client.bind_socket(self.token, socket, address)
    }

    /// Binds any unbound TCP/UDP socket descriptor; returns the port.
    pub fn bind_fd(&self, socket: BorrowedFd<'_>, address: IpAddr) -> Result<u16, Error> {
        self.client.bind_fd(self.token, socket, address)
    }

    /// Releases it now and waits for the daemon's answer, reporting any
    /// error (drop releases without waiting).
    pub fn release(mut self) -> Result<(), Error> {
        self.held = false;
        self.client.release(self.token)
    }

    /// Keeps it for the rest of the session without a handle (it still ends
    /// with the session). Returns the token.
    pub fn keep(mut self) -> Token {
        self.held = false;
        self.token
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            // A oneway Release: nothing to wait for. Later calls on this
            // connection see it done (the daemon keeps a connection's
            // order). The session may already be gone (then so is the
            // reservation).
            let _ = self.client.release_oneway(self.token);
        }
    }
}
