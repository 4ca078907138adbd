//! The port reservation operations behind `WSAIoctl`: acquire a runtime
//! block for a socket, release it, associate a token with a socket; each
//! answering with the errno `WSAIoctl` reports.

use std::ffi::c_int;

use portres_client::{ErrorCode, Protocol, Token};

use super::errno_of;
use crate::sock::SockId;
use crate::state::{Session, end_sessions, new_session_client, ops, state, with_default};
use crate::types::*;

pub(super) fn token(input: [u8; 16]) -> Result<Token, c_int> {
    let [a, b, c, d, e, f, g, h, ..] = input;
    Token::new(u64::from_ne_bytes([a, b, c, d, e, f, g, h])).ok_or(libc::EINVAL)
}

pub(super) fn acquire(
    s: SOCKET,
    id: SockId,
    protocol: Protocol,
    start: u16,
    count: u16,
) -> Result<INET_PORT_RESERVATION_INSTANCE, c_int> {
    if count == 0 || u32::from(start) + u32::from(count) - 1 > 65535 {
        return Err(libc::EINVAL);
    }
    acquire_for(s, id, protocol, |c| c.acquire(protocol, start, count))
}

/// `PortresAcquireAndBind`: a one-port runtime reservation for socket `s`
/// (as `acquire`), with `s` itself bound by the daemon to `ip` and that
/// port in the same call (Acquire with a socket). Refused: nothing
/// reserved, `s` left unbound.
pub(super) fn acquire_and_bind(
    s: SOCKET,
    id: SockId,
    protocol: Protocol,
    fd: std::os::fd::BorrowedFd<'_>,
    ip: std::net::IpAddr,
) -> Result<INET_PORT_RESERVATION_INSTANCE, c_int> {
    acquire_for(s, id, protocol, |c| {
        c.acquire_with_fd(protocol, 0, 1, fd, ip).map(|(r, _)| r)
    })
}

/// Runs `attempt` on `s`'s session (made, or remade after a daemon
/// restart, as needed) and records what it acquired as `s`'s.
fn acquire_for(
    s: SOCKET,
    id: SockId,
    protocol: Protocol,
    attempt: impl Fn(
        &portres_client::Client,
    ) -> Result<portres_client::Reservation, portres_client::Error>,
) -> Result<INET_PORT_RESERVATION_INSTANCE, c_int> {
    let _ops = ops();
    let existing = state()
        .sessions
        .get(&s)
        .filter(|x| x.id == id)
        .map(|x| x.client.clone());
    let (client, res) = match existing {
        Some(c) => match attempt(&c) {
            // The daemon went away (and its reservations with it): this
            // socket's session is over; start a new one.
            Err(e) if e.code == ErrorCode::DaemonUnavailable => {
                let dead = state().sessions.remove(&s);
                drop(dead);
                let c = new_session_client().map_err(errno_of)?;
                let r = attempt(&c);
                (c, r)
            }
            r => (c, r),
        },
        None => {
            let c = new_session_client().map_err(errno_of)?;
            let r = attempt(&c);
            (c, r)
        }
    };
    let res = res.map_err(errno_of)?;
    let (start, count) = (res.start(), res.count());
    let token = res.keep();
    let replaced = {
        let mut st = state();
        let fresh = || Session {
            id,
            client: client.clone(),
            held: Vec::new(),
        };
        let session = st.sessions.entry(s).or_insert_with(fresh);
        // An entry for an earlier socket under this number (closed with
        // close() since the sweep) must not adopt the new reservation.
        let replaced = (session.id != id).then(|| std::mem::replace(session, fresh()));
        session.held.push((token, protocol));
        replaced
    };
    end_sessions(replaced.into_iter().collect());
    Ok(INET_PORT_RESERVATION_INSTANCE {
        Reservation: INET_PORT_RANGE {
            StartPort: start.to_be(),
            NumberOfPorts: count,
        },
        Token: INET_PORT_RESERVATION_TOKEN { Token: token.get() },
    })
}

pub(super) fn release(token: Token) -> Result<(), c_int> {
    let _ops = ops();
    let holder = state()
        .holder_of(token)
        .map(|(fd, s)| (fd, s.client.clone()));
    let Some((fd, client)) = holder else {
        // Not acquired by this process: perhaps one of a session whose
        // capability we hold (portres exec).
        return with_default(|c| c.release(token)).map_err(errno_of);
    };
    let result = client.release(token);
    let failure = result.as_ref().err().map(|e| e.code);
    let ended = {
        let mut st = state();
        match failure {
            // The session's connection is dead (the daemon stopped or
            // restarted): so are all its reservations.
            Some(ErrorCode::DaemonUnavailable) => st.sessions.remove(&fd),
            // Released now, or gone already: forget it.
            None | Some(ErrorCode::NotFound) => {
                let empty = st.sessions.get_mut(&fd).is_some_and(|s| {
                    s.held.retain(|(t, _)| *t != token);
                    s.held.is_empty()
                });
                if empty { st.sessions.remove(&fd) } else { None }
            }
            Some(_) => None,
        }
    };
    end_sessions(ended.into_iter().collect());
    match result {
        Ok(()) => Ok(()),
        // The reservation no longer exists.
        Err(e) if e.code == ErrorCode::DaemonUnavailable || e.code == ErrorCode::NotFound => {
            Err(libc::EINVAL)
        }
        Err(e) => Err(errno_of(e)),
    }
}

pub(super) fn associate(
    s: SOCKET,
    id: SockId,
    protocol: Protocol,
    token: Token,
) -> Result<(), c_int> {
    let local = state()
        .holder_of(token)
        .and_then(|(_, sess)| sess.held.iter().find(|(t, _)| *t == token).map(|(_, p)| *p));
    let found = match local {
        Some(p) => p,
        None => {
            // Not ours: the daemon shows a reservation's token only to those
            // who may use it (an administrator or the owner for persistent
            // ones, the session or holders of its capability for runtime).
            let all = with_default(|c| c.list(None)).map_err(errno_of)?;
            match all.into_iter().find(|r| r.token == Some(token)) {
                Some(r) => r.protocol,
                None => {
                    // Either no such reservation or not ours to use; the
                    // daemon does not tell a non-administrator which.
                    let admin = with_default(|c| c.status())
                        .map_err(errno_of)?
                        .you_are_admin;
                    return Err(if admin { libc::EINVAL } else { libc::EACCES });
                }
            }
        }
    };
    if found != protocol {
        return Err(libc::EINVAL);
    }
    state().associate(s, id, token);
    Ok(())
}
