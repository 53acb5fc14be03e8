//! What the agent binary must be to ship for a CPU, read off the file with
//! `readelf` (binutils reads any CPU's ELF, so one tool checks both): the
//! right machine and dynamic loader, no shared library outside glibc (the
//! packages depend on glibc alone), the glibc floor (`glibc.rs`), and the
//! eBPF object that `imds-guard/build.rs` embeds.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::glibc::{Needs, Version};
use crate::{arch::Arch, process::stdout};

/// The libraries glibc itself provides (package libc6 on Debian, glibc on
/// RPM systems): the only ones the packages' dependencies cover.
pub const GLIBC_LIBRARIES: [&str; 8] = [
    "libc.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "libm.so.6",
    "librt.so.1",
    "libutil.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
];

/// `EM_BPF` in an ELF header's `e_machine`.
const EM_BPF: u16 = 247;

/// Checks `bin` for `arch`; on success, says what its floor is (`glibc
/// 2.28, by statx`) for the build log.
pub fn check(bin: &Path, arch: Arch) -> Result<String> {
    let text = stdout(
        Command::new("readelf")
            .args(["-W", "--file-header", "--program-headers", "--dynamic"])
            .args(["--version-info", "--dyn-syms"])
            .arg(bin),
    )
    .context("readelf (package binutils) reads the binary's ELF headers and symbol versions")?;
    let bytes = fs::read(bin).with_context(|| format!("cannot read {}", bin.display()))?;
    let needs = Needs::parse(&text);
    let problems = problems(&text, &needs, arch, embeds_bpf_object(&bytes));
    if !problems.is_empty() {
        bail!(
            "{} cannot ship for {}:\n  - {}",
            bin.display(),
            arch.rpm(),
            problems.join("\n  - ")
        );
    }
    Ok(match needs.highest() {
        Some((version, symbols)) if symbols.is_empty() => format!("glibc {version}"),
        Some((version, symbols)) => format!("glibc {version}, by {}", symbols.join(", ")),
        None => "no glibc version".to_owned(),
    })
}

/// Everything wrong with the binary `readelf` described, for `arch`.
fn problems(readelf: &str, needs: &Needs, arch: Arch, has_bpf: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let machine = readelf
        .lines()
        .find_map(|l| l.trim().strip_prefix("Machine:"))
        .map(str::trim);
    if machine != Some(arch.elf_machine()) {
        problems.push(format!(
            "its machine is {machine:?}, not {:?}",
            arch.elf_machine()
        ));
    }
    let interpreter = readelf.lines().find_map(|l| {
        let (_, rest) = l.split_once("[Requesting program interpreter: ")?;
        rest.strip_suffix(']')
    });
    if interpreter != Some(arch.interpreter()) {
        problems.push(format!(
            "its dynamic loader is {interpreter:?}, not {:?} (a static or musl binary is not \
             what the packages describe)",
            arch.interpreter()
        ));
    }
    for library in needed(readelf) {
        if !GLIBC_LIBRARIES.contains(&library) {
            problems.push(format!(
                "it needs {library}, which is not part of glibc: add its package to the .deb's \
                 Depends (deb.rs) and to this list, or link it statically"
            ));
        }
    }
    if needs.is_empty() {
        problems.push("readelf shows no GLIBC_ symbol version at all".to_owned());
    }
    problems.extend(needs.above(&Version::floor()));
    if !has_bpf {
        problems.push(
            "it embeds no eBPF object (built with AYA_BUILD_SKIP=1?): it would refuse to load \
             the guard"
                .to_owned(),
        );
    }
    problems
}

/// The `NEEDED` entries of the dynamic section.
fn needed(readelf: &str) -> Vec<&str> {
    readelf
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("Shared library: [")?;
            rest.strip_suffix(']')
        })
        .collect()
}

/// Whether `bytes` hold a 64-bit little-endian ELF object for the BPF
/// machine: what `include_bytes_aligned!` puts in the agent. (AYA_BUILD_SKIP
/// embeds an empty placeholder instead.)
fn embeds_bpf_object(bytes: &[u8]) -> bool {
    const MAGIC: &[u8] = b"\x7fELF";
    bytes.windows(20).any(|w| {
        w.starts_with(MAGIC)
            && w[4] == 2 // ELFCLASS64
            && w[5] == 1 // ELFDATA2LSB: bpfel
            && u16::from_le_bytes([w[18], w[19]]) == EM_BPF
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "
ELF Header:
  Class:                             ELF64
  Machine:                           AArch64
Program Headers:
      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]
Dynamic section at offset 0x48f7a0 contains 31 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x0000000000000001 (NEEDED)             Shared library: [ld-linux-aarch64.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libpthread.so.0]
 0x0000000000000001 (NEEDED)             Shared library: [libdl.so.2]
Symbol table '.dynsym' contains 2 entries:
    84: 0000000000000000     0 FUNC    WEAK   DEFAULT  UND statx@GLIBC_2.28 (5)
    85: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND memcpy@GLIBC_2.17 (2)
";

    fn problems_of(text: &str, arch: Arch, has_bpf: bool) -> Vec<String> {
        problems(text, &Needs::parse(text), arch, has_bpf)
    }

    #[test]
    fn a_good_aarch64_binary_has_no_problem() {
        assert_eq!(
            problems_of(AARCH64, Arch::Aarch64, true),
            Vec::<String>::new()
        );
        assert_eq!(
            needed(AARCH64),
            [
                "libc.so.6",
                "ld-linux-aarch64.so.1",
                "libpthread.so.0",
                "libdl.so.2"
            ]
        );
    }

    #[test]
    fn the_wrong_cpu_is_named() {
        let problems = problems_of(AARCH64, Arch::X86_64, true);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("\"AArch64\""), "{problems:?}");
        assert!(
            problems[1].contains("/lib64/ld-linux-x86-64.so.2"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_library_outside_glibc_and_a_missing_object_are_named() {
        let text = AARCH64.replace("[libdl.so.2]", "[libgcc_s.so.1]");
        let problems = problems_of(&text, Arch::Aarch64, false);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("libgcc_s.so.1"), "{problems:?}");
        assert!(problems[1].contains("no eBPF object"), "{problems:?}");
    }

    #[test]
    fn a_symbol_over_the_floor_is_named() {
        let text = AARCH64.replace("statx@GLIBC_2.28", "pthread_join@GLIBC_2.34");
        let problems = problems_of(&text, Arch::Aarch64, true);
        assert_eq!(
            problems,
            ["GLIBC_2.34 (newer than the floor, glibc 2.28) is needed by pthread_join"]
        );
    }

    #[test]
    fn the_embedded_bpf_object_is_found_by_its_header() {
        let mut bpf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x01\0".to_vec();
        bpf.extend_from_slice(&EM_BPF.to_le_bytes());
        let mut x86 = bpf.clone();
        x86[18..20].copy_from_slice(&62u16.to_le_bytes());
        let binary = [x86.clone(), b"padding".to_vec(), bpf, vec![0; 8]].concat();
        assert!(embeds_bpf_object(&binary));
        assert!(!embeds_bpf_object(&x86));
        assert!(!embeds_bpf_object(b""));
    }
}
