//! `[requests.NAME]`, `[imdsv2]` and `[attribution]` (issue 23), checked
//! like the rest of the file: every problem reported, with its position.

use std::collections::BTreeSet;

use imds_guard_common::{MAX_REQUEST_RULES, MAX_RULE_SETS};

use super::{Checker, Fields, IDENTITY_KEYS, Rules, Table};
use crate::policy::{
    Action, Entry, Location, Scope,
    raw::{Key, Node, Value},
    requests::{Rule, RuleSet, parse_rule},
};

/// The keys of a `[requests.NAME]` table beside its identities.
pub(super) const SET_KEYS: &[&str] = &["host", "imdsv2", "rules"];
/// The keys of `[imdsv2]`.
pub(super) const IMDSV2_KEYS: &[&str] = &["required", "exempt", "require"];
/// The keys of `[attribution]`.
pub(super) const ATTRIBUTION_KEYS: &[&str] = &["whole_service"];

impl Checker<'_> {
    /// `[requests]`: one rule set per sub-table, its identities onto
    /// `entries` (allow entries, host-only with `host = true`).
    pub(super) fn request_sets(
        &mut self,
        key: &Key,
        node: &Node,
        entries: &mut Vec<Entry>,
    ) -> Vec<Rules> {
        let Some((sets, at)) = self.table("requests", key, node) else {
            return Vec::new();
        };
        self.requests.at.get_or_insert(at);
        let mut out = Vec::new();
        let mut number = 0u32;
        for (set_key, set_node) in sets {
            let name = set_key.name.clone();
            let table_name = format!("requests.{name}");
            let set_at = self.node_at(set_node, self.key_at(set_key, at));
            let Value::Table(items) = &set_node.value else {
                self.report(
                    set_at,
                    format!(
                        "[requests] {name}: expected a table ([requests.{name}] with identities \
                         and rules), found {}",
                        set_node.value.describe()
                    ),
                );
                continue;
            };
            if self.requests.sets.len() >= MAX_RULE_SETS as usize {
                self.report(
                    set_at,
                    format!("[{table_name}]: more than {MAX_RULE_SETS} request tables"),
                );
                continue;
            }
            let fields: Fields<'_> = items
                .iter()
                .filter(|(k, _)| SET_KEYS.contains(&k.name.as_str()))
                .map(|(k, n)| (k.name.as_str(), (k, n)))
                .collect();
            let (host, imdsv2) = self.set_switches(&table_name, &fields, set_at);
            let rules = match fields.get("rules") {
                Some(&(k, n)) => self.request_rules(&table_name, k, n, set_at, &mut number),
                None => {
                    self.report(
                        set_at,
                        format!(
                            "[{table_name}]: no `rules`: list the requests its callers may send, \
                             like rules = [\"GET /latest/meta-data/placement/\"]"
                        ),
                    );
                    Vec::new()
                }
            };
            let first = entries.len();
            let table = Table {
                name: &table_name,
                action: Action::Allow,
                scope: if host { Scope::Host } else { Scope::Anywhere },
                other_keys: SET_KEYS,
            };
            let written = self.rules(&table, set_key, set_node, entries);
            let index = self.requests.sets.len();
            for (i, entry) in entries.iter().enumerate().skip(first) {
                self.requests.members.insert(i, index);
                self.request_entries.insert(entry.at, table_name.clone());
            }
            self.requests.sets.push(RuleSet {
                name,
                at: set_at,
                host,
                imdsv2,
                rules,
            });
            out.push(written);
        }
        out
    }

    /// A set's `host` and `imdsv2`.
    fn set_switches(
        &mut self,
        table: &str,
        fields: &Fields<'_>,
        at: Location,
    ) -> (bool, Option<bool>) {
        let host = match fields.get("host") {
            Some(&(k, n)) => self.boolean(table, "host", k, n, at),
            None => false,
        };
        let imdsv2 = match fields.get("imdsv2") {
            Some(&(k, n)) => match &n.value {
                Value::String(s) if s == "required" => Some(true),
                Value::String(s) if s == "optional" => Some(false),
                other => {
                    self.report(
                        self.node_at(n, self.key_at(k, at)),
                        format!(
                            "[{table}] imdsv2: expected \"required\" or \"optional\", found {}",
                            other.describe()
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        (host, imdsv2)
    }

    fn boolean(&mut self, table: &str, name: &str, key: &Key, node: &Node, at: Location) -> bool {
        match node.value {
            Value::Boolean(b) => b,
            ref other => {
                self.report(
                    self.node_at(node, self.key_at(key, at)),
                    format!(
                        "[{table}] {name}: expected true or false, found {}",
                        other.describe()
                    ),
                );
                false
            }
        }
    }

    /// A set's `rules`: each canonical (by the kernel's parser), each once.
    fn request_rules(
        &mut self,
        table: &str,
        key: &Key,
        list: &Node,
        at: Location,
        number: &mut u32,
    ) -> Vec<Rule> {
        let list_at = self.node_at(list, self.key_at(key, at));
        let Value::Array(values) = &list.value else {
            self.report(
                list_at,
                format!(
                    "[{table}] rules: expected an array of rules like \"GET /latest/meta-data/\", \
                     found {}",
                    list.value.describe()
                ),
            );
            return Vec::new();
        };
        let mut rules: Vec<Rule> = Vec::new();
        for value in values {
            let at = self.node_at(value, list_at);
            let Value::String(text) = &value.value else {
                self.report(
                    at,
                    format!(
                        "[{table}] rules: expected a rule string like \"GET /latest/meta-data/\", \
                         found {}",
                        value.value.describe()
                    ),
                );
                continue;
            };
            let (method, path) = match parse_rule(text) {
                Ok(parsed) => parsed,
                Err(why) => {
                    self.report(at, format!("[{table}] rules: {why}"));
                    continue;
                }
            };
            if let Some(first) = rules.iter().find(|r| r.method == method && r.path == path) {
                self.report(
                    at,
                    format!(
                        "[{table}] rules: duplicate rule {text:?}, already at {}",
                        first.at.in_words()
                    ),
                );
                continue;
            }
            *number += 1;
            if *number > MAX_REQUEST_RULES {
                self.report(
                    at,
                    format!(
                        "[{table}] rules: more than {MAX_REQUEST_RULES} rules in the policy, \
                         which the kernel holds at most"
                    ),
                );
                continue;
            }
            rules.push(Rule {
                method,
                path,
                at,
                number: *number,
            });
        }
        rules
    }

    /// `[imdsv2]` and `[attribution]`, once every entry is known: each
    /// identity `exempt` or `require` names must be an allow entry
    /// (`[allow]`, `[allow.host]` or `[requests.NAME]`).
    pub(super) fn request_switches(&mut self, fields: &Fields<'_>, entries: &[Entry]) {
        if let Some(&(key, node)) = fields.get("attribution") {
            if let Some((items, at)) = self.table("attribution", key, node) {
                self.requests.at.get_or_insert(at);
                let f = self.fields(items, ATTRIBUTION_KEYS, "in [attribution]", at);
                if let Some(&(k, n)) = f.get("whole_service") {
                    self.requests.whole_service =
                        self.boolean("attribution", "whole_service", k, n, at);
                }
            }
        }
        let Some(&(key, node)) = fields.get("imdsv2") else {
            return;
        };
        let Some((items, at)) = self.table("imdsv2", key, node) else {
            return;
        };
        self.requests.at.get_or_insert(at);
        let f = self.fields(items, IMDSV2_KEYS, "in [imdsv2]", at);
        if let Some(&(k, n)) = f.get("required") {
            self.requests.imdsv2.required = self.boolean("imdsv2", "required", k, n, at);
        }
        for name in ["exempt", "require"] {
            let Some(&(k, n)) = f.get(name) else {
                continue;
            };
            let listed = self.imdsv2_list(name, k, n, entries);
            let required = self.requests.imdsv2.required;
            if !listed.is_empty() && (name == "exempt") != required {
                self.report(
                    self.key_at(k, at),
                    format!(
                        "[imdsv2] {name}: only with required = {}: it would change nothing",
                        name == "exempt"
                    ),
                );
            }
            let target = if name == "exempt" {
                &mut self.requests.imdsv2.exempt
            } else {
                &mut self.requests.imdsv2.require
            };
            target.extend(listed);
        }
    }

    /// The entries an `[imdsv2]` list names (an inline table of identity
    /// keys), by index.
    fn imdsv2_list(
        &mut self,
        name: &str,
        key: &Key,
        node: &Node,
        entries: &[Entry],
    ) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let context_table = format!("imdsv2.{name}");
        let Some((items, list_at)) = self.table(&context_table, key, node) else {
            return out;
        };
        let valid: Vec<&str> = IDENTITY_KEYS.iter().map(|k| k.key).collect();
        let fields = self.fields(items, &valid, &format!("in [imdsv2] {name}"), list_at);
        for kind in &IDENTITY_KEYS {
            let Some(&(k, list)) = fields.get(kind.key) else {
                continue;
            };
            let context = format!("[imdsv2] {name} {}", kind.key);
            let values_at = self.node_at(list, self.key_at(k, list_at));
            let Value::Array(values) = &list.value else {
                self.report(
                    values_at,
                    format!(
                        "{context}: expected an array, found {}",
                        list.value.describe()
                    ),
                );
                continue;
            };
            for value in values {
                let value_at = self.node_at(value, values_at);
                let identity = match kind.syntax.parse(&context, &value.value) {
                    Ok(identity) => identity,
                    Err(message) => {
                        self.report(value_at, message);
                        continue;
                    }
                };
                let found: Vec<usize> = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.action == Action::Allow && e.identity == identity)
                    .map(|(i, _)| i)
                    .collect();
                if found.is_empty() {
                    self.report(
                        value_at,
                        format!(
                            "{context}: {identity} names no entry of [allow], [allow.host] or \
                             [requests.*]: [imdsv2] changes what an allowed caller may send, so \
                             allow it first"
                        ),
                    );
                }
                out.extend(found);
            }
        }
        out
    }

    /// The request table of the entry at `at`, if a request table wrote it.
    pub(super) fn request_table(&self, at: Location) -> Option<&str> {
        self.request_entries.get(&at).map(String::as_str)
    }
}
