//! The serde layer: the TOML text as an untyped tree in which every key and
//! value keeps its byte span, and the conversion of spans to line:col.
//!
//! The tree is untyped on purpose. Typed serde structs stop at the first
//! wrong type or unknown key, and the agent must report every problem of a
//! policy at once; `validate.rs` walks this tree instead.
//!
//! Spans come from `serde_spanned`'s protocol, as `toml::Spanned` uses it,
//! but [`Node`] does not use `toml::Spanned` itself: toml gives no span to
//! implicit tables (`[allow]` created by `allow.users = [..]` or by
//! `[allow.x]`), and `Spanned<T>` then fails with a confusing message.
//! [`Node`] asks for a span, and takes the value without one when there is
//! none.

use std::{fmt, ops::Range};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_spanned::__unstable as spanned;

use super::Location;

/// The fields `serde_spanned` asks for; a deserializer that can give a span
/// recognises exactly this name and these fields.
const SPANNED_FIELDS: &[&str] = &[
    spanned::START_FIELD,
    spanned::END_FIELD,
    spanned::VALUE_FIELD,
];

/// The key under which toml hands a datetime to a visitor, as a one-entry
/// map (`toml_datetime::__unstable::FIELD`, not re-exported by toml). If it
/// ever changes, a datetime shows up as a table in messages; the
/// `datetime_is_a_datetime` test catches that.
const DATETIME_FIELD: &str = "$__toml_private_datetime";

/// Parses `text` as TOML into a tree of spanned nodes (the root is a table).
pub(super) fn parse(text: &str) -> Result<Node, toml::de::Error> {
    toml::from_str(text)
}

/// A value and where it is written.
#[derive(Debug)]
pub(super) struct Node {
    /// Byte range in the text; `None` for tables that are only implied.
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
    /// Keys in the order toml gives them (file order for keys of one table).
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

impl<'de> de::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(
            spanned::NAME,
            SPANNED_FIELDS,
            NodeVisitor { spanned: true },
        )
    }
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(spanned::NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

/// The value inside a spanned wrapper: asking for a span again would loop.
struct Bare;

impl<'de> DeserializeSeed<'de> for Bare {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor { spanned: false })
    }
}

struct NodeVisitor {
    /// Whether a map may be the spanned wrapper rather than a table.
    spanned: bool,
}

fn bare(value: Value) -> Node {
    Node { span: None, value }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(bare(Value::Boolean(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(bare(Value::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        // TOML integers are i64; toml never calls this with a larger value.
        i64::try_from(v)
            .map(|v| bare(Value::Integer(v)))
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(bare(Value::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(bare(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(bare(Value::String(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(bare(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let Some(first) = map.next_key::<Key>()? else {
            return Ok(bare(Value::Table(Vec::new())));
        };
        if self.spanned && first.name == spanned::START_FIELD {
            return spanned_node(map);
        }
        if first.name == DATETIME_FIELD {
            let datetime: String = map.next_value()?;
            return Ok(bare(Value::Datetime(datetime)));
        }
        let mut items = vec![(first, map.next_value::<Node>()?)];
        while let Some(key) = map.next_key::<Key>()? {
            let value = map.next_value::<Node>()?;
            items.push((key, value));
        }
        Ok(bare(Value::Table(items)))
    }
}

/// Reads the rest of a spanned wrapper whose start key was just read.
fn spanned_node<'de, A: MapAccess<'de>>(mut map: A) -> Result<Node, A::Error> {
    let start: usize = map.next_value()?;
    let (mut end, mut node) = (None, None);
    while let Some(key) = map.next_key::<Key>()? {
        match key.name.as_str() {
            spanned::END_FIELD => end = Some(map.next_value::<usize>()?),
            spanned::VALUE_FIELD => node = Some(map.next_value_seed(Bare)?),
            other => return Err(de::Error::unknown_field(other, SPANNED_FIELDS)),
        }
    }
    let end = end.ok_or_else(|| de::Error::missing_field(spanned::END_FIELD))?;
    let mut node = node.ok_or_else(|| de::Error::missing_field(spanned::VALUE_FIELD))?;
    node.span = Some(start..end);
    Ok(node)
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_owned(),
            span: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let (mut start, mut end, mut name) = (None, None, None);
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                spanned::START_FIELD => start = Some(map.next_value::<usize>()?),
                spanned::END_FIELD => end = Some(map.next_value::<usize>()?),
                spanned::VALUE_FIELD => name = Some(map.next_value::<String>()?),
                other => return Err(de::Error::unknown_field(other, SPANNED_FIELDS)),
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field(spanned::VALUE_FIELD))?;
        Ok(Key {
            name,
            span: start.zip(end).map(|(start, end)| start..end),
        })
    }
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
    pub(super) fn syntax_error(&self, error: &toml::de::Error) -> super::Diagnostic {
        let at = self
            .start(error.span().as_ref())
            .unwrap_or(Location { line: 1, col: 1 });
        // toml splits some messages over lines ("invalid table header\n
        // expected `.`, `]`"); a diagnostic is one line.
        let message = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        // Some toml errors come without words (a control character in a
        // comment, for one): say what is at the position instead.
        let message = if message.is_empty() {
            self.unexplained(error.span().map(|s| s.start))
        } else {
            message
        };
        super::Diagnostic {
            at,
            message: format!("invalid TOML: {message}"),
        }
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
            Err(e) => panic!("{text:?} does not parse: {e}"),
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
            "2:7: invalid TOML: invalid table header, expected `.`, `]`"
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
