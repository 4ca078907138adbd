//! `portres create`, `delete` and `lookup`: persistent reservations, given
//! as `PROTOCOL START [COUNT]` (COUNT 1 by default) or `PROTOCOL START-END`.

use portres::{Client, CreateOptions, Error, ErrorCode, Kind, Owner, ReservationInfo};

use crate::args::{BlockArgs, CreateArgs};
use crate::cmd::{CheckedBlock, block};
use crate::{Outcome, names, output};

/// Checks a `PROTOCOL START [COUNT]` or `PROTOCOL START-END` block.
pub fn check_block(b: &BlockArgs) -> Result<CheckedBlock, Error> {
    block(&b.protocol, Some(&b.start), b.count, false)
}

/// A checked `create`.
#[derive(Debug)]
pub struct CreatePlan {
    block: CheckedBlock,
    options: CreateOptions,
}

pub fn check_create(a: &CreateArgs) -> Result<CreatePlan, Error> {
    Ok(CreatePlan {
        block: check_block(&a.block)?,
        options: CreateOptions {
            owner: a.owner.as_deref().map(owner).transpose()?,
            label: a.label.clone(),
        },
    })
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

pub fn create(client: &Client, p: CreatePlan, json: bool) -> Result<Outcome, Error> {
    let b = p.block;
    let r = client.create(b.protocol, b.start, b.count, p.options)?;
    let honoured = crate::cmd::acquire::kernel_reserved(client);
    output::reservation(&r, json, "created", honoured);
    Ok(Outcome::Exit(0))
}

pub fn delete(client: &Client, b: CheckedBlock, json: bool) -> Result<Outcome, Error> {
    client.delete(b.protocol, b.start, b.count)?;
    let gone = ReservationInfo {
        protocol: b.protocol,
        start: b.start,
        count: b.count,
        kind: Kind::Persistent,
        token: None,
        owner: None,
        holder: None,
        label: None,
        in_use: None,
        source: None,
    };
    output::reservation(&gone, json, "deleted", None);
    Ok(Outcome::Exit(0))
}

pub fn lookup(client: &Client, b: CheckedBlock, json: bool) -> Result<Outcome, Error> {
    let r = client.lookup(b.protocol, b.start, b.count)?;
    output::reservation(&r, json, "found", None);
    Ok(Outcome::Exit(0))
}
