//! Unit tests for the reservation table (table.rs).

use super::*;
use proptest::prelude::*;

fn tok(n: u64) -> Token {
    Token::new(n).unwrap()
}

fn holder(session: u64, uid: u32) -> Holder {
    Holder {
        session: SessionId(session),
        uid,
        pid: 1,
    }
}

#[test]
fn overlap_refused_but_other_protocol_and_touching_allowed() {
    let mut t = Table::new();
    let b = Block::new(5000, 10).unwrap();
    t.insert(Reservation::runtime(
        tok(1),
        Protocol::Tcp,
        b,
        holder(1, 1000),
    ))
    .unwrap();
    let err = t
        .insert(Reservation::runtime(
            tok(2),
            Protocol::Tcp,
            Block::new(5009, 1).unwrap(),
            holder(1, 1000),
        ))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::SharingViolation);
    t.insert(Reservation::runtime(
        tok(3),
        Protocol::Udp,
        b,
        holder(1, 1000),
    ))
    .unwrap();
    t.insert(Reservation::runtime(
        tok(4),
        Protocol::Tcp,
        Block::new(5010, 1).unwrap(),
        holder(2, 1000),
    ))
    .unwrap();
    assert_eq!(t.runtime_ports_of(1000), 21);
    assert_eq!(t.reserved_ports(false).to_string(), "5000-5010");
    let gone = t.remove_session(SessionId(1));
    assert_eq!(gone.len(), 2);
    assert_eq!(t.runtime_ports_of(1000), 1);
    assert_eq!(t.len(), 1);
    assert!(!t.session_holds_any(SessionId(1)));
    assert!(t.session_holds_any(SessionId(2)));
    t.remove(tok(4)).unwrap();
    assert!(!t.session_holds_any(SessionId(2)));
}

#[test]
fn a_claimed_bind_order_moves_the_cursor_so_concurrent_binds_start_apart() {
    let mut r = Reservation::runtime(
        tok(1),
        Protocol::Tcp,
        Block::new(100, 3).unwrap(),
        holder(1, 0),
    );
    let a = r.claim_bind_order();
    let b = r.claim_bind_order();
    assert_eq!(Reservation::first_port(&a), 100);
    assert_eq!(Reservation::first_port(&b), 101);
    // b finishes first, then a: the cursor stays past both.
    r.bound(101, 101);
    r.bound(100, 100);
    assert_eq!(Reservation::first_port(&r.claim_bind_order()), 102);
    // A bind that skipped busy ports moves the cursor past what it got.
    let c = r.claim_bind_order();
    assert_eq!(Reservation::first_port(&c), 100);
    r.bound(100, 101);
    assert_eq!(r.bind_order().collect::<Vec<_>>(), vec![102, 100, 101]);
}

#[test]
fn bind_order_rotates() {
    let mut r = Reservation::runtime(
        tok(1),
        Protocol::Tcp,
        Block::new(100, 3).unwrap(),
        holder(1, 0),
    );
    assert_eq!(r.bind_order().collect::<Vec<_>>(), vec![100, 101, 102]);
    r.advance_past(100);
    assert_eq!(r.bind_order().collect::<Vec<_>>(), vec![101, 102, 100]);
    r.advance_past(102);
    assert_eq!(r.bind_order().collect::<Vec<_>>(), vec![100, 101, 102]);
}

#[test]
fn allocator_skips_reserved_avoided_and_busy_ports() {
    let mut t = Table::new();
    t.insert(Reservation::runtime(
        tok(1),
        Protocol::Tcp,
        Block::new(100, 5).unwrap(),
        holder(1, 0),
    ))
    .unwrap();
    let avoid: PortSet = "106".parse().unwrap();
    let busy = [108u16];
    let got = t.find_free_block(Protocol::Tcp, 3, (100, 200), &avoid, 0, |p| {
        busy.contains(&p)
    });
    assert_eq!(got, Some(Block::new(109, 3).unwrap()));
    assert_eq!(
        t.find_free_block(Protocol::Tcp, 3, (100, 104), &avoid, 0, |_| false),
        None
    );
    assert_eq!(
        t.find_free_block(Protocol::Udp, 3, (100, 200), &avoid, 0, |_| false),
        Some(Block::new(100, 3).unwrap())
    );
}

proptest! {
        #[test]
        fn no_two_reservations_of_one_protocol_ever_overlap(
            ops in prop::collection::vec((any::<bool>(), 1u32..300, 1u32..20, any::<bool>(), 0usize..50), 1..200)
        ) {
            let mut t = Table::new();
            let mut next = 1u64;
            let mut live: Vec<Token> = Vec::new();
            for (tcp, start, count, remove, pick) in ops {
                if remove && !live.is_empty() {
                    let token = live.remove(pick % live.len());
                    prop_assert!(t.remove(token).is_some());
                    continue;
                }
                let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
                let block = Block::new(start, count).unwrap();
                let expect_ok = t.iter().all(|r| r.protocol != protocol || !r.block.overlaps(block));
                let res = Reservation::runtime(tok(next), protocol, block, holder(next % 3, 7));
                let got = t.insert(res);
                prop_assert_eq!(got.is_ok(), expect_ok);
                if got.is_ok() { live.push(tok(next)); }
                next += 1;
                let all: Vec<_> = t.iter().cloned().collect();
                for (i, a) in all.iter().enumerate() {
                    for b in &all[i + 1..] {
                        prop_assert!(a.protocol != b.protocol || !a.block.overlaps(b.block));
                    }
                }
                let held: u32 = all.iter().map(|r| r.block.count() as u32).sum();
                prop_assert_eq!(t.runtime_ports_of(7), held);
                // The incrementally kept port sets say what the blocks say.
                let blocks = PortSet::from_ranges(
                    all.iter().map(|r| (r.block.start(), r.block.last())).collect(),
                );
                prop_assert_eq!(t.reserved_ports(false), blocks);
            }
        }

        #[test]
        fn allocator_returns_only_free_blocks_inside_the_range(
            existing in prop::collection::vec((1u32..400, 1u32..30), 0..20),
            avoid_ports in prop::collection::vec(1u16..400, 0..10),
            busy in prop::collection::vec(1u16..400, 0..10),
            count in 1u16..40,
            lo in 1u16..200,
            span in 0u16..300,
            from in prop::option::of(1u16..400),
        ) {
            let from = from.unwrap_or(0);
            let mut t = Table::new();
            for (i, (s, c)) in existing.into_iter().enumerate() {
                let _ = t.insert(Reservation::runtime(tok(i as u64 + 1), Protocol::Tcp, Block::new(s, c).unwrap(), holder(1, 1)));
            }
            let mut avoid = PortSet::new();
            for p in &avoid_ports { avoid.insert_range(*p, *p); }
            let hi = lo.saturating_add(span);
            let found = t.find_free_block(Protocol::Tcp, count, (lo, hi), &avoid, from, |p| busy.contains(&p));
            let lo = lo.max(from);
            let is_free = |b: Block| t.overlapping(Protocol::Tcp, b).is_none()
                && !avoid.intersects(b)
                && b.ports().all(|p| !busy.contains(&p));
            match found {
                Some(b) => {
                    prop_assert_eq!(b.count(), count);
                    prop_assert!(b.start() >= lo && b.last() <= hi);
                    prop_assert!(is_free(b));
                    // First fit: no free block starts lower.
                    for s in lo..b.start() {
                        let cand = Block::new(s as u32, count as u32).unwrap();
                        prop_assert!(!is_free(cand));
                    }
                }
                None => {
                    for s in lo as u32..=hi as u32 {
                        if s + count as u32 - 1 > hi as u32 { break; }
                        prop_assert!(!is_free(Block::new(s, count as u32).unwrap()));
                    }
                }
            }
        }

        #[test]
        fn the_scan_hint_never_changes_what_first_fit_finds(
            ops in prop::collection::vec((any::<bool>(), 1u16..6, 0usize..64, prop::option::of(1000u16..1200)), 1..150)
        ) {
            let mut t = Table::new();
            let mut live: Vec<Token> = Vec::new();
            let mut next = 1u64;
            let range = (1000u16, 1200u16);
            for (acquire, count, pick, from) in ops {
                // A search resumed above some port must not move the
                // hint past ports it did not look at.
                let from = from.unwrap_or(0);
                if acquire || live.is_empty() {
                    // The same search on a table built from scratch (no hint).
                    let mut fresh = Table::new();
                    for r in t.iter() {
                        fresh.insert(r.clone()).unwrap();
                    }
                    let want = fresh.find_free_block(Protocol::Tcp, count, range, &PortSet::new(), from, |_| false);
                    let got = t.find_free_block(Protocol::Tcp, count, range, &PortSet::new(), from, |_| false);
                    prop_assert_eq!(got, want);
                    if let Some(b) = got {
                        t.insert(Reservation::runtime(tok(next), Protocol::Tcp, b, holder(1, 1))).unwrap();
                        live.push(tok(next));
                        next += 1;
                    }
                } else {
                    let token = live.remove(pick % live.len());
                    t.remove(token).unwrap();
                }
            }
        }
}
