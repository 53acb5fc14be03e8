//! Making a fresh link usable at once, and waiting until it is: without
//! this the first IPv6 packets of a test wait a second for a neighbour
//! solicitation to be retried, longer than an attempt's settle time.

use std::{
    fs,
    net::Ipv6Addr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::netns::{try_in_netns_at, write_sysctl_at};

/// How long a link may take to become usable.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Duplicate address detection off, and no random delay (up to
/// `router_solicitation_delay`, 1 s) before an address joins its
/// solicited-node group, for interfaces made in the namespace from now on:
/// until it has joined, neighbour solicitations for it are dropped.
pub(super) fn no_dad(netns: &Path) -> Result<(), String> {
    for conf in ["all", "default"] {
        write_sysctl_at(netns, &format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
        write_sysctl_at(
            netns,
            &format!("net/ipv6/conf/{conf}/router_solicitation_delay"),
            "0",
        )?;
    }
    write_sysctl_at(netns, "net/ipv6/conf/default/disable_ipv6", "0")
}

/// Waits until `dev` in the namespace at `netns` is operationally up, has
/// no tentative IPv6 address, and `addr` has joined its solicited-node
/// group (`/proc/thread-self/net/igmp6`).
///
/// A veth's carrier is on as soon as both ends are up, but its operational
/// state follows through linkwatch, which may hold the event for up to a
/// second: it is not "urgent" when the device's ifindex equals its peer's
/// (`eth0` and `up0` are both 2 in their namespaces). Until then IPv6
/// keeps the addresses tentative and drops solicitations for them.
pub(super) fn wait_until_up(netns: &Path, dev: &str, addr: Ipv6Addr) -> Result<(), String> {
    let o = addr.octets();
    let group = format!(
        "ff0200000000000000000001ff{:02x}{:02x}{:02x}",
        o[13], o[14], o[15]
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        // Not /sys/class/net: sysfs shows the namespace it was mounted in,
        // not the reading thread's.
        let link = ip_output(netns, &["-o", "link", "show", "dev", dev])?;
        let tentative = ip_output(
            netns,
            &["-6", "-o", "addr", "show", "dev", dev, "tentative"],
        )?;
        // thread-self: /proc/net is /proc/self/net, the main thread's
        // namespace, not this thread's.
        let groups = try_in_netns_at(netns, || fs::read_to_string("/proc/thread-self/net/igmp6"))?
            .map_err(|e| format!("reading /proc/thread-self/net/igmp6: {e}"))?;
        let joined = groups
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(dev) && l.contains(&group));
        if link.contains(" state UP ") && tentative.trim().is_empty() && joined {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{dev} in {} is not ready after {READY_TIMEOUT:?}: {link:?}, tentative \
                 {tentative:?}, {addr} joined its group: {joined}",
                netns.display()
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `ip ARGS` in the namespace at `netns`, its standard output.
fn ip_output(netns: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
