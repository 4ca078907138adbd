//! The properties the fuzz targets check, on any input: portres' parsers of
//! untrusted bytes never panic, and what they accept means what it says.
//!
//! - [`check_wire`]: the daemon's request path (varlink framing with
//!   `FrameBuffer`, fed in arbitrary chunks the way the server feeds it, then
//!   `Request::decode` of every frame) and the client's reply decoder. The
//!   framer must agree with a split-at-NUL model, every refusal must be
//!   `invalid_parameter`, and every accepted request must survive
//!   encode → decode unchanged.
//! - [`check_sysctl`]: the parser of the kernel's reserved-ports text
//!   (`PortSet::from_str`, used on every read of
//!   `ip_local_reserved_ports`). What it accepts must equal a bitmap built
//!   entry by entry, be canonical, and survive render → parse and the
//!   chunked rendering the sysctl writer uses.
//!
//! Used by the cargo-fuzz targets in `fuzz_targets/` and, on the seed corpus
//! plus pseudo-random inputs, by the regular test
//! `crates/portres-tests/tests/fuzz_smoke.rs` (so CI runs the same checks
//! without a fuzzer).

use portres_core::{ErrorCode, PortSet};
use portres_proto::{
    Empty, FrameBuffer, FrameError, ListReply, Request, ReservationReply, StatusReply, decode_reply,
};

/// The frame limit used when fuzzing the framer (small, so the limit paths
/// are reached; the daemon uses `MAX_REQUEST_BYTES`).
pub const FUZZ_FRAME_LIMIT: usize = 64;

/// Checks the wire decoder on `data`: the first two bytes choose chunk
/// sizes, the rest is the byte stream.
pub fn check_wire(data: &[u8]) {
    // Whole input as one frame, as `Request::decode` sees it.
    check_request_frame(data);
    check_reply_frame(data);
    if data.len() < 2 {
        return;
    }
    let (sizes, stream) = data.split_at(2);
    check_framing(stream, sizes[0], sizes[1], FUZZ_FRAME_LIMIT);
    check_framing(stream, sizes[1], sizes[0], portres_proto::MAX_REQUEST_BYTES);
}

/// `Request::decode` of one frame: never panics; refusals are
/// `invalid_parameter`; an accepted request round-trips through `encode`.
pub fn check_request_frame(frame: &[u8]) {
    match Request::decode(frame) {
        Err(e) => assert_eq!(
            e.code,
            ErrorCode::InvalidParameter,
            "decode refused with {e}"
        ),
        Ok((req, _oneway)) => {
            let bytes = req.encode();
            assert_eq!(bytes.last(), Some(&0), "encode ends with NUL");
            assert!(
                !bytes[..bytes.len() - 1].contains(&0),
                "encoded request holds a NUL: {req:?}"
            );
            let (back, oneway) = Request::decode(&bytes[..bytes.len() - 1])
                .unwrap_or_else(|e| panic!("re-decoding {req:?} failed: {e}"));
            assert_eq!(back, req, "request changed in encode -> decode");
            assert!(!oneway);
        }
    }
}

/// The client's reply decoder: never panics, whatever the daemon (or an
/// impostor on the socket) sends.
pub fn check_reply_frame(frame: &[u8]) {
    let _ = decode_reply::<Empty>(frame);
    let _ = decode_reply::<ReservationReply>(frame);
    let _ = decode_reply::<ListReply>(frame);
    let _ = decode_reply::<StatusReply>(frame);
}

/// Feeds `stream` to a `FrameBuffer` the way the server does (spare →
/// write → commit, chunk sizes cycling between `a` and `b`, at least 1),
/// pulling every whole frame after each chunk, and compares with the model:
/// frames are the NUL-separated pieces; the first piece longer than `limit`
/// (a whole frame, or the unterminated tail) is `TooLarge`, and nothing
/// after it is delivered.
pub fn check_framing(stream: &[u8], a: u8, b: u8, limit: usize) {
    // The model.
    let mut want: Vec<&[u8]> = Vec::new();
    let want_err;
    let mut rest = stream;
    loop {
        match rest.iter().position(|&c| c == 0) {
            Some(i) => {
                if i > limit {
                    want_err = true;
                    break;
                }
                want.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => {
                want_err = rest.len() > limit;
                break;
            }
        }
    }
    // The real thing.
    let mut fb = FrameBuffer::new(limit);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut got_err = false;
    let sizes = [usize::from(a).max(1), usize::from(b).max(1)];
    let mut off = 0;
    let mut turn = 0;
    'feed: while off < stream.len() {
        let n = sizes[turn % 2].min(stream.len() - off);
        turn += 1;
        let spare_len = n.max(16);
        let spare = fb.spare(spare_len);
        spare[..n].copy_from_slice(&stream[off..off + n]);
        fb.commit(n, spare_len);
        off += n;
        loop {
            match fb.next_frame() {
                Ok(Some(f)) => {
                    got.push(f.to_vec());
                    // A frame is delivered whole and never exceeds the limit.
                    assert!(f.len() <= limit);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { limit: l }) => {
                    assert_eq!(l, limit);
                    got_err = true;
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got_err, want_err, "framing error disagrees with the model");
    assert_eq!(
        got.len(),
        want.len(),
        "frame count disagrees with the model"
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_slice(), *w);
    }
    if !got_err {
        assert_eq!(
            fb.has_partial(),
            !rest.is_empty(),
            "partial-frame state disagrees with the model"
        );
    }
    for frame in &got {
        check_request_frame(frame);
    }
}

/// Checks the reserved-ports parser on `data` (as UTF-8, lossily, so that
/// every input reaches the parser).
pub fn check_sysctl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_sysctl_text(&text);
}

/// The parser on one text: refusals are `invalid_parameter`; an accepted
/// value equals the bitmap model, is canonical, and round-trips.
pub fn check_sysctl_text(text: &str) {
    let parsed = text.parse::<PortSet>();
    let model = model_parse(text);
    let set = match (parsed, model) {
        (Err(e), None) => {
            assert_eq!(e.code, ErrorCode::InvalidParameter);
            return;
        }
        (Ok(set), Some(bits)) => {
            let mut expect = PortSet::new();
            let mut p = 1usize;
            while p < bits.len() {
                if bits[p] {
                    let first = p;
                    while p + 1 < bits.len() && bits[p + 1] {
                        p += 1;
                    }
                    expect.insert_range(first as u16, p as u16);
                }
                p += 1;
            }
            assert_eq!(
                set, expect,
                "parse of {text:?} disagrees with the bitmap model"
            );
            assert_eq!(set.len(), bits.iter().filter(|&&b| b).count());
            set
        }
        (Ok(set), None) => panic!("parser accepted {text:?} as {set} but the model refuses it"),
        (Err(e), Some(_)) => panic!("parser refused {text:?} ({e}) but the model accepts it"),
    };
    // Canonical: sorted, disjoint, non-adjacent, no port 0.
    for &(a, b) in set.ranges() {
        assert!(a >= 1 && a <= b);
    }
    for w in set.ranges().windows(2) {
        assert!(
            u32::from(w[0].1) + 1 < u32::from(w[1].0),
            "not canonical: {set:?}"
        );
    }
    // Render → parse is the identity, and rendering is a fixed point.
    let rendered = set.to_string();
    let back: PortSet = rendered.parse().expect("own rendering parses");
    assert_eq!(back, set);
    assert_eq!(back.to_string(), rendered);
    // The sysctl writer's chunks: each within the limit, cut between
    // entries, and together the same set.
    for max in [11usize, 40, 4092] {
        let chunks = set.render_chunks(max);
        let mut union = PortSet::new();
        for c in &chunks {
            assert!(c.len() <= max, "chunk of {} > {max} bytes", c.len());
            assert!(!c.starts_with(',') && !c.ends_with(','));
            union.extend(&c.parse().expect("chunk parses"));
        }
        assert_eq!(union, set, "chunks of {max} bytes lose ports");
    }
}

/// An independent reading of the kernel's list format: comma-separated
/// entries `P` or `A-B` (1 ≤ A ≤ B ≤ 65535), whitespace around entries and
/// numbers allowed, empty (or all-whitespace) text is the empty set. The
/// ports as a bitmap, or `None` if the text is not such a list.
fn model_parse(text: &str) -> Option<Vec<bool>> {
    let mut bits = vec![false; 65536];
    if text.trim().is_empty() {
        return Some(bits);
    }
    fn port(s: &str) -> Option<u32> {
        let s = s.trim();
        let digits = s.strip_prefix('+').unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Leading zeros are fine; the value must be 1..=65535.
        let trimmed = digits.trim_start_matches('0');
        if trimmed.len() > 5 {
            return None;
        }
        let v: u32 = if trimmed.is_empty() {
            0
        } else {
            trimmed.parse().ok()?
        };
        (1..=65535).contains(&v).then_some(v)
    }
    for entry in text.trim().split(',') {
        let (a, b) = match entry.find('-') {
            Some(i) => (port(&entry[..i])?, port(&entry[i + 1..])?),
            None => {
                let p = port(entry)?;
                (p, p)
            }
        };
        if a > b {
            return None;
        }
        bits[a as usize..=b as usize].fill(true);
    }
    Some(bits)
}
