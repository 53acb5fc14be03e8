//! `dist --e2e`: the privileged end-to-end tests, the agent, the probe and
//! the other helpers the tests run, built for a CPU by the release's route
//! (cargo-zigbuild, glibc 2.28, the toolchain with that CPU's std) in the
//! debug profile `cargo xtask test` uses, and gathered in
//! `target/dist/<arch>/e2e/` to be copied to and run on a machine of that
//! CPU, one test file at a time with `--test-threads=1`. The tests find
//! `imds-guard` beside themselves (`e2e/src/bins.rs`); those that use
//! `env!("CARGO_BIN_EXE_imds-probe")` (or `imds-uring`) look for it at its
//! build path, printed here.
//!
//! `cargo xtask vm-test` for another CPU runs the same build (`compile`)
//! and takes the binaries where they were built, which is where those
//! build paths point.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};

use super::compile;
use crate::{
    arch::Arch,
    process::{fresh_dir, output, run, target_dir, workspace_root},
    setup::Zigbuild,
};

/// What `compile` built, where cargo put it.
pub struct Built {
    /// The cargo profile directory, `target/<triple>/debug`: the agent,
    /// the probe and the other binaries of `imds-guard-e2e` are in it.
    pub profile: PathBuf,
    /// Each integration test of `e2e/tests/` by name, its executable's
    /// absolute path (in `deps/`).
    pub tests: Vec<(String, PathBuf)>,
}

/// The binaries of the two packages, and the integration tests.
pub fn compile(arch: Arch, tools: &Zigbuild) -> Result<Built> {
    run(compile::zigbuild(arch, tools, "zigbuild")?.args([
        "-p",
        "imds-guard",
        "-p",
        "imds-guard-e2e",
        "--bins",
    ]))?;
    let tests = || -> Result<_> {
        let mut c = compile::zigbuild(arch, tools, "test")?;
        c.args(["--no-run", "-p", "imds-guard-e2e", "--tests"]);
        Ok(c)
    };
    run(&mut tests()?)?;
    // Built now: this run only lists the executables (on stderr).
    let listed = output(&mut tests()?)?;
    let tests: Vec<(String, PathBuf)> = integration_tests(&String::from_utf8_lossy(&listed.stderr))
        .into_iter()
        .map(|(name, path)| (name, workspace_root().join(path)))
        .collect();
    ensure!(
        !tests.is_empty(),
        "cargo test --no-run listed no integration test of imds-guard-e2e"
    );
    Ok(Built {
        profile: target_dir().join(arch.triple()).join("debug"),
        tests,
    })
}

/// Builds them and returns the directory they were gathered in.
pub fn build(arch: Arch, tools: &Zigbuild) -> Result<PathBuf> {
    let built = compile(arch, tools)?;
    let dir = target_dir().join("dist").join(arch.rpm()).join("e2e");
    fresh_dir(&dir)?;
    for (name, path) in &built.tests {
        copy(path, &dir.join(name))?;
    }
    for bin in ["imds-guard", "imds-probe", "imds-uring", "imds-churn"] {
        copy(&built.profile.join(bin), &dir.join(bin))?;
    }
    let names: Vec<&str> = built.tests.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!(
        "xtask: e2e for {}: {} (tests: {}), with imds-guard, imds-probe, imds-uring and \
         imds-churn; the build paths of imds-probe and imds-uring, which the tests name: {}",
        arch.rpm(),
        dir.display(),
        names.join(", "),
        built.profile.display()
    );
    Ok(dir)
}

/// The integration tests among cargo's `Executable` lines:
/// `  Executable tests/guard.rs (target/…/deps/guard-0123abcd)` gives
/// (`guard`, that path).
fn integration_tests(stderr: &str) -> Vec<(String, PathBuf)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("Executable tests/")?;
            let (file, path) = rest.split_once(" (")?;
            let name = file.strip_suffix(".rs")?;
            Some((name.to_owned(), PathBuf::from(path.strip_suffix(')')?)))
        })
        .collect()
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_integration_tests_are_gathered_by_name() {
        let stderr = "\
    Finished `test` profile [unoptimized + debuginfo] target(s) in 24.11s
  Executable unittests src/lib.rs (target/aarch64-unknown-linux-gnu/debug/deps/imds_guard_e2e-d1ea)
  Executable unittests src/bin/imds-probe.rs (target/aarch64-unknown-linux-gnu/debug/deps/imds_probe-f2c7)
  Executable tests/guard.rs (target/aarch64-unknown-linux-gnu/debug/deps/guard-49c6)
  Executable tests/storm.rs (/abs/target/aarch64-unknown-linux-gnu/debug/deps/storm-b802)
";
        assert_eq!(
            integration_tests(stderr),
            [
                (
                    "guard".to_owned(),
                    PathBuf::from("target/aarch64-unknown-linux-gnu/debug/deps/guard-49c6")
                ),
                (
                    "storm".to_owned(),
                    PathBuf::from("/abs/target/aarch64-unknown-linux-gnu/debug/deps/storm-b802")
                ),
            ]
        );
    }
}
