//! Records to the answer to "how many denials, by whom, for what": counts
//! by verdict, and by identity (`origin.rs`'s, with the user's name),
//! hook and destination, each counting what the rate limiter suppressed
//! (a summary counts where the record it follows does; one that stands
//! alone has no hook: `unknown`). Text for a person, JSON for a script.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{Value, json};

use super::{
    origin::{Who, who},
    records::{Decision, Records},
    time::{Micros, format_rfc3339},
};
use crate::policy::Outcome;

/// Records by verdict; `suppressed` is the part of them the rate limiter
/// held back (counted in the verdicts too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub deny: u64,
    pub audit: u64,
    pub allow: u64,
    pub suppressed: u64,
}

impl Counts {
    fn add(&mut self, d: &Decision) {
        match d.outcome {
            Some(Outcome::Deny) => self.deny += d.count(),
            Some(Outcome::Audit) => self.audit += d.count(),
            Some(Outcome::Allow) => self.allow += d.count(),
            None => {}
        }
        self.suppressed += d.suppressed;
    }

    fn json(&self) -> Value {
        json!({
            "deny": self.deny,
            "audit": self.audit,
            "allow": self.allow,
            "suppressed": self.suppressed,
        })
    }
}

/// The report of a period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub since: Option<Micros>,
    pub first: Option<Micros>,
    pub last: Option<Micros>,
    pub total: Counts,
    /// Rows, the most refused first.
    pub by_identity: Vec<(String, Counts)>,
    pub by_hook: Vec<(String, Counts)>,
    pub by_destination: Vec<(String, Counts)>,
    pub lost: u64,
    pub overflow: u64,
    pub overflow_callers: Vec<String>,
    pub skipped: u64,
}

/// `uid 1000 (alice)`, `unit app.service`, …: whom a row is about.
fn identity(d: &Decision) -> String {
    let named = |uid: u32| match &d.user {
        Some(name) => format!("uid {uid} ({})", crate::text::printable(name)),
        None => format!("uid {uid}"),
    };
    match who(d) {
        Who::Uid(uid) => match d.userns_owner {
            Some(owner) => format!("{} in the user namespaces of uid {owner}", named(uid)),
            None => named(uid),
        },
        other => crate::text::printable(&other.to_string()),
    }
}

fn rows(map: BTreeMap<String, Counts>) -> Vec<(String, Counts)> {
    let mut rows: Vec<(String, Counts)> = map.into_iter().collect();
    rows.sort_by(|a, b| {
        let refused = |c: &Counts| c.deny + c.audit;
        refused(&b.1)
            .cmp(&refused(&a.1))
            .then(b.1.allow.cmp(&a.1.allow))
            .then(a.0.cmp(&b.0))
    });
    rows
}

/// Counts the decisions of `records`, read since `since`.
pub fn report(records: &Records, since: Option<Micros>) -> Report {
    let (mut total, mut ids, mut hooks, mut dsts) = (
        Counts::default(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    for d in &records.decisions {
        total.add(d);
        ids.entry(identity(d))
            .or_insert_with(Counts::default)
            .add(d);
        let hook = d.hook.as_deref().unwrap_or("unknown");
        hooks
            .entry(crate::text::printable(hook))
            .or_insert_with(Counts::default)
            .add(d);
        dsts.entry(d.destination())
            .or_insert_with(Counts::default)
            .add(d);
    }
    Report {
        since,
        first: records.first,
        last: records.last,
        total,
        by_identity: rows(ids),
        by_hook: rows(hooks),
        by_destination: rows(dsts),
        lost: records.lost,
        overflow: records.overflow,
        overflow_callers: records.overflow_callers.clone(),
        skipped: records.skipped,
    }
}

impl Report {
    /// For a person: totals, then a table per dimension.
    pub fn text(&self) -> String {
        let when = |t: Option<Micros>| t.map_or_else(|| "-".to_owned(), format_rfc3339);
        let mut out = match self.since {
            Some(since) => format!("records since {}", format_rfc3339(since)),
            None => "every record".to_owned(),
        };
        let _ = writeln!(
            out,
            " (first {}, last {})",
            when(self.first),
            when(self.last)
        );
        let t = &self.total;
        let _ = writeln!(
            out,
            "{} denied, {} audited (would be denied), {} allowed (logged only at debug level); {} \
             of them suppressed by the rate limiter",
            t.deny, t.audit, t.allow, t.suppressed
        );
        if self.overflow > 0 {
            let _ = writeln!(
                out,
                "{} more suppressed past the tracked callers ({})",
                self.overflow,
                self.overflow_callers.join("; ")
            );
        }
        if self.lost > 0 {
            let _ = writeln!(
                out,
                "{} decisions lost (the kernel's ring buffer was full)",
                self.lost
            );
        }
        if self.skipped > 0 {
            let _ = writeln!(
                out,
                "{} lines were not JSON records and were skipped",
                self.skipped
            );
        }
        for (title, rows) in [
            ("by identity", &self.by_identity),
            ("by hook", &self.by_hook),
            ("by destination", &self.by_destination),
        ] {
            out.push('\n');
            out.push_str(&table(title, rows));
        }
        out
    }

    /// For a script: the same, with every count.
    pub fn json(&self) -> Value {
        let rows = |rows: &[(String, Counts)], name: &str| {
            rows.iter()
                .map(|(key, c)| {
                    let mut row = c.json();
                    row[name] = Value::String(key.clone());
                    row
                })
                .collect::<Vec<_>>()
        };
        json!({
            "since": self.since.map(format_rfc3339),
            "first": self.first.map(format_rfc3339),
            "last": self.last.map(format_rfc3339),
            "total": self.total.json(),
            "by_identity": rows(&self.by_identity, "identity"),
            "by_hook": rows(&self.by_hook, "hook"),
            "by_destination": rows(&self.by_destination, "destination"),
            "lost": self.lost,
            "overflow": self.overflow,
            "overflow_callers": self.overflow_callers,
            "skipped_lines": self.skipped,
        })
    }
}

/// A title line, then `name  deny  audit  allow  suppressed` columns.
fn table(title: &str, rows: &[(String, Counts)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        .max(title.len());
    let mut out = format!(
        "{title:<width$}  {:>8}  {:>8}  {:>8}  {:>10}\n",
        "deny", "audit", "allow", "suppressed"
    );
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for (key, c) in rows {
        let _ = writeln!(
            out,
            "{key:<width$}  {:>8}  {:>8}  {:>8}  {:>10}",
            c.deny, c.audit, c.allow, c.suppressed
        );
    }
    out
}
