//! `imds-guard render`: the policy as firewall rules, printed.

use super::{CliError, Outcome, RenderArgs, out::out};
use crate::{
    policy::{
        PolicySpec,
        cgroups::units::{self, SystemSystemd, Systemd as _},
    },
    render::{Format, UnitPath, default_unit_path, render_all_with},
};

/// Why `--iptables --ip6tables --format file` is refused, and the fix.
/// Two restore files in one stream half-load: `iptables-restore` commits
/// the IPv4 section, then refuses the IPv6 addresses of the next. A file
/// both tools load (rules marked `-4` or `-6`) is refused by Debian 11's
/// iptables-nft 1.8.7 when the mark comes first, and is a rule without
/// its destination when it comes after the command: one file per family
/// is what every iptables loads, and what iptables-persistent and RHEL's
/// iptables-services keep anyway.
const ONE_FILE_PER_FAMILY: &str = "--iptables --ip6tables --format file would write two \
     restore files into one stream, which iptables-restore loads half of (the IPv4 part, then it \
     refuses the IPv6 addresses): render each family into its own file and load it with its own \
     tool:
  imds-guard render --iptables --format file > imds-guard.v4 && iptables-restore --noflush < imds-guard.v4
  imds-guard render --ip6tables --format file > imds-guard.v6 && ip6tables-restore --noflush < imds-guard.v6
(each warns that the other family's addresses are left out, which the other file holds; \
--iptables --ip6tables --strict, in the default commands format, checks both at once)";

pub fn execute(args: &RenderArgs) -> Result<Outcome, CliError> {
    if args.format == Format::File && args.iptables && args.ip6tables {
        return Err(CliError::Usage(ONE_FILE_PER_FAMILY.to_owned()));
    }
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
