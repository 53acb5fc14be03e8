//! Project tasks cargo alone cannot do: install the eBPF toolchain, run the
//! privileged tests (also under other kernels, in a QEMU guest), run the
//! demo, build the packages, run the benchmark.
//!
//! `xtask` depends on nothing of the project, so that it builds on a bare
//! machine before the eBPF toolchain exists.

mod arch;
mod dist;
mod image;
mod manifests;
mod process;
mod setup;
mod sweep;
mod tasks;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "imds-guard project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and tests need (Debian packages, bpf-linker,
    /// the `bpf-debian` toolchain link) unless it is there already.
    Setup,
    /// Set up, build, and run every test: unit tests, then the privileged
    /// end-to-end tests one at a time (as root).
    Test {
        /// Extra arguments for the privileged test run (e.g. a test name).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and show the guard at work in a sandbox: its own
    /// network namespace with a fake IMDS, its own child cgroup.
    Demo,
    /// Build the release binary for one CPU (for glibc 2.28 and newer), then
    /// target/dist/imds-guard_VERSION-1_ARCH.deb and
    /// target/dist/imds-guard-VERSION-1.ARCH.rpm.
    Dist {
        /// Then check them: both packages' contents and metadata, and the
        /// binary's CPU, libraries, embedded eBPF object and glibc symbol
        /// versions. For this machine's CPU the .deb is also installed here
        /// (as root, not booted with systemd), checked and purged, then
        /// installed and run under systemd in a systemd-nspawn boot of this
        /// system; for another CPU the packaged binary runs under qemu.
        #[arg(long)]
        check: bool,
        /// The CPU to build for (default: this machine's).
        #[arg(long, value_enum)]
        arch: Option<arch::Arch>,
        /// Also build the end-to-end tests, the agent and the probe for that
        /// CPU (debug, same route) into target/dist/ARCH/e2e/, to run on a
        /// machine of that CPU.
        #[arg(long)]
        e2e: bool,
    },
    /// Build the agent's container image for this machine's CPU (the
    /// release binary, nft and their libraries, from scratch: no registry
    /// pull) into the local podman store and as
    /// target/image/imds-guard-VERSION-ARCH.oci.tar.
    Image,
    /// Check the Kubernetes manifests in deploy/kubernetes/ against the API's
    /// schemas (kubernetes-validate from PyPI, installed under
    /// ~/.local/share/imds-guard) and the image they name.
    Manifests,
    /// Set up, build in release mode, and measure what the guard costs beside
    /// the iptables and nftables rules `render` emits; rewrites
    /// docs/BENCHMARKS.md. As root.
    Bench {
        /// Arguments for the benchmark (`--help` lists them; `--quick` for a
        /// short smoke run).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the privileged end-to-end tests under Debian
    /// bookworm's 6.1 or 6.12 cloud kernel or bullseye's 5.10 in a QEMU
    /// guest (x86_64 or aarch64), one suite at a time; reports every test.
    /// As root.
    VmTest(vm::VmTestArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup().map(drop),
        Command::Test { args } => tasks::test(&args),
        Command::Demo => tasks::demo(),
        Command::Dist { check, arch, e2e } => dist::dist_for(check, arch, e2e),
        Command::Image => image::image().map(drop),
        Command::Manifests => manifests::check(),
        Command::Bench { args } => tasks::bench(&args),
        Command::VmTest(args) => vm::vm_test(&args),
    }
}
