//! `portres`: the command-line client. Parses arguments (`args`), checks
//! them (`cmd::check`: usage errors never reach the daemon), runs one
//! subcommand (`cmd/`, one file each) and turns the outcome into output and
//! an exit status: 0 success, 1 the daemon refused, 2 usage or connection
//! errors (the daemon stopping under `acquire` is one).

mod args;
mod cmd;
mod names;
mod output;

use std::process::ExitCode;

use clap::Parser;
use portres::{Client, Error, ErrorCode};

use crate::args::Cli;

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
    let plan = match cmd::check(&cli) {
        Ok(plan) => plan,
        Err(e) => {
            output::error(&e, json);
            return ExitCode::from(2);
        }
    };
    let result = match plan.run_alone() {
        Some(result) => result,
        None => connect(&cli).and_then(|c| plan.run(&c, json)),
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
