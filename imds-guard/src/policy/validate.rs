//! Step one of loading a policy: from TOML text to a [`PolicySpec`], with
//! every check that needs no user database. Problems are collected rather
//! than returned at the first, so an operator fixes a file in one pass.
//!
//! The keys of `[allow]` and `[deny]` are rows of [`IDENTITY_KEYS`]: a new
//! identity kind (supplementary groups, systemd units, executables) is a new
//! row, a new [`Identity`] variant and a new arm in `resolve.rs`.
//! [`Checker::rules`] reads any table of rules, so per-endpoint rules can
//! reuse it for a table nested under an endpoint.

use std::{
    collections::{HashMap, hash_map},
    net::IpAddr,
    path::Path,
};

use imds_guard_common::{MAX_CGROUP_PATTERNS, MAX_ENDPOINTS, MAX_PORTS};
use rustc_hash::FxHashMap;

use super::{
    Action, Endpoint, Entry, Identity, Location, Mode, PolicyError, PolicySpec, Port, Scope,
    address,
    cgroups::{
        Pattern,
        pods::{PATTERNS_PER_POD, PodRule},
        units,
    },
    error::Diagnostic,
    forward::Forward,
    presets,
    raw::{self, Key, Node, Source, Value},
    requests::Requests,
};

mod forward;
mod requests;

/// The keys of the top-level table.
const TOP_KEYS: &[&str] = &[
    "mode",
    "endpoints",
    "allow",
    "deny",
    "forward",
    "requests",
    "imdsv2",
    "attribution",
];
/// The table in `[allow]` whose entries allow a caller on the host only
/// (`[allow.host]`).
const HOST_KEY: &str = "host";
/// The keys of `[endpoints]`.
const ENDPOINT_KEYS: &[&str] = &["addresses", "presets"];
/// Where problems of the file as a whole are reported.
const START: Location = Location { line: 1, col: 1 };
/// The largest valid uid or gid: `(uid_t)-1` means "no id" to the kernel
/// (`setreuid(-1, ..)` leaves the id alone), so no process runs as it.
const MAX_ID: u32 = u32::MAX - 1;

/// What one key of `[allow]`/`[deny]` lists.
struct IdentityKey {
    key: &'static str,
    syntax: Syntax,
}

/// How the values of an identity key are written.
enum Syntax {
    /// Names, resolved to ids at load; numbers belong in `numbers_in`.
    Name {
        noun: &'static str,
        numbers_in: &'static str,
        make: fn(String) -> Identity,
    },
    /// Numeric ids, used as written; names belong in `names_in`.
    Id {
        noun: &'static str,
        names_in: &'static str,
        make: fn(u32) -> Identity,
    },
    /// Strings in a syntax of their own (units, cgroup patterns, pods),
    /// checked by `check` and kept as written.
    Text {
        plural: &'static str,
        check: fn(&str) -> Result<(), String>,
        make: fn(String) -> Identity,
    },
}

/// The identity keys, in the order [`PolicySpec::entries`] documents.
const IDENTITY_KEYS: [IdentityKey; 7] = [
    IdentityKey {
        key: "users",
        syntax: Syntax::Name {
            noun: "user",
            numbers_in: "uids",
            make: Identity::User,
        },
    },
    IdentityKey {
        key: "uids",
        syntax: Syntax::Id {
            noun: "uid",
            names_in: "users",
            make: Identity::Uid,
        },
    },
    IdentityKey {
        key: "groups",
        syntax: Syntax::Name {
            noun: "group",
            numbers_in: "gids",
            make: Identity::Group,
        },
    },
    IdentityKey {
        key: "gids",
        syntax: Syntax::Id {
            noun: "gid",
            names_in: "groups",
            make: Identity::Gid,
        },
    },
    IdentityKey {
        key: "units",
        syntax: Syntax::Text {
            plural: "systemd unit names",
            check: units::check_name,
            make: Identity::Unit,
        },
    },
    IdentityKey {
        key: "cgroups",
        syntax: Syntax::Text {
            plural: "cgroup path patterns",
            check: |text| Pattern::parse(text).map(drop),
            make: Identity::Cgroup,
        },
    },
    IdentityKey {
        key: "pods",
        syntax: Syntax::Text {
            plural: "pod names or name patterns (namespace/name, namespace/prefix*)",
            check: |text| PodRule::parse(text).map(drop),
            make: Identity::Pod,
        },
    },
];

/// Why `[deny] pods` is refused.
const NO_POD_DENY: &str = "[deny] pods: a pod cannot be denied by name: its uid, and so its \
     cgroup, is known only once the kubelet has created the cgroup, so a deny would come late and \
     let the pod through meanwhile; deny its cgroups instead ([deny] cgroups, for example \
     \"/kubepods.slice/**\"), or allow only the pods that may connect";

/// Reads and checks the policy `text`, read from `path`.
pub(super) fn parse(path: &Path, text: &str) -> Result<PolicySpec, PolicyError> {
    let source = Source::new(text);
    let root =
        raw::parse(text).map_err(|e| PolicyError::invalid(path, vec![source.syntax_error(&e)]))?;
    let mut checker = Checker {
        source: &source,
        diagnostics: Vec::new(),
        presets: Vec::new(),
        workload: Vec::new(),
        requests: Requests::default(),
        request_entries: HashMap::new(),
    };
    let (mode, endpoints, mut entries, forward) = checker.policy(&root);
    if !checker.diagnostics.is_empty() {
        return Err(PolicyError::invalid(path, checker.diagnostics));
    }
    // Kept as long as the policy is in force: not the room grown for them
    // (up to twice as many, 100,000 uids leaving room for 131,072).
    entries.shrink_to_fit();
    Ok(PolicySpec {
        path: path.to_owned(),
        mode,
        endpoints,
        entries,
        forward,
        presets: checker.presets,
        workload: checker.workload,
        requests: checker.requests,
    })
}

/// A table of rules: its name in messages, and what its entries say.
#[derive(Clone, Copy)]
struct Table<'t> {
    name: &'t str,
    action: Action,
    scope: Scope,
    /// Keys the table holds beside identities, read by the caller
    /// (`[requests.NAME]`'s `host`, `imdsv2`, `rules`); `[allow]`'s `host`
    /// table is read here.
    other_keys: &'t [&'t str],
}

/// Walks the tree and collects diagnostics.
struct Checker<'a> {
    source: &'a Source<'a>,
    diagnostics: Vec<Diagnostic>,
    /// The presets `[endpoints] presets` expanded, and why (`auto`).
    presets: Vec<String>,
    /// The addresses of workload presets, each once.
    workload: Vec<IpAddr>,
    /// `[requests.*]`, `[imdsv2]`, `[attribution]`.
    requests: Requests,
    /// The `[requests.NAME]` table of each entry a request table wrote, by
    /// the entry's location (for messages).
    request_entries: HashMap<Location, String>,
}

/// The known keys of a table (unknown ones are reported, not kept).
type Fields<'n> = HashMap<&'n str, (&'n Key, &'n Node)>;

/// What one table of rules produced (its entries go where the caller
/// collects them, one list for every table).
struct Rules {
    /// Values written in the table, valid or not: a table with only wrong
    /// entries is reported for those, not also as deciding nothing.
    written: usize,
    /// The table header (or its key, for an implied table).
    at: Location,
}

impl Checker<'_> {
    fn report(&mut self, at: Location, message: String) {
        self.diagnostics.push(Diagnostic { at, message });
    }

    fn key_at(&self, key: &Key, fallback: Location) -> Location {
        self.source.start(key.span.as_ref()).unwrap_or(fallback)
    }

    fn node_at(&self, node: &Node, fallback: Location) -> Location {
        self.source.start(node.span.as_ref()).unwrap_or(fallback)
    }

    fn policy(&mut self, root: &Node) -> (Mode, Vec<Endpoint>, Vec<Entry>, Forward) {
        let Value::Table(items) = &root.value else {
            // toml always gives a table at the root; kept total anyway.
            self.report(START, "expected a table at the top level".to_owned());
            return (Mode::Enforce, Vec::new(), Vec::new(), Forward::default());
        };
        let fields = self.fields(items, TOP_KEYS, "at the top level", START);
        let mode = match fields.get("mode") {
            Some(&(key, node)) => self.mode(key, node),
            None => Mode::Enforce,
        };
        let endpoints = match fields.get("endpoints") {
            Some(&(key, node)) => self.endpoints(key, node),
            None => address::default_endpoints(),
        };
        let forward = match fields.get("forward") {
            Some(&(key, node)) => self.forward(key, node),
            None => Forward::default(),
        };
        // [allow] before [deny], as `PolicySpec::entries` documents.
        let mut tables = Vec::new();
        let mut entries = Vec::new();
        let mut empty_allow = None;
        for (name, action) in [("allow", Action::Allow), ("deny", Action::Deny)] {
            if let Some(&(key, node)) = fields.get(name) {
                let table = Table {
                    name,
                    action,
                    scope: Scope::Anywhere,
                    other_keys: &[],
                };
                let rules = self.rules(&table, key, node, &mut entries);
                if action == Action::Allow && rules.written == 0 {
                    empty_allow = Some(rules.at);
                }
                tables.push(rules);
            }
            // `[requests.NAME]` entries after `[allow]`'s (allow entries
            // too), before `[deny]`'s.
            if action == Action::Allow {
                if let Some(&(key, node)) = fields.get("requests") {
                    tables.extend(self.request_sets(key, node, &mut entries));
                }
            }
        }
        // Rules written under a wrong key ("[allowed]", top-level "users")
        // are reported as such; "decides nothing" would only repeat it.
        let misplaced_rules = items.iter().any(|(key, node)| {
            !TOP_KEYS.contains(&key.name.as_str())
                && (matches!(node.value, Value::Table(_))
                    || IDENTITY_KEYS.iter().any(|k| k.key == key.name))
        });
        if !misplaced_rules && tables.iter().all(|t| t.written == 0) {
            let at = tables.iter().map(|t| t.at).min().unwrap_or(START);
            self.report(
                at,
                "the policy decides nothing: add an entry to [allow] (only those may connect) \
                 or to [deny] (all others may connect)"
                    .to_owned(),
            );
        } else if let Some(at) = empty_allow {
            // Emptying the last allowed identity must not turn "only these
            // may connect" into "everyone not denied may connect".
            self.report(
                at,
                "[allow] has no entry, so it would allow everyone not in [deny]: list who may \
                 connect, or remove the [allow] table to allow everyone not denied"
                    .to_owned(),
            );
        }
        self.cross_check(&entries);
        self.cgroup_patterns(&entries);
        self.request_switches(&fields, &entries);
        (mode, endpoints, entries, forward)
    }

    /// Sorts the keys of a table into known ones and reports the others.
    fn fields<'n>(
        &mut self,
        items: &'n [(Key, Node)],
        valid: &[&str],
        place: &str,
        fallback: Location,
    ) -> Fields<'n> {
        let mut fields = Fields::new();
        for (key, node) in items {
            if valid.contains(&key.name.as_str()) {
                fields.insert(key.name.as_str(), (key, node));
                continue;
            }
            let hint = match (belongs(&key.name), closest(&key.name, valid)) {
                (Some(home), _) => format!(", {} belongs {home}", key.name),
                (None, Some(near)) => format!(", did you mean {near:?}?"),
                (None, None) => String::new(),
            };
            self.report(
                self.key_at(key, fallback),
                format!(
                    "unknown key {:?} {place}{hint} (valid keys: {})",
                    key.name,
                    valid.join(", ")
                ),
            );
        }
        fields
    }

    /// The items of a table, or a report that `name` is not one.
    fn table<'n>(
        &mut self,
        name: &str,
        key: &Key,
        node: &'n Node,
    ) -> Option<(&'n [(Key, Node)], Location)> {
        let at = self.node_at(node, self.key_at(key, START));
        match &node.value {
            Value::Table(items) => Some((items, at)),
            other => {
                self.report(
                    at,
                    format!("{name}: expected a table, found {}", other.describe()),
                );
                None
            }
        }
    }

    fn mode(&mut self, key: &Key, node: &Node) -> Mode {
        match &node.value {
            Value::String(s) if s == "enforce" => Mode::Enforce,
            Value::String(s) if s == "audit" => Mode::Audit,
            other => {
                self.report(
                    self.node_at(node, self.key_at(key, START)),
                    format!(
                        "mode: expected \"enforce\" or \"audit\", found {}",
                        other.describe()
                    ),
                );
                Mode::Enforce
            }
        }
    }

    fn endpoints(&mut self, key: &Key, node: &Node) -> Vec<Endpoint> {
        const CONTEXT: &str = "[endpoints] addresses";
        let Some((items, at)) = self.table("endpoints", key, node) else {
            return Vec::new();
        };
        let fields = self.fields(items, ENDPOINT_KEYS, "in [endpoints]", at);
        let from_presets = match fields.get("presets") {
            Some(&(key, list)) => self.presets(key, list, at),
            None => Vec::new(),
        };
        let Some(&(key, list)) = fields.get("addresses") else {
            if fields.contains_key("presets") {
                return self.merge(from_presets, &[], at);
            }
            return address::default_endpoints();
        };
        let list_at = self.node_at(list, self.key_at(key, at));
        let Value::Array(items) = &list.value else {
            self.report(
                list_at,
                format!(
                    "{CONTEXT}: expected an array of IP address strings, found {}",
                    list.value.describe()
                ),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.report(
                list_at,
                format!(
                    "{CONTEXT}: the list is empty, which would protect nothing; expected at \
                     least one address (remove the key to protect the defaults {})",
                    address::defaults_spelled()
                ),
            );
        }
        let max = MAX_ENDPOINTS as usize;
        if let Some(extra) = items.get(max) {
            self.report(
                self.node_at(extra, list_at),
                format!(
                    "{CONTEXT}: {} addresses, expected at most {max}",
                    items.len()
                ),
            );
        }
        self.merge(from_presets, items, list_at)
    }

    /// `[endpoints] presets`: each name's endpoints (`auto`: the cloud
    /// DMI shows, EC2's when none), at the name's location. A preset
    /// whose endpoints hand each workload its own credentials is refused:
    /// the guard does not yet keep those open to the workloads they serve.
    fn presets(&mut self, key: &Key, list: &Node, at: Location) -> Vec<(Endpoint, String)> {
        const CONTEXT: &str = "[endpoints] presets";
        let list_at = self.node_at(list, self.key_at(key, at));
        let Value::Array(items) = &list.value else {
            self.report(
                list_at,
                format!(
                    "{CONTEXT}: expected an array of preset names, found {}",
                    list.value.describe()
                ),
            );
            return Vec::new();
        };
        let all = match presets::all() {
            Ok(all) => all,
            Err(e) => {
                self.report(list_at, format!("{CONTEXT}: {e}"));
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        for item in items {
            let at = self.node_at(item, list_at);
            let Value::String(name) = &item.value else {
                self.report(
                    at,
                    format!(
                        "{CONTEXT}: expected a preset name, found {}",
                        item.value.describe()
                    ),
                );
                continue;
            };
            let picked = picked(&all, name);
            if picked.is_empty() {
                let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
                self.report(
                    at,
                    format!(
                        "{CONTEXT}: unknown preset {name:?}, expected \"auto\" or one of {}",
                        names.join(", ")
                    ),
                );
                continue;
            }
            for (preset, said) in picked {
                if preset.kind == presets::Kind::Workload {
                    for &(addr, _) in &preset.addresses {
                        if !self.workload.contains(&addr) {
                            self.workload.push(addr);
                        }
                    }
                }
                self.presets.push(said);
                for &(addr, port) in &preset.addresses {
                    let e = Endpoint {
                        addr,
                        port,
                        at: Some(at),
                    };
                    let text = format!("{e} (preset {})", preset.name);
                    found.push((e, text));
                }
            }
        }
        found
    }

    /// Each entry of `[endpoints] addresses`, parsed, each once: an
    /// address is protected either on every port (written bare) or on the
    /// ports written with it, at most [`MAX_PORTS`] of them.
    fn merge(
        &mut self,
        from_presets: Vec<(Endpoint, String)>,
        items: &[Node],
        list_at: Location,
    ) -> Vec<Endpoint> {
        const CONTEXT: &str = "[endpoints] addresses";
        let mut seen: Vec<(Endpoint, String)> = Vec::new();
        for (e, text) in from_presets {
            if !seen
                .iter()
                .any(|(s, _)| s.addr == e.addr && s.port == e.port)
            {
                seen.push((e, text));
            }
        }
        for item in items {
            let at = self.node_at(item, list_at);
            let Value::String(text) = &item.value else {
                self.report(
                    at,
                    format!(
                        "{CONTEXT}: expected an IP address string, found {}",
                        item.value.describe()
                    ),
                );
                continue;
            };
            let (addr, port) = match address::parse_endpoint(text) {
                Ok(parsed) => parsed,
                Err(why) => {
                    self.report(at, format!("{CONTEXT}: {why}"));
                    continue;
                }
            };
            if let Some((first, first_text)) = seen
                .iter()
                .find(|(e, _)| e.addr == addr && self.workload.contains(&addr))
            {
                self.report(
                    at,
                    format!(
                        "{CONTEXT}: {text:?}: {} is a workload endpoint ({first_text}), kept open to \
                         the workloads it serves; its ports are the preset's, leave it out or the \
                         preset",
                        first.addr
                    ),
                );
                continue;
            }
            if let Some((first, first_text)) = seen.iter().find(|(e, _)| clashes(e, addr, port)) {
                let message = clash_message(first, first_text, port, text);
                self.report(at, format!("{CONTEXT}: {message}"));
                continue;
            }
            if port.is_some() && seen.iter().filter(|(e, _)| e.addr == addr).count() >= MAX_PORTS {
                self.report(
                    at,
                    format!("{CONTEXT}: {text:?}: more than {MAX_PORTS} ports of {addr}"),
                );
                continue;
            }
            seen.push((
                Endpoint {
                    addr,
                    port,
                    at: Some(at),
                },
                text.clone(),
            ));
        }
        let mut addrs: Vec<_> = seen.iter().map(|(e, _)| e.addr).collect();
        addrs.sort();
        addrs.dedup();
        let max = MAX_ENDPOINTS as usize;
        // More than the maps hold with the presets' (the list alone is
        // reported where it passes the limit).
        if addrs.len() > max && items.len() <= max {
            self.report(
                list_at,
                format!(
                    "[endpoints]: {} addresses with the presets', expected at most {max}",
                    addrs.len()
                ),
            );
        }
        seen.into_iter().map(|(e, _)| e).collect()
    }

    /// Reads a table of rules (`[allow]`, `[allow.host]`, `[deny]`) whose
    /// entries all get its action and scope, onto `entries`. `[allow]` may
    /// hold a `host` table: entries that allow a caller on the host only.
    fn rules(&mut self, table: &Table, key: &Key, node: &Node, entries: &mut Vec<Entry>) -> Rules {
        let Table {
            name,
            action,
            scope,
            other_keys,
        } = *table;
        let Some((items, at)) = self.table(name, key, node) else {
            return Rules {
                written: 1,
                at: self.key_at(key, START),
            };
        };
        let nests_host = action == Action::Allow && scope == Scope::Anywhere && name == "allow";
        let mut written: usize = items
            .iter()
            .filter(|(key, _)| !(nests_host && key.name == HOST_KEY))
            .filter(|(key, _)| !other_keys.contains(&key.name.as_str()))
            .map(|(_, node)| match &node.value {
                Value::Array(values) => values.len(),
                _ => 1,
            })
            .sum();
        let mut valid: Vec<&str> = IDENTITY_KEYS.iter().map(|k| k.key).collect();
        if nests_host {
            valid.push(HOST_KEY);
        }
        valid.extend_from_slice(other_keys);
        let fields = self.fields(items, &valid, &format!("in [{name}]"), at);
        for kind in &IDENTITY_KEYS {
            let Some(&(key, list)) = fields.get(kind.key) else {
                continue;
            };
            let context = format!("[{name}] {}", kind.key);
            let list_at = self.node_at(list, self.key_at(key, at));
            if let Some(why) = refused(name, action, scope, kind) {
                self.report(self.key_at(key, at), why);
                continue;
            }
            let Value::Array(values) = &list.value else {
                self.report(
                    list_at,
                    format!(
                        "{context}: expected an array of {}, found {}",
                        kind.syntax.plural(),
                        list.value.describe()
                    ),
                );
                continue;
            };
            entries.reserve(values.len());
            for value in values {
                let at = self.node_at(value, list_at);
                match kind.syntax.parse(&context, &value.value) {
                    Ok(identity) => entries.push(Entry {
                        action,
                        identity,
                        at,
                        scope,
                    }),
                    Err(message) => self.report(at, message),
                }
            }
        }
        if let Some(&(key, node)) = fields.get(HOST_KEY).filter(|_| nests_host) {
            let host = Table {
                name: "allow.host",
                action,
                scope: Scope::Host,
                other_keys: &[],
            };
            written += self.rules(&host, key, node, entries).written;
        }
        Rules { written, at }
    }

    /// Reports the entry at which the cgroup patterns (a unit or a cgroup
    /// is one, a pod [`PATTERNS_PER_POD`]) outgrow what the kernel holds.
    fn cgroup_patterns(&mut self, entries: &[Entry]) {
        let max = MAX_CGROUP_PATTERNS as usize;
        let mut count = 0;
        for entry in entries {
            count += match entry.identity {
                Identity::Unit(_) | Identity::Cgroup(_) => 1,
                Identity::Pod(_) => PATTERNS_PER_POD,
                _ => continue,
            };
            if count > max {
                self.report(
                    entry.at,
                    format!(
                        "too many cgroup patterns: {} here makes {count}, and the kernel holds \
                         at most {max} per policy (a unit or a cgroup is one, a pod \
                         {PATTERNS_PER_POD}); use globs (/system.slice/app-*.service) or ** to \
                         name several at once",
                        entry.identity
                    ),
                );
                return;
            }
        }
    }

    /// Reports an identity listed twice in one table, or in both.
    fn cross_check(&mut self, entries: &[Entry]) {
        // Allow entries first, each table in file order, so a duplicate is
        // reported at the later of the two and a contradiction at the
        // [deny] one wherever the tables are (`Action` orders Allow first).
        let mut order: Vec<&Entry> = entries.iter().collect();
        order.sort_by_key(|e| (e.action, e.at));
        // Uids (and gids) listed in increasing order, as a long list
        // usually is, cannot repeat: only the others need the table.
        for numbered in [
            (|e: &Entry| match e.identity {
                Identity::Uid(id) => Some(id),
                _ => None,
            }) as fn(&Entry) -> Option<u32>,
            |e: &Entry| match e.identity {
                Identity::Gid(id) => Some(id),
                _ => None,
            },
        ] {
            let mut ids = order.iter().filter_map(|e| numbered(e));
            if ids.clone().is_sorted_by(|a, b| a < b) && ids.next().is_some() {
                order.retain(|e| numbered(e).is_none());
            }
        }
        // Policies list up to 2 × 131,072 identities and are written by the
        // operator, not by an attacker: a fast hash rather than SipHash.
        let mut first: FxHashMap<&Identity, &Entry> =
            FxHashMap::with_capacity_and_hasher(order.len(), Default::default());
        for entry in order {
            let earlier = match first.entry(&entry.identity) {
                hash_map::Entry::Vacant(slot) => {
                    slot.insert(entry);
                    continue;
                }
                hash_map::Entry::Occupied(slot) => *slot.get(),
            };
            let here = self.request_table(entry.at).map(str::to_owned);
            let there = self.request_table(earlier.at).map(str::to_owned);
            let message = if here.is_some() || there.is_some() {
                let table = |e: &Entry, t: Option<String>| {
                    t.map_or(e.table().to_owned(), |t| format!("[{t}]"))
                };
                format!(
                    "{} is in {} here and in {} at {}: an identity may be in one of [allow], \
                     [allow.host], [requests.*] and [deny] only",
                    entry.identity,
                    table(entry, here),
                    table(earlier, there),
                    earlier.at.in_words()
                )
            } else if earlier.action == entry.action {
                format!(
                    "duplicate rule: {} is already {} at {}",
                    entry.identity,
                    earlier.done(),
                    earlier.at.in_words()
                )
            } else {
                format!(
                    "contradictory rules: {} is {} here and {} at {}",
                    entry.identity,
                    entry.action.done(),
                    earlier.action.done(),
                    earlier.at.in_words()
                )
            };
            self.report(entry.at, message);
        }
    }
}

/// The presets `name` stands for in `[endpoints] presets`, each with what
/// the policy says of it: the preset so named, or for `auto` the host
/// preset DMI shows (EC2's when none) and the workload presets of its
/// cloud the host shows it runs, each with why. Empty for an unknown name.
fn picked<'a>(all: &'a [presets::Preset], name: &str) -> Vec<(&'a presets::Preset, String)> {
    if name != "auto" {
        return all
            .iter()
            .filter(|p| p.name == name)
            .map(|p| (p, p.name.clone()))
            .collect();
    }
    let dmi = presets::Dmi::read(&presets::Dmi::root(), all);
    let Some((host, why)) = presets::auto(all, &dmi) else {
        return Vec::new();
    };
    let mut picked = vec![(host, format!("{} (auto: {why})", host.name))];
    for (w, why) in presets::shown(all, &host.cloud, &presets::host_root()) {
        picked.push((w, format!("{} (auto: {why})", w.name)));
    }
    picked
}

/// Why identity key `kind` cannot be written in the table of `action` and
/// `scope`, if it cannot: the one place that says which keys each table
/// takes (the checker and [`every_key`] both ask it).
fn refused(table: &str, action: Action, scope: Scope, kind: &IdentityKey) -> Option<String> {
    if action == Action::Deny && kind.key == "pods" {
        return Some(NO_POD_DENY.to_owned());
    }
    if scope == Scope::Host && matches!(kind.syntax, Syntax::Text { .. }) {
        let instead = if table == "allow.host" {
            "list them in [allow]".to_owned()
        } else {
            format!("remove `host = true` from [{table}]")
        };
        return Some(format!(
            "[{table}] {}: units, cgroups and pods cannot be limited to the host (the guard \
             does not tell a cgroup's processes apart by namespace); {instead}",
            kind.key
        ));
    }
    None
}

/// Every key a policy may hold, as a dotted path (`mode`,
/// `endpoints.addresses`, `allow.host.uids`, `forward.allow_sources`):
/// the policy reference, derived from the tables the checker reads, so
/// that a key added there is a key here (the digest's tests hold every
/// one of them to a change of the digest).
#[cfg(test)]
pub(super) fn every_key() -> Vec<String> {
    let rules = |table: &str, action: Action, scope: Scope| -> Vec<String> {
        IDENTITY_KEYS
            .iter()
            .filter(|kind| refused(table, action, scope, kind).is_none())
            .map(|kind| format!("{table}.{}", kind.key))
            .collect()
    };
    let mut keys = Vec::new();
    for &top in TOP_KEYS {
        match top {
            "endpoints" => keys.extend(ENDPOINT_KEYS.iter().map(|k| format!("{top}.{k}"))),
            "forward" => keys.extend(forward::FORWARD_KEYS.iter().map(|k| format!("{top}.{k}"))),
            "allow" => {
                keys.extend(rules(top, Action::Allow, Scope::Anywhere));
                keys.extend(rules(
                    &format!("{top}.{HOST_KEY}"),
                    Action::Allow,
                    Scope::Host,
                ));
            }
            "deny" => keys.extend(rules(top, Action::Deny, Scope::Anywhere)),
            // A rule set named `r` stands for every name.
            "requests" => {
                keys.extend(rules("requests.r", Action::Allow, Scope::Anywhere));
                keys.extend(requests::SET_KEYS.iter().map(|k| format!("requests.r.{k}")));
            }
            "imdsv2" => keys.extend(requests::IMDSV2_KEYS.iter().map(|k| format!("{top}.{k}"))),
            "attribution" => {
                keys.extend(
                    requests::ATTRIBUTION_KEYS
                        .iter()
                        .map(|k| format!("{top}.{k}")),
                );
            }
            // A value at the top level (`mode`), or a table this list does
            // not know yet: named as it is, so that it is not forgotten.
            other => keys.push(other.to_owned()),
        }
    }
    keys
}

impl Syntax {
    /// What an array of these holds, for type errors.
    fn plural(&self) -> String {
        match self {
            Self::Name { noun, .. } => format!("{noun} names"),
            Self::Id { noun, .. } => format!("{noun}s"),
            Self::Text { plural, .. } => (*plural).to_owned(),
        }
    }

    fn parse(&self, context: &str, value: &Value) -> Result<Identity, String> {
        match *self {
            Self::Name {
                noun,
                numbers_in,
                make,
            } => name(context, noun, numbers_in, value).map(make),
            Self::Id {
                noun,
                names_in,
                make,
            } => id(context, noun, names_in, value).map(make),
            Self::Text {
                plural,
                check,
                make,
            } => match value {
                Value::String(text) => match check(text) {
                    Ok(()) => Ok(make(text.clone())),
                    Err(why) => Err(format!("{context}: {why}")),
                },
                other => Err(format!(
                    "{context}: expected one of the {plural} as a string, found {}",
                    other.describe()
                )),
            },
        }
    }
}

/// A user or group name as NSS could hold it.
fn name(context: &str, noun: &str, numbers_in: &str, value: &Value) -> Result<String, String> {
    let name = match value {
        Value::String(name) => name,
        Value::Integer(n) => {
            return Err(format!(
                "{context}: expected a {noun} name string, found integer {n}; \
                 put numeric ids in {numbers_in}"
            ));
        }
        other => {
            return Err(format!(
                "{context}: expected a {noun} name string, found {}",
                other.describe()
            ));
        }
    };
    // getpwnam(3) would look an all-digit string up as a name, which is
    // almost never what was meant; ids have their own key.
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{context}: {name:?} is a number, not a {noun} name; put numeric ids in {numbers_in}"
        ));
    }
    // The fields of /etc/passwd and /etc/group are ':'-separated lines, and
    // the lookup takes a C string: no such name can exist.
    let problem = if name.is_empty() {
        "it is empty"
    } else if name.contains('\0') {
        "it contains a NUL character"
    } else if name.chars().any(char::is_whitespace) {
        "it contains whitespace"
    } else if name.contains(':') {
        "it contains ':'"
    } else {
        return Ok(name.clone());
    };
    Err(format!(
        "{context}: {name:?} is not a valid {noun} name: {problem}"
    ))
}

/// A uid or gid.
fn id(context: &str, noun: &str, names_in: &str, value: &Value) -> Result<u32, String> {
    match value {
        Value::Integer(n) => match u32::try_from(*n) {
            Ok(id) if id <= MAX_ID => Ok(id),
            Ok(_) => Err(format!(
                "{context}: {n} is ({noun}_t)-1, not a valid {noun}; expected 0 to {MAX_ID}"
            )),
            Err(_) => Err(format!(
                "{context}: {n} is not a valid {noun}, expected 0 to {MAX_ID}"
            )),
        },
        Value::String(s) if s.parse::<u32>().is_ok() => Err(format!(
            "{context}: expected an integer {noun}, found string {s:?}; write it without quotes"
        )),
        Value::String(s) => Err(format!(
            "{context}: expected an integer {noun}, found string {s:?}; put names in {names_in}"
        )),
        other => Err(format!(
            "{context}: expected an integer {noun}, found {}",
            other.describe()
        )),
    }
}

/// Where a key that is unknown here belongs, if it is known elsewhere: the
/// usual slip is `mode = ".."` written below a table header, which TOML
/// puts into that table.
fn belongs(key: &str) -> Option<&'static str> {
    if key == "mode" {
        Some("at the top level, above the first table header")
    } else if key == HOST_KEY {
        Some("in [allow] only ([allow.host]): a deny applies wherever the process runs")
    } else if ENDPOINT_KEYS.contains(&key) {
        Some("in [endpoints]")
    } else if IDENTITY_KEYS.iter().any(|k| k.key == key) {
        Some("in [allow] or [deny]")
    } else {
        None
    }
}

/// The valid key `key` is most likely a typo of, if any.
fn closest<'v>(key: &str, valid: &[&'v str]) -> Option<&'v str> {
    let key = key.to_lowercase();
    // A third of the length: "user" → "users", "adresses" → "addresses",
    // but not "uid" → "gids".
    let limit = (key.chars().count() / 3).max(1);
    valid
        .iter()
        .map(|&candidate| (edit_distance(&key, candidate), candidate))
        .filter(|&(distance, _)| distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance in characters, counting a swap of two neighbours as one
/// edit ("mdoe" → "mode"): optimal string alignment.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between the first i chars of a and the first j of b.
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitute = d[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitute.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Whether an entry for `port` of `addr` clashes with `e`: the same
/// address bare twice, bare beside ports, or one port twice for a
/// protocol.
fn clashes(e: &Endpoint, addr: IpAddr, port: Option<Port>) -> bool {
    e.addr == addr
        && match (e.port, port) {
            (Some(a), Some(b)) => {
                a.number == b.number
                    && (a.protocol.covers(b.protocol) || b.protocol.covers(a.protocol))
            }
            _ => true,
        }
}

/// Why `text` (protecting `port` of an address) cannot be listed beside
/// `first`, written as `first_text`.
fn clash_message(first: &Endpoint, first_text: &str, port: Option<Port>, text: &str) -> String {
    let first_at = first.at.map_or_else(String::new, |a| a.in_words());
    let why = match (first.port, port) {
        (None, None) => format!("duplicate address {text:?}, already listed as"),
        (None, Some(_)) => {
            format!("{text:?} names a port of an address protected on every port by")
        }
        (Some(_), None) => {
            format!("{text:?} protects every port of an address whose ports are listed, as")
        }
        (Some(_), Some(_)) => format!("duplicate port {text:?}, already listed as"),
    };
    format!("{why} {first_text:?} at {first_at}")
}

#[cfg(test)]
mod tests;
