//! Declared reservations: the `portres.d` file format and sysctl.d's rules
//! for which files count, as pure functions (the daemon reads directories
//! and files, resolves owner names and applies the result).
//!
//! A file holds one reservation per line:
//!
//! ```text
//! # comment
//! PROTOCOL START[-END] [owner=USER|@GROUP] [label=TEXT]
//! tcp  8080            owner=www-data label=web front end
//! both 5000-5009       owner=@video
//! ```
//!
//! - `PROTOCOL` is `tcp`, `udp` or `both` (one reservation of each).
//! - `owner=` names a user, `owner=@` a group, by name or number.
//! - `label=` takes the rest of the line (trailing blanks dropped), so a
//!   label holds spaces without quoting and must come last; it holds
//!   anything a label may hold (see [`crate::first_refused_in_label`]),
//!   `#` included.
//! - A line whose first non-blank character is `#` is a comment, and so is
//!   everything from a word starting with `#` on (outside a label).
//!
//! A bad line is reported ([`LineProblem`]) and skipped; the other lines
//! still count.
//!
//! Which files ([`effective_files`]): every `*.conf` name in the
//! directories, lowest precedence first; a name in a later directory
//! replaces the same name in an earlier one; a file that is `/dev/null`
//! (a symlink to it) masks the name; the winners are read in lexical order
//! of name, whatever their directory. Overlaps between lines
//! ([`combine`]): the first declaration of a port, in that reading order,
//! wins; a later line overlapping it (an exact duplicate too) is reported
//! and skipped.

use std::collections::BTreeMap;

use crate::{Block, Protocol, first_refused_in_label};

/// Most bytes a label may hold (the daemon refuses longer ones too).
pub const MAX_LABEL_BYTES: usize = 256;

/// An owner as a file names it: a name or a number, resolved by the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnerName {
    /// `owner=USER`.
    User(String),
    /// `owner=@GROUP`.
    Group(String),
}

impl std::fmt::Display for OwnerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnerName::User(u) => f.write_str(u),
            OwnerName::Group(g) => write!(f, "@{g}"),
        }
    }
}

/// One reservation a line declares (`both` makes two, with the same line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The ports.
    pub block: Block,
    /// Who may bind it besides an admin.
    pub owner: Option<OwnerName>,
    /// Free text.
    pub label: Option<String>,
    /// The line it is on, from 1.
    pub line: usize,
}

/// A line that declares nothing, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineProblem {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Parses one file's text: what its good lines declare, in order, and its
/// bad lines.
pub fn parse(text: &str) -> (Vec<Declaration>, Vec<LineProblem>) {
    let mut decls = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some((protocols, block, owner, label))) => {
                for &protocol in protocols {
                    decls.push(Declaration {
                        protocol,
                        block,
                        owner: owner.clone(),
                        label: label.clone(),
                        line: line_no,
                    });
                }
            }
            Err(message) => problems.push(LineProblem {
                line: line_no,
                message,
            }),
        }
    }
    (decls, problems)
}

type Parsed = (
    &'static [Protocol],
    Block,
    Option<OwnerName>,
    Option<String>,
);

/// The next word of `rest` (moving past it), or `None` at the end of the
/// line or at a comment.
fn next_word<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let w = rest.split(char::is_whitespace).next()?;
    if w.is_empty() || w.starts_with('#') {
        return None;
    }
    *rest = rest[w.len()..].trim_start();
    Some(w)
}

/// One line: `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<Parsed>, String> {
    let mut rest = line.trim_start();
    let Some(protocol) = next_word(&mut rest) else {
        return Ok(None);
    };
    let protocols: &'static [Protocol] = match protocol {
        "tcp" => &[Protocol::Tcp],
        "udp" => &[Protocol::Udp],
        "both" => &Protocol::ALL,
        other => {
            return Err(format!(
                "unknown protocol {other:?}: expected tcp, udp or both"
            ));
        }
    };
    let ports = next_word(&mut rest).ok_or("a port or START-END is missing after the protocol")?;
    let block = parse_ports(ports)?;
    let mut owner = None;
    let mut label = None;
    loop {
        // `label=` takes the rest of the line, so look for it before
        // splitting into words.
        if let Some(text) = rest.strip_prefix("label=") {
            let text = text.trim_end();
            if text.is_empty() {
                return Err("label= has no text (leave it out for no label)".into());
            }
            check_label(text)?;
            label = Some(text.to_string());
            break;
        }
        let Some(w) = next_word(&mut rest) else { break };
        if let Some(name) = w.strip_prefix("owner=") {
            if owner.is_some() {
                return Err("owner= is given twice".into());
            }
            owner = Some(parse_owner(name)?);
        } else if w.starts_with("label") {
            return Err(format!("{w:?}: write label=TEXT"));
        } else {
            return Err(format!(
                "unexpected {w:?}: after the ports only owner=USER, owner=@GROUP and label=TEXT may follow"
            ));
        }
    }
    Ok(Some((protocols, block, owner, label)))
}

fn parse_ports(s: &str) -> Result<Block, String> {
    let number = |p: &str| -> Result<u32, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
            return Err(format!("{s:?} is not a port or START-END (ports 1-65535)"));
        }
        p.parse::<u32>().map_err(|e| e.to_string())
    };
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let p = number(s)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!("{s:?}: the end is before the start"));
    }
    Block::new(start, end - start + 1).map_err(|e| e.message)
}

fn parse_owner(name: &str) -> Result<OwnerName, String> {
    let (group, name) = match name.strip_prefix('@') {
        Some(g) => (true, g),
        None => (false, name),
    };
    // Names as useradd/groupadd accept them (and numbers): nothing that
    // could be mistaken for syntax.
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-$".contains(&b))
        && !name.starts_with('-');
    if !ok {
        return Err(format!(
            "owner={}{name}: not a user name, @group name or number",
            if group { "@" } else { "" }
        ));
    }
    Ok(if group {
        OwnerName::Group(name.to_string())
    } else {
        OwnerName::User(name.to_string())
    })
}

fn check_label(label: &str) -> Result<(), String> {
    if label.len() > MAX_LABEL_BYTES {
        return Err(format!(
            "label is {} bytes; at most {MAX_LABEL_BYTES} allowed",
            label.len()
        ));
    }
    if let Some(c) = first_refused_in_label(label) {
        return Err(format!(
            "label holds U+{:04X}, which a label may not hold (control, invisible format or separator characters)",
            c as u32
        ));
    }
    Ok(())
}

/// One entry of a configuration directory, as the caller found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The file name (not the path).
    pub name: String,
    /// It is `/dev/null` (a symlink to it): it masks the name.
    pub masked: bool,
}

/// Which file each name comes from: for `dirs` (each a directory's
/// entries, lowest precedence first) the `*.conf` names, each from the
/// last directory that has it, masked names left out, in lexical order of
/// name. Returns (name, index into `dirs`).
pub fn effective_files(dirs: &[Vec<DirEntry>]) -> Vec<(String, usize)> {
    let mut chosen: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    for (i, entries) in dirs.iter().enumerate() {
        for e in entries {
            if is_conf_name(&e.name) {
                chosen.insert(&e.name, (i, e.masked));
            }
        }
    }
    chosen
        .into_iter()
        .filter(|(_, (_, masked))| !masked)
        .map(|(name, (i, _))| (name.to_string(), i))
        .collect()
}

/// Whether a file name is one the directories are read for: `*.conf`, not
/// hidden (editors' and package managers' temporary files start with `.`).
pub fn is_conf_name(name: &str) -> bool {
    name.len() > ".conf".len() && name.ends_with(".conf") && !name.starts_with('.')
}

/// A declaration with the file it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced {
    /// The file's path, as shown and stored.
    pub file: String,
    /// What it declares.
    pub decl: Declaration,
}

/// A declaration skipped because an earlier one holds some of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The skipped line.
    pub skipped: Sourced,
    /// The earlier declaration it overlaps.
    pub earlier: Sourced,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, e) = (&self.skipped.decl, &self.earlier.decl);
        let what = if s.block == e.block {
            "is declared already"
        } else {
            "overlaps"
        };
        write!(
            f,
            "{} {} {what}: {} {} at {}:{}",
            s.protocol, s.block, e.protocol, e.block, self.earlier.file, e.line
        )
    }
}

/// Every declaration in reading order (files in the order given, lines in
/// order): those kept, and those skipped for overlapping an earlier one.
pub fn combine(files: Vec<(String, Vec<Declaration>)>) -> (Vec<Sourced>, Vec<Overlap>) {
    // Per protocol, start -> index into `kept`. Kept blocks are disjoint,
    // so the only one a block can overlap is the kept block starting last
    // at or before the block's last port (any earlier one ends before it).
    let mut by_start: BTreeMap<(Protocol, u16), usize> = BTreeMap::new();
    let mut kept: Vec<Sourced> = Vec::new();
    let mut overlaps = Vec::new();
    for (file, decls) in files {
        for decl in decls {
            let (p, b) = (decl.protocol, decl.block);
            let hit = by_start
                .range((p, 0)..=(p, b.last()))
                .next_back()
                .map(|(_, &i)| i)
                .filter(|&i| kept[i].decl.block.overlaps(b));
            let sourced = Sourced {
                file: file.clone(),
                decl,
            };
            match hit {
                Some(i) => overlaps.push(Overlap {
                    skipped: sourced,
                    earlier: kept[i].clone(),
                }),
                None => {
                    by_start.insert((p, b.start()), kept.len());
                    kept.push(sourced);
                }
            }
        }
    }
    (kept, overlaps)
}

#[cfg(test)]
mod tests;
