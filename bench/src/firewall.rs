//! The firewall side of the comparison: the rules `imds-guard render` emits
//! for the same policy, loaded with the real tools into a bench namespace.
//!
//! Every command runs in the bench namespace through [`nsexec`]: the host's
//! firewall is never read or written, and deleting the namespace drops
//! whatever was loaded.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, ensure};
use imds_guard_e2e::{Netns, imds_guard_bin};

use super::nsexec::run as nsenter;

/// Which iptables: Debian's default `iptables` is the nf_tables backend
/// (iptables-nft); `iptables-legacy` is the x_tables one that older
/// distributions (Amazon Linux 2) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xt {
    Nft,
    Legacy,
}

impl Xt {
    pub fn tool(self) -> &'static str {
        match self {
            Self::Nft => "iptables",
            Self::Legacy => "iptables-legacy",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::Nft => "iptables-restore",
            Self::Legacy => "iptables-legacy-restore",
        }
    }

    /// Rendered text names `iptables`; the legacy tool has another name.
    fn adapt(self, text: &str) -> String {
        match self {
            Self::Nft => text.to_owned(),
            Self::Legacy => text.replace("iptables --", "iptables-legacy --"),
        }
    }
}

/// `imds-guard render --config POLICY --TARGET --format FORMAT`.
pub fn render(policy: &Path, target: &str, format: &str) -> anyhow::Result<String> {
    let bin = imds_guard_bin();
    let out = Command::new(&bin)
        .arg("render")
        .arg("--config")
        .arg(policy)
        .arg(format!("--{target}"))
        .args(["--format", format])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} render", bin.display()))?;
    ensure!(
        out.status.success(),
        "imds-guard render --{target} --format {format} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Loads a `--format file` iptables rendering: `iptables-restore --noflush`,
/// then the OUTPUT hook command the file's header gives.
pub fn load_iptables_file(netns: &Netns, xt: Xt, text: &str) -> anyhow::Result<()> {
    nsenter(netns, xt.restore(), &["--noflush"], Some(text))?;
    const HOOK: &str = "Then hook the chain into OUTPUT, once: ";
    let hook = text
        .lines()
        .find_map(|l| l.split_once(HOOK).map(|(_, cmd)| cmd))
        .context("the rendered file names no OUTPUT hook command")?;
    nsenter(netns, "sh", &["-c", &xt.adapt(hook)], None)?;
    Ok(())
}

/// Runs a `--format commands` iptables rendering (for a one-identity
/// policy, AWS's own lines) through `sh -e`.
pub fn load_iptables_commands(netns: &Netns, xt: Xt, text: &str) -> anyhow::Result<()> {
    nsenter(netns, "sh", &["-e"], Some(&xt.adapt(text)))?;
    Ok(())
}

/// `nft -f` of a `--format file` nftables rendering.
pub fn load_nft(netns: &Netns, text: &str) -> anyhow::Result<()> {
    nsenter(netns, "nft", &["-f", "-"], Some(text))?;
    Ok(())
}

/// The rules now in the namespace's filter table, as `-A` lines of
/// `iptables-save`, or the number of elements plus rules nft lists.
pub fn iptables_rules(netns: &Netns, xt: Xt) -> anyhow::Result<usize> {
    let save = match xt {
        Xt::Nft => "iptables-save",
        Xt::Legacy => "iptables-legacy-save",
    };
    let out = nsenter(netns, save, &[], None)?;
    Ok(out.lines().filter(|l| l.starts_with("-A ")).count())
}

/// Whether `iptables-legacy` works here (the x_tables modules may be
/// missing from the kernel); tried in `netns`.
pub fn legacy_available(netns: &Netns) -> bool {
    nsenter(netns, "iptables-legacy", &["-S", "OUTPUT"], None).is_ok()
}

/// The first line of `TOOL -V` (or `--version`), for the report.
pub fn version(tool: &str, arg: &str) -> String {
    Command::new(tool)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unavailable".to_owned())
}
