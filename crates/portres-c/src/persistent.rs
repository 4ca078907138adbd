//! The IP Helper functions for persistent reservations:
//! `CreatePersistent{Tcp,Udp}PortReservation`,
//! `DeletePersistent{Tcp,Udp}PortReservation`,
//! `LookupPersistent{Tcp,Udp}PortReservation`, with Windows' signatures
//! (StartPort in network byte order) and return codes.

use portres_client::{CreateOptions, Error, Protocol};

use crate::errors::{guard, win32_code};
use crate::state::with_default;
use crate::types::*;

/// A block as the C caller gives it: start in network byte order.
fn block(start_be: USHORT, count: USHORT) -> Result<(u16, u16), ULONG> {
    let start = u16::from_be(start_be);
    if start == 0 || count == 0 || u32::from(start) + u32::from(count) - 1 > 65535 {
        return Err(ERROR_INVALID_PARAMETER);
    }
    Ok((start, count))
}

fn code(r: Result<(), ULONG>) -> ULONG {
    match r {
        Ok(()) => NO_ERROR,
        Err(e) => e,
    }
}

fn daemon(e: Error) -> ULONG {
    win32_code(e.code)
}

/// Runs `op` on the block and stores the token it answers in `*token`
/// (create and lookup both answer with a token).
fn to_token(
    start_be: USHORT,
    count: USHORT,
    token: PULONG64,
    op: impl FnOnce(u16, u16) -> Result<u64, ULONG>,
) -> ULONG {
    guard(
        || ERROR_INTERNAL_ERROR,
        || {
            code((|| {
                let (start, count) = block(start_be, count)?;
                if token.is_null() {
                    return Err(ERROR_INVALID_PARAMETER);
                }
                let t = op(start, count)?;
                // SAFETY: non-NULL (checked) and, by the caller's contract,
                // a writable ULONG64; unaligned writes are allowed.
                unsafe { std::ptr::write_unaligned(token, t) };
                Ok(())
            })())
        },
    )
}

fn create(protocol: Protocol, start_be: USHORT, count: USHORT, token: PULONG64) -> ULONG {
    to_token(start_be, count, token, |start, count| {
        let info = with_default(|c| c.create(protocol, start, count, CreateOptions::default()))
            .map_err(daemon)?;
        Ok(info.token.ok_or(ERROR_INTERNAL_ERROR)?.get())
    })
}

fn delete(protocol: Protocol, start_be: USHORT, count: USHORT) -> ULONG {
    guard(
        || ERROR_INTERNAL_ERROR,
        || {
            code((|| {
                let (start, count) = block(start_be, count)?;
                with_default(|c| c.delete(protocol, start, count)).map_err(daemon)
            })())
        },
    )
}

fn lookup(protocol: Protocol, start_be: USHORT, count: USHORT, token: PULONG64) -> ULONG {
    to_token(start_be, count, token, |start, count| {
        let info = with_default(|c| c.lookup(protocol, start, count)).map_err(daemon)?;
        Ok(info.token.ok_or(ERROR_ACCESS_DENIED)?.get())
    })
}

/// Creates a persistent reservation of the TCP ports `ntohs(StartPort)` ..
/// `+ NumberOfPorts - 1` (kept by the daemon across restarts; its token may
/// change at each daemon start) and stores its token in `*Token`.
///
/// Returns `NO_ERROR`; `ERROR_ACCESS_DENIED` (not an administrator of the
/// daemon); `ERROR_INVALID_PARAMETER` (StartPort or NumberOfPorts 0, a block
/// past 65535, Token NULL); `ERROR_SHARING_VIOLATION` (overlaps a
/// reservation, or a port of the block is in use); `ERROR_SERVICE_NOT_ACTIVE`
/// (the daemon cannot be reached); `ERROR_WRITE_FAULT` (the daemon could
/// not store it; nothing changed).
///
/// # Safety
/// `Token` is NULL or points to a writable `ULONG64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreatePersistentTcpPortReservation(
    StartPort: USHORT,
    NumberOfPorts: USHORT,
    Token: PULONG64,
) -> ULONG {
    create(Protocol::Tcp, StartPort, NumberOfPorts, Token)
}

/// `CreatePersistentTcpPortReservation` for UDP ports.
///
/// # Safety
/// `Token` is NULL or points to a writable `ULONG64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreatePersistentUdpPortReservation(
    StartPort: USHORT,
    NumberOfPorts: USHORT,
    Token: PULONG64,
) -> ULONG {
    create(Protocol::Udp, StartPort, NumberOfPorts, Token)
}

/// Deletes the persistent TCP reservation of exactly this block
/// (StartPort in network byte order).
///
/// Returns `NO_ERROR`; `ERROR_ACCESS_DENIED` (not an administrator);
/// `ERROR_INVALID_PARAMETER`; `ERROR_NOT_FOUND` (no persistent reservation
/// of exactly this block); `ERROR_SERVICE_NOT_ACTIVE`; `ERROR_WRITE_FAULT`.
#[unsafe(no_mangle)]
pub extern "C" fn DeletePersistentTcpPortReservation(
    StartPort: USHORT,
    NumberOfPorts: USHORT,
) -> ULONG {
    delete(Protocol::Tcp, StartPort, NumberOfPorts)
}

/// `DeletePersistentTcpPortReservation` for UDP ports.
#[unsafe(no_mangle)]
pub extern "C" fn DeletePersistentUdpPortReservation(
    StartPort: USHORT,
    NumberOfPorts: USHORT,
) -> ULONG {
    delete(Protocol::Udp, StartPort, NumberOfPorts)
}

/// Looks up the token of the persistent TCP reservation of exactly this
/// block (StartPort in network byte order) into `*Token`.
///
/// Returns `NO_ERROR`; `ERROR_ACCESS_DENIED` (neither an administrator nor
/// the reservation's delegated owner); `ERROR_INVALID_PARAMETER`;
/// `ERROR_NOT_FOUND`; `ERROR_SERVICE_NOT_ACTIVE`.
///
/// # Safety
/// `Token` is NULL or points to a writable `ULONG64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn LookupPersistentTcpPortReservation(
    StartPort: USHORT,
    NumberOfPorts: USHORT,
    Token: PULONG64,
) -> ULONG {
    lookup(Protocol::Tcp, StartPort, NumberOfPorts, Token)
}

/// `LookupPersistentTcpPortReservation` for UDP ports.
///
/// # Safety
/// `Token` is NULL or points to a writable `ULONG64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn LookupPersistentUdpPortReservation(
    StartPort: USHORT,
    NumberOfPorts: USHORT,
    Token: PULONG64,
) -> ULONG {
    lookup(Protocol::Udp, StartPort, NumberOfPorts, Token)
}
