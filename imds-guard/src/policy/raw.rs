//! The TOML text as an untyped tree in which every key and value keeps its
//! byte span, and the conversion of spans to line:col.
//!
//! The tree is untyped on purpose. Typed serde structs stop at the first
//! wrong type or unknown key, and the agent must report every problem of a
//! policy at once; `validate.rs` walks this tree instead.
//!
//! It is built from toml's own parse tree (`DeTable`), not through serde:
//! a policy of 100,000 uids is parsed in a third of the time, and every
//! value, implicit tables included, comes with its span. Arrays of plain
//! integers, the bulk of a large policy, are read apart (`integers.rs`)
//! and put in the tree where toml saw them, emptied.

mod integers;

use std::{borrow::Cow, collections::HashMap, ops::Range};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use self::integers::Integers;
use super::Location;

/// Parses `text` as TOML into a tree of spanned nodes (the root is a table).
pub(super) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let found = integers::find(text);
    if !found.is_empty() {
        let blanked = integers::blank(text, &found);
        let mut arrays: Arrays = found.into_iter().map(|a| (a.span.start, a)).collect();
        // An error in the emptied text is looked for again in the text as
        // written, so that toml's message is the one it always gave; so is
        // a tree that does not hold each array read where it was (which
        // toml's parse of the emptied text cannot give; checked anyway).
        if let Ok(root) = tree(&blanked, &mut arrays) {
            if arrays.is_empty() {
                return Ok(root);
            }
        }
    }
    tree(text, &mut Arrays::new())
}

/// The arrays of integers read apart, by the offset of their `[`.
type Arrays = HashMap<usize, Integers>;

/// `text` parsed by toml, with `arrays` put in place of the empty arrays
/// toml found where they were read (each taken out of `arrays`).
fn tree(text: &str, arrays: &mut Arrays) -> Result<Node, SyntaxError> {
    let root = DeTable::parse(text).map_err(|e| SyntaxError {
        message: e.message().to_owned(),
        span: e.span(),
    })?;
    let span = root.span();
    node(
        Spanned::new(span, DeValue::Table(root.into_inner())),
        arrays,
    )
}

/// TOML that does not parse: toml's message, and where.
#[derive(Debug)]
pub(super) struct SyntaxError {
    message: String,
    span: Option<Range<usize>>,
}

/// A value and where it is written.
#[derive(Debug)]
pub(super) struct Node {
    /// Byte range in the text; `None` only for the root of an empty file.
    pub(super) span: Option<Range<usize>>,
    pub(super) value: Value,
}

/// A TOML value.
#[derive(Debug)]
pub(super) enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Kept as written; the policy has no use for datetimes but names them
    /// in messages.
    Datetime(String),
    Array(Vec<Node>),
    /// Keys in file order.
    Table(Vec<(Key, Node)>),
}

/// A table key and where it is written.
#[derive(Debug)]
pub(super) struct Key {
    pub(super) name: String,
    pub(super) span: Option<Range<usize>>,
}

impl Value {
    /// What the value is, for "expected X, found Y" messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::String(s) => format!("string {s:?}"),
            Self::Integer(n) => format!("integer {n}"),
            Self::Float(x) => format!("float {x}"),
            Self::Boolean(b) => format!("boolean {b}"),
            Self::Datetime(d) => format!("datetime {d}"),
            Self::Array(_) => "an array".to_owned(),
            Self::Table(_) => "a table".to_owned(),
        }
    }
}

/// A spanned toml value as a [`Node`]. toml checks the syntax; what is left
/// to refuse here is a number no TOML value can hold.
fn node(value: Spanned<DeValue<'_>>, arrays: &mut Arrays) -> Result<Node, SyntaxError> {
    let span = value.span();
    let out_of_range = |what: &str, text: &str| SyntaxError {
        message: format!("{what} {text} is out of range"),
        span: Some(span.clone()),
    };
    let value = match value.into_inner() {
        DeValue::String(s) => Value::String(Cow::into_owned(s)),
        DeValue::Integer(n) => match i64::from_str_radix(n.as_str(), n.radix()) {
            Ok(n) => Value::Integer(n),
            Err(_) => return Err(out_of_range("integer", n.as_str())),
        },
        DeValue::Float(x) => match x.as_str().parse::<f64>() {
            Ok(v) if v.is_finite() || x.as_str().contains("inf") => Value::Float(v),
            _ => return Err(out_of_range("float", x.as_str())),
        },
        DeValue::Boolean(b) => Value::Boolean(b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(items) if items.is_empty() && arrays.contains_key(&span.start) => {
            Value::Array(
                arrays
                    .remove(&span.start)
                    .map_or_else(Vec::new, |read| read.items),
            )
        }
        DeValue::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| node(item, arrays))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => Value::Table(
            table
                .into_iter()
                .map(|(key, value)| {
                    let key = Key {
                        span: Some(key.span()),
                        name: Cow::into_owned(key.into_inner()),
                    };
                    Ok((key, node(value, arrays)?))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Node {
        span: Some(span),
        value,
    })
}

/// Turns byte offsets into 1-based line:col positions.
pub(super) struct Source<'a> {
    text: &'a str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    /// Byte offsets of the UTF-8 continuation bytes (the second and later
    /// bytes of a non-ASCII character), in order: a column is the bytes
    /// before the offset on its line less the continuation bytes among
    /// them, in O(log n), so that a policy of 100,000 uids on one line
    /// takes linear time, not quadratic.
    continuations: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let continuations = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b & 0xc0 == 0x80)
            .map(|(i, _)| i)
            .collect();
        Self {
            text,
            line_starts,
            continuations,
        }
    }

    /// The position of byte `offset`. The column counts characters, not
    /// bytes, so it matches what an editor shows for non-ASCII text (an
    /// offset inside a character, never given by toml, counts up to it).
    pub(super) fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line.saturating_sub(1)];
        let continuations_before = |at: usize| self.continuations.partition_point(|&c| c < at);
        let col = (offset - line_start)
            - (continuations_before(offset) - continuations_before(line_start));
        Location {
            line: saturating_u32(line),
            col: saturating_u32(col + 1),
        }
    }

    /// The position where `span` starts; `None` when there is no span.
    pub(super) fn start(&self, span: Option<&Range<usize>>) -> Option<Location> {
        span.map(|span| self.location(span.start))
    }

    /// A TOML syntax error as a diagnostic at the position toml reports.
    pub(super) fn syntax_error(&self, error: &SyntaxError) -> super::Diagnostic {
        let at = self
            .start(error.span.as_ref())
            .unwrap_or(Location { line: 1, col: 1 });
        // toml splits some messages over lines ("invalid table header\n
        // expected `.`, `]`"); a diagnostic is one line.
        let message = error
            .message
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        // Some toml errors come without words, or without naming the
        // character (a control character in a comment, for one): say what
        // is at the position instead.
        let offset = error.span.as_ref().map(|s| s.start);
        let message = if message.is_empty() || self.control_at(offset) {
            self.unexplained(offset)
        } else if message == "duplicate key" {
            // toml 0.9 no longer names it.
            match self.key_at(offset) {
                Some(key) => format!("duplicate key {key}"),
                None => message,
            }
        } else {
            message
        };
        super::Diagnostic {
            at,
            message: format!("invalid TOML: {message}"),
        }
    }

    /// The key written at byte `offset`, quoted as in messages: a bare key
    /// as `name`, a quoted one as written.
    fn key_at(&self, offset: Option<usize>) -> Option<String> {
        let rest = self.text.get(offset?..)?;
        let quote = rest.chars().next().filter(|c| matches!(c, '"' | '\''));
        let key = match quote {
            Some(quote) => {
                let end = rest[1..].find(quote)? + 2;
                rest[..end].to_owned()
            }
            None => {
                let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
                let end = rest.find(|c| !bare(c)).unwrap_or(rest.len());
                format!("`{}`", &rest[..end])
            }
        };
        (key.len() > 2).then_some(key)
    }

    /// Whether byte `offset` holds a control character TOML never allows.
    fn control_at(&self, offset: Option<usize>) -> bool {
        offset
            .and_then(|o| self.text.get(o..))
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    }

    /// What is wrong at byte `offset`, for a toml error that does not say.
    fn unexplained(&self, offset: Option<usize>) -> String {
        match offset
            .and_then(|o| self.text.get(o..))
            .and_then(|rest| rest.chars().next())
        {
            Some(c) if c.is_control() => format!(
                "control character U+{:04X} is not allowed (TOML allows only tab in comments \
                 and strings)",
                u32::from(c)
            ),
            Some(c) => format!("unexpected {c:?}"),
            None => "unexpected end of the file".to_owned(),
        }
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Vec<(Key, Node)> {
        match parse(text) {
            Ok(Node {
                value: Value::Table(items),
                ..
            }) => items,
            Ok(other) => panic!("the root of {text:?} is not a table: {other:?}"),
            Err(e) => panic!("{text:?} does not parse: {e:?}"),
        }
    }

    fn at(source: &Source<'_>, span: Option<&Range<usize>>) -> (u32, u32) {
        let location = source.start(span).unwrap_or_else(|| panic!("no span"));
        (location.line, location.col)
    }

    #[test]
    fn keys_and_values_carry_their_positions() {
        let text = "mode = \"audit\"\n[allow]\nuids = [1, 22]\n";
        let source = Source::new(text);
        let items = root(text);
        let (mode_key, mode) = &items[0];
        assert_eq!(mode_key.name, "mode");
        assert_eq!(at(&source, mode_key.span.as_ref()), (1, 1));
        assert_eq!(at(&source, mode.span.as_ref()), (1, 8));
        let (allow_key, allow) = &items[1];
        assert_eq!(at(&source, allow_key.span.as_ref()), (2, 2));
        assert_eq!(at(&source, allow.span.as_ref()), (2, 1));
        let Value::Table(allow) = &allow.value else {
            panic!("[allow] is not a table: {allow:?}");
        };
        let Value::Array(uids) = &allow[0].1.value else {
            panic!("uids is not an array: {:?}", allow[0].1);
        };
        assert_eq!(at(&source, uids[1].span.as_ref()), (3, 12));
        assert!(matches!(uids[1].value, Value::Integer(22)));
    }

    /// Texts made of the pieces an array of integers can hold, and of
    /// those that make toml read it otherwise: whatever the text, reading
    /// the arrays apart gives the tree, or the error, toml's parse of the
    /// text as written gives.
    #[test]
    fn reading_arrays_apart_never_changes_what_a_text_means() {
        const PIECES: &[&str] = &[
            "0",
            "7",
            "1000",
            "01",
            "-1",
            "+2",
            "1_0",
            "1.5",
            "0x1f",
            "9999999999999999999",
            ",",
            ",",
            ", ",
            " ",
            "\n",
            "\r\n",
            "\t",
            "# c\n",
            "\"s\"",
            "'t'",
            "[",
            "]",
            "[]",
            "true",
            "=",
            "x",
            "\r",
        ];
        const KEYS: &[&str] = &[
            "uids = [",
            "[allow]\ngids = [",
            "a = { b = [",
            "c = [[",
            "d = ",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut taken = 0;
        for _ in 0..20_000 {
            let mut text = String::from(KEYS[next(KEYS.len())]);
            for _ in 0..next(8) {
                text.push_str(PIECES[next(PIECES.len())]);
            }
            text.push_str(["]", "]\n", "]}\n", "]]\n", ""][next(5)]);
            if next(2) == 0 {
                text.push_str("e = [3, 4]\n");
            }
            let apart = format!("{:?}", parse(&text));
            let whole = format!("{:?}", tree(&text, &mut Arrays::new()));
            assert_eq!(apart, whole, "{text:?}");
            taken += usize::from(!integers::find(&text).is_empty() && whole.starts_with("Ok"));
        }
        // The texts reach the arrays read apart, not only toml's errors.
        assert!(taken > 200, "{taken}");
    }

    #[test]
    fn arrays_read_apart_land_where_toml_saw_them() {
        let text = "mode = \"audit\" # [1]\n[allow]\nuids = [0,\n  1000, 1001,]\nhost = { gids = \
                    [7, 8] }\n[deny]\ngids = [9]\nusers = [\"x\"]\nallow.uids = [3]\n";
        let found = integers::find(text);
        assert_eq!(found.len(), 4, "{found:?}");
        let blanked = integers::blank(text, &found);
        let mut arrays: Arrays = found.into_iter().map(|a| (a.span.start, a)).collect();
        let apart = tree(&blanked, &mut arrays).expect("the emptied text parses");
        assert!(arrays.is_empty(), "not put in place: {arrays:?}");
        let whole = tree(text, &mut Arrays::new()).expect("the text parses");
        assert_eq!(format!("{apart:?}"), format!("{whole:?}"));
        assert_eq!(
            format!("{:?}", parse(text).expect("parses")),
            format!("{whole:?}")
        );
    }

    #[test]
    fn an_error_is_toml_s_own_on_the_text_as_written() {
        // The emptied text fails too (the header's `=`): the message and
        // position are those of the text as written.
        let text = "[allow]\nuids = [1, 2]\n[deny = [3]]\n";
        let Err(error) = parse(text) else {
            panic!("{text:?} parsed");
        };
        let Err(whole) = tree(text, &mut Arrays::new()) else {
            panic!("{text:?} parsed");
        };
        assert_eq!(format!("{error:?}"), format!("{whole:?}"));
    }

    #[test]
    fn implicit_tables_parse_without_a_span() {
        let text = "allow.users = [\"root\"]\n[deny.x]\ny = 1\n";
        let source = Source::new(text);
        let items = root(text);
        let names: Vec<_> = items.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["allow", "deny"]);
        // The keys keep their positions, for messages about the table.
        assert_eq!(at(&source, items[0].0.span.as_ref()), (1, 1));
        assert_eq!(at(&source, items[1].0.span.as_ref()), (2, 2));
        let Value::Table(deny) = &items[1].1.value else {
            panic!("deny is not a table: {:?}", items[1].1);
        };
        assert_eq!(deny[0].0.name, "x");
        assert_eq!(at(&source, deny[0].0.span.as_ref()), (2, 7));
    }

    #[test]
    fn datetime_is_a_datetime() {
        let items = root("mode = 1979-05-27\n");
        assert_eq!(items[0].1.value.describe(), "datetime 1979-05-27");
    }

    #[test]
    fn describe_names_type_and_value() {
        let items = root("a = \"x\\\"y\"\nb = -3\nc = 1.5\nd = true\ne = []\nf = {}\n");
        let described: Vec<_> = items.iter().map(|(_, v)| v.value.describe()).collect();
        assert_eq!(
            described,
            [
                "string \"x\\\"y\"",
                "integer -3",
                "float 1.5",
                "boolean true",
                "an array",
                "a table"
            ]
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let source = Source::new("a\n# é ü\nxyz\n");
        // "é" and "ü" are two bytes each: "ü" starts at byte 7 but is the
        // fifth character of line 2, and the 'x' of line 3 is byte 10.
        assert_eq!(source.location(7), Location { line: 2, col: 5 });
        assert_eq!(source.location(10), Location { line: 3, col: 1 });
        assert_eq!(source.location(0), Location { line: 1, col: 1 });
        assert_eq!(source.location(1), Location { line: 1, col: 2 });
        assert_eq!(source.location(2), Location { line: 2, col: 1 });
        // Past the end clamps to the end.
        assert_eq!(source.location(999), Location { line: 4, col: 1 });
    }

    #[test]
    fn syntax_errors_become_one_line_diagnostics() {
        let text = "mode = \"audit\"\n[allow\n";
        let Err(error) = parse(text) else {
            panic!("{text:?} parsed");
        };
        let diagnostic = Source::new(text).syntax_error(&error);
        assert_eq!(
            diagnostic.to_string(),
            "2:7: invalid TOML: unclosed table, expected `]`"
        );
    }

    #[test]
    fn a_number_no_toml_value_holds_is_refused_where_it_is() {
        let text = "[allow]\nuids = [1, 99999999999999999999]\n";
        let Err(error) = parse(text) else {
            panic!("{text:?} parsed");
        };
        assert_eq!(
            Source::new(text).syntax_error(&error).to_string(),
            "2:12: invalid TOML: integer 99999999999999999999 is out of range"
        );
    }

    #[test]
    fn a_control_character_is_named_not_left_blank() {
        let text = "# a comment \u{1} here\n[allow]\nuids = [0]\n";
        let Err(error) = parse(text) else {
            panic!("{text:?} parsed");
        };
        assert_eq!(
            Source::new(text).syntax_error(&error).to_string(),
            "1:13: invalid TOML: control character U+0001 is not allowed (TOML allows only tab \
             in comments and strings)"
        );
    }
}
