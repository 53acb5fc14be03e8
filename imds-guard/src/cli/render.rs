//! `imds-guard render`: the policy as firewall rules, printed.

use super::{CliError, Outcome, RenderArgs, out::out};
use crate::{
    policy::{
        PolicySpec,
        cgroups::units::{self, SystemSystemd, Systemd as _},
    },
    render::{UnitPath, default_unit_path, render_all_with},
};

pub fn execute(args: &RenderArgs) -> Result<Outcome, CliError> {
    let spec = PolicySpec::load(&super::policy_file(args.config.as_deref()))?;
    let rendered = render_all_with(&spec, &args.targets(), args.format, &unit_path);
    out!("{}", rendered.text)?;
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

/// Where `unit`'s cgroup is: as this host's systemd says, or where systemd
/// would put it when it does not run here.
fn unit_path(unit: &str) -> UnitPath {
    if !SystemSystemd.running() {
        return default_unit_path(unit);
    }
    match units::cgroup_of(unit, &SystemSystemd) {
        Ok(Some(path)) => UnitPath::Known(path),
        Ok(None) => UnitPath::Unknown(format!("systemd knows no unit {unit:?} on this host")),
        Err(why) => UnitPath::Unknown(why),
    }
}
