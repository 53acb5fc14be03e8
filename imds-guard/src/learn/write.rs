//! Chosen forms to a policy file: `[allow]` and `[allow.host]` with one
//! value per line and, beside each, the records it lets through, so that
//! a reviewer sees why every entry is there.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use super::suggest::{Form, Item, Key, Line, Table};
use crate::policy::{DEFAULT_ADDRESSES, Mode};

/// The entries of `forms`, by table and key, each value once.
pub fn entries<'a>(forms: &[&'a Form]) -> BTreeMap<(Table, Key), Vec<&'a Line>> {
    let mut out: BTreeMap<(Table, Key), Vec<&Line>> = BTreeMap::new();
    for line in forms.iter().flat_map(|f| &f.lines) {
        let values = out.entry((line.table, line.key)).or_default();
        if !values.iter().any(|l| l.item == line.item) {
            values.push(line);
        }
    }
    out
}

/// `key = [` … `]`, a value per line with its comment.
pub fn array(key: Key, lines: &[&Line], indent: &str) -> String {
    let mut text = format!("{} = [\n", key.as_str());
    for line in lines {
        let _ = writeln!(text, "{indent}    {},  # {}", line.item, line.comment);
    }
    text.push_str(indent);
    text.push(']');
    text
}

/// The policy `forms` make, in `mode`; `header` is its first comment
/// (one line), `extra_endpoints` the refused destinations beyond the
/// default endpoints.
pub fn policy_text(
    forms: &[&Form],
    mode: Mode,
    header: &str,
    extra_endpoints: &[IpAddr],
) -> String {
    let mut text = format!(
        "# {header}\n# Check it (imds-guard validate --config FILE), then put it in force.\nmode = \
         \"{}\"\n",
        mode.as_str()
    );
    if !extra_endpoints.is_empty() {
        let addresses: Vec<String> = DEFAULT_ADDRESSES
            .iter()
            .map(|a| (*a).to_owned())
            .chain(extra_endpoints.iter().map(IpAddr::to_string))
            .map(|a| Item::Name(a).to_string())
            .collect();
        let _ = write!(
            text,
            "\n# The records name destinations beyond the default endpoints.\n[endpoints]\naddresses \
             = [{}]\n",
            addresses.join(", ")
        );
    }
    let mut table = None;
    for ((t, key), lines) in entries(forms) {
        if table != Some(t) {
            let _ = write!(text, "\n{t}\n");
            table = Some(t);
        }
        text.push_str(&array(key, &lines, ""));
        text.push('\n');
    }
    text
}
