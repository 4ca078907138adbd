//! `portres release TOKEN`.

use portres::{Client, Error, Token};

use crate::Outcome;

pub fn run(client: &Client, a: &crate::args::ReleaseArgs, json: bool) -> Result<Outcome, Error> {
    let token: Token = a.token.parse()?;
    client.release(token)?;
    if json {
        println!("{}", serde_json::json!({"released": token}));
    } else {
        println!("released {token}");
    }
    Ok(Outcome::Exit(0))
}
