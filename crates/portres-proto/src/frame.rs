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
    buf: Vec<u8>,
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
            consumed: 0,
            scanned: 0,
            limit,
        }
    }

    /// Space to receive into: at least `min` spare bytes at the end of the
    /// buffer. Call `commit(n)` with how many bytes were written.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.consumed > 0 && self.consumed == self.buf.len() {
            self.buf.clear();
            self.consumed = 0;
            self.scanned = 0;
            // Give back what one large message grew: thousands of idle
            // connections must not each keep its high-water mark.
            if self.buf.capacity() > 16 * 1024 {
                self.buf.shrink_to(8 * 1024);
            }
        } else if self.consumed > self.buf.capacity() / 2 {
            self.buf.drain(..self.consumed);
            self.scanned -= self.consumed;
            self.consumed = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + min, 0);
        &mut self.buf[len..]
    }

    /// Records that `n` bytes of the last `spare` slice were filled; drops
    /// the rest of it.
    pub fn commit(&mut self, n: usize, spare_len: usize) {
        let keep = self.buf.len() - spare_len + n;
        self.buf.truncate(keep);
    }

    /// Appends bytes (for tests and simple readers).
    pub fn extend(&mut self, bytes: &[u8]) {
        let spare = self.spare(bytes.len());
        spare.copy_from_slice(bytes);
    }

    /// The next whole message (without its NUL), if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let start = self.consumed;
        match self.buf[self.scanned.max(start)..]
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
                self.scanned = self.buf.len();
                if self.buf.len() - start > self.limit {
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
        self.buf.len() > self.consumed
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
    fn refuses_oversized_messages() {
        let mut fb = FrameBuffer::new(8);
        fb.extend(b"0123456789");
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge { limit: 8 }));
        let mut fb = FrameBuffer::new(8);
        fb.extend(b"0123456789\0");
        assert_eq!(fb.next_frame(), Err(FrameError::TooLarge { limit: 8 }));
    }
}
