//! Making strings from the daemon safe to print on a terminal.
//!
//! Names, labels, errors, addresses and event messages come from netd, and
//! much of that was chosen by whoever started a listener. Printed raw, an
//! escape sequence in a label could clear the admin's screen, rewrite what
//! is shown or inject keystrokes in some terminals, and a newline could
//! forge table rows. Table output passes every such string through
//! [`escape`]; JSON output needs nothing more than serde's string escaping.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with control characters written as escapes, Rust style: `\n`, `\r`,
/// `\t`, `\x1b` (C0 and DEL), `\u{9b}` (C1 and the invisible Unicode
/// formatting characters that reorder or hide text), and `\\` for a
/// backslash so that what is shown is unambiguous. Borrowed when there is
/// nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            // Zero-width characters and bidirectional controls (the
            // "Trojan Source" set), line and paragraph separators, BOM,
            // interlinear annotation controls.
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            escape("echo 127.0.0.1:80 é ✓"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\x1b[2J\nb\tc\rd\0"), "a\\x1b[2J\\nb\\tc\\rd\\x00");
        assert_eq!(escape("del\x7f"), "del\\x7f");
        assert_eq!(escape("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(escape("rtl\u{202e}txt"), "rtl\\u{202e}txt");
        assert_eq!(escape("ls\u{2028}x"), "ls\\u{2028}x");
        assert_eq!(escape(r"C:\x1b"), r"C:\\x1b");
    }
}
