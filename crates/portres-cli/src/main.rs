//! `portres`: the command-line client. Parses arguments (`args`), runs one
//! subcommand (`cmd/`, one file each) and turns the outcome into output and
//! an exit status: 0 success, 1 the daemon refused, 2 usage or connection
//! errors.

mod args;
mod cmd;
mod names;
mod output;

use std::process::ExitCode;

use clap::Parser;
use portres::{Client, Error, ErrorCode};

use crate::args::{Cli, Command};

/// How a command ended, before it becomes an exit status.
#[derive(Debug)]
pub enum Outcome {
    /// Success with this exit status (exec passes its child's through).
    Exit(u8),
}

fn connect(cli: &Cli) -> Result<Client, Error> {
    match &cli.socket {
        Some(path) => {
            let client = Client::connect_to(path)?;
            client.attach_inherited()?;
            Ok(client)
        }
        None => Client::connect(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let result = match &cli.command {
        Command::Acquire(a) => connect(&cli).and_then(|c| cmd::acquire::run(&c, a, json)),
        Command::Exec(a) => connect(&cli).and_then(|c| cmd::exec::run(&c, &cli, a, json)),
        Command::Release(a) => connect(&cli).and_then(|c| cmd::release::run(&c, a, json)),
        Command::Create(a) => connect(&cli).and_then(|c| cmd::persistent::create(&c, a, json)),
        Command::Delete(a) => connect(&cli).and_then(|c| cmd::persistent::delete(&c, a, json)),
        Command::Lookup(a) => connect(&cli).and_then(|c| cmd::persistent::lookup(&c, a, json)),
        Command::List(a) => connect(&cli).and_then(|c| cmd::list::run(&c, a, json)),
        Command::Status => connect(&cli).and_then(|c| cmd::status::run(&c, json)),
    };
    match result {
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            output::error(&e, json);
            ExitCode::from(match e.code {
                ErrorCode::DaemonUnavailable | ErrorCode::DaemonUntrusted => 2,
                _ => 1,
            })
        }
    }
}
