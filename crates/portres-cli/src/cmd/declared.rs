//! `portres reload` (re-read the daemon's portres.d files) and `portres
//! import-sysctl` (the kernel's reserved ports, or the daemon's baseline,
//! as a portres.d file).

use portres::{Client, DeclaredProblem, Error, ErrorCode};
use portres_core::PortSet;

use crate::Outcome;
use crate::args::ImportSysctlArgs;
use crate::output::{errln, outln};

/// `FILE:LINE: MESSAGE (KIND)`, or `FILE: MESSAGE (KIND)`.
pub fn problem_line(p: &DeclaredProblem) -> String {
    match p.line {
        Some(l) => format!("{}:{l}: {} ({})", p.file, p.message, p.kind),
        None => format!("{}: {} ({})", p.file, p.message, p.kind),
    }
}

pub fn reload(client: &Client, json: bool) -> Result<Outcome, Error> {
    let r = client.reload()?;
    if json {
        outln!("{}", serde_json::to_string(&r).expect("serializable"));
    } else {
        outln!(
            "reloaded {} file(s): {} declared reservation(s); {} created, {} updated, {} deleted",
            r.files.len(),
            r.declared,
            r.created,
            r.updated,
            r.deleted
        );
        for p in &r.problems {
            errln!("portres: {}", problem_line(p));
        }
    }
    Ok(Outcome::Exit(0))
}

/// A checked `import-sysctl`.
#[derive(Clone, Debug)]
pub struct ImportPlan {
    pub baseline: bool,
    pub label: String,
}

pub fn check_import(a: &ImportSysctlArgs) -> Result<ImportPlan, Error> {
    let label = a
        .label
        .clone()
        .unwrap_or_else(|| "from ip_local_reserved_ports".to_string());
    let (_, bad) = portres_core::declared::parse(&format!("tcp 1 label={label}"));
    if let Some(b) = bad.first() {
        return Err(Error::new(
            ErrorCode::InvalidParameter,
            format!("--label: {}", b.message),
        ));
    }
    Ok(ImportPlan {
        baseline: a.baseline,
        label,
    })
}

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

pub fn import_sysctl(client: Option<&Client>, p: ImportPlan) -> Result<Outcome, Error> {
    let (text, from) = match client {
        Some(c) if p.baseline => {
            let s = c.status()?;
            if !s.kernel_sync {
                return Err(Error::new(
                    ErrorCode::InvalidParameter,
                    "the daemon runs without kernel sync, so it recorded no baseline",
                ));
            }
            let from = if s.baseline_origin.is_empty() {
                "the baseline portresd recorded".to_string()
            } else {
                format!("the baseline portresd recorded ({})", s.baseline_origin)
            };
            (s.baseline, from)
        }
        _ => {
            let text = std::fs::read_to_string(SYSCTL).map_err(|e| {
                Error::new(ErrorCode::Internal, format!("cannot read {SYSCTL}: {e}"))
            })?;
            (text, format!("{SYSCTL} as read now"))
        }
    };
    let ports: PortSet = text.trim().parse()?;
    outln!("# portres.d reservations from net.ipv4.ip_local_reserved_ports: {from}.");
    outln!("# The kernel's list holds both protocols, hence `both`. Install it as");
    outln!("# /etc/portres.d/50-sysctl.conf, run `portres reload`, then drop the");
    outln!("# net.ipv4.ip_local_reserved_ports line from /etc/sysctl.d.");
    if ports.is_empty() {
        outln!("# (the value is empty: nothing to declare)");
    }
    for &(first, last) in ports.ranges() {
        let ports = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        outln!("both {ports} label={}", p.label);
    }
    Ok(Outcome::Exit(0))
}
