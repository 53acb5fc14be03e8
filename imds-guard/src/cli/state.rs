//! One line saying what is in force: the mode and the policy file, the
//! FALLBACK policy and why, or that nothing is. `status --short` prints
//! it; the packages print it after an install or an upgrade, and `reload`
//! after the agent's answer, so that nobody reads "enforcing" where the
//! fallback, an audit or nothing is in force.

use std::path::Path;

use crate::{
    daemon::fallback,
    kernel::inspect::Status,
    policy::{Mode, PolicySpec, SystemResolver, hex},
};

/// What is in force by `status`, said of the policy file `config` (the
/// one the agent reads).
pub fn line(status: &Status, config: &Path) -> String {
    let file = file_digest(config);
    line_with(status, config, file)
}

/// [`line`], given the file's digest as the agent would put it in force,
/// or its first problem.
fn line_with(status: &Status, config: &Path, file: Result<String, String>) -> String {
    let Some((_, c)) = status.config.filter(|_| !status.links.is_empty()) else {
        return format!(
            "imds-guard: nothing is in force: no guard is pinned at {}",
            status.pin_dir.display()
        );
    };
    if !status.enforcing() {
        let first = super::status::to_text(status);
        let first = first.lines().next().unwrap_or_default();
        return format!("{first}: imds-guard status says more");
    }
    let mode = status.mode().unwrap_or_default();
    let digest = hex(&c.digest);
    let config = config.display();
    if status.in_fallback() {
        let which = if c.digest == fallback::builtin().digest() {
            "the built-in one: root on the host only"
        } else {
            "the --fallback file"
        };
        let why = match file {
            Err(problem) => format!("the policy file does not validate: {problem}"),
            Ok(_) => format!("{config} did not validate when the agent started, and does now"),
        };
        return format!(
            "imds-guard: FALLBACK policy in force ({which}, {mode} mode): {why}; fix it if need \
             be, then: systemctl reload imds-guard"
        );
    }
    let (doing, audit) = match mode {
        Mode::Enforce => ("enforcing", ""),
        Mode::Audit => (
            "auditing",
            "; audit mode: nothing is refused, would-be denials are logged",
        ),
    };
    let what = match file {
        Ok(d) if d == digest => format!("{config} (sha256 {}{audit})", short(&digest)),
        Ok(d) => format!(
            "a policy (sha256 {}{audit}) that is not {config}'s (sha256 {}): systemctl reload \
             imds-guard puts the file in force",
            short(&digest),
            short(&d)
        ),
        Err(problem) => format!(
            "the policy last put in force (sha256 {}{audit}), not the file: {problem}",
            short(&digest)
        ),
    };
    let left_out = if status.names_left_out() {
        "; some [allow] names do not resolve yet and are left out (the agent retries them)"
    } else {
        ""
    };
    format!("imds-guard: {doing} {what}{left_out}")
}

/// The digest of `config` as the agent puts it in force (`[allow]` names
/// that do not resolve left out), or its first problem.
fn file_digest(config: &Path) -> Result<String, String> {
    PolicySpec::load(config)
        .and_then(|spec| spec.resolve_available(&SystemResolver))
        .map(|(policy, _)| hex(&policy.digest()))
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().to_owned();
            match text.lines().count() {
                0 | 1 => first,
                n => format!("{first} (and {} more: imds-guard validate)", n - 1),
            }
        })
}

/// The first 12 hex digits: enough to tell digests apart in one line.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use imds_guard_common::{Config, config_flags, mode};

    use super::*;
    use crate::kernel::forward::status::ForwardStatus;

    const FILE: &str = "/etc/imds-guard/policy.toml";

    /// A guard attached with every hook and the forward path held, whose
    /// config has `mode`, `digest` and `flags`.
    fn guarded(mode: u32, digest: [u8; 32], flags: u32) -> Status {
        Status::guarded_for_test(
            0,
            Config {
                mode,
                digest,
                flags,
                ..Config::default()
            },
        )
    }

    fn said(status: &Status, file: Result<&str, &str>) -> String {
        let file = file.map(str::to_owned).map_err(str::to_owned);
        line_with(status, Path::new(FILE), file)
    }

    #[test]
    fn the_policy_file_in_force_is_named_with_the_mode() {
        let digest = [0xab; 32];
        let hex = hex(&digest);
        let enforcing = said(&guarded(mode::ENFORCE, digest, 0), Ok(&hex));
        assert_eq!(
            enforcing,
            format!("imds-guard: enforcing {FILE} (sha256 abababababab)")
        );
        let auditing = said(&guarded(mode::AUDIT, digest, 0), Ok(&hex));
        assert_eq!(
            auditing,
            format!(
                "imds-guard: auditing {FILE} (sha256 abababababab; audit mode: nothing is \
                 refused, would-be denials are logged)"
            )
        );
        assert!(!auditing.contains("enforcing"), "{auditing}");
        let other = said(&guarded(mode::ENFORCE, digest, 0), Ok("cd"));
        assert!(other.contains("that is not"), "{other}");
    }

    #[test]
    fn the_fallback_says_so_and_why() {
        let builtin = fallback::builtin().digest();
        let status = guarded(mode::ENFORCE, builtin, config_flags::FALLBACK);
        let line = said(
            &status,
            Err("/etc/imds-guard/policy.toml:2:10: user \"x\" does not exist"),
        );
        assert!(
            line.starts_with(
                "imds-guard: FALLBACK policy in force (the built-in one: root on the host only, \
                 enforce mode): the policy file does not validate: /etc/imds-guard/policy.toml:2:10:"
            ),
            "{line}"
        );
        assert!(!line.contains("enforcing"), "{line}");
    }

    #[test]
    fn nothing_in_force_is_said() {
        let mut status = guarded(mode::ENFORCE, [0; 32], 0);
        status.links.clear();
        status.config = None;
        assert_eq!(
            said(&status, Ok("")),
            "imds-guard: nothing is in force: no guard is pinned at /sys/fs/bpf/imds-guard"
        );
        let mut open = guarded(mode::ENFORCE, [0; 32], 0);
        open.forward = Ok(ForwardStatus::held_by_nftables_for_test(None));
        assert!(
            said(&open, Ok("")).starts_with("imds-guard: NOT enforcing"),
            "{}",
            said(&open, Ok(""))
        );
    }
}
