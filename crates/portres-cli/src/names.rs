//! User and group names <-> ids, from /etc/passwd and /etc/group (numeric
//! ids always work, so directories served by NSS modules can use numbers).

use std::fs;

fn lookup(file: &str, pred: impl Fn(&str, u32) -> bool) -> Option<(String, u32)> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _ = f.next();
        let id = f.next()?.parse::<u32>().ok()?;
        pred(name, id).then(|| (name.to_string(), id))
    })
}

/// uid of a user name or number.
pub fn uid_of(name: &str) -> Option<u32> {
    name.parse()
        .ok()
        .or_else(|| lookup("/etc/passwd", |n, _| n == name).map(|x| x.1))
}

/// gid of a group name or number.
pub fn gid_of(name: &str) -> Option<u32> {
    name.parse()
        .ok()
        .or_else(|| lookup("/etc/group", |n, _| n == name).map(|x| x.1))
}

/// A user's name, or the number.
pub fn user_name(uid: u32) -> String {
    lookup("/etc/passwd", |_, id| id == uid).map_or_else(|| uid.to_string(), |x| x.0)
}

/// A group's name, or the number.
pub fn group_name(gid: u32) -> String {
    lookup("/etc/group", |_, id| id == gid).map_or_else(|| gid.to_string(), |x| x.0)
}
