//! Helpers to build short strings safely from text we compose ourselves.

use amq_protocol::types::ShortString;

/// A `ShortString` from any text, cut at 255 bytes on a char boundary.
/// `ShortString::from` panics on longer input, so every reply text goes
/// through here.
pub fn short(text: impl Into<String>) -> ShortString {
    let mut s: String = text.into();
    if s.len() > 255 {
        let mut end = 255;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    ShortString::try_new(s).unwrap_or_default()
}
