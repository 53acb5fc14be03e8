//! `cargo xtask vm-test`: the privileged end-to-end suites under another
//! kernel (Debian bookworm's 6.1 or 6.12 cloud kernel, or Debian
//! bullseye's generic 5.10; amd64 or arm64), booted in a QEMU guest.
//!
//! The guest runs from an initramfs and nothing else, built here from
//! Debian packages: `busybox-static`, `iproute2`, `util-linux`, `nftables`,
//! `iptables`, `kmod`, `libcap2-bin`, `bash`, `base-passwd`, `uidmap`,
//! `runc` and their dependencies, resolved and downloaded by a private apt
//! for the guest's architecture (`apt.rs`) and unpacked with `dpkg-deb
//! -x`; the kernel's own modules (`kernel.rs`); the checkout's agent,
//! probe, helpers and test binaries, stripped of debug information; and,
//! for the kubernetes suite on this machine's CPU, the container image of
//! `cargo xtask image`. A shell script of ours is its `/init` (`init.sh`): it mounts
//! what the tests need, runs each suite with `--test-threads=1` and
//! `CI=true`, and streams libtest's JSON events over a virtio serial port
//! into a file the host parses per test (`results.rs`).
//!
//! Why not virtme-ng or a shared host root: the host's root only fits a
//! guest of the host's architecture; the cloud kernels (those of Debian's
//! cloud images) have no 9p, so sharing needs virtio-fs and a `virtiofsd`
//! compiled from crates.io; and virtme-ng mounts tmpfs over `/var/cache`
//! and friends, loses the guest's exit status, and comes from PyPI. The
//! initramfs needs nothing but apt, `dpkg-deb`, `depmod`, `objcopy` and
//! QEMU, boots any kernel with initramfs support, is the same for both
//! architectures, and no host binfmt handler is ever involved: nothing of
//! the guest's architecture runs on the host.
//!
//! KVM is used only where the CPU advertises `vmx` or `svm`, `/dev/kvm`
//! opens, and the guest then reaches its `/init` (a nested hypervisor may
//! offer `/dev/kvm` and still fail to run a stock kernel); otherwise QEMU
//! emulates (TCG), about 100 times slower, and the tests' time limits and
//! load floors are scaled by `IMDS_GUARD_TEST_SLOWDOWN` (see
//! `e2e/src/slowdown.rs`).
//!
//! Everything downloaded or unpacked is cached under `target/vm/`; each
//! run leaves its `console.log` and `results.log` in
//! `target/vm/runs/<arch>-<kernel>/`.
//!
//! A guest of another architecture than this machine's runs binaries
//! cross-built for it by the route of `cargo xtask dist --arch ARCH --e2e`
//! (cargo-zigbuild, Debian's std for that CPU through the `bpf-debian`
//! toolchain, both installed when first needed), left where cargo built
//! them: `cargo xtask vm-test --arch aarch64` builds and boots in one
//! command. `--bins DIR` runs binaries built elsewhere instead; DIR must be
//! the profile directory they were built in, not a copy, because the tests
//! name the probe by its build path (see `bins.rs`).

mod apt;
mod bins;
mod cpio;
mod guest;
mod kernel;
mod qemu;
mod results;
mod root;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use self::{
    apt::{Apt, Suite},
    kernel::KernelSpec,
    qemu::{Accel, Outcome},
};
use crate::{
    arch::Arch,
    process::{fresh_dir, target_dir},
    setup,
};

/// `cargo xtask vm-test`'s options.
#[derive(Args, Debug)]
pub struct VmTestArgs {
    /// The guest's kernel: `6.1` or `6.12` (Debian bookworm's cloud kernel
    /// of that series, newest ABI), `5.10` (Debian bullseye's generic
    /// kernel, newest ABI), or the path of a `linux-image-*.deb`.
    #[arg(long, default_value = "6.1")]
    kernel: KernelSpec,
    /// The guest's architecture.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    arch: Arch,
    /// Run the binaries in this cargo profile directory (e.g.
    /// `target/aarch64-unknown-linux-gnu/debug`: `imds-guard`, `imds-probe`,
    /// the other binaries of `e2e/src/bin/`, and the suites in `deps/`)
    /// instead of building this checkout's (cross-building it for another
    /// architecture). The directory they were built in, not a copy: the
    /// tests name the probe by its build path.
    #[arg(long, value_name = "DIR")]
    bins: Option<PathBuf>,
    /// Run only this suite (a file of `e2e/tests/`, without `.rs`); may be
    /// repeated. Default: every suite.
    #[arg(long = "suite", value_name = "NAME")]
    suites: Vec<String>,
    /// Leave this suite out (of every suite, or of those `--suite` names);
    /// may be repeated.
    #[arg(long = "skip-suite", value_name = "NAME")]
    skip_suites: Vec<String>,
    /// Boot the guest without a cgroup2 mount, with cgroup v1 hierarchies
    /// only, as Amazon Linux 2 boots; runs only the `cgroup_v1` suite
    /// unless --suite says otherwise (the others need cgroup2).
    #[arg(long)]
    no_cgroup2: bool,
    /// The build of the programs every agent in the guest loads
    /// (`IMDS_GUARD_PROGRAMS` in the suites' environment): `unrolled` on
    /// a kernel with `bpf_loop` runs what a 5.10 host runs. Default: the
    /// one the kernel's features choose.
    #[arg(long, value_enum, value_name = "BUILD")]
    programs: Option<Programs>,
    /// How QEMU runs the guest: `auto` takes KVM where it works, else TCG.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// `IMDS_GUARD_TEST_SLOWDOWN` in the guest. Default: 1 under KVM,
    /// 10 under TCG.
    #[arg(long, value_name = "N")]
    slowdown: Option<u32>,
    /// Stop the guest after it ran this many minutes (its results so far
    /// are reported, and the run fails).
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    timeout: u64,
    /// Arguments for every suite's libtest, e.g. a test-name filter.
    #[arg(last = true, value_name = "TEST-FILTER")]
    filter: Vec<String>,
}

/// A build of the programs (`imds-guard/src/kernel/features.rs`, `Build`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Programs {
    #[value(name = "bpf_loop")]
    BpfLoop,
    Unrolled,
}

impl Programs {
    /// The value of `IMDS_GUARD_PROGRAMS` that asks for it.
    pub fn env(self) -> &'static str {
        match self {
            Programs::BpfLoop => "bpf_loop",
            Programs::Unrolled => "unrolled",
        }
    }
}

/// The suite that runs in the guest booted with --no-cgroup2.
const NO_CGROUP2_SUITE: &str = "cgroup_v1";

/// Whether `suite` runs when no --suite is named: the suite about hosts
/// without cgroup2 in that guest only, the others, which need cgroup2, in
/// the ordinary one.
fn runs_by_default(suite: &str, no_cgroup2: bool) -> bool {
    (suite == NO_CGROUP2_SUITE) == no_cgroup2
}

/// TCG runs the guest about 100 times slower than native, but the time the
/// tests wait is mostly spent outside the guest's CPU-bound work; 10 was
/// enough for every limit and floor in a 6.1 and a 6.12 guest.
const TCG_SLOWDOWN: u32 = 10;

pub fn vm_test(args: &VmTestArgs) -> Result<()> {
    let started = Instant::now();
    setup::setup()?;
    setup::vm_tools(args.arch)?;
    let vm_dir = target_dir().join("vm");

    let mut payload = match source(args.bins.as_deref(), args.arch, Arch::host().ok()) {
        Source::Dir(dir) => bins::from_dir(dir, &args.suites)?,
        Source::Build => bins::build(&args.suites)?,
        Source::CrossBuild => bins::cross_build(args.arch, &args.suites)?,
    };
    if args.suites.is_empty() {
        payload
            .suites
            .retain(|s| runs_by_default(&s.name, args.no_cgroup2));
    }
    payload.skip(&args.skip_suites)?;
    payload.check_arch(args.arch)?;
    let image = image_for(&mut payload, args.arch, !args.suites.is_empty())?;
    let apt = Apt::new(&vm_dir.join("apt"), args.arch, Suite::Bookworm)?;
    let kernel_apt = match args.kernel.suite() {
        Suite::Bookworm => None,
        suite => Some(Apt::new(&vm_dir.join("apt"), args.arch, suite)?),
    };
    let kernel = kernel::prepare(
        &args.kernel,
        args.arch,
        kernel_apt.as_ref().unwrap_or(&apt),
        &vm_dir,
    )?;
    let root = root::prepare(&apt, &vm_dir)?;

    let accel = qemu::choose(args.accel, args.arch)?;
    let run_dir = vm_dir
        .join("runs")
        .join(format!("{}-{}", args.arch.rust(), kernel.release));
    fresh_dir(&run_dir)?;
    let guest = Guest {
        root: &root,
        kernel: &kernel,
        payload: &payload,
        image: image.as_deref(),
    };
    let mut outcome = boot(args, &run_dir, &guest, accel)?;
    if accel == Accel::Kvm && !outcome.reached_init && args.accel == Accel::Auto {
        eprintln!("xtask: vm: the guest never reached /init under KVM; trying TCG");
        outcome = boot(args, &run_dir, &guest, Accel::Tcg)?;
    }

    let text = fs::read_to_string(&outcome.results)
        .with_context(|| format!("cannot read {}", outcome.results.display()))?;
    let report = results::parse(&text);
    let expected: Vec<&str> = payload.suites.iter().map(|s| s.name.as_str()).collect();
    eprint!("{}", report.render());
    let verdict = report.verdict(&expected, !args.filter.is_empty());
    eprintln!(
        "xtask: vm: {} {} on {} ({}), {:.0?} in all; console: {}",
        kernel.package,
        kernel.release,
        args.arch.rust(),
        outcome.accel.describe(),
        started.elapsed(),
        outcome.console.display()
    );
    if outcome.timed_out {
        bail!("the guest did not finish within {} minutes", args.timeout);
    }
    verdict
}

/// Where the guest's binaries come from.
#[derive(Debug, PartialEq, Eq)]
enum Source<'a> {
    /// `--bins DIR`.
    Dir(&'a Path),
    /// Built for this machine, as `cargo xtask test` builds them.
    Build,
    /// Cross-built for the guest's architecture.
    CrossBuild,
}

fn source(bins: Option<&Path>, arch: Arch, host: Option<Arch>) -> Source<'_> {
    match bins {
        Some(dir) => Source::Dir(dir),
        None if host == Some(arch) => Source::Build,
        None => Source::CrossBuild,
    }
}

/// The container image's OCI archive, when a suite of the payload runs it:
/// `cargo xtask image`'s, for this machine's CPU. For another CPU the
/// suite is left out of the default selection, and refused when named.
fn image_for(payload: &mut bins::Payload, arch: Arch, named: bool) -> Result<Option<PathBuf>> {
    if !payload.suites.iter().any(|s| s.name == bins::IMAGE_SUITE) {
        return Ok(None);
    }
    if !arch.is_host() {
        if named {
            bail!(
                "the {} suite runs the image of `cargo xtask image`, which is built for this \
                 machine's CPU only, not {}",
                bins::IMAGE_SUITE,
                arch.rust()
            );
        }
        payload.suites.retain(|s| s.name != bins::IMAGE_SUITE);
        return Ok(None);
    }
    eprintln!(
        "xtask: vm: the container image the {} suite runs",
        bins::IMAGE_SUITE
    );
    crate::image::image().map(Some)
}

/// What the guest is made of.
struct Guest<'a> {
    root: &'a Path,
    kernel: &'a kernel::Kernel,
    payload: &'a bins::Payload,
    image: Option<&'a Path>,
}

/// Builds the initramfs, boots it once, and removes the initramfs again.
fn boot(args: &VmTestArgs, run_dir: &Path, guest: &Guest, accel: Accel) -> Result<Outcome> {
    let Guest {
        root,
        kernel,
        payload,
        image,
    } = *guest;
    let slowdown = args.slowdown.unwrap_or(match accel {
        Accel::Tcg => TCG_SLOWDOWN,
        _ => 1,
    });
    let config = guest::Config {
        suites: payload.suites.iter().map(|s| s.name.clone()).collect(),
        filter: args.filter.clone(),
        slowdown,
        cgroup2: !args.no_cgroup2,
        programs: args.programs,
    };
    let initrd = run_dir.join("initrd.cpio");
    let built = Instant::now();
    guest::initramfs(
        &initrd,
        &guest::Contents {
            root,
            kernel,
            payload,
            image,
        },
        &config,
        args.arch,
        run_dir,
    )?;
    eprintln!(
        "xtask: vm: initramfs of {} MiB in {:.1?}; booting {} under {} (IMDS_GUARD_TEST_SLOWDOWN={slowdown})",
        fs::metadata(&initrd).map(|m| m.len() >> 20).unwrap_or(0),
        built.elapsed(),
        kernel.release,
        accel.describe()
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout * 60);
    let outcome = qemu::run(args.arch, accel, kernel, &initrd, run_dir, deadline);
    // Hundreds of megabytes, rebuilt on every run.
    let _ = fs::remove_file(&initrd);
    outcome
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::vm::kernel::Series;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: VmTestArgs,
    }

    fn parse(args: &[&str]) -> Result<VmTestArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("vm-test").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_are_6_1_on_x86_64_with_every_suite() {
        let a = parse(&[]).expect("no arguments");
        assert_eq!(a.kernel, KernelSpec::Series(Series::V6_1));
        assert_eq!(a.arch, Arch::X86_64);
        assert_eq!(a.accel, Accel::Auto);
        assert!(a.suites.is_empty() && a.skip_suites.is_empty());
        assert!(a.filter.is_empty() && a.bins.is_none());
        assert_eq!((a.slowdown, a.timeout), (None, 60));
        assert_eq!(a.programs, None);
    }

    #[test]
    fn the_cgroup_v1_suite_runs_alone_in_the_guest_without_cgroup2() {
        assert!(parse(&["--no-cgroup2"]).expect("valid").no_cgroup2);
        assert!(!parse(&[]).expect("valid").no_cgroup2);
        assert!(runs_by_default("guard", false));
        assert!(!runs_by_default("cgroup_v1", false));
        assert!(runs_by_default("cgroup_v1", true));
        assert!(!runs_by_default("guard", true));
    }

    #[test]
    fn a_build_of_the_programs_is_named_as_the_agent_names_it() {
        let a = parse(&["--programs", "unrolled"]).expect("valid");
        assert_eq!(a.programs.map(Programs::env), Some("unrolled"));
        let a = parse(&["--programs", "bpf_loop"]).expect("valid");
        assert_eq!(a.programs.map(Programs::env), Some("bpf_loop"));
        assert!(parse(&["--programs", "loop"]).is_err());
    }

    #[test]
    fn everything_after_the_double_dash_goes_to_libtest() {
        let a = parse(&[
            "--kernel",
            "6.12",
            "--arch",
            "aarch64",
            "--suite",
            "guard",
            "--suite",
            "lifecycle",
            "--skip-suite",
            "harness",
            "--bins",
            "/b",
            "--",
            "reload",
            "--exact",
        ])
        .expect("valid");
        assert_eq!(a.kernel, KernelSpec::Series(Series::V6_12));
        assert_eq!(a.arch, Arch::Aarch64);
        assert_eq!(a.suites, ["guard", "lifecycle"]);
        assert_eq!(a.skip_suites, ["harness"]);
        assert_eq!(a.bins, Some(PathBuf::from("/b")));
        assert_eq!(a.filter, ["reload", "--exact"]);
    }

    #[test]
    fn another_architecture_is_cross_built_unless_bins_are_named() {
        let (x86, arm) = (Arch::X86_64, Arch::Aarch64);
        assert_eq!(source(None, x86, Some(x86)), Source::Build);
        assert_eq!(source(None, arm, Some(x86)), Source::CrossBuild);
        assert_eq!(source(None, x86, Some(arm)), Source::CrossBuild);
        // A host that is neither cross-builds for both.
        assert_eq!(source(None, x86, None), Source::CrossBuild);
        let dir = Path::new("/t/aarch64-unknown-linux-gnu/debug");
        assert_eq!(source(Some(dir), arm, Some(x86)), Source::Dir(dir));
        assert_eq!(source(Some(dir), x86, Some(x86)), Source::Dir(dir));
    }

    #[test]
    fn unknown_kernels_and_architectures_are_refused() {
        assert!(parse(&["--kernel", "5.4"]).is_err());
        assert!(parse(&["--arch", "riscv64"]).is_err());
        // One `Arch` for packages and guests: Debian's names are taken too.
        let arm64 = parse(&["--arch", "arm64"]).expect("Debian's name of aarch64");
        assert_eq!(arm64.arch, Arch::Aarch64);
        assert!(parse(&["--accel", "hvf"]).is_err());
        // A filter without `--` is not taken for one.
        assert!(parse(&["reload"]).is_err());
    }
}
