//! Helpers to build short strings safely from text we compose ourselves.

use amq_protocol::types::ShortString;

/// A `ShortString` from any text. Longer than 255 bytes, it is cut to 252
/// bytes (on a char boundary) and ends in "...", as RabbitMQ cuts reply
/// texts. `ShortString::from` panics on longer input, so every text we
/// compose goes through here.
pub fn short(text: impl Into<String>) -> ShortString {
    let mut s: String = text.into();
    if s.len() > 255 {
        let mut end = 252;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    ShortString::try_new(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_texts_end_in_an_ellipsis() {
        let s = super::short("x".repeat(300));
        assert_eq!(s.as_str().len(), 255);
        assert!(s.as_str().ends_with("xxx..."));
        // Never cut inside a character: 1 + 2k bytes puts byte 252 mid-char.
        assert_eq!(
            super::short(format!("x{}", "é".repeat(200))).as_str().len(),
            254
        );
    }
}
