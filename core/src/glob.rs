//! Glob patterns over byte strings, used to select keys.
//!
//! Syntax: `*` matches any run of bytes (also the empty one), `?` exactly one
//! byte, `[...]` one byte out of a class, and `\` makes the next byte literal.
//! Patterns are compiled once into a token list; matching is iterative and
//! runs in `O(pattern × subject)` time in the worst case.

use std::fmt;

/// A compiled glob pattern over bytes: `*` any run (also empty), `?` exactly
/// one byte, `[...]` a byte class with ranges `a-z`, negation `[!...]` or
/// `[^...]`, `]` first in a class is literal, `\` escapes the next byte
/// anywhere (also inside classes).
///
/// A `-` first or last in a class is literal. A range whose end is below its
/// start (`[z-a]`) is rejected rather than silently matching nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
    prefix: Vec<u8>,
}

/// Why a pattern could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobError {
    /// Human-readable reason, including the byte offset where it applies.
    pub message: String,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GlobError {}

fn error(message: String) -> GlobError {
    GlobError { message }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Byte(u8),
    AnyByte,
    /// Any run of bytes; never two in a row after compilation.
    Star,
    Class(ByteSet),
}

/// A set of bytes as a 256-bit bitmap; negation is applied at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);

    fn insert_range(&mut self, lo: u8, hi: u8) {
        for b in lo..=hi {
            self.0[usize::from(b >> 6)] |= 1 << (b & 63);
        }
    }

    #[inline]
    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    fn negate(&mut self) {
        for word in &mut self.0 {
            *word = !*word;
        }
    }

    fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    fn first(&self) -> Option<u8> {
        (0..=255u8).find(|&b| self.contains(b))
    }
}

impl Token {
    /// Whether this single-byte token accepts `b`; `Star` is handled by the
    /// matcher and never reaches here.
    #[inline]
    fn accepts(&self, b: u8) -> bool {
        match self {
            Token::Byte(expected) => *expected == b,
            Token::AnyByte => true,
            Token::Class(set) => set.contains(b),
            Token::Star => false,
        }
    }
}

/// Reads one possibly escaped byte of a class at `at`; returns it and the
/// offset after it.
fn class_byte(pattern: &[u8], at: usize) -> Result<(u8, usize), GlobError> {
    match pattern.get(at) {
        Some(b'\\') => match pattern.get(at + 1) {
            Some(&b) => Ok((b, at + 2)),
            None => Err(error("trailing backslash".to_owned())),
        },
        Some(&b) => Ok((b, at + 1)),
        None => Err(error("unexpected end of pattern".to_owned())),
    }
}

/// Parses the class whose `[` is at `open`; returns the token and the offset
/// after the closing `]`.
fn parse_class(pattern: &[u8], open: usize) -> Result<(Token, usize), GlobError> {
    let unclosed = || error(format!("unclosed '[' at byte {open}"));
    let mut at = open + 1;
    let negated = matches!(pattern.get(at), Some(b'!' | b'^'));
    if negated {
        at += 1;
    }
    let mut set = ByteSet::EMPTY;
    let mut first = true;
    loop {
        let Some(&b) = pattern.get(at) else {
            return Err(unclosed());
        };
        if b == b']' && !first {
            at += 1;
            break;
        }
        first = false;
        let item_start = at;
        let (lo, next) = class_byte(pattern, at)?;
        at = next;
        // A '-' right before the closing ']' is a literal, not a range.
        let is_range =
            pattern.get(at) == Some(&b'-') && pattern.get(at + 1).is_some_and(|&c| c != b']');
        if is_range {
            let (hi, next) = class_byte(pattern, at + 1)?;
            at = next;
            if hi < lo {
                return Err(error(format!(
                    "invalid range '{}-{}' at byte {item_start}",
                    lo.escape_ascii(),
                    hi.escape_ascii()
                )));
            }
            set.insert_range(lo, hi);
        } else {
            set.insert_range(lo, lo);
        }
    }
    if negated {
        set.negate();
    }
    // Single-byte classes such as `[*]` are a common way to quote; turning
    // them into literals lets them count toward the literal prefix.
    let token = match set.len() {
        256 => Token::AnyByte,
        1 => set.first().map_or(Token::Class(set), Token::Byte),
        _ => Token::Class(set),
    };
    Ok((token, at))
}

impl Glob {
    /// Compiles a pattern. Fails on an unclosed `[`, a backslash at the end
    /// of the pattern, or a reversed range in a class.
    pub fn new(pattern: &[u8]) -> Result<Glob, GlobError> {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut at = 0;
        while at < pattern.len() {
            let token = match pattern[at] {
                b'*' => {
                    at += 1;
                    // Consecutive stars match the same strings as one and
                    // would only add backtracking points.
                    if tokens.last() == Some(&Token::Star) {
                        continue;
                    }
                    Token::Star
                }
                b'?' => {
                    at += 1;
                    Token::AnyByte
                }
                b'\\' => {
                    let Some(&b) = pattern.get(at + 1) else {
                        return Err(error("trailing backslash".to_owned()));
                    };
                    at += 2;
                    Token::Byte(b)
                }
                b'[' => {
                    let (token, next) = parse_class(pattern, at)?;
                    at = next;
                    token
                }
                b => {
                    at += 1;
                    Token::Byte(b)
                }
            };
            tokens.push(token);
        }
        let prefix = tokens
            .iter()
            .map_while(|t| match t {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect();
        Ok(Glob { tokens, prefix })
    }

    /// Whether the whole `subject` matches the pattern.
    ///
    /// Only the most recent `*` is retried on a mismatch: since every other
    /// token consumes exactly one byte, an earlier star can never enable a
    /// match that the later one cannot, so there is no exponential
    /// backtracking and no recursion.
    pub fn matches(&self, subject: &[u8]) -> bool {
        let tokens = &self.tokens;
        if !subject.starts_with(&self.prefix) {
            return false;
        }
        let mut t = self.prefix.len();
        let mut s = self.prefix.len();
        // Token index after the last star seen, and the subject offset that
        // star is currently assumed to stop at.
        let mut resume: Option<(usize, usize)> = None;
        while s < subject.len() {
            match tokens.get(t) {
                Some(Token::Star) => {
                    t += 1;
                    resume = Some((t, s));
                    continue;
                }
                Some(token) if token.accepts(subject[s]) => {
                    t += 1;
                    s += 1;
                    continue;
                }
                _ => {}
            }
            match resume {
                Some((after_star, star_end)) => {
                    // Let the star swallow one more byte and retry.
                    t = after_star;
                    s = star_end + 1;
                    resume = Some((after_star, s));
                }
                None => return false,
            }
        }
        tokens[t.min(tokens.len())..]
            .iter()
            .all(|token| *token == Token::Star)
    }

    /// True if the pattern matches every subject (it is `*`), so callers can
    /// skip matching altogether.
    pub fn is_match_all(&self) -> bool {
        self.tokens == [Token::Star]
    }

    /// The bytes every matching subject starts with, e.g. `b"user:"` for
    /// `user:*`; lets callers restrict a scan to a key range.
    pub fn literal_prefix(&self) -> &[u8] {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(pattern: &str) -> Glob {
        match Glob::new(pattern.as_bytes()) {
            Ok(g) => g,
            Err(e) => panic!("pattern {pattern:?} should compile: {e}"),
        }
    }

    fn is_match(pattern: &str, subject: &str) -> bool {
        glob(pattern).matches(subject.as_bytes())
    }

    fn err(pattern: &[u8]) -> String {
        match Glob::new(pattern) {
            Ok(g) => panic!("pattern {pattern:?} should fail, got {g:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn literal() {
        assert!(is_match("abc", "abc"));
        assert!(!is_match("abc", "abd"));
        assert!(!is_match("abc", "ab"));
        assert!(!is_match("abc", "abcd"));
        assert!(is_match("", ""));
        assert!(!is_match("", "a"));
    }

    #[test]
    fn star() {
        assert!(is_match("*", ""));
        assert!(is_match("*", "anything"));
        assert!(is_match("a*", "a"));
        assert!(is_match("a*", "abc"));
        assert!(!is_match("a*", "ba"));
        assert!(is_match("*c", "abc"));
        assert!(!is_match("*c", "abcd"));
        assert!(is_match("a*c", "ac"));
        assert!(is_match("a*c", "abbbc"));
        assert!(is_match("a*b*c", "aXbYbZc"));
        assert!(!is_match("a*b*c", "aXcYb"));
        assert!(is_match("**", ""));
        assert!(is_match("a**b", "ab"));
        assert!(is_match("*a*", "banana"));
        assert!(is_match("*ana", "banana"));
        assert!(!is_match("*anab", "banana"));
    }

    #[test]
    fn question_mark() {
        assert!(is_match("?", "a"));
        assert!(!is_match("?", ""));
        assert!(!is_match("?", "ab"));
        assert!(is_match("a?c", "abc"));
        assert!(!is_match("a?c", "ac"));
        assert!(is_match("*?", "a"));
        assert!(!is_match("*?", ""));
        assert!(is_match("?*?", "ab"));
    }

    #[test]
    fn classes() {
        assert!(is_match("[abc]", "b"));
        assert!(!is_match("[abc]", "d"));
        assert!(!is_match("[abc]", ""));
        assert!(is_match("[a-z]x", "qx"));
        assert!(!is_match("[a-z]", "Q"));
        assert!(is_match("[a-cx-z]", "y"));
        assert!(!is_match("[a-cx-z]", "d"));
        assert!(is_match("[a-a]", "a"));
        assert!(is_match("[0-9]*", "7up"));
    }

    #[test]
    fn negated_classes() {
        assert!(is_match("[!abc]", "d"));
        assert!(!is_match("[!abc]", "a"));
        assert!(is_match("[^a-z]", "0"));
        assert!(!is_match("[^a-z]", "m"));
        assert!(!is_match("[!a]", ""));
    }

    #[test]
    fn bracket_first_in_class_is_literal() {
        assert!(is_match("[]]", "]"));
        assert!(!is_match("[]]", "a"));
        assert!(is_match("[]a]", "a"));
        assert!(is_match("[!]]", "a"));
        assert!(!is_match("[!]]", "]"));
        assert!(is_match("[^]a]", "b"));
        assert!(is_match("[]-a]", "^"));
    }

    #[test]
    fn dash_at_edges_is_literal() {
        assert!(is_match("[-a]", "-"));
        assert!(is_match("[a-]", "-"));
        assert!(is_match("[a-]", "a"));
        assert!(!is_match("[a-]", "b"));
        assert!(is_match("[!-]", "a"));
        assert!(!is_match("[!-]", "-"));
    }

    #[test]
    fn special_bytes_inside_classes_are_literal() {
        assert!(is_match("[*]", "*"));
        assert!(!is_match("[*]", "a"));
        assert!(is_match("[?]", "?"));
        assert!(is_match("[[]", "["));
        assert!(is_match("[a!]", "!"));
        assert!(is_match("[a^]", "^"));
    }

    #[test]
    fn escapes() {
        assert!(is_match(r"\*", "*"));
        assert!(!is_match(r"\*", "a"));
        assert!(is_match(r"\?", "?"));
        assert!(!is_match(r"\?", "a"));
        assert!(is_match(r"\[", "["));
        assert!(is_match(r"\\", "\\"));
        assert!(is_match(r"\a", "a"));
        assert!(is_match(r"a\*b*", "a*bc"));
        assert!(!is_match(r"a\*b*", "axbc"));
    }

    #[test]
    fn escapes_inside_classes() {
        assert!(is_match(r"[\]]", "]"));
        assert!(is_match(r"[\]a]", "a"));
        assert!(is_match(r"[\\]", "\\"));
        assert!(is_match(r"[a\-z]", "-"));
        assert!(!is_match(r"[a\-z]", "b"));
        assert!(is_match(r"[\!a]", "!"));
        assert!(!is_match(r"[\!a]", "b"));
        assert!(is_match(r"[\^]", "^"));
        assert!(is_match(r"[\a-\c]", "b"));
        assert!(is_match(r"[+-\-]", ","));
    }

    #[test]
    fn arbitrary_bytes() {
        let g = Glob::new(b"\xff*[\x00-\x1f]").expect("valid pattern");
        assert!(g.matches(b"\xff\xfe\x00"));
        assert!(!g.matches(b"\xff\xfe "));
        let all = Glob::new(b"[\x00-\xff]").expect("valid pattern");
        assert!(all.matches(b"\x80"));
        let none = Glob::new(b"[!\x00-\xff]").expect("valid pattern");
        assert!(!none.matches(b"\x80"));
        assert!(!none.matches(b""));
    }

    #[test]
    fn errors() {
        assert_eq!(err(b"abc[de"), "unclosed '[' at byte 3");
        assert_eq!(err(b"["), "unclosed '[' at byte 0");
        assert_eq!(err(b"[]"), "unclosed '[' at byte 0");
        assert_eq!(err(b"[!]"), "unclosed '[' at byte 0");
        assert_eq!(err(b"x[a-"), "unclosed '[' at byte 1");
        assert_eq!(err(b"abc\\"), "trailing backslash");
        assert_eq!(err(b"[a\\"), "trailing backslash");
        assert_eq!(err(b"[a-\\"), "trailing backslash");
        assert_eq!(err(b"ab[z-a]"), "invalid range 'z-a' at byte 3");
        assert_eq!(err(b"[\xff-\x01]"), "invalid range '\\xff-\\x01' at byte 1");
        let e = Glob::new(b"[").expect_err("unclosed");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().contains("unclosed"));
    }

    #[test]
    fn match_all() {
        assert!(glob("*").is_match_all());
        assert!(glob("***").is_match_all());
        assert!(!glob("").is_match_all());
        assert!(!glob("*?").is_match_all());
        assert!(!glob(r"\*").is_match_all());
        assert!(!glob("a*").is_match_all());
    }

    #[test]
    fn literal_prefix() {
        assert_eq!(glob("user:*").literal_prefix(), b"user:");
        assert_eq!(glob("abc").literal_prefix(), b"abc");
        assert_eq!(glob("*abc").literal_prefix(), b"");
        assert_eq!(glob("ab?c").literal_prefix(), b"ab");
        assert_eq!(glob("ab[cd]").literal_prefix(), b"ab");
        assert_eq!(glob(r"a\*b*").literal_prefix(), b"a*b");
        assert_eq!(glob("[u]ser[:]*").literal_prefix(), b"user:");
        assert_eq!(glob("").literal_prefix(), b"");
    }

    #[test]
    fn no_exponential_blowup() {
        let pattern = "a*".repeat(30) + "b";
        let subject = "a".repeat(10_000);
        let g = glob(&pattern);
        assert!(!g.matches(subject.as_bytes()));
        let subject_b = subject.clone() + "b";
        assert!(g.matches(subject_b.as_bytes()));
    }

    #[test]
    fn long_patterns_do_not_recurse() {
        let pattern = "*?".repeat(50_000);
        let g = glob(&pattern);
        assert!(g.matches("x".repeat(60_000).as_bytes()));
        assert!(!g.matches("x".repeat(49_999).as_bytes()));
    }

    /// Straightforward recursive matcher over the raw pattern, parsing as it
    /// goes; `None` if the pattern is malformed.
    fn reference(p: &[u8], s: &[u8]) -> Option<bool> {
        let Some((&c, rest)) = p.split_first() else {
            return Some(s.is_empty());
        };
        match c {
            b'*' => {
                let mut any = false;
                for i in 0..=s.len() {
                    any |= reference(rest, &s[i..])?;
                }
                Some(any)
            }
            b'?' => {
                let tail = reference(rest, s.get(1..).unwrap_or(&[]))?;
                Some(!s.is_empty() && tail)
            }
            b'\\' => {
                let (&lit, rest) = rest.split_first()?;
                let tail = reference(rest, s.get(1..).unwrap_or(&[]))?;
                Some(s.first() == Some(&lit) && tail)
            }
            b'[' => {
                let (members, rest) = reference_class(rest)?;
                let tail = reference(rest, s.get(1..).unwrap_or(&[]))?;
                Some(s.first().is_some_and(|b| members(*b)) && tail)
            }
            _ => {
                let tail = reference(rest, s.get(1..).unwrap_or(&[]))?;
                Some(s.first() == Some(&c) && tail)
            }
        }
    }

    type Members = Box<dyn Fn(u8) -> bool>;

    fn reference_class(p: &[u8]) -> Option<(Members, &[u8])> {
        let (negated, mut p) = match p.first() {
            Some(b'!' | b'^') => (true, &p[1..]),
            _ => (false, p),
        };
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            if p.first() == Some(&b']') && !first {
                p = &p[1..];
                break;
            }
            first = false;
            let lo;
            (lo, p) = reference_class_byte(p)?;
            if p.len() >= 2 && p[0] == b'-' && p[1] != b']' {
                let hi;
                (hi, p) = reference_class_byte(&p[1..])?;
                if hi < lo {
                    return None;
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        let members = move |b: u8| ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != negated;
        Some((Box::new(members), p))
    }

    fn reference_class_byte(p: &[u8]) -> Option<(u8, &[u8])> {
        match p {
            [b'\\', b, rest @ ..] => Some((*b, rest)),
            [b'\\'] | [] => None,
            [b, rest @ ..] => Some((*b, rest)),
        }
    }

    fn arb_raw_pattern() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(b"ab*?[]!^-\\".to_vec()), 0..9)
    }

    fn arb_element() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop::sample::select(b"ab-]".to_vec());
        prop_oneof![
            3 => prop::sample::select(vec![b'a', b'b', b'c']).prop_map(|b| vec![b]),
            2 => Just(b"*".to_vec()),
            1 => Just(b"?".to_vec()),
            1 => prop::sample::select(b"*?[]\\ab".to_vec()).prop_map(|b| vec![b'\\', b]),
            2 => (
                prop::sample::select(vec![&b""[..], b"!", b"^"]),
                prop::collection::vec((byte.clone(), prop::option::of(byte)), 1..3),
            )
                .prop_map(|(neg, items)| {
                    let mut class = b"[".to_vec();
                    class.extend_from_slice(neg);
                    for (lo, hi) in items {
                        class.push(lo);
                        if let Some(hi) = hi {
                            class.push(b'-');
                            class.push(hi);
                        }
                    }
                    class.push(b']');
                    class
                }),
        ]
    }

    fn arb_structured_pattern() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(arb_element(), 0..6).prop_map(|parts| parts.concat())
    }

    fn arb_subject() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(b"abc-]*?!".to_vec()), 0..10)
    }

    fn check_against_reference(pattern: &[u8], subjects: &[Vec<u8>]) -> Result<(), TestCaseError> {
        let compiled = Glob::new(pattern);
        // Validity only depends on the pattern, so probe it with the empty subject.
        prop_assert_eq!(compiled.is_ok(), reference(pattern, b"").is_some());
        if let Ok(g) = compiled {
            for subject in subjects {
                let expected = reference(pattern, subject);
                prop_assert_eq!(Some(g.matches(subject)), expected, "subject {:?}", subject);
                if g.matches(subject) {
                    prop_assert!(subject.starts_with(g.literal_prefix()));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn prop_raw_patterns_match_reference(
            pattern in arb_raw_pattern(),
            subjects in prop::collection::vec(arb_subject(), 1..6),
        ) {
            check_against_reference(&pattern, &subjects)?;
        }

        #[test]
        fn prop_structured_patterns_match_reference(
            pattern in arb_structured_pattern(),
            subjects in prop::collection::vec(arb_subject(), 1..6),
        ) {
            check_against_reference(&pattern, &subjects)?;
        }

        #[test]
        fn prop_literal_patterns_match_only_themselves(
            subject in prop::collection::vec(any::<u8>(), 0..12),
            other in prop::collection::vec(any::<u8>(), 0..12),
        ) {
            let mut pattern = Vec::new();
            for &b in &subject {
                pattern.push(b'\\');
                pattern.push(b);
            }
            let g = Glob::new(&pattern).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(g.matches(&subject));
            prop_assert_eq!(g.matches(&other), other == subject);
            prop_assert_eq!(g.literal_prefix(), &subject[..]);
        }
    }
}
