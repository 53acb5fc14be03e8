//! `imds-guard suggest`: the refusals of a period (an audit phase) as the
//! policy that would let their callers through (`learn/`). The proposals,
//! what each saw and what it admits go to stderr; the policy (or, with
//! `--against`, the change to a policy file as a diff) to stdout, so that
//! `suggest > policy.toml` keeps only the policy.

use std::{
    io::{self, Write as _},
    path::Path,
};

use super::{CliError, Outcome, SuggestArgs, records};
use crate::{
    learn::{
        LearnError, Records, Suggestion, SystemDirectory, ask, merge, suggest,
        suggest::{Form, Proposal},
        time::format_rfc3339,
        write::policy_text,
    },
    policy::{Mode, PolicySpec},
};

pub fn execute(args: &SuggestArgs) -> Result<Outcome, CliError> {
    let stdin = args.records.from.as_deref() == Some(Path::new("-"));
    if args.interactive && stdin {
        return Err(CliError::Usage(
            "--interactive reads its answers from stdin: read the records with --from FILE"
                .to_owned(),
        ));
    }
    let since = records::since(&args.records)?;
    let found = records::read(&args.records, since)?;
    let s = suggest(&found, &SystemDirectory);
    let header = header(&found, &s);
    let mut err = io::stderr().lock();
    // What goes to stderr is for the operator; failing to write it changes
    // nothing of the result.
    // Asked one by one, the proposals are shown then.
    let _ = write!(
        err,
        "{}{}",
        describe(&s, &header, !args.interactive),
        uncounted(&found)
    );
    if s.proposals.is_empty() {
        let _ = writeln!(err, "nothing to propose: no refusal in the records");
        return Ok(Outcome::Success);
    }
    let chosen = if args.interactive {
        ask::ask(&s.proposals, &mut io::stdin().lock(), &mut err).map_err(CliError::runtime)?
    } else {
        vec![Some(0); s.proposals.len()]
    };
    let forms: Vec<&Form> = s
        .proposals
        .iter()
        .zip(&chosen)
        .filter_map(|(p, c)| c.and_then(|i| p.forms.get(i)))
        .collect();
    if forms.is_empty() {
        let _ = writeln!(err, "every proposal was refused: no policy");
        return Ok(Outcome::Success);
    }
    let mode = if args.audit {
        Mode::Audit
    } else {
        Mode::Enforce
    };
    match &args.against {
        None => {
            let text = policy_text(&forms, mode, &header, &s.extra_endpoints);
            PolicySpec::parse(Path::new("suggested policy"), &text)
                .map_err(|e| CliError::runtime(LearnError::Invalid(e)))?;
            records::print(&text)?;
        }
        Some(path) => against(path, &forms, &mut err)?,
    }
    Ok(Outcome::Success)
}

/// `Learned by … from N refusals between A and B.`
fn header(found: &Records, s: &Suggestion) -> String {
    let refusals: u64 = s.proposals.iter().map(|p| p.seen.total()).sum();
    let suppressed: u64 = s.proposals.iter().map(|p| p.seen.suppressed).sum();
    let when = match (found.first, found.last) {
        (Some(first), Some(last)) => {
            format!(", {} to {}", format_rfc3339(first), format_rfc3339(last))
        }
        _ => String::new(),
    };
    format!(
        "Learned by imds-guard suggest from {refusals} refusals ({suppressed} of them suppressed \
         in the log){when}."
    )
}

/// Every proposal, its forms and what each admits; what was left out.
fn describe(s: &Suggestion, header: &str, proposals: bool) -> String {
    let mut out = format!("{header}\n");
    for (i, p) in s.proposals.iter().enumerate().filter(|_| proposals) {
        out.push_str(&proposal(i + 1, p));
    }
    for left in &s.left {
        out.push_str(&format!(
            "\nleft out: {}: {}\n  {}\n",
            crate::text::printable(&left.who.to_string()),
            left.seen.summary(),
            left.why
        ));
    }
    out
}

/// What the records say happened but cannot attribute to a caller.
fn uncounted(found: &Records) -> String {
    let mut out = String::new();
    if found.overflow > 0 {
        out.push_str(&format!(
            "\nnote: {} records were suppressed past the tracked callers ({}), and are in no \
             count above\n",
            found.overflow,
            found.overflow_callers.join("; ")
        ));
    }
    if found.lost > 0 {
        out.push_str(&format!(
            "\nnote: the kernel lost {} decisions (a full ring buffer): callers may be missing \
             above\n",
            found.lost
        ));
    }
    if found.skipped > 0 {
        out.push_str(&format!(
            "\nnote: skipped {} lines that were not JSON records\n",
            found.skipped
        ));
    }
    out
}

fn proposal(n: usize, p: &Proposal) -> String {
    let mut out = format!("\n{n}. {}: {}\n", p.who, p.seen.summary());
    for (i, form) in p.forms.iter().enumerate() {
        let lines: Vec<String> = form.lines.iter().map(ToString::to_string).collect();
        let label = if i == 0 { "proposed" } else { "or wider" };
        out.push_str(&format!("   {label}: {}\n", lines.join("; ")));
        out.push_str(&format!("     admits {}\n", form.admits));
    }
    out
}

/// The change to the policy at `path`, as a diff on stdout.
fn against(path: &Path, forms: &[&Form], err: &mut dyn io::Write) -> Result<(), CliError> {
    let original = std::fs::read_to_string(path).map_err(|source| {
        CliError::Policy(crate::policy::PolicyError::Read {
            path: path.to_owned(),
            source,
        })
    })?;
    let merged = merge::merge(&original, path, forms, &crate::policy::SystemResolver).map_err(
        |e| match e {
            LearnError::Against(e) => CliError::Policy(e),
            other => CliError::runtime(other),
        },
    )?;
    for line in &merged.present {
        let _ = writeln!(err, "{}: already admits {line}", path.display());
    }
    for (line, why) in &merged.conflicts {
        let _ = writeln!(err, "{}: left to you: {line}: {why}", path.display());
    }
    if merged.added.is_empty() {
        let _ = writeln!(err, "{}: nothing to add", path.display());
        return Ok(());
    }
    records::print(&merge::unified_diff(path, &original, &merged.text))
}
