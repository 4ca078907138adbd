//! The bind calls of [`Client`]: the daemon binds a socket the client made
//! to a port of a reservation; and making those sockets.

use std::io;
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use portres_core::{Error, ErrorCode, Token};
use portres_proto::{BindParams, BindReply, Request};
use socket2::{Domain, Socket, Type};

use super::Client;

impl Client {
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
