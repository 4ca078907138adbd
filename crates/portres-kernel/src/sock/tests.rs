//! Unit tests for sock.rs.

use super::*;

#[test]
fn a_v4_mapped_address_on_a_v6only_socket_is_invalid_parameter() {
    use std::os::fd::AsFd;
    let Ok(sock) = rustix::net::socket(AddressFamily::INET6, SocketType::DGRAM, None) else {
        return; // no IPv6 in this build environment: nothing to check
    };
    sockopt::set_ipv6_v6only(&sock, true).unwrap();
    let addr: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    let err = bind_into(sock.as_fd(), addr, [40999u16].into_iter()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidParameter, "{err}");
    assert!(err.message.contains("IPV6_V6ONLY"), "{err}");
    assert_eq!(
        local_address(sock.as_fd()).unwrap().port(),
        0,
        "left unbound"
    );
    let addr: IpAddr = "fe80::1".parse().unwrap();
    let err = bind_into(sock.as_fd(), addr, [40999u16].into_iter()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidParameter, "{err}");
    assert!(err.message.contains("link-local"), "{err}");
}

#[test]
fn errno_text_names_the_errno() {
    let text = errno_text(Errno::ACCESS);
    assert!(text.starts_with("EACCES: "), "{text}");
    assert!(text.contains("os error 13"), "{text}");
    assert!(errno_text(Errno::IO).contains("os error 5"));
}
