//! `imds-guard report`: how many denials, by whom, for what, from the
//! agent's records (`learn/report.rs`).

use super::{CliError, Outcome, ReportArgs, records};
use crate::learn::report::report;

pub fn execute(args: &ReportArgs) -> Result<Outcome, CliError> {
    let since = records::since(&args.records)?;
    let found = records::read(&args.records, since)?;
    let r = report(&found, since);
    let text = if args.json {
        format!("{}\n", r.json())
    } else {
        r.text()
    };
    records::print(&text)?;
    Ok(Outcome::Success)
}
