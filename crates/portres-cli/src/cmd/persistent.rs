//! `portres create`, `delete` and `lookup`: persistent reservations.

use portres::{Client, CreateOptions, Error, ErrorCode, Owner};

use crate::args::{BlockArgs, CreateArgs};
use crate::cmd::{number, protocol};
use crate::output::outln;
use crate::{Outcome, names, output};

fn block(b: &BlockArgs) -> Result<(portres::Protocol, u32, u32), Error> {
    Ok((
        protocol(&b.protocol)?,
        number("start", b.start)?,
        number("count", b.count)?,
    ))
}

fn owner(spec: &str) -> Result<Owner, Error> {
    let unknown = |what: &str| {
        Error::new(
            ErrorCode::InvalidParameter,
            format!("--owner: no {what} {spec:?}"),
        )
    };
    match spec.strip_prefix('@') {
        Some(group) => names::gid_of(group)
            .map(Owner::Group)
            .ok_or_else(|| unknown("group")),
        None => names::uid_of(spec)
            .map(Owner::User)
            .ok_or_else(|| unknown("user")),
    }
}

/// A start or count above 65535 becomes 65535 (clap has already refused
/// what is not a u32). The block then usually runs past the last port and
/// the daemon refuses it with its named error; a start above 65535 with a
/// count of 1, though, becomes a request for port 65535.
fn narrow(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

pub fn create(client: &Client, a: &CreateArgs, json: bool) -> Result<Outcome, Error> {
    let (proto, start, count) = block(&a.block)?;
    let options = CreateOptions {
        owner: a.owner.as_deref().map(owner).transpose()?,
        label: a.label.clone(),
    };
    let r = raw_create(client, proto, start, count, options)?;
    output::reservation(&r, json, "created");
    Ok(Outcome::Exit(0))
}

fn raw_create(
    client: &Client,
    protocol: portres::Protocol,
    start: u32,
    count: u32,
    options: CreateOptions,
) -> Result<portres::ReservationInfo, Error> {
    if start > 65535 || count > 65535 {
        // Let the daemon judge (and word) it; the typed API takes u16.
        let v = client.raw_call(portres_proto::Request::Create(
            portres_proto::CreateParams {
                protocol,
                start,
                count,
                owner: options.owner.map(Into::into),
                label: options.label,
            },
        ))?;
        return serde_json::from_value::<portres_proto::ReservationReply>(v)
            .map(|r| r.reservation)
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()));
    }
    client.create(protocol, narrow(start), narrow(count), options)
}

pub fn delete(client: &Client, a: &BlockArgs, json: bool) -> Result<Outcome, Error> {
    let (proto, start, count) = block(a)?;
    client.raw_call(portres_proto::Request::Delete(portres_proto::BlockParams {
        protocol: proto,
        start,
        count,
    }))?;
    if json {
        outln!(
            "{}",
            serde_json::json!({"deleted": {"protocol": proto, "start": start, "count": count}})
        );
    } else {
        outln!("deleted {proto} {start} ({count} port(s))");
    }
    Ok(Outcome::Exit(0))
}

pub fn lookup(client: &Client, a: &BlockArgs, json: bool) -> Result<Outcome, Error> {
    let (proto, start, count) = block(a)?;
    let v = client.raw_call(portres_proto::Request::Lookup(portres_proto::BlockParams {
        protocol: proto,
        start,
        count,
    }))?;
    let r = serde_json::from_value::<portres_proto::ReservationReply>(v)
        .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?
        .reservation;
    output::reservation(&r, json, "found");
    Ok(Outcome::Exit(0))
}
