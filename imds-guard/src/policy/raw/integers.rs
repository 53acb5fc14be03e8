//! Arrays of plain decimal integers (`uids = [0, 1000, 1001, ...]`), read
//! without toml's tree: a policy of 100,000 uids is 100,000 elements, and
//! toml makes a token, a parser event and a spanned value of each before
//! `raw.rs` makes its node, most of the time it takes to validate.
//!
//! [`find`] walks the text with toml's own lexer (so that nothing in a
//! string or a comment is mistaken for an array) to every `= [` and reads
//! the array there byte by byte, taking it only when it holds nothing but
//! integers toml reads the same way (`0` or a non-zero digit and at most
//! 18 digits in all, no sign, no `_`), commas between them (one trailing
//! allowed), spaces, tabs and line ends. Anything else, a comment or a
//! string among them, leaves the array to toml.
//!
//! [`blank`] then gives toml the text with those arrays emptied in place:
//! every byte between the brackets a space, line ends kept, so that every
//! other value keeps its offset, line and column. toml still checks the
//! whole document; where it finds an error in the emptied text, `raw.rs`
//! parses the original instead, so that errors read as they always did.

use std::ops::Range;

use toml_parser::{Source, lexer::TokenKind};

use super::{Node, Value};

/// An array [`find`] read: where it is written (from `[` to `]`), and its
/// integers as the nodes toml's would have become.
#[derive(Debug)]
pub(super) struct Integers {
    pub(super) span: Range<usize>,
    pub(super) items: Vec<Node>,
}

/// Digits an integer may have here: 18 always fit an `i64`; a longer one
/// is left to toml, which says whether it is out of range.
const MAX_DIGITS: usize = 18;

/// Every array of `text` holding only integers, in text order.
pub(super) fn find(text: &str) -> Vec<Integers> {
    let mut found = Vec::new();
    // Where the lexer starts again after an array read here (the lexer is
    // stateless between tokens: it picks each token by its first byte).
    let mut from = 0;
    'lexing: while from < text.len() {
        let mut after_equals = false;
        for token in Source::new(&text[from..]).lex() {
            let span = token.span();
            match token.kind() {
                TokenKind::Whitespace => continue,
                TokenKind::LeftSquareBracket if after_equals => {
                    let open = from + span.start();
                    if let Some(array) = read(text, open) {
                        from = array.span.end;
                        found.push(array);
                        continue 'lexing;
                    }
                }
                TokenKind::Eof => break 'lexing,
                _ => {}
            }
            after_equals = token.kind() == TokenKind::Equals;
        }
        break;
    }
    found
}

/// The array whose `[` is at byte `open`, if it holds only integers (at
/// least one).
fn read(text: &str, open: usize) -> Option<Integers> {
    let bytes = text.as_bytes();
    let mut items = Vec::new();
    // An integer is expected next (after `[` or a comma).
    let mut want_value = true;
    let mut at = open + 1;
    while at < bytes.len() {
        match bytes[at] {
            b' ' | b'\t' | b'\n' => at += 1,
            b'\r' if bytes.get(at + 1) == Some(&b'\n') => at += 2,
            b',' if !want_value => {
                want_value = true;
                at += 1;
            }
            b']' if !items.is_empty() => {
                return Some(Integers {
                    span: open..at + 1,
                    items,
                });
            }
            b'0'..=b'9' if want_value => {
                let start = at;
                while at < bytes.len() && bytes[at].is_ascii_digit() {
                    at += 1;
                }
                let digits = &text[start..at];
                if digits.len() > MAX_DIGITS || (digits.len() > 1 && digits.starts_with('0')) {
                    return None;
                }
                // An integer runs to a delimiter: "12ab" or "1.5" is toml's.
                if !matches!(
                    bytes.get(at),
                    Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b']')
                ) {
                    return None;
                }
                items.push(Node {
                    span: Some(start..at),
                    value: Value::Integer(digits.parse().ok()?),
                });
                want_value = false;
            }
            _ => return None,
        }
    }
    None
}

/// `text` with the arrays of `found` emptied: spaces between their
/// brackets, line ends kept, every offset as it was.
pub(super) fn blank(text: &str, found: &[Integers]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for array in found {
        let inner = array.span.start + 1..array.span.end - 1;
        for b in &mut bytes[inner] {
            if !matches!(*b, b'\n' | b'\r') {
                *b = b' ';
            }
        }
    }
    // Only ASCII bytes were replaced, by ASCII: still UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<Vec<i64>> {
        find(text)
            .into_iter()
            .map(|a| {
                a.items
                    .into_iter()
                    .map(|node| match node.value {
                        Value::Integer(n) => n,
                        other => panic!("not an integer: {other:?}"),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn arrays_of_integers_are_read_with_every_position() {
        let text = "[allow]\nuids = [0, 1000,\n  1001, ]\ngids = [7]\n";
        let found = find(text);
        assert_eq!(found.len(), 2);
        assert_eq!(&text[found[0].span.clone()], "[0, 1000,\n  1001, ]");
        let spans: Vec<&str> = found[0]
            .items
            .iter()
            .filter_map(|node| node.span.clone().map(|s| &text[s]))
            .collect();
        assert_eq!(spans, ["0", "1000", "1001"]);
        assert_eq!(values(text), [vec![0, 1000, 1001], vec![7]]);
    }

    #[test]
    fn anything_toml_reads_otherwise_is_left_to_toml() {
        for text in [
            "uids = []\n",
            "uids = [1, \"2\"]\n",
            "uids = [1 # a comment\n]\n",
            "uids = [01]\n",
            "uids = [+1]\n",
            "uids = [-1]\n",
            "uids = [1_000]\n",
            "uids = [1.5]\n",
            "uids = [1e3]\n",
            "uids = [0x10]\n",
            "uids = [1,, 2]\n",
            "uids = [, 1]\n",
            "uids = [1 2]\n",
            "uids = [1\r2]\n",
            "uids = [[1], [2]]\n",
            "uids = [1234567890123456789]\n",
            "uids = [1, 2\n",
        ] {
            assert_eq!(values(text), Vec::<Vec<i64>>::new(), "{text:?}");
        }
    }

    #[test]
    fn strings_comments_and_headers_are_not_arrays() {
        let text = "# x = [1]\nname = \"= [2]\"\n[allow]\nlit = '''\n= [3]\n'''\nuids = [4]\n";
        assert_eq!(values(text), [vec![4]]);
    }

    #[test]
    fn a_nested_array_of_integers_is_left_to_toml_but_the_next_one_is_read() {
        let text = "a = [[1, 2], 3]\nb = [5]\n";
        assert_eq!(values(text), [vec![5]]);
    }

    #[test]
    fn the_longest_integer_taken_is_18_digits() {
        assert_eq!(
            values("uids = [999999999999999999]\n"),
            [vec![999_999_999_999_999_999]]
        );
    }

    #[test]
    fn blanking_keeps_every_offset_and_line_end() {
        let text = "uids = [1,\r\n 22 ]\nmode = \"audit\"\n";
        let blanked = blank(text, &find(text));
        assert_eq!(blanked, "uids = [  \r\n    ]\nmode = \"audit\"\n");
        assert_eq!(blanked.len(), text.len());
    }
}
