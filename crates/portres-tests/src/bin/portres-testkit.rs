//! `portres-testkit`: small client actions the integration tests run as
//! separate processes (often as another user): hold a reservation until
//! killed, bind into a reservation by token, bind into a persistent
//! reservation found by lookup. Connects like any client (`PORTRES_SOCKET`,
//! `PORTRES_SESSION_FD`). Prints results as one line on stdout; on refusal
//! prints the error code on stderr and exits 1. `try-bind` makes plain
//! binds without the daemon (strict mode's tests). Also a portserver client
//! (portpicker's protocol, no varlink): `portserver ADDRESS PID…`.

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

/// `try-bind PROTO PORT[,PORT…] [ADDRS]` (PROTO: tcp, udp, or mptcp, which
/// binds TCP's ports): plain `bind()` calls, no daemon
/// (strict mode's tests): for each port, each address of ADDRS (a comma
/// list of v4, v6, mapped, any6, any4; default all) and each of no option,
/// SO_REUSEADDR and SO_REUSEPORT, a fresh socket is bound and closed.
/// Prints one line per attempt, `PORT ADDR OPTION ok|EACCES|errno N`
/// (`unsupported` where the kernel cannot make the socket).
fn try_bind(args: &[String]) -> ExitCode {
    use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    // MPTCP sockets share TCP's ports (their first subflow binds them).
    let protocol = arg(1);
    let (ty, proto) = match protocol {
        "tcp" => (Type::STREAM, SockProto::TCP),
        "udp" => (Type::DGRAM, SockProto::UDP),
        "mptcp" => (Type::STREAM, SockProto::MPTCP),
        other => panic!("try-bind: protocol {other:?}"),
    };
    let ports: Vec<u16> = arg(2)
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect();
    let addrs = if arg(3).is_empty() {
        "v4,v6,mapped,any6,any4"
    } else {
        arg(3)
    };
    for port in ports {
        for addr in addrs.split(',') {
            let sa: SocketAddr = match addr {
                "v4" => (Ipv4Addr::LOCALHOST, port).into(),
                "any4" => (Ipv4Addr::UNSPECIFIED, port).into(),
                "v6" => (Ipv6Addr::LOCALHOST, port).into(),
                "any6" => (Ipv6Addr::UNSPECIFIED, port).into(),
                "mapped" => (Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port).into(),
                other => panic!("try-bind: address {other:?}"),
            };
            for option in ["plain", "reuseaddr", "reuseport"] {
                let socket = match Socket::new(Domain::for_address(sa), ty, Some(proto)) {
                    Ok(s) => s,
                    // A kernel without MPTCP.
                    Err(e) => {
                        eprintln!("try-bind: {protocol} socket: {e}");
                        println!("{port} {addr} {option} unsupported");
                        continue;
                    }
                };
                match option {
                    "reuseaddr" => socket.set_reuse_address(true).expect("SO_REUSEADDR"),
                    "reuseport" => socket.set_reuse_port(true).expect("SO_REUSEPORT"),
                    _ => {}
                }
                let result = match socket.bind(&SockAddr::from(sa)) {
                    Ok(()) => "ok".to_string(),
                    Err(e) if e.raw_os_error() == Some(libc_eacces()) => "EACCES".to_string(),
                    Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
                };
                println!("{port} {addr} {option} {result}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// `portserver ADDRESS PID… [--hold]`: one portpicker request per PID
/// (`self`: this process) on ADDRESS (a path, or `@name`), as portpicker
/// makes it (connect, send `"<pid>\n"`, one read); prints per request what
/// came back, without the newline, or `-` for nothing. With `--hold`, then
/// waits to be killed (ports asked for `self` live as long).
fn portserver(args: &[String]) -> ExitCode {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let address = &args[0];
    let addr = match address.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name"),
        None => SocketAddr::from_pathname(address).expect("path"),
    };
    let mut hold = false;
    for pid in &args[1..] {
        if pid == "--hold" {
            hold = true;
            continue;
        }
        let pid = if pid == "self" {
            std::process::id().to_string()
        } else {
            pid.clone()
        };
        let mut s = UnixStream::connect_addr(&addr).expect("connect to the portserver");
        s.write_all(format!("{pid}\n").as_bytes()).expect("send");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        let reply = String::from_utf8_lossy(&buf[..n]);
        println!("{}", if n == 0 { "-" } else { reply.trim_end() });
    }
    std::io::stdout().flush().ok();
    if hold {
        loop {
            std::thread::park();
        }
    }
    ExitCode::SUCCESS
}

/// EACCES (13 on every Linux architecture).
fn libc_eacces() -> i32 {
    13
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("try-bind") {
        return try_bind(&args);
    }
    if args.first().map(String::as_str) == Some("portserver") {
        return portserver(&args[1..]);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {}", e.code, e.message);
            ExitCode::from(1)
        }
    }
}
