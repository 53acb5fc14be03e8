//! `imds-guard render`: the policy as firewall rules, printed.

use super::{CliError, Outcome, RenderArgs};
use crate::{policy::PolicySpec, render::render_all};

pub fn execute(args: &RenderArgs) -> Result<Outcome, CliError> {
    let spec = PolicySpec::load(&super::policy_file(args.config.as_deref()))?;
    let rendered = render_all(&spec, &args.targets(), args.format);
    print!("{}", rendered.text);
    for warning in &rendered.warnings {
        eprintln!("warning: {warning}");
    }
    if args.strict && !rendered.warnings.is_empty() {
        eprintln!(
            "imds-guard: --strict: {} warning(s); the rules do not say everything the policy says",
            rendered.warnings.len()
        );
        return Ok(Outcome::StrictWarnings);
    }
    Ok(Outcome::Success)
}
