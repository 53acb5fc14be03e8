//! `cargo xtask manifests` (also a step of `test`): the Kubernetes
//! manifests in `deploy/kubernetes/` validate, strictly (no field the API
//! does not know), against the schemas of the oldest and the newest
//! Kubernetes that kubernetes-validate bundles, and the DaemonSet names
//! the image `cargo xtask image` builds for this version.
//!
//! What runs them is `podman kube play`, in the `kubernetes` end-to-end
//! suite.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::{
    image::NAME,
    process::{run, workspace_root},
    setup,
};

/// The Kubernetes versions checked against: the oldest and the newest
/// schemas kubernetes-validate 1.37 bundles.
const VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

pub fn check() -> Result<()> {
    let validate = setup::kubernetes_validate()?;
    let dir = workspace_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no manifest in {}", dir.display());
    for version in VERSIONS {
        run(Command::new("python3")
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--quiet",
                "-k",
                version,
            ])
            .args(&files)
            .env("PYTHONPATH", &validate))?;
    }
    let daemonset = fs::read_to_string(dir.join("daemonset.yaml"))?;
    let want = format!("{NAME}:{}", crate_version()?);
    ensure!(
        image_of(&daemonset).as_deref() == Some(want.as_str()),
        "deploy/kubernetes/daemonset.yaml names the image {:?}, not {want} (what cargo xtask image \
         builds)",
        image_of(&daemonset)
    );
    eprintln!(
        "xtask: manifests: {} files valid for Kubernetes {}, image {want}",
        files.len(),
        VERSIONS.join(" and ")
    );
    Ok(())
}

/// The agent's version, from its Cargo.toml.
fn crate_version() -> Result<String> {
    let manifest = fs::read_to_string(workspace_root().join("imds-guard/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version in imds-guard/Cargo.toml")
}

/// The first `image:` of a manifest.
fn image_of(manifest: &str) -> Option<String> {
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .map(|i| i.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemonset_names_this_versions_image() {
        let daemonset =
            fs::read_to_string(workspace_root().join("deploy/kubernetes/daemonset.yaml"))
                .expect("daemonset.yaml");
        let version = crate_version().expect("a version");
        assert_eq!(image_of(&daemonset), Some(format!("{NAME}:{version}")));
    }
}
