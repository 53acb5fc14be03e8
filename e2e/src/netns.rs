//! A throwaway network namespace in which the metadata addresses are local.
//!
//! On the test machine 169.254.169.254 may be a real service of the hosting
//! infrastructure, so nothing in the harness ever sends to a metadata address
//! from the host namespace. Instead each test makes a namespace, puts both
//! metadata addresses on its loopback and runs [`FakeImds`](crate::FakeImds)
//! there; probes join it before they open a socket.

use std::{
    fs::{self, File},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use nix::sched::{CloneFlags, setns};

use crate::{
    IMDS_V4, IMDS_V6,
    util::{cleanup_failed, run, unique_name},
};

/// Where `ip netns add` bind-mounts the namespaces it names.
const NETNS_DIR: &str = "/var/run/netns";

/// `net.ipv4.tcp_fastopen` inside test namespaces: client (0x1), server (0x2),
/// data in the SYN without a cookie on either side (0x4, 0x200) and on every
/// listener without `TCP_FASTOPEN` (0x400). With it a single TFO probe really
/// carries its request in the SYN, so a guard that forgot the sendmsg path of
/// connect would let data reach the server. The sysctl is per namespace, so
/// the host's setting is untouched (see Documentation/networking/ip-sysctl.rst).
const TCP_FASTOPEN: &str = "0x607";

/// A named network namespace (`igt-<pid>-<n>`), deleted on drop.
///
/// Its loopback is up and carries 127.0.0.1, ::1, 169.254.169.254/32 and
/// fd00:ec2::254/128, so every destination a test uses is local to it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates and configures a namespace, panicking with the reason if it
    /// cannot.
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("creating a network namespace: {e}"))
    }

    /// Like [`Netns::new`], but returns why it failed (used by the privilege
    /// check, which must not panic outside CI).
    pub fn try_new() -> Result<Self, String> {
        let netns = Self::try_bare()?;
        netns.configure()?;
        Ok(netns)
    }

    /// A namespace with only its loopback up (127.0.0.1 and ::1) and IPv6
    /// enabled: no metadata address is local to it, so traffic to one is
    /// routed like on a real host. The routers of a
    /// [`Topology`](crate::Topology) are made of these.
    pub fn bare() -> Self {
        Self::try_bare().unwrap_or_else(|e| panic!("creating a network namespace: {e}"))
    }

    fn try_bare() -> Result<Self, String> {
        let name = unique_name("igt");
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on the guard exists, so a failure below still deletes it.
        let netns = Netns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        };
        netns.write_sysctl("net/ipv6/conf/lo/disable_ipv6", "0")?;
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    fn configure(&self) -> Result<(), String> {
        // IPv6 may be disabled by default for new namespaces
        // (net.ipv6.conf.default.disable_ipv6 with devconf_inherit_init_net);
        // ::1 and fd00:ec2::254 need it on lo. Set before lo comes up.
        self.write_sysctl("net/ipv4/tcp_fastopen", TCP_FASTOPEN)?;
        self.ip(&["addr", "add", &format!("{IMDS_V4}/32"), "dev", "lo"])?;
        // nodad: duplicate address detection would leave the address
        // "tentative" (unbindable) for a second or so.
        self.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{IMDS_V6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        // Binding a UDP socket proves each address is assigned and usable
        // without sending anything.
        self.try_in_netns(|| {
            for ip in [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V4(IMDS_V4),
                IpAddr::V6(IMDS_V6),
            ] {
                UdpSocket::bind(SocketAddr::new(ip, 0))
                    .map_err(|e| format!("{ip} is not usable in the namespace: {e}"))?;
            }
            Ok(())
        })?
    }

    /// Runs `ip ARGS` inside the namespace through `nsenter --net`, which only
    /// calls setns (`ip -n`/`ip netns exec` also remount /sys).
    pub(crate) fn ip(&self, args: &[&str]) -> Result<(), String> {
        ip_at(&self.path, args)
    }

    /// Writes `/proc/sys/<key>` as seen from inside the namespace: the net
    /// sysctls resolve against the writing thread's namespace.
    pub(crate) fn write_sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        write_sysctl_at(&self.path, key, value)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`, what `setns` and `nsenter --net=` take.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns
    /// its result. Sockets made by `f` stay in the namespace for their whole
    /// life, whichever thread uses them later.
    ///
    /// A thread is used because `setns(CLONE_NEWNET)` changes only the calling
    /// thread, and the test's own thread must stay in the host namespace.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.try_in_netns(f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Netns::in_netns`] that reports a failed setns instead of panicking.
    fn try_in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        try_in_netns_at(&self.path, f)
    }
}

/// Runs `ip ARGS` inside the namespace at `path` (a bind mount, or
/// `/proc/PID/ns/net`) through `nsenter --net`, which only calls setns
/// (`ip -n`/`ip netns exec` also remount /sys).
pub(crate) fn ip_at(path: &Path, args: &[&str]) -> Result<(), String> {
    run(Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .arg("ip")
        .args(args))
}

/// Writes `/proc/sys/<key>` as seen from inside the namespace at `path`:
/// the net sysctls resolve against the writing thread's namespace.
pub(crate) fn write_sysctl_at(path: &Path, key: &str, value: &str) -> Result<(), String> {
    let file = Path::new("/proc/sys").join(key);
    try_in_netns_at(path, || {
        fs::write(&file, value).map_err(|e| format!("writing {}: {e}", file.display()))
    })?
}

/// [`Netns::in_netns`] for the namespace at `path`.
pub(crate) fn try_in_netns_at<T: Send>(
    path: &Path,
    f: impl FnOnce() -> T + Send,
) -> Result<T, String> {
    thread::scope(|s| {
        let handle = s.spawn(|| {
            let ns = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns into {}: {e}", path.display()))?;
            Ok(f())
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Sockets still open in the namespace keep it alive after this, but
        // the name and bind mount go, which is what can leak.
        if let Err(e) = run(Command::new("ip").args(["netns", "delete", &self.name])) {
            cleanup_failed(&format!("deleting network namespace {}: {e}", self.name));
        } else if self.path.exists() {
            cleanup_failed(&format!(
                "{} still exists after delete",
                self.path.display()
            ));
        }
    }
}
