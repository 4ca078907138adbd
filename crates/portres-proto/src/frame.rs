//! Varlink framing: messages are NUL-terminated JSON. `FrameBuffer` collects
//! bytes as they arrive and hands out whole messages, refusing to grow past
//! a limit so a peer cannot make us buffer without bound.

use std::fmt;

/// Why the byte stream cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A message grew past the limit without a terminating NUL.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { limit } => {
                write!(
                    f,
                    "message longer than {limit} bytes without a terminating NUL"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Accumulates received bytes and splits them into messages.
#[derive(Debug)]
pub struct FrameBuffer {
    /// Received bytes in `..filled`; the rest is zeroed room for the next
    /// receive, kept so a receive does not zero a fresh 4 KiB every time.
    buf: Vec<u8>,
    /// End of the received bytes.
    filled: usize,
    /// Bytes before this offset are already consumed.
    consumed: usize,
    /// Bytes before this offset (and after `consumed`) contain no NUL.
    scanned: usize,
    limit: usize,
}

impl FrameBuffer {
    /// A buffer that refuses messages longer than `limit` bytes.
    pub fn new(limit: usize) -> FrameBuffer {
        FrameBuffer {
            buf: Vec::with_capacity(4096),
            filled: 0,
            consumed: 0,
            scanned: 0,
            limit,
        }
    }

    /// Space to receive into: at least `min` spare bytes at the end of the
    /// buffer. Call `commit(n)` with how many bytes were written.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.consumed > 0 && self.consumed == self.filled {
            self.filled = 0;
            self.consumed = 0;
            self.scanned = 0;
            // Give back what one large message grew: thousands of idle
            // connections must not each keep its high-water mark.
            if self.buf.capacity() > 16 * 1024 {
                self.buf.truncate(8 * 1024);
                self.buf.shrink_to(8 * 1024);
            }
        } else if self.consumed > self.buf.capacity() / 2 {
            self.buf.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.scanned -= self.consumed;
            self.consumed = 0;
        }
        let end = self.filled + min;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.filled..end]
    }

    /// Records that `n` bytes of the last `spare` slice were filled.
    pub fn commit(&mut self, n: usize, spare_len: usize) {
        debug_assert!(n <= spare_len);
        self.filled += n.min(spare_len);
    }

    /// Appends bytes (for tests and simple readers).
    pub fn extend(&mut self, bytes: &[u8]) {
        let spare = self.spare(bytes.len());
        spare.copy_from_slice(bytes);
        self.commit(bytes.len(), bytes.len());
    }

    /// The next whole message (without its NUL), if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let start = self.consumed;
        match self.buf[self.scanned.max(start)..self.filled]
            .iter()
            .position(|&b| b == 0)
        {
            Some(i) => {
                let end = self.scanned.max(start) + i;
                if end - start > self.limit {
                    return Err(FrameError::TooLarge { limit: self.limit });
                }
                self.consumed = end + 1;
                self.scanned = self.consumed;
                Ok(Some(&self.buf[start..end]))
            }
            None => {
                self.scanned = self.filled;
                if self.filled - start > self.limit {
                    return Err(FrameError::TooLarge { limit: self.limit });
                }
                Ok(None)
            }
        }
    }

    /// Bytes of memory the buffer holds (its capacity).
    pub fn memory(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether a partial message is waiting for more bytes.
    pub fn has_partial(&self) -> bool {
        self.filled > self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_messages_across_arbitrary_chunks() {
        let stream = b"{\"a\":1}\0{\"b\":2}\0{\"c\"";
        for cut in 0..stream.len() {
            let mut fb = FrameBuffer::new(100);
            fb.extend(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(f) = fb.next_frame().unwrap() {
                got.push(f.to_vec());
            }
            fb.extend(&stream[cut..]);
            while let Some(f) = fb.next_frame().unwrap() {
                got.push(f.to_vec());
            }
            assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
            assert!(fb.has_partial());
        }
    }

    #[test]
    fn receives_into_reused_room_without_seeing_old_bytes() {
        let mut fb = FrameBuffer::new(100);
        for round in 0..3u8 {
            let spare = fb.spare(16);
            spare[..3].copy_from_slice(&[b'a' + round, b'b', 0]);
            fb.commit(3, 16);
            assert_eq!(fb.next_frame().unwrap(), Some(&[b'a' + round, b'b'][..]));
            assert_eq!(fb.next_frame().unwrap(), None);
            assert!(!fb.has_partial());
        }
        // A short receive after a long one: only the new bytes count.
        fb.extend(b"0123456789");
        fb.extend(b"\0x");
        assert_eq!(fb.next_frame().unwrap(), Some(&b"0123456789"[..]));
        fb.extend(b"y\0");
        assert_eq!(fb.next_frame().unwrap(), Some(&b"xy"[..]));
        assert_eq!(fb.next_frame().unwrap(), None);
    }

    #[test]
    fn refuses_oversized_messages() {
        let mut fb = FrameBuffer::new(8);
        fb.extend(b"0123456789");
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge { limit: 8 }));
        let mut fb = FrameBuffer::new(8);
        fb.extend(b"0123456789\0");
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge { limit: 8 }));
    }
}
