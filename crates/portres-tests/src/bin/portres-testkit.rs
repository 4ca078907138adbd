//! `portres-testkit`: small client actions the integration tests run as
//! separate processes (often as another user): hold a reservation until
//! killed, bind into a reservation by token, bind into a persistent
//! reservation found by lookup. Connects like any client (`PORTRES_SOCKET`,
//! `PORTRES_SESSION_FD`). Prints results as one line on stdout; on refusal
//! prints the error code on stderr and exits 1.

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;

use portres::{Client, Error, Protocol, Token};

fn run(args: &[String]) -> Result<(), Error> {
    let client = Client::connect()?;
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        // hold PROTO START COUNT: acquire, print the token, wait to be killed.
        "hold" => {
            let res = client.acquire(
                arg(1).parse()?,
                arg(2).parse().unwrap_or(0),
                arg(3).parse().unwrap_or(1),
            )?;
            println!("{} {} {}", res.token(), res.start(), res.count());
            std::io::stdout().flush().ok();
            loop {
                std::thread::park();
            }
        }
        // bind TOKEN PROTO ADDR: bind a new socket into the reservation.
        "bind" => {
            let token: Token = arg(1).parse()?;
            let proto: Protocol = arg(2).parse()?;
            let addr: IpAddr = arg(3).parse().expect("address");
            let port = match proto {
                Protocol::Tcp => client
                    .bind_tcp(token, addr)?
                    .local_addr()
                    .expect("addr")
                    .port(),
                Protocol::Udp => client
                    .bind_udp(token, addr)?
                    .local_addr()
                    .expect("addr")
                    .port(),
            };
            println!("{port}");
        }
        // bind-persistent PROTO START COUNT ADDR: lookup (as owner), then bind.
        "bind-persistent" => {
            let proto: Protocol = arg(1).parse()?;
            let info = client.lookup(
                proto,
                arg(2).parse().expect("start"),
                arg(3).parse().expect("count"),
            )?;
            let token = info.token.expect("lookup returns the token");
            let addr: IpAddr = arg(4).parse().expect("address");
            let listener = client.bind_tcp(token, addr)?;
            let port = listener.local_addr().expect("addr").port();
            println!("{port}");
        }
        other => panic!("unknown testkit action {other:?}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {}", e.code, e.message);
            ExitCode::from(1)
        }
    }
}
