//! A block of consecutive ports: the unit of every reservation.

use std::fmt;
use std::ops::RangeInclusive;

use crate::{Error, ErrorCode};

/// `count` consecutive ports starting at `start`, never empty, never
/// containing port 0 and never extending past 65535 (the seeds' rules for
/// CreatePersistentTcpPortReservation, which portres applies everywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    start: u16,
    count: u16,
}

impl Block {
    /// Validates and builds a block. `start` 0, `count` 0 and blocks ending
    /// past 65535 are `invalid_parameter`.
    pub fn new(start: u32, count: u32) -> Result<Block, Error> {
        if start == 0 {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "start port 0 is not a port; give a start between 1 and 65535",
            ));
        }
        if count == 0 {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "count must be at least 1",
            ));
        }
        if start > 65535 {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("start port {start} is past 65535"),
            ));
        }
        let last = start as u64 + count as u64 - 1;
        if last > 65535 {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "a block of {count} ports starting at {start} would end at {last}, past 65535"
                ),
            ));
        }
        Ok(Block {
            start: start as u16,
            count: count as u16,
        })
    }

    /// The block `first..=last`. Panics if `first > last` or `first == 0`;
    /// callers use it only with bounds they derived from valid blocks.
    pub fn from_range(first: u16, last: u16) -> Block {
        assert!(first != 0 && first <= last, "invalid block {first}-{last}");
        Block {
            start: first,
            count: last - first + 1,
        }
    }

    /// The first port.
    pub fn start(self) -> u16 {
        self.start
    }

    /// How many ports.
    pub fn count(self) -> u16 {
        self.count
    }

    /// The last port (inclusive).
    pub fn last(self) -> u16 {
        // Cannot overflow: `new` and `from_range` guarantee start+count-1 <= 65535.
        self.start + (self.count - 1)
    }

    /// The ports as an inclusive range.
    pub fn ports(self) -> RangeInclusive<u16> {
        self.start..=self.last()
    }

    /// Whether `port` lies inside the block.
    pub fn contains(self, port: u16) -> bool {
        port >= self.start && port <= self.last()
    }

    /// Whether the two blocks share at least one port.
    pub fn overlaps(self, other: Block) -> bool {
        self.start <= other.last() && other.start <= self.last()
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.last())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_start_zero_count_and_overflow() {
        assert_eq!(
            Block::new(0, 1).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            Block::new(1, 0).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            Block::new(65535, 2).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            Block::new(70000, 1).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        assert_eq!(Block::new(65535, 1).unwrap().last(), 65535);
        assert_eq!(Block::new(1, 65535).unwrap().last(), 65535);
    }

    #[test]
    fn overlap_is_symmetric_and_touching_blocks_do_not_overlap() {
        let a = Block::new(100, 10).unwrap();
        let b = Block::new(110, 5).unwrap();
        let c = Block::new(109, 1).unwrap();
        assert!(!a.overlaps(b) && !b.overlaps(a));
        assert!(a.overlaps(c) && c.overlaps(a));
    }
}
