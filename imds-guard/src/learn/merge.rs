//! `suggest --against FILE`: the proposals as a change to a policy file,
//! written into its own text so that its comments and layout stay: a new
//! value goes after the last value of its key (one per line, with its
//! comment), a new key below its table's header, a new table at the end.
//! The result is validated before it is shown, as a unified diff; an
//! identity the file already admits (in the same table, or in `[allow]`
//! when `[allow.host]` is proposed) is left out, and one it denies or
//! keeps to the host while `[allow]` is proposed is left to the operator.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use super::{
    LearnError,
    suggest::{Form, Item, Key, Line, Table},
    write::entries,
};
use crate::policy::{Action, Entry, Identity, Location, PolicySpec, Resolver, Scope};

/// The change, and what was left out of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// The new text of the file.
    pub text: String,
    pub added: Vec<Line>,
    /// Already admitted by the file.
    pub present: Vec<Line>,
    /// Denied, or kept to the host, by the file: for the operator.
    pub conflicts: Vec<(Line, String)>,
}

fn identity(key: Key, item: &Item) -> Option<Identity> {
    Some(match (key, item) {
        (Key::Users, Item::Name(n)) => Identity::User(n.clone()),
        (Key::Uids, Item::Id(n)) => Identity::Uid(*n),
        (Key::Groups, Item::Name(n)) => Identity::Group(n.clone()),
        (Key::Gids, Item::Id(n)) => Identity::Gid(*n),
        (Key::Units, Item::Name(n)) => Identity::Unit(n.clone()),
        (Key::Cgroups, Item::Name(n)) => Identity::Cgroup(n.clone()),
        (Key::Pods, Item::Name(n)) => Identity::Pod(n.clone()),
        _ => return None,
    })
}

fn table_of(entry: &Entry) -> Option<Table> {
    match (entry.action, entry.scope) {
        (Action::Allow, Scope::Anywhere) => Some(Table::Allow),
        (Action::Allow, Scope::Host) => Some(Table::AllowHost),
        (Action::Deny, _) => None,
    }
}

/// What the file says of `line`'s identity already.
enum Standing {
    New,
    Present,
    Conflict(String),
}

/// The id a user or group entry names, through `resolver` for a name.
fn id_of(identity: &Identity, resolver: &dyn Resolver) -> Option<(bool, u32)> {
    match identity {
        Identity::Uid(id) => Some((true, *id)),
        Identity::Gid(id) => Some((false, *id)),
        Identity::User(name) => resolver.user_id(name).ok().flatten().map(|id| (true, id)),
        Identity::Group(name) => resolver.group_id(name).ok().flatten().map(|id| (false, id)),
        _ => None,
    }
}

/// Whether two entries name the same caller: the same identity, or a
/// name and the number it resolves to (`users = ["root"]`, `uids = [0]`).
fn same(a: &Identity, b: &Identity, resolver: &dyn Resolver) -> bool {
    a == b || id_of(a, resolver).is_some_and(|id| id_of(b, resolver) == Some(id))
}

fn standing(spec: &PolicySpec, line: &Line, resolver: &dyn Resolver) -> Standing {
    let Some(wanted) = identity(line.key, &line.item) else {
        return Standing::New;
    };
    let Some(entry) = spec
        .entries
        .iter()
        .find(|e| same(&e.identity, &wanted, resolver))
    else {
        return Standing::New;
    };
    match (table_of(entry), line.table) {
        (Some(t), wanted_table) if t == wanted_table => Standing::Present,
        (Some(Table::Allow), Table::AllowHost) => Standing::Present,
        (Some(_), _) => Standing::Conflict(format!(
            "{} is in [allow.host] at line {}: move it to [allow] to admit it in containers too",
            entry.identity, entry.at.line
        )),
        (None, _) => Standing::Conflict(format!(
            "{} is denied at line {}",
            entry.identity, entry.at.line
        )),
    }
}

/// `forms` as a change to the policy `original`, read from `path`;
/// `resolver` tells a name and its number for the same caller.
pub fn merge(
    original: &str,
    path: &Path,
    forms: &[&Form],
    resolver: &dyn Resolver,
) -> Result<Merged, LearnError> {
    let spec = PolicySpec::parse(path, original).map_err(LearnError::Against)?;
    let mut out = Merged::default();
    let mut new: BTreeMap<(Table, Key), Vec<&Line>> = BTreeMap::new();
    for ((table, key), lines) in entries(forms) {
        for line in lines {
            match standing(&spec, line, resolver) {
                Standing::New => {
                    new.entry((table, key)).or_default().push(line);
                    out.added.push(line.clone());
                }
                Standing::Present => out.present.push(line.clone()),
                Standing::Conflict(why) => out.conflicts.push((line.clone(), why)),
            }
        }
    }
    let edits = plan(original, &spec, &new);
    let mut text = original.to_owned();
    for (offset, insert) in edits.into_iter().rev() {
        text.insert_str(offset, &insert);
    }
    if let Err(source) = PolicySpec::parse(path, &text) {
        let by_hand: Vec<String> = out.added.iter().map(ToString::to_string).collect();
        return Err(LearnError::Merge {
            path: path.to_owned(),
            entries: by_hand.join("\n"),
            source,
        });
    }
    out.text = text;
    Ok(out)
}

/// Insertions into `text`, by byte offset (in order).
fn plan(
    text: &str,
    spec: &PolicySpec,
    new: &BTreeMap<(Table, Key), Vec<&Line>>,
) -> BTreeMap<usize, String> {
    let mut edits: BTreeMap<usize, String> = BTreeMap::new();
    let mut appended = String::new();
    let mut tables: BTreeMap<Table, Vec<(Key, &[&Line])>> = BTreeMap::new();
    for (&(table, key), lines) in new {
        let last = spec
            .entries
            .iter()
            .filter(|e| table_of(e) == Some(table) && same_key(key, &e.identity))
            .max_by_key(|e| e.at);
        match last.and_then(|e| after_value(text, e.at)) {
            Some((offset, comma)) => {
                let mut insert = if comma { String::new() } else { ",".to_owned() };
                for line in lines {
                    let _ = write!(insert, "\n    {},  # {}", line.item, line.comment);
                }
                insert.push('\n');
                edits.entry(offset).or_default().push_str(&insert);
            }
            None => tables.entry(table).or_default().push((key, lines)),
        }
    }
    for (table, keys) in tables {
        let arrays: String = keys
            .iter()
            .map(|(key, lines)| format!("{}\n", super::write::array(*key, lines, "")))
            .collect();
        match header_end(text, table) {
            Some(offset) => {
                let lead = if text[..offset].ends_with('\n') {
                    ""
                } else {
                    "\n"
                };
                edits
                    .entry(offset)
                    .or_default()
                    .push_str(&format!("{lead}{arrays}"));
            }
            None => {
                let _ = write!(appended, "\n{table}\n{arrays}");
            }
        }
    }
    if !appended.is_empty() {
        let lead = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        edits
            .entry(text.len())
            .or_default()
            .push_str(&format!("{lead}{appended}"));
    }
    edits
}

fn same_key(key: Key, identity: &Identity) -> bool {
    matches!(
        (key, identity),
        (Key::Users, Identity::User(_))
            | (Key::Uids, Identity::Uid(_))
            | (Key::Groups, Identity::Group(_))
            | (Key::Gids, Identity::Gid(_))
            | (Key::Units, Identity::Unit(_))
            | (Key::Cgroups, Identity::Cgroup(_))
            | (Key::Pods, Identity::Pod(_))
    )
}

/// The byte offset of `at` (1-based line, column in characters).
fn offset_of(text: &str, at: Location) -> Option<usize> {
    let line_start = if at.line <= 1 {
        0
    } else {
        text.match_indices('\n').nth(at.line as usize - 2)?.0 + 1
    };
    let line = &text[line_start..];
    let col = line.char_indices().nth(at.col.checked_sub(1)? as usize)?.0;
    Some(line_start + col)
}

/// Just after the value written at `at` (and after a comma following
/// it, which is then said).
fn after_value(text: &str, at: Location) -> Option<(usize, bool)> {
    let start = offset_of(text, at)?;
    let rest = &text[start..];
    let len = match rest.chars().next()? {
        '"' => closing(rest, '"', true)?,
        '\'' => closing(rest, '\'', false)?,
        _ => rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_+-".contains(c)))
            .unwrap_or(rest.len()),
    };
    let end = start + len;
    let after = &text[end..];
    let spaces = after.len() - after.trim_start_matches([' ', '\t']).len();
    if after[spaces..].starts_with(',') {
        Some((end + spaces + 1, true))
    } else {
        Some((end, false))
    }
}

/// The length of a one-line string that opens `rest`, quotes included.
fn closing(rest: &str, quote: char, escapes: bool) -> Option<usize> {
    let mut chars = rest.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if escapes => {
                chars.next();
            }
            '\n' => return None,
            c if c == quote => return Some(i + c.len_utf8()),
            _ => {}
        }
    }
    None
}

/// Just after the line of `table`'s header (`[allow]`, `[allow.host]`).
fn header_end(text: &str, table: Table) -> Option<usize> {
    let wanted = match table {
        Table::Allow => "allow",
        Table::AllowHost => "allow.host",
    };
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code = line.split('#').next().unwrap_or("").trim();
        let header = code
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .filter(|h| !h.starts_with('['))
            .map(|h| h.split('.').map(str::trim).collect::<Vec<_>>().join("."));
        offset += line.len();
        if header.as_deref() == Some(wanted) {
            return Some(offset);
        }
    }
    None
}

/// A unified diff of `old` to `new` (`path` in its headers), three lines
/// of context; the whole new text when the files are too long to compare
/// line by line (a table of every pair of lines).
pub fn unified_diff(path: &Path, old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let name = path.display();
    let mut out = format!("--- {name}\n+++ {name} (suggested)\n");
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        out.push_str(new);
        return out;
    }
    let ops = line_ops(&a, &b);
    let changed: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].0 != ' ').collect();
    let mut i = 0;
    while i < changed.len() {
        let start = changed[i].saturating_sub(3);
        let mut end = (changed[i] + 4).min(ops.len());
        while i + 1 < changed.len() && changed[i + 1] < end + 3 {
            i += 1;
            end = (changed[i] + 4).min(ops.len());
        }
        let hunk = &ops[start..end];
        let old_start = ops[..start].iter().filter(|o| o.0 != '+').count() + 1;
        let new_start = ops[..start].iter().filter(|o| o.0 != '-').count() + 1;
        let _ = writeln!(
            out,
            "@@ -{old_start},{} +{new_start},{} @@",
            hunk.iter().filter(|o| o.0 != '+').count(),
            hunk.iter().filter(|o| o.0 != '-').count()
        );
        for (op, line) in hunk {
            let _ = writeln!(out, "{op}{line}");
        }
        i += 1;
    }
    out
}

/// The lines of `a` and `b` as kept (' '), removed ('-') or added ('+'),
/// by their longest common subsequence.
fn line_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(char, &'a str)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut ops) = (0, 0, Vec::with_capacity(n + m));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as diff(1) writes a change.
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    ops
}
