//! Request checks that need no state (labels, the in-use probe over a
//! block) and the token source.

use portres_core::{Block, Error, ErrorCode, Protocol};

use crate::kernel::Kernel;

/// Longest label accepted, in bytes.
pub use portres_core::declared::MAX_LABEL_BYTES;

/// Tokens drawn from the OS random source, 64 per getrandom() call (one
/// system call per 64 reservations instead of one each). Nothing about a
/// token is derived from another: each is eight fresh random bytes.
#[derive(Default)]
pub(super) struct TokenPool {
    buf: Vec<u64>,
}

impl TokenPool {
    const BATCH: usize = 64;

    pub(super) fn next(&mut self) -> Result<u64, Error> {
        if self.buf.is_empty() {
            let mut bytes = [0u8; Self::BATCH * 8];
            getrandom::fill(&mut bytes).map_err(|e| {
                Error::new(ErrorCode::Internal, format!("OS random source failed: {e}"))
            })?;
            self.buf = bytes
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
                .collect();
        }
        Ok(self.buf.pop().expect("refilled above"))
    }
}

/// Validates a label.
pub(crate) fn check_label(label: &Option<String>) -> Result<(), Error> {
    if let Some(l) = label {
        if l.len() > MAX_LABEL_BYTES {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "label is {} bytes; at most {MAX_LABEL_BYTES} allowed",
                    l.len()
                ),
            ));
        }
        // Why: `list` shows labels to everyone; a control, format (bidi
        // override, zero-width) or separator character would let one
        // reservation's label hide or rewrite what is shown beside it.
        if let Some(c) = portres_core::first_refused_in_label(l) {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "label must not contain control, invisible format or separator characters \
                     (found U+{:04X}; Unicode categories Cc, Cf, Zl, Zp are refused)",
                    c as u32
                ),
            ));
        }
    }
    Ok(())
}

/// The lowest port of `block` some socket holds right now, if any.
pub(crate) fn first_port_in_use(
    kernel: &dyn Kernel,
    protocol: Protocol,
    block: Block,
) -> Result<Option<u16>, Error> {
    for port in block.ports() {
        match kernel.port_in_use(protocol, port) {
            Ok(false) => {}
            Ok(true) => return Ok(Some(port)),
            Err(e) => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("could not check whether {protocol} port {port} is in use: {e}"),
                ));
            }
        }
    }
    Ok(None)
}

/// Checks that no port of the block is in use right now.
pub(crate) fn check_not_in_use(
    kernel: &dyn Kernel,
    protocol: Protocol,
    block: Block,
) -> Result<(), Error> {
    match first_port_in_use(kernel, protocol, block)? {
        None => Ok(()),
        Some(port) => Err(Error::new(
            ErrorCode::SharingViolation,
            format!("{protocol} port {port} is in use"),
        )),
    }
}

#[cfg(test)]
mod check_label_tests {
    use super::*;

    #[test]
    fn labels_refuse_bidi_overrides_zero_width_and_separators() {
        for bad in [
            "a\u{202e}b",
            "\u{2066}x\u{2069}",
            "x\u{200b}",
            "\u{feff}",
            "a\u{2028}b",
            "a\u{2029}",
            "a\nb",
        ] {
            let err = check_label(&Some(bad.to_string())).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidParameter, "{bad:?}");
            assert!(err.message.contains("U+"), "{err}");
        }
        for good in ["web tests", "café ☕", "中文", "🦀 e\u{301}"] {
            check_label(&Some(good.to_string())).unwrap();
        }
        check_label(&None).unwrap();
    }
}
