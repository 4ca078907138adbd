//! `portres release TOKEN`.

use portres::{Client, Error, Token};

use crate::output::outln;
use crate::{Outcome, output};

pub fn run(client: &Client, token: Token, json: bool) -> Result<Outcome, Error> {
    // Described before it goes, from the list (which shows a token only
    // where this session may use it), so the output names the block.
    let info = client.list(None).ok().and_then(|list| {
        list.into_iter()
            .find(|r| r.token == Some(token))
            .map(|r| portres::ReservationInfo { in_use: None, ..r })
    });
    client.release(token)?;
    match info {
        Some(r) => output::reservation(&r, json, "released", None),
        // Released, though the list did not show it a moment before (it
        // changed in between): only the token is known.
        None if json => outln!(
            "{}",
            serde_json::json!({"result": "released", "token": token})
        ),
        None => outln!("released token {token}"),
    }
    Ok(Outcome::Exit(0))
}
