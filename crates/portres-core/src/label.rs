//! Labels: which characters the free text of a reservation may hold, and
//! how a display shows one that holds others (stored before the rule).
//!
//! A label is shown by `portres list` next to other users' reservations, so
//! it must show as exactly what it is: no character may be invisible or
//! rearrange the text around it. Refused are Unicode's general categories
//! Cc (controls: newline, the escape that drives a terminal), Cf (format
//! characters: the bidi embeddings, overrides and isolates U+202A–U+202E and
//! U+2066–U+2069, the zero-width space and joiners U+200B–U+200D, U+2060,
//! the byte order mark, the soft hyphen, tag characters), Zl (U+2028) and
//! Zp (U+2029). The category table is `unicode-properties` (Unicode 18).

use std::borrow::Cow;
use std::fmt::Write;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Whether `c` may not appear in a label: it would not show as itself.
pub fn label_refuses(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// The first character of `label` that it may not hold, if any.
pub fn first_refused_in_label(label: &str) -> Option<char> {
    label.chars().find(|&c| label_refuses(c))
}

/// `label` for display: every character a label may not hold written as
/// `\u{XXXX}`, so a label stored before the rule cannot spoof a listing.
pub fn escape_label(label: &str) -> Cow<'_, str> {
    if first_refused_in_label(label).is_none() {
        return Cow::Borrowed(label);
    }
    let mut out = String::with_capacity(label.len() + 8);
    for c in label.chars() {
        if label_refuses(c) {
            let _ = write!(out, "\\u{{{:04X}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_reordering_characters_are_refused() {
        let refused = [
            '\u{0}',
            '\n',
            '\u{1b}',
            '\u{7f}',
            '\u{85}', // Cc
            '\u{ad}',
            '\u{600}',
            '\u{61c}',
            '\u{180e}', // Cf: soft hyphen, Arabic marks
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}', // zero width, LRM/RLM
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}', // embeddings, overrides
            '\u{2060}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}', // word joiner, isolates
            '\u{feff}',
            '\u{fff9}',
            '\u{e0001}',
            '\u{e0041}', // BOM, annotation, tags
            '\u{2028}',
            '\u{2029}', // Zl, Zp
        ];
        for c in refused {
            assert!(label_refuses(c), "U+{:04X} must be refused", c as u32);
        }
        for c in [
            'a', 'Z', '0', ' ', '-', '_', '/', 'é', 'ß', 'ж', '中', '🦀', '\u{301}', '\u{fe0f}',
            '\u{a0}',
        ] {
            assert!(!label_refuses(c), "U+{:04X} must be allowed", c as u32);
        }
    }

    #[test]
    fn displays_escape_what_labels_may_not_hold() {
        assert!(matches!(
            escape_label("web tests"),
            Cow::Borrowed("web tests")
        ));
        assert_eq!(escape_label("evil\u{202e}txt.exe"), "evil\\u{202E}txt.exe");
        assert_eq!(escape_label("a\nb\u{200b}"), "a\\u{000A}b\\u{200B}");
        assert_eq!(escape_label("\u{e0041}"), "\\u{E0041}");
        assert_eq!(first_refused_in_label("ok\u{2066}x"), Some('\u{2066}'));
    }
}
