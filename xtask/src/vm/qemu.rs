//! Running the guest in QEMU: KVM or TCG, its command line per
//! architecture, and a child that is always stopped and reaped, on time out,
//! error or panic alike.
//!
//! The serial console (kernel messages, `/init`'s progress) is QEMU's
//! stdout, copied to `console.log` and echoed here; the results channel is
//! a virtio serial port written to `results.log`.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use super::kernel::Kernel;
use crate::{arch::Arch, process::cmd};

/// `--accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM where the CPU has `vmx`/`svm` and the guest boots under it,
    /// else TCG.
    Auto,
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

impl Accel {
    pub fn describe(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (emulated)",
        }
    }
}

/// Resolves `auto`: KVM only for a guest of the host's architecture, with
/// hardware virtualisation in `/proc/cpuinfo` and a `/dev/kvm` that opens.
/// A `/dev/kvm` alone is not enough: a nested "PVM" hypervisor offers one
/// without `vmx`, and stock kernels die under it (`KVM internal error`).
pub fn choose(asked: Accel, arch: Arch) -> Result<Accel> {
    let native = arch.is_host();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = has_virtualisation(&cpuinfo);
    let dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match asked {
        Accel::Auto if native && flags && dev => Ok(Accel::Kvm),
        Accel::Auto => {
            let why = if !native {
                "the guest is of another architecture"
            } else if !flags {
                "the CPU shows no vmx or svm"
            } else {
                "/dev/kvm does not open"
            };
            eprintln!("xtask: vm: using TCG: {why}");
            Ok(Accel::Tcg)
        }
        Accel::Kvm if !(native && dev) => {
            bail!("--accel kvm needs a guest of this machine's architecture and a usable /dev/kvm")
        }
        other => Ok(other),
    }
}

fn has_virtualisation(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// How a boot ended.
pub struct Outcome {
    pub accel: Accel,
    /// Whether the guest's `/init` started (it says so first).
    pub reached_init: bool,
    pub timed_out: bool,
    pub console: PathBuf,
    pub results: PathBuf,
}

/// The name of the results port, by which `/init` finds it.
const RESULTS_PORT: &str = "imds-guard.results";

/// The line `/init` prints first.
const INIT_MARK: &str = "vm: init reached";

/// Boots the guest and waits for it to end by itself or until `deadline`.
pub fn run(
    arch: Arch,
    accel: Accel,
    kernel: &Kernel,
    initrd: &Path,
    dir: &Path,
    deadline: Instant,
) -> Result<Outcome> {
    let console = dir.join("console.log");
    let results = dir.join("results.log");
    // A retry (TCG after KVM) starts from empty files.
    fs::write(&results, "").with_context(|| format!("cannot create {}", results.display()))?;
    let mut log =
        File::create(&console).with_context(|| format!("cannot create {}", console.display()))?;

    let mut c = cmd(qemu_binary(arch));
    c.args(args(arch, accel, &kernel.image, initrd, &results))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c
        .spawn()
        .with_context(|| format!("cannot start {}", qemu_binary(arch)))?;
    let mut guest = Guest(child);
    let reached = Arc::new(AtomicBool::new(false));
    let (Some(stdout), Some(stderr)) = (guest.0.stdout.take(), guest.0.stderr.take()) else {
        bail!("QEMU's pipes are missing");
    };
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("qemu: {line}");
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let seen = Arc::clone(&reached);
    let echo = thread::spawn(move || {
        // The console carries \r\n and may carry bytes that are not UTF-8.
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            if line.contains(INIT_MARK) {
                seen.store(true, Ordering::Relaxed);
            }
            let _ = writeln!(log, "{line}");
            eprintln!("guest: {line}");
        }
    });

    let mut timed_out = false;
    let status = loop {
        match guest.0.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(e).context("cannot wait for QEMU"),
        }
    };
    drop(guest);
    let _ = echo.join();
    let stderr = stderr.join().unwrap_or_default();
    let reached_init = reached.load(Ordering::Relaxed);
    if let Some(status) = status {
        if !status.success() {
            eprintln!("xtask: vm: QEMU exited with {status}");
        }
        if !reached_init && !stderr.is_empty() && accel != Accel::Kvm {
            bail!("QEMU failed before the guest started:\n{stderr}");
        }
    }
    Ok(Outcome {
        accel,
        reached_init,
        timed_out,
        console,
        results,
    })
}

/// The QEMU child: killed (it is ours and not yet reaped, so its pid is
/// its own) and reaped when dropped.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Aarch64 => "qemu-system-aarch64",
    }
}

/// QEMU's arguments: no default devices, the kernel and initramfs booted
/// directly, the serial console on stdout, a virtio serial port into
/// `results` (a plain port, not a console: writes to it block until QEMU
/// has taken them, where a virtio console's tty drops what it has not sent
/// within 100 ms of its close), and a reset ends QEMU (`/init` resets when done, a panic
/// resets after a second).
fn args(arch: Arch, accel: Accel, image: &Path, initrd: &Path, results: &Path) -> Vec<String> {
    let cpus = thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let (machine, cpu, console) = match (arch, accel) {
        (Arch::X86_64, Accel::Kvm) => ("q35", "host", "ttyS0"),
        (Arch::X86_64, _) => ("q35", "max", "ttyS0"),
        // Pointer authentication emulated with QEMU's own cheap algorithm
        // rather than QARMA: several times faster under TCG.
        // Under KVM the interrupt controller must be the host's own
        // version (QEMU's default GICv2 fails on GICv3-only hosts).
        (Arch::Aarch64, Accel::Kvm) => ("virt,gic-version=host", "host", "ttyAMA0"),
        (Arch::Aarch64, _) => ("virt", "max,pauth-impdef=on", "ttyAMA0"),
    };
    let accel = match accel {
        Accel::Kvm => "kvm",
        _ => "tcg,thread=multi",
    };
    [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-machine",
        machine,
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-smp",
        &cpus.to_string(),
        "-m",
        "3072",
        "-kernel",
        &image.to_string_lossy(),
        "-initrd",
        &initrd.to_string_lossy(),
        "-append",
        &format!("console={console} panic=1 quiet rdinit=/init"),
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-device",
        "virtio-serial-pci,id=vs",
        "-chardev",
        &format!("file,id=results,path={}", results.display()),
        "-device",
        &format!("virtserialport,chardev=results,bus=vs.0,name={RESULTS_PORT}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtualisation_flags_from_cpuinfo() {
        let pvm = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 hypervisor\n";
        assert!(!has_virtualisation(pvm));
        let intel = "flags\t\t: fpu vme vmx ept\n";
        assert!(has_virtualisation(intel));
        let amd = "flags\t\t: fpu svm npt\n";
        assert!(has_virtualisation(amd));
        // A flag's name inside another's does not count.
        assert!(!has_virtualisation("flags\t\t: vmxe svmx\n"));
    }

    #[test]
    fn arm64_guests_use_the_virt_machine_and_its_uart() {
        let a = args(
            Arch::Aarch64,
            Accel::Tcg,
            Path::new("/k/vmlinuz"),
            Path::new("/r/initrd.cpio"),
            Path::new("/r/results.log"),
        );
        let after = |flag: &str| {
            let i = a.iter().position(|x| x == flag).expect(flag);
            a[i + 1].clone()
        };
        assert_eq!(after("-machine"), "virt");
        assert_eq!(after("-accel"), "tcg,thread=multi");
        assert!(after("-append").contains("console=ttyAMA0"));
        assert_eq!(after("-kernel"), "/k/vmlinuz");
        assert!(a.contains(&"-no-reboot".to_owned()));
    }
}
