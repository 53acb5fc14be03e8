//! `imds-guard validate`: a policy checked without touching the kernel.

use super::{CliError, Outcome, ValidateArgs};
use crate::policy::{PolicySpec, SystemResolver, hex};

pub fn execute(args: &ValidateArgs) -> Result<Outcome, CliError> {
    let spec = PolicySpec::load(&args.config)?;
    let (entries, endpoints) = (spec.entries.len(), spec.endpoints.len());
    if args.offline {
        // Without the names' ids there is no digest: it covers the ids.
        println!(
            "{}: valid ({entries} {}, {endpoints} {}, names not resolved)",
            args.config.display(),
            plural(entries, "entry", "entries"),
            plural(endpoints, "endpoint", "endpoints"),
        );
        return Ok(Outcome::Success);
    }
    let policy = spec.resolve(&SystemResolver)?;
    println!(
        "{}: valid ({entries} {}, {endpoints} {}); sha256 {} (what `imds-guard status` shows \
         once it is in force)",
        args.config.display(),
        plural(entries, "entry", "entries"),
        plural(endpoints, "endpoint", "endpoints"),
        hex(&policy.digest()),
    );
    Ok(Outcome::Success)
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
