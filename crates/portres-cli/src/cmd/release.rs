//! `portres release TOKEN`.

use portres::{Client, Error, Token};

use crate::Outcome;
use crate::output::outln;

pub fn run(client: &Client, a: &crate::args::ReleaseArgs, json: bool) -> Result<Outcome, Error> {
    let token: Token = a.token.parse()?;
    client.release(token)?;
    if json {
        outln!("{}", serde_json::json!({"released": token}));
    } else {
        outln!("released {token}");
    }
    Ok(Outcome::Exit(0))
}
