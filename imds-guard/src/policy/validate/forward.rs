//! `[forward]`: `allow_interfaces` and `allow_sources`, checked like the
//! rest of the file (every problem reported, with its position).

use std::collections::HashMap;

use super::{Checker, Fields};
use crate::policy::{
    Location,
    forward::{Forward, Interface, Source, parse_interface, parse_prefix},
    raw::{Key, Node, Value},
};

/// The keys of `[forward]`.
pub(super) const FORWARD_KEYS: &[&str] = &["allow_interfaces", "allow_sources"];

impl Checker<'_> {
    pub(super) fn forward(&mut self, key: &Key, node: &Node) -> Forward {
        let Some((items, at)) = self.table("forward", key, node) else {
            return Forward::default();
        };
        let fields: Fields<'_> = self.fields(items, FORWARD_KEYS, "in [forward]", at);
        let interfaces = self
            .strings(&fields, "allow_interfaces", "interface names", at)
            .into_iter()
            .filter_map(|(text, at)| match parse_interface(&text) {
                Ok(name) => Some(Interface { name, at }),
                Err(why) => {
                    self.report(at, format!("[forward] allow_interfaces: {why}"));
                    None
                }
            })
            .collect::<Vec<_>>();
        let sources = self
            .strings(&fields, "allow_sources", "prefixes", at)
            .into_iter()
            .filter_map(|(text, at)| match parse_prefix(&text) {
                Ok(prefix) => Some(Source { prefix, at }),
                Err(why) => {
                    self.report(at, format!("[forward] allow_sources: {why}"));
                    None
                }
            })
            .collect::<Vec<_>>();
        self.no_duplicates(
            "allow_interfaces",
            interfaces.iter().map(|i| (i.name.clone(), i.at)),
        );
        self.no_duplicates(
            "allow_sources",
            sources.iter().map(|s| (s.prefix.to_string(), s.at)),
        );
        Forward {
            interfaces,
            sources,
        }
    }

    /// The strings of array `name` with their positions; anything else in
    /// it is reported.
    fn strings(
        &mut self,
        fields: &Fields<'_>,
        name: &str,
        what: &str,
        table_at: Location,
    ) -> Vec<(String, Location)> {
        let Some(&(key, list)) = fields.get(name) else {
            return Vec::new();
        };
        let list_at = self.node_at(list, self.key_at(key, table_at));
        let Value::Array(values) = &list.value else {
            self.report(
                list_at,
                format!(
                    "[forward] {name}: expected an array of {what}, found {}",
                    list.value.describe()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for value in values {
            let at = self.node_at(value, list_at);
            match &value.value {
                Value::String(s) => out.push((s.clone(), at)),
                other => self.report(
                    at,
                    format!(
                        "[forward] {name}: expected a string, found {}",
                        other.describe()
                    ),
                ),
            }
        }
        out
    }

    fn no_duplicates(&mut self, name: &str, items: impl Iterator<Item = (String, Location)>) {
        let mut seen: HashMap<String, Location> = HashMap::new();
        for (text, at) in items {
            if let Some(first) = seen.get(&text) {
                self.report(
                    at,
                    format!(
                        "[forward] {name}: duplicate {text:?}, already listed at {}",
                        first.in_words()
                    ),
                );
            } else {
                seen.insert(text, at);
            }
        }
    }
}
