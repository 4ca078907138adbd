//! Unit tests for PortSet (portset.rs).

use super::*;
use proptest::prelude::*;

fn naive(ports: &[bool]) -> PortSet {
    let mut set = PortSet::new();
    for (p, &on) in ports.iter().enumerate() {
        if on && p > 0 {
            set.insert_range(p as u16, p as u16);
        }
    }
    set
}

#[test]
fn kernel_canonical_examples() {
    let set: PortSet = "9, 5-7,1,6-8\n".parse().unwrap();
    assert_eq!(set.to_string(), "1,5-9");
    assert_eq!("".parse::<PortSet>().unwrap().to_string(), "");
    assert_eq!("\n".parse::<PortSet>().unwrap(), PortSet::new());
    assert!("0".parse::<PortSet>().is_err());
    assert!("5-3".parse::<PortSet>().is_err());
    assert!("65536".parse::<PortSet>().is_err());
    assert!("1,,2".parse::<PortSet>().is_err());
    assert!("x".parse::<PortSet>().is_err());
}

#[test]
fn chunks_cut_between_entries() {
    let mut set = PortSet::new();
    for p in (1000..30000u16).step_by(2) {
        set.insert_range(p, p);
    }
    let chunks = set.render_chunks(4092);
    assert!(chunks.len() > 1);
    for c in &chunks {
        assert!(c.len() <= 4092);
        assert!(!c.starts_with(',') && !c.ends_with(','));
    }
    let joined: PortSet = chunks.join(",").parse().unwrap();
    assert_eq!(joined, set);
    assert_eq!(PortSet::new().render_chunks(4092), vec![String::new()]);
}

proptest! {
    #[test]
    fn union_and_remove_range_agree_with_the_port_by_port_model(
        a in prop::collection::vec((1u16..600, 0u16..40), 0..30),
        b in prop::collection::vec((1u16..600, 0u16..40), 0..30),
        cut in (0u16..650, 0u16..80),
    ) {
        let set = |v: &[(u16, u16)]| {
            let mut s = PortSet::new();
            for &(x, len) in v {
                s.insert_range(x, x.saturating_add(len));
            }
            s
        };
        let (sa, sb) = (set(&a), set(&b));
        let model = |s: &PortSet| (1u16..700).filter(|&p| s.contains(p)).collect::<Vec<_>>();
        let union = sa.union(&sb);
        let mut expected: Vec<u16> = model(&sa).into_iter().chain(model(&sb)).collect();
        expected.sort_unstable();
        expected.dedup();
        prop_assert_eq!(model(&union), expected);
        let mut extended = sa.clone();
        extended.extend(&sb);
        prop_assert_eq!(&union, &extended);
        let (first, last) = (cut.0, cut.0.saturating_add(cut.1));
        let mut cut_set = union.clone();
        cut_set.remove_range(first, last);
        let expected: Vec<u16> = model(&union).into_iter().filter(|p| *p < first || *p > last).collect();
        prop_assert_eq!(model(&cut_set), expected);
        for w in cut_set.ranges().windows(2) {
            prop_assert!(w[0].1 as u32 + 1 < w[1].0 as u32);
        }
    }

    #[test]
    fn render_parse_round_trips(ranges in prop::collection::vec((1u16..=65535, 0u16..200), 0..60)) {
        let mut set = PortSet::new();
        for (a, len) in ranges {
            set.insert_range(a, a.saturating_add(len));
        }
        let text = set.to_string();
        let back: PortSet = text.parse().unwrap();
        prop_assert_eq!(&back, &set);
        prop_assert_eq!(back.to_string(), text);
        // Canonical: sorted, disjoint, non-adjacent.
        for w in set.ranges().windows(2) {
            prop_assert!(w[0].1 as u32 + 1 < w[1].0 as u32);
        }
    }

    #[test]
    fn matches_a_bitmap_model(ops in prop::collection::vec((1u16..2000, 0u16..40), 0..80)) {
        let mut bits = vec![false; 2100];
        let mut set = PortSet::new();
        for (a, len) in ops {
            let b = a + len;
            for p in a..=b { bits[p as usize] = true; }
            set.insert_range(a, b);
        }
        prop_assert_eq!(&set, &naive(&bits));
        for p in 1..2100u16 {
            prop_assert_eq!(set.contains(p), bits[p as usize]);
        }
        prop_assert_eq!(set.len(), bits.iter().filter(|&&x| x).count());
        let mut sub = PortSet::new();
        for p in (1..2100u16).step_by(7) {
            if bits[p as usize] { sub.insert_range(p, p); }
        }
        prop_assert!(set.covers(&sub));
        prop_assert!(set.covers(&PortSet::new()));
        let rebuilt = PortSet::from_ranges(set.ranges().iter().rev().copied().collect());
        prop_assert_eq!(&rebuilt, &set);
        if let Some(free) = (1..2100u16).find(|&p| !bits[p as usize]) {
            sub.insert_range(free, free);
            prop_assert!(!set.covers(&sub));
        }
    }

    #[test]
    fn difference_matches_a_bitmap_model(
        xs in prop::collection::vec((1u16..3000, 0u16..60), 0..60),
        ys in prop::collection::vec((1u16..3000, 0u16..60), 0..60),
    ) {
        let build = |v: &[(u16, u16)]| PortSet::from_ranges(v.iter().map(|&(a, l)| (a, a + l)).collect());
        let (x, y) = (build(&xs), build(&ys));
        let d = x.difference(&y);
        for p in 1..3100u16 {
            prop_assert_eq!(d.contains(p), x.contains(p) && !y.contains(p), "port {}", p);
        }
        prop_assert_eq!(PortSet::from_ranges(d.ranges().to_vec()), d.clone());
        prop_assert_eq!(d.rendered_len(), d.to_string().len());
    }

    #[test]
    fn a_coarsened_set_covers_the_original_fits_and_fills_only_the_smallest_gaps(
        ports in prop::collection::vec((1u16..=65535, 0u16..4), 0..3000),
        limit in 11usize..6000,
    ) {
        let set = PortSet::from_ranges(ports.iter().map(|&(a, l)| (a, a.saturating_add(l))).collect());
        let c = set.coarsened_to_fit(limit);
        prop_assert!(c.covers(&set), "a superset");
        prop_assert!(c.to_string().len() <= limit, "fits: {} > {}", c.to_string().len(), limit);
        prop_assert_eq!(c.rendered_len(), c.to_string().len());
        if set.to_string().len() <= limit {
            prop_assert_eq!(&c, &set, "unchanged when it fits");
        }
        // Only gaps are filled: every range of `c` starts and ends where
        // a range of `set` does.
        for &(a, b) in c.ranges() {
            prop_assert!(set.ranges().iter().any(|r| r.0 == a));
            prop_assert!(set.ranges().iter().any(|r| r.1 == b));
        }
        // Smallest first: no gap left open is smaller than a filled one.
        let open: Vec<u16> = c.ranges().windows(2).map(|w| w[1].0 - w[0].1).collect();
        let filled = c.difference(&set);
        let largest_filled = filled.ranges().iter().map(|&(a, b)| b - a + 2).max();
        if let (Some(f), Some(&o)) = (largest_filled, open.iter().min()) {
            prop_assert!(f <= o, "filled a gap of {} but left one of {}", f, o);
        }
        // Minimal-ish: not coarser than needed; opening the largest
        // filled gap again would not fit.
        if c != set {
            prop_assert!(c.to_string().len() + 12 > limit || set.to_string().len() <= limit);
        }
    }

    #[test]
    fn shuffled_entries_parse_to_the_same_set(ranges in prop::collection::vec((1u16..60000, 0u16..100), 1..30)) {
        let entries: Vec<String> = ranges.iter().map(|&(a, l)| if l == 0 { a.to_string() } else { format!("{}-{}", a, a + l) }).collect();
        let forward: PortSet = entries.join(",").parse().unwrap();
        let mut rev = entries.clone();
        rev.reverse();
        let backward: PortSet = rev.join(" , ").parse().unwrap();
        prop_assert_eq!(forward, backward);
    }
}
