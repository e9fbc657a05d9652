//! S3's `sequencer`: the order of the changes of one key. Every put and delete notification
//! carries one (a hex string); for one key, the change with the greater sequencer happened later.
//! S3 documents the comparison: right-pad the shorter value with zeros, then compare the strings
//! lexicographically. Sequencers of different keys mean nothing to each other.
//!
//! A change without a sequencer (the CLI, a hand-made event, a malformed value) is ordered by
//! commit: it applies over whatever is indexed, and whatever commits after it applies over it.

use std::cmp::Ordering;

/// Longest sequencer accepted (S3's are 16-18 hex digits).
const MAX_LEN: usize = 64;

/// The sequencer of an event, normalised (upper-case hex), or `None` when it is missing or
/// malformed: such a change is ordered by commit, never rejected.
pub fn parse(raw: Option<&str>) -> Option<String> {
    let s = raw?.trim();
    (!s.is_empty() && s.len() <= MAX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.to_ascii_uppercase())
}

/// S3's order of two sequencers of the same key (see the module documentation).
pub fn compare(a: &str, b: &str) -> Ordering {
    let width = a.len().max(b.len());
    padded(a, width).cmp(padded(b, width))
}

fn padded(s: &str, width: usize) -> impl Iterator<Item = u8> + '_ {
    s.bytes().chain(std::iter::repeat(b'0')).take(width)
}

/// Whether a change with sequencer `change` is older than one with `than` (both known). A
/// change without a sequencer, or compared with one without, is never older: commit order
/// decides.
pub fn is_older(change: Option<&str>, than: Option<&str>) -> bool {
    match (change, than) {
        (Some(a), Some(b)) => compare(a, b) == Ordering::Less,
        _ => false,
    }
}

/// The later of two optional sequencers (a known one over none).
pub fn later(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if compare(&a, &b) == Ordering::Less {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shorter_value_is_padded_with_zeros() {
        assert_eq!(
            compare("0055AED6DCD90281E5", "0055AED6DCD90281E6"),
            Ordering::Less
        );
        // "0A" is "0A00" against "0A01", and "0A" equals "0A00".
        assert_eq!(compare("0A", "0A01"), Ordering::Less);
        assert_eq!(compare("0A", "0A00"), Ordering::Equal);
        assert_eq!(compare("0B", "0A01"), Ordering::Greater);
        assert_eq!(compare("", "00"), Ordering::Equal);
    }

    #[test]
    fn malformed_or_missing_values_are_none_and_never_older() {
        assert_eq!(
            parse(Some(" 0055aed6dcd90281e5 ")),
            Some("0055AED6DCD90281E5".into())
        );
        for bad in [
            None,
            Some(""),
            Some("xyz"),
            Some("12-34"),
            Some(&"1".repeat(65)[..]),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(is_older(Some("01"), Some("02")));
        assert!(!is_older(Some("02"), Some("01")));
        assert!(!is_older(Some("01"), Some("01")));
        assert!(!is_older(None, Some("02")));
        assert!(!is_older(Some("01"), None));
        assert_eq!(
            later(Some("01".into()), Some("0101".into())),
            Some("0101".into())
        );
        assert_eq!(later(None, Some("01".into())), Some("01".into()));
    }
}
