//! `imds-guard validate`: a policy checked without touching the kernel.

use super::{CliError, Outcome, ValidateArgs};
use crate::policy::{PolicySpec, SystemResolver};

pub fn execute(args: &ValidateArgs) -> Result<Outcome, CliError> {
    let spec = PolicySpec::load(&args.config)?;
    let spec = if args.offline {
        spec
    } else {
        spec.resolve(&SystemResolver)?.spec
    };
    println!(
        "{}: valid ({} entries, {} endpoints{})",
        args.config.display(),
        spec.entries.len(),
        spec.endpoints.len(),
        if args.offline {
            ", names not resolved"
        } else {
            ""
        }
    );
    Ok(Outcome::Success)
}
