//! `test`, `demo` and `bench`: set up, build, and run.

use anyhow::Result;

use crate::{
    process::{cargo, run},
    setup::setup,
};

pub fn test(extra: &[String]) -> Result<()> {
    setup()?;
    crate::sweep::sweep();
    // The end-to-end tests run the real binary and the probe: build them
    // (the default members: the eBPF crate only builds for the BPF target).
    run(cargo().args(["build", "--bins"]))?;
    eprintln!("xtask: Kubernetes manifests");
    crate::manifests::check()?;
    eprintln!("xtask: unit tests");
    run(cargo().args(["test", "--workspace", "--exclude", "imds-guard-e2e"]))?;
    // The release build it needs is the packages' too (built once).
    // The suite is told which archive: a target directory set by
    // CARGO_TARGET_DIR is not where the test would look for it.
    let image = if extra.is_empty() || extra.iter().any(|a| a.contains("kubernetes")) {
        eprintln!("xtask: the container image the kubernetes suite plays");
        Some(crate::image::image()?)
    } else {
        None
    };
    eprintln!("xtask: privileged end-to-end tests (one at a time)");
    let mut e2e = cargo();
    if let Some(image) = image {
        e2e.env("IMDS_GUARD_TEST_IMAGE", image);
    }
    run(e2e
        .args(["test", "-p", "imds-guard-e2e", "--"])
        .arg("--test-threads=1")
        .args(extra))?;
    if extra.is_empty() {
        eprintln!("xtask: packages (.deb installed and removed again, .rpm inspected)");
        crate::dist::dist(true)?;
    }
    Ok(())
}

pub fn demo() -> Result<()> {
    setup()?;
    run(cargo().args(["build", "--bins"]))?;
    run(cargo().args([
        "run",
        "--quiet",
        "-p",
        "imds-guard-e2e",
        "--bin",
        "imds-guard-demo",
    ]))
}

pub fn bench(extra: &[String]) -> Result<()> {
    setup()?;
    // The bench starts the release agent and its own release binary.
    run(cargo().args(["build", "--release", "--bins"]))?;
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "imds-guard-bench",
            "--",
        ])
        .args(extra))
}
