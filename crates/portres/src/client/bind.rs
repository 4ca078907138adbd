//! The bind calls of [`Client`]: the daemon binds a socket the client made
//! to a port of a reservation; and making those sockets.

use std::io;
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use portres_core::{Error, ErrorCode, Protocol, Token};
use portres_proto::{AcquireParams, BindParams, BindReply, Request, ReservationReply};
use socket2::{Domain, Socket, Type};

use super::Client;
use crate::Reservation;

impl Client {
    /// Acquires a runtime reservation of `count` ports at `start` (0: any
    /// free block) and has the daemon bind `socket` (unbound, of
    /// `protocol`) to `address` and a free port of it — one round trip.
    /// Returns the reservation and the port. If the socket is refused or
    /// the bind fails, no reservation is left (and the quota is untouched).
    pub fn acquire_with_fd(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        socket: BorrowedFd<'_>,
        address: IpAddr,
    ) -> Result<(Reservation, u16), Error> {
        let req = Request::Acquire(AcquireParams {
            protocol,
            start: start as u32,
            count: count as u32,
            label: None,
            address: Some(address),
        });
        let r: ReservationReply = self.call_with_fd(req, socket)?;
        let port = r.port.ok_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                "the daemon did not bind the socket (it predates Acquire with a socket)",
            )
        })?;
        Ok((Reservation::new(self.clone(), r.reservation)?, port))
    }

    /// A TCP listener on `address` and the port of a new one-port
    /// reservation, in one round trip (SO_REUSEADDR set once bound, as
    /// std's `TcpListener::bind` has it). The port is the listener's
    /// `local_addr()`; it stays reserved while the `Reservation` is held.
    pub fn listen_tcp(&self, address: IpAddr) -> Result<(TcpListener, Reservation), Error> {
        let sock = new_socket(address, Type::STREAM)?;
        let (res, _) = self.acquire_with_fd(Protocol::Tcp, 0, 1, sock.as_fd(), address)?;
        // Set after the bind: the port was probed free just now (not even
        // in TIME_WAIT), so the flag could not change which port is bound,
        // and the daemon is spared clearing and restoring it.
        sock.set_reuse_address(true).map_err(io_err)?;
        sock.listen(1024).map_err(io_err)?;
        Ok((sock.into(), res))
    }

    /// A UDP socket bound to `address` and the port of a new one-port
    /// reservation, in one round trip.
    pub fn bind_udp_any(&self, address: IpAddr) -> Result<(UdpSocket, Reservation), Error> {
        let sock = new_socket(address, Type::DGRAM)?;
        let (res, _) = self.acquire_with_fd(Protocol::Udp, 0, 1, sock.as_fd(), address)?;
        Ok((sock.into(), res))
    }

    /// Has the daemon bind `socket` (unbound TCP or UDP, IPv4 or IPv6) to
    /// `address` and a free port of the reservation `token`; returns the
    /// port.
    pub fn bind_fd(
        &self,
        token: Token,
        socket: BorrowedFd<'_>,
        address: IpAddr,
    ) -> Result<u16, Error> {
        let r: BindReply =
            self.call_with_fd(Request::Bind(BindParams { token, address }), socket)?;
        Ok(r.port)
    }

    /// `bind_fd` for a `socket2::Socket`.
    pub fn bind_socket(
        &self,
        token: Token,
        socket: &Socket,
        address: IpAddr,
    ) -> Result<u16, Error> {
        self.bind_fd(token, socket.as_fd(), address)
    }

    /// A TCP listener on `address` and a port of the reservation (with
    /// SO_REUSEADDR, as std's `TcpListener::bind` sets it).
    pub fn bind_tcp(&self, token: Token, address: IpAddr) -> Result<TcpListener, Error> {
        let sock = new_socket(address, Type::STREAM)?;
        sock.set_reuse_address(true).map_err(io_err)?;
        self.bind_socket(token, &sock, address)?;
        sock.listen(1024).map_err(io_err)?;
        Ok(sock.into())
    }

    /// A UDP socket bound to `address` and a port of the reservation.
    pub fn bind_udp(&self, token: Token, address: IpAddr) -> Result<UdpSocket, Error> {
        let sock = new_socket(address, Type::DGRAM)?;
        self.bind_socket(token, &sock, address)?;
        Ok(sock.into())
    }
}

fn io_err(e: io::Error) -> Error {
    Error::new(ErrorCode::Internal, format!("socket: {e}"))
}

fn new_socket(address: IpAddr, ty: Type) -> Result<Socket, Error> {
    let domain = if address.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let proto = if ty == Type::STREAM {
        socket2::Protocol::TCP
    } else {
        socket2::Protocol::UDP
    };
    Socket::new(domain, ty.cloexec(), Some(proto)).map_err(io_err)
}
