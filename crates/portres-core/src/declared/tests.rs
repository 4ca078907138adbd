//! The portres.d format: lines, comments, labels, bad lines, sysctl.d's
//! file precedence and masking, overlaps between lines.

use super::*;

fn block(start: u32, count: u32) -> Block {
    Block::new(start, count).unwrap()
}

#[test]
fn a_file_with_every_form_of_line() {
    let text = "\
# vendor reservations
tcp 8080
udp 5000-5009 owner=@video
both 9000 owner=www-data label=web front end  
   tcp 7000 label=has # inside and = too
tcp 7100 # a trailing comment
udp 7200 owner=1000 label=x
";
    let (decls, problems) = parse(text);
    assert_eq!(problems, vec![]);
    let got: Vec<_> = decls
        .iter()
        .map(|d| {
            (
                d.protocol,
                d.block,
                d.owner.clone(),
                d.label.clone(),
                d.line,
            )
        })
        .collect();
    use OwnerName::*;
    assert_eq!(
        got,
        vec![
            (Protocol::Tcp, block(8080, 1), None, None, 2),
            (
                Protocol::Udp,
                block(5000, 10),
                Some(Group("video".into())),
                None,
                3
            ),
            (
                Protocol::Tcp,
                block(9000, 1),
                Some(User("www-data".into())),
                Some("web front end".into()),
                4
            ),
            (
                Protocol::Udp,
                block(9000, 1),
                Some(User("www-data".into())),
                Some("web front end".into()),
                4
            ),
            (
                Protocol::Tcp,
                block(7000, 1),
                None,
                Some("has # inside and = too".into()),
                5
            ),
            (Protocol::Tcp, block(7100, 1), None, None, 6),
            (
                Protocol::Udp,
                block(7200, 1),
                Some(User("1000".into())),
                Some("x".into()),
                7
            ),
        ]
    );
}

#[test]
fn bad_lines_are_reported_with_their_line_and_the_rest_still_count() {
    let text = "\
sctp 80
tcp
tcp 0
tcp 70000
tcp 9-8
tcp 80x
tcp 80 owner=
tcp 80 owner=a owner=b
tcp 80 label=
tcp 80 colour=red
tcp 80 label web
tcp 8080
tcp 81 label=bad\u{202E}label
tcp 65535-65536
";
    let (decls, problems) = parse(text);
    assert_eq!(decls.len(), 1);
    assert_eq!((decls[0].block, decls[0].line), (block(8080, 1), 12));
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14]);
    for p in &problems {
        assert!(!p.message.is_empty(), "{p:?}");
    }
    assert!(problems[0].message.contains("unknown protocol \"sctp\""));
    assert!(problems[4].message.contains("end is before the start"));
    assert!(problems[11].message.contains("U+202E"));
}

#[test]
fn a_label_over_the_limit_is_a_bad_line() {
    let text = format!("tcp 80 label={}\n", "x".repeat(MAX_LABEL_BYTES + 1));
    let (decls, problems) = parse(&text);
    assert!(decls.is_empty());
    assert!(problems[0].message.contains("at most 256"));
    let text = format!("tcp 80 label={}\n", "x".repeat(MAX_LABEL_BYTES));
    assert_eq!(parse(&text).0.len(), 1);
}

fn entry(name: &str, masked: bool) -> DirEntry {
    DirEntry {
        name: name.into(),
        masked,
    }
}

#[test]
fn later_directories_override_same_names_and_dev_null_masks() {
    let usr = vec![
        entry("10-vendor.conf", false),
        entry("20-masked.conf", false),
        entry("README", false),
        entry(".hidden.conf", false),
        entry("30-usr-only.conf", false),
    ];
    let run = vec![entry("10-vendor.conf", false)];
    let etc = vec![
        entry("10-vendor.conf", false),
        entry("20-masked.conf", true),
        entry("05-admin.conf", false),
        entry(".conf", false),
    ];
    assert_eq!(
        effective_files(&[usr, run, etc]),
        vec![
            ("05-admin.conf".to_string(), 2),
            ("10-vendor.conf".to_string(), 2),
            ("30-usr-only.conf".to_string(), 0),
        ]
    );
}

#[test]
fn a_mask_in_an_earlier_directory_does_not_hide_a_later_file() {
    let usr = vec![entry("a.conf", true)];
    let etc = vec![entry("a.conf", false)];
    assert_eq!(
        effective_files(&[usr, etc]),
        vec![("a.conf".to_string(), 1)]
    );
}

#[test]
fn the_first_declaration_of_a_port_wins_and_later_overlaps_are_reported() {
    let a = parse("tcp 8080-8089\nudp 8080\n").0;
    let b = parse("tcp 8085\ntcp 8090\ntcp 8080-8089\ntcp 8000-9000\nudp 8081\n").0;
    let (kept, overlaps) = combine(vec![("/etc/a.conf".into(), a), ("/etc/b.conf".into(), b)]);
    let kept: Vec<_> = kept
        .iter()
        .map(|s| (s.file.as_str(), s.decl.protocol, s.decl.block))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("/etc/a.conf", Protocol::Tcp, block(8080, 10)),
            ("/etc/a.conf", Protocol::Udp, block(8080, 1)),
            ("/etc/b.conf", Protocol::Tcp, block(8090, 1)),
            ("/etc/b.conf", Protocol::Udp, block(8081, 1)),
        ]
    );
    let said: Vec<String> = overlaps.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        said,
        vec![
            "tcp 8085 overlaps: tcp 8080-8089 at /etc/a.conf:1",
            "tcp 8080-8089 is declared already: tcp 8080-8089 at /etc/a.conf:1",
            "tcp 8000-9000 overlaps: tcp 8090 at /etc/b.conf:2",
        ]
    );
    assert_eq!(overlaps[0].skipped.decl.line, 1);
    assert_eq!(overlaps[0].skipped.file, "/etc/b.conf");
}
