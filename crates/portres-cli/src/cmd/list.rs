//! `portres list`: every reservation, like `netsh int ipv4 show
//! excludedportrange` but with kind, holder, label and live usage.

use portres::{Client, Error};

use crate::args::ListArgs;
use crate::cmd::protocol;
use crate::output::outln;
use crate::{Outcome, output};

pub fn run(client: &Client, a: &ListArgs, json: bool) -> Result<Outcome, Error> {
    let filter = a.protocol.as_deref().map(protocol).transpose()?;
    let list = client.list(filter)?;
    if json {
        outln!("{}", serde_json::to_string(&list).expect("serializable"));
        return Ok(Outcome::Exit(0));
    }
    if list.is_empty() {
        outln!("no reservations");
        return Ok(Outcome::Exit(0));
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|r| {
            let in_use = r.in_use.as_deref().unwrap_or(&[]);
            [
                r.protocol.to_string(),
                output::ports(r),
                r.kind.as_str().to_string(),
                output::who(r),
                if in_use.is_empty() {
                    "-".to_string()
                } else {
                    in_use
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                r.token.map_or_else(|| "-".to_string(), |t| t.to_string()),
                output::label(r),
            ]
        })
        .collect();
    let header = [
        "PROTO",
        "PORTS",
        "KIND",
        "HOLDER/OWNER",
        "IN USE",
        "TOKEN",
        "LABEL",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", line.join("  ").trim_end());
    };
    print(&header.map(String::from));
    for row in &rows {
        print(row);
    }
    Ok(Outcome::Exit(0))
}
