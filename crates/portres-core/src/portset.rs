//! Sets of ports as sorted, merged ranges, and their text form — the form
//! the kernel uses for `net.ipv4.ip_local_reserved_ports` ("1,5-7,9").

use std::fmt;
use std::str::FromStr;

use crate::{Block, Error, ErrorCode};

/// A set of ports 1..=65535 (port 0 is never a member), stored as sorted,
/// disjoint, non-adjacent inclusive ranges: the canonical form the kernel
/// prints, so `render(parse(x))` is the kernel's own rendering of `x`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    /// The empty set.
    pub fn new() -> PortSet {
        PortSet::default()
    }

    /// Whether the set has no ports.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The canonical ranges, sorted and merged.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// How many ports are in the set.
    pub fn len(&self) -> usize {
        self.ranges.iter().map(|&(a, b)| (b - a) as usize + 1).sum()
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        let i = self.ranges.partition_point(|&(_, b)| b < port);
        self.ranges.get(i).is_some_and(|&(a, _)| a <= port)
    }

    /// Whether any port of `block` is in the set.
    pub fn intersects(&self, block: Block) -> bool {
        let i = self.ranges.partition_point(|&(_, b)| b < block.start());
        self.ranges.get(i).is_some_and(|&(a, _)| a <= block.last())
    }

    /// Builds a set from ranges in any order, overlapping or not, in
    /// O(n log n) (sort, then one merging pass) — unlike inserting one by
    /// one, which moves the tail of the vector each time.
    pub fn from_ranges(mut ranges: Vec<(u16, u16)>) -> PortSet {
        ranges.retain(|&(a, b)| b >= a.max(1));
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            let a = a.max(1);
            match merged.last_mut() {
                Some(last) if (last.1 as u32) + 1 >= a as u32 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        PortSet { ranges: merged }
    }

    /// Whether every port of `block` is in the set.
    pub fn covers_block(&self, block: Block) -> bool {
        let i = self.ranges.partition_point(|&(_, hi)| hi < block.start());
        self.ranges
            .get(i)
            .is_some_and(|&(lo, hi)| lo <= block.start() && block.last() <= hi)
    }

    /// Whether every port of `other` is also in `self`.
    pub fn covers(&self, other: &PortSet) -> bool {
        other.ranges.iter().all(|&(a, b)| {
            let i = self.ranges.partition_point(|&(_, hi)| hi < a);
            // Ranges are merged, so one range must hold all of a..=b.
            self.ranges
                .get(i)
                .is_some_and(|&(lo, hi)| lo <= a && b <= hi)
        })
    }

    /// Adds every port of `first..=last` (port 0 is dropped).
    pub fn insert_range(&mut self, first: u16, last: u16) {
        let first = first.max(1);
        if first > last {
            return;
        }
        // Find every range that overlaps or touches [first, last] and merge.
        let lo = self
            .ranges
            .partition_point(|&(_, b)| (b as u32) + 1 < first as u32);
        let hi = self
            .ranges
            .partition_point(|&(a, _)| (a as u32) <= last as u32 + 1);
        let (mut a, mut b) = (first, last);
        if lo < hi {
            a = a.min(self.ranges[lo].0);
            b = b.max(self.ranges[hi - 1].1);
        }
        self.ranges.splice(lo..hi, [(a, b)]);
    }

    /// Removes every port of `first..=last`.
    pub fn remove_range(&mut self, first: u16, last: u16) {
        if first > last {
            return;
        }
        // The ranges holding some port of [first, last].
        let lo = self.ranges.partition_point(|&(_, b)| b < first);
        let hi = self.ranges.partition_point(|&(a, _)| a <= last);
        if lo >= hi {
            return;
        }
        let (a, b) = (self.ranges[lo].0, self.ranges[hi - 1].1);
        let mut kept = Vec::with_capacity(2);
        if a < first {
            kept.push((a, first - 1));
        }
        if b > last {
            kept.push((last + 1, b));
        }
        self.ranges.splice(lo..hi, kept);
    }

    /// Adds every port of `block`.
    pub fn insert_block(&mut self, block: Block) {
        self.insert_range(block.start(), block.last());
    }

    /// Adds every port of `other`.
    pub fn extend(&mut self, other: &PortSet) {
        for &(a, b) in &other.ranges {
            self.insert_range(a, b);
        }
    }

    /// The union of two sets, in one pass over both (linear in their
    /// ranges: the daemon takes the union of the TCP and UDP reservations
    /// and the baseline at every kernel write).
    pub fn union(&self, other: &PortSet) -> PortSet {
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.ranges, &other.ranges);
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(a.len() + b.len());
        loop {
            let next = match (a.get(i), b.get(j)) {
                (Some(&x), Some(&y)) if x.0 <= y.0 => {
                    i += 1;
                    x
                }
                (_, Some(&y)) => {
                    j += 1;
                    y
                }
                (Some(&x), None) => {
                    i += 1;
                    x
                }
                (None, None) => break,
            };
            match merged.last_mut() {
                Some(last) if (last.1 as u32) + 1 >= next.0 as u32 => last.1 = last.1.max(next.1),
                _ => merged.push(next),
            }
        }
        PortSet { ranges: merged }
    }

    /// The ports of `self` that are not in `other`.
    pub fn difference(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        let mut j = 0;
        for &(a, b) in &self.ranges {
            let (mut a, b) = (a as u32, b as u32);
            // Skip other's ranges wholly below this one.
            while j < other.ranges.len() && (other.ranges[j].1 as u32) < a {
                j += 1;
            }
            let mut k = j;
            while a <= b {
                match other.ranges.get(k) {
                    Some(&(lo, hi)) if lo as u32 <= b => {
                        if (lo as u32) > a {
                            out.push((a as u16, lo - 1));
                        }
                        a = a.max(hi as u32 + 1);
                        k += 1;
                    }
                    _ => {
                        out.push((a as u16, b as u16));
                        break;
                    }
                }
            }
        }
        PortSet { ranges: out }
    }

    /// The length in bytes of the canonical text form ([`fmt::Display`]).
    pub fn rendered_len(&self) -> usize {
        let entries: usize = self.ranges.iter().map(|&(a, b)| entry_len(a, b)).sum();
        entries + self.ranges.len().saturating_sub(1)
    }

    /// A superset of `self` whose text form is at most `max_bytes` long:
    /// `self` itself when it fits, otherwise `self` with the smallest gaps
    /// between its ranges filled, smallest first, until the text fits.
    ///
    /// Why: the kernel replaces its reserved-ports list only with what one
    /// write() carries (4092 bytes); a longer exact value cannot be put in
    /// place without a moment in which part of it is missing. Reserving a
    /// few extra ports in the gaps instead is harmless (the ephemeral pool
    /// is a little smaller). Only gaps are filled: the outer ends of the set
    /// never move, and every filled gap is no larger than any gap left open.
    /// `max_bytes` must be at least 11 (so "1-65535" always fits).
    pub fn coarsened_to_fit(&self, max_bytes: usize) -> PortSet {
        assert!(max_bytes >= 11, "too small for one entry");
        let mut total = self.rendered_len();
        if total <= max_bytes {
            return self.clone();
        }
        let r = &self.ranges;
        let n = r.len();
        // Gap i lies between range i and range i + 1.
        let mut gaps: Vec<usize> = (0..n - 1).collect();
        gaps.sort_by_key(|&i| (r[i + 1].0 - r[i].1, i));
        // Merged groups of ranges: `head[e]` is the first range of the group
        // ending at range e, `tail[s]` the last range of the group starting
        // at range s (valid only at group ends).
        let mut head: Vec<usize> = (0..n).collect();
        let mut tail: Vec<usize> = (0..n).collect();
        let mut filled = vec![false; n - 1];
        for i in gaps {
            if total <= max_bytes {
                break;
            }
            let (first, last) = (head[i], tail[i + 1]);
            total -= entry_len(r[first].0, r[i].1) + entry_len(r[i + 1].0, r[last].1) + 1;
            total += entry_len(r[first].0, r[last].1);
            tail[first] = last;
            head[last] = first;
            filled[i] = true;
        }
        let mut out: Vec<(u16, u16)> = Vec::new();
        for (i, &(a, b)) in r.iter().enumerate() {
            match out.last_mut() {
                Some(prev) if filled[i - 1] => prev.1 = b,
                _ => out.push((a, b)),
            }
        }
        PortSet { ranges: out }
    }

    /// The canonical text form, split into pieces of at most `max_bytes`
    /// bytes each, cut only between entries, with no separators at the cut.
    /// Writing the first piece replaces the kernel's value and later pieces
    /// add to it (the sysctl keeps at most 4092 bytes per write()).
    /// An empty set gives one empty piece. `max_bytes` must be at least 11
    /// (the longest entry, "65534-65535").
    pub fn render_chunks(&self, max_bytes: usize) -> Vec<String> {
        assert!(max_bytes >= 11, "chunk size too small for one entry");
        let mut chunks = vec![String::new()];
        for &(a, b) in &self.ranges {
            let entry = render_range(a, b);
            let cur = chunks.last_mut().expect("chunks is never empty");
            let sep = usize::from(!cur.is_empty());
            if cur.len() + sep + entry.len() > max_bytes {
                chunks.push(entry);
            } else {
                if sep == 1 {
                    cur.push(',');
                }
                cur.push_str(&entry);
            }
        }
        chunks
    }
}

/// The length of one entry of the text form: "P" or "A-B".
fn entry_len(a: u16, b: u16) -> usize {
    let digits = |p: u16| match p {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    };
    if a == b {
        digits(a)
    } else {
        digits(a) + 1 + digits(b)
    }
}

fn render_range(a: u16, b: u16) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl FromIterator<Block> for PortSet {
    fn from_iter<I: IntoIterator<Item = Block>>(iter: I) -> PortSet {
        PortSet::from_ranges(iter.into_iter().map(|b| (b.start(), b.last())).collect())
    }
}

impl FromStr for PortSet {
    type Err = Error;

    /// Parses the kernel's form: entries `P` or `A-B` separated by commas,
    /// surrounding whitespace and a trailing newline allowed, unsorted and
    /// overlapping entries merged. Port 0 is not accepted.
    fn from_str(text: &str) -> Result<PortSet, Error> {
        let bad = |why: String| Error::new(ErrorCode::InvalidParameter, why);
        // Collected, then sorted and merged once: inserting one by one
        // would cost O(n²) for a long list.
        let mut ranges = Vec::new();
        let text = text.trim();
        if text.is_empty() {
            return Ok(PortSet::new());
        }
        for entry in text.split(',') {
            let entry = entry.trim();
            let port = |s: &str| -> Result<u16, Error> {
                match s.trim().parse::<u16>() {
                    Ok(p) if p != 0 => Ok(p),
                    _ => Err(bad(format!("{s:?} is not a port between 1 and 65535"))),
                }
            };
            let (a, b) = match entry.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let p = port(entry)?;
                    (p, p)
                }
            };
            if a > b {
                return Err(bad(format!("range {entry:?} runs backwards")));
            }
            ranges.push((a, b));
        }
        Ok(PortSet::from_ranges(ranges))
    }
}

#[cfg(test)]
mod tests;
