//! How bytes are printed on the node protocol's text lines.
//!
//! Keys and values are bytes; a reply is one line of text. Valid UTF-8 prints as
//! it is, including backslashes and tabs, so that anything typed into the shell
//! reads back unchanged. What would break the line protocol or the terminal
//! prints as `\xNN` (two lower-case hex digits): every byte of an invalid UTF-8
//! sequence and every ASCII control character except tab (`\n` is `\x0a`).
//! In a field that is followed by another field on the same line (the key of an
//! `ENTRY` line) a space also prints as `\x20`.

use std::fmt::Write;

/// `bytes` as the last field of a line.
pub fn text(bytes: &[u8]) -> String {
    escape(bytes, false)
}

/// `bytes` as a field followed by others on the same line (spaces escaped too).
pub fn field(bytes: &[u8]) -> String {
    escape(bytes, true)
}

fn escape(bytes: &[u8], space: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let needs_escape = (c.is_ascii_control() && c != '\t') || (space && c == ' ');
            if needs_escape {
                let _ = write!(out, "\\x{:02x}", c as u32);
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_utf8_is_unchanged() {
        assert_eq!(
            text("héllo wörld \\ a\tb".as_bytes()),
            "héllo wörld \\ a\tb"
        );
    }

    #[test]
    fn control_characters_and_invalid_bytes_are_hex_escaped() {
        assert_eq!(text(b"a\nb\r\x00\x7f"), "a\\x0ab\\x0d\\x00\\x7f");
        assert_eq!(text(b"\xff\xfeok\xc3"), "\\xff\\xfeok\\xc3");
    }

    #[test]
    fn fields_escape_spaces() {
        assert_eq!(field(b"a b"), "a\\x20b");
        assert_eq!(text(b"a b"), "a b");
    }
}
