//! How values read from a request appear in messages: the one place that decides.
//!
//! A message names the field path and what was expected; it quotes a value only when the value is
//! short ([`MAX_QUOTED_CHARS`]) and does not look like key material (base64 of 16 bytes or more),
//! so a key pasted into the wrong field is never echoed. Values read from key-bearing places
//! (Secret `data`/`stringData`, inline `secret.data`/`stringData`) are never passed here at all.
//! Denials of one object together stay within [`MAX_MESSAGE_BYTES`].

use std::fmt;

/// The longest value, in characters, that a message quotes.
pub const MAX_QUOTED_CHARS: usize = 24;

/// The most bytes of denial text one answer carries; the rest is counted, not shown.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Base64 of this many bytes or more is treated as key material and never quoted.
const KEY_LIKE_BYTES: usize = 16;

/// A value as a message shows it: quoted when short and not key-like, else only its length.
///
/// `"hmac-sha265"` shows as `"hmac-sha265"`; a 44-character base64 key shows as
/// `a 44-character value`.
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chars = self.0.chars().count();
        if chars <= MAX_QUOTED_CHARS && !looks_like_key(self.0) {
            write!(f, "{:?}", self.0)
        } else {
            write!(f, "a {chars}-character value")
        }
    }
}

/// `Shown` as a `String`, for messages built with `format!`.
pub fn shown(value: &str) -> String {
    Shown(value).to_string()
}

/// Whether `text` could be base64 (standard or URL-safe, padding optional) of at least
/// [`KEY_LIKE_BYTES`] bytes.
pub fn looks_like_key(text: &str) -> bool {
    let body = text.trim().trim_end_matches('=');
    let min_chars = (KEY_LIKE_BYTES * 4).div_ceil(3);
    body.len() >= min_chars
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

/// A key of a map (a data key, a field name) as it appears in a field path: kept when it is a
/// short name, else only its length.
pub fn shown_key(key: &str) -> String {
    if key.chars().count() <= MAX_QUOTED_CHARS && !looks_like_key(key) {
        key.to_owned()
    } else {
        format!("<{}-character key>", key.chars().count())
    }
}

/// A Kubernetes name as a message shows it: in full when it is a valid name (lower-case letters,
/// digits, `-` and `.` cannot spell a base64 key), else as [`shown_key`] would.
pub fn shown_name(name: &str) -> String {
    if super::names::is_dns_subdomain(name) {
        return name.to_owned();
    }
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if plain && name.chars().count() <= MAX_QUOTED_CHARS && !looks_like_key(name) {
        name.to_owned()
    } else {
        format!("<a {}-character name>", name.chars().count())
    }
}

/// Joins denials into one message of at most [`MAX_MESSAGE_BYTES`], ending with
/// "… and N more problems" when some did not fit. `more` counts problems found but not kept.
pub fn join_denials(denials: &[String], more: usize) -> String {
    let mut out = String::new();
    let mut left_out = more;
    for (i, denial) in denials.iter().enumerate() {
        let separator = if out.is_empty() { "" } else { "; " };
        // Room for the closing note.
        if out.len() + separator.len() + denial.len() + 64 > MAX_MESSAGE_BYTES {
            left_out += denials.len() - i;
            break;
        }
        out.push_str(separator);
        out.push_str(denial);
    }
    if left_out > 0 {
        if out.is_empty() {
            // A single denial longer than the cap: cut it.
            if let Some(first) = denials.first() {
                out.push_str(&cut(first, MAX_MESSAGE_BYTES - 64));
                left_out = left_out.saturating_sub(1);
            }
        }
        if left_out > 0 {
            let noun = if left_out == 1 { "problem" } else { "problems" };
            out.push_str(&format!("; … and {left_out} more {noun}"));
        }
    }
    out
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_plain_values_are_quoted() {
        assert_eq!(shown("hmac-sha265"), "\"hmac-sha265\"");
        assert_eq!(shown("Primary"), "\"Primary\"");
        assert_eq!(shown("30m"), "\"30m\"");
    }

    #[test]
    fn long_or_key_like_values_show_only_their_length() {
        let key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
        assert_eq!(shown(key), "a 44-character value");
        // 22 base64 characters are 16 bytes: key-like even under the length limit.
        assert_eq!(shown("q83vEjRWeJq83vEjRWeJq8"), "a 22-character value");
        assert_eq!(shown(&"x".repeat(25)), "a 25-character value");
        assert_eq!(shown_key(key), "<44-character key>");
        assert_eq!(shown_key("rndc.key"), "rndc.key");
    }

    #[test]
    fn joined_denials_stay_within_the_cap_and_count_the_rest() {
        let denials: Vec<String> = (0..1000)
            .map(|i| format!("spec.x[{i}]: bad value"))
            .collect();
        let message = join_denials(&denials, 5);
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.starts_with("spec.x[0]: bad value; spec.x[1]"));
        let kept = message.matches(": bad value").count();
        assert!(message.ends_with(&format!("… and {} more problems", 1000 - kept + 5)));
        let one = join_denials(&["a".repeat(10_000)], 0);
        assert!(one.len() <= MAX_MESSAGE_BYTES);
        assert_eq!(join_denials(&["a".to_owned(), "b".to_owned()], 0), "a; b");
    }
}
